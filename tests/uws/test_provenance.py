"""W3C PROV documents of real runs: `lrt provenance` (json, provn, xml), the UWS
/provenance resource, and one linked document for a token set."""
from __future__ import annotations

import subprocess
import sys

from prov.model import ProvDocument

from lrt.tasks import TaskRegistry, submit_task
from pilot_helpers import ROOT, poll, start_pilot, stop

from .conftest import session

FIX = ROOT / "tasks" / "fixtures" / "small.txt"
LRT = "https://lrt.readthedocs.io/ns/prov#"
VOPROV = "http://www.ivoa.net/documents/ProvenanceDM/ns/voprov/"


def lrt(couch, db, *args):
    return subprocess.run([sys.executable, "-m", "lrt.cli", *args], cwd=str(ROOT),
                          env=couch.env(db.name), capture_output=True, text=True, timeout=120)


def records(doc, kind):
    return [r for r in doc.get_records() if r.get_type().localpart == kind]


def attr(rec, ns, name):
    vals = [v for k, v in rec.attributes if k.namespace.uri == ns and k.localpart == name]
    return vals[0] if vals else None


def run_all(couch, db, ids):
    p = start_pilot(couch.env(db.name), "--idle-exit", "30", "--poll", "0.2")
    try:
        poll(lambda: all(db.get(i)["state"] in ("done", "error", "failed") for i in ids),
             timeout=120, what="the tokens to finish")
    finally:
        stop(p)


def test_provenance_of_a_real_run(couch, db, tasks_dir, tmp_path, users):
    task = TaskRegistry(tasks_dir).get("wordcount")
    tid = submit_task(db, task, {"texts": [FIX.as_uri()], "min_length": 3, "label": "p1"},
                      owner=users["alice"][0])
    run_all(couch, db, [tid])
    tok = db.get(tid)
    assert tok["state"] == "done", tok.get("error")

    r = lrt(couch, db, "provenance", tid)
    assert r.returncode == 0, r.stderr
    doc = ProvDocument.deserialize(content=r.stdout, format="json")
    acts = records(doc, "Activity")
    assert len(acts) == 1
    act = acts[0]
    assert attr(act, VOPROV, "name") == "wordcount" and attr(act, VOPROV, "version") == "1"
    assert attr(act, LRT, "exit_code") == 0 and attr(act, LRT, "attempt") == 1
    assert act.get_startTime() and act.get_endTime() and act.get_startTime() <= act.get_endTime()
    ents = {r.identifier.localpart: r for r in records(doc, "Entity")}
    locations = {attr(e, VOPROV, "location") for e in ents.values()} - {None}
    outs = {o["url"] for o in tok["output"]}
    assert locations == {FIX.as_uri()} | outs and len(outs) == 2
    # generated: exactly the outputs, with their checksums; used: the input, sandbox, task, params
    gen = records(doc, "Generation")
    gen_ids = {g.get_attribute("prov:entity").pop().localpart for g in gen}
    by_loc = {attr(e, VOPROV, "location"): (k, e) for k, e in ents.items()}
    assert gen_ids == {by_loc[u][0] for u in outs}
    for o in tok["output"]:
        assert attr(by_loc[o["url"]][1], LRT, "checksum") == o["checksum"]
    used = {u.get_attribute("prov:entity").pop().localpart: str(u.get_attribute("prov:role").pop())
            for u in records(doc, "Usage")}
    roles = sorted(used.values())
    assert roles.count("input") == 1 and used[by_loc[FIX.as_uri()][0]] == "input"
    assert attr(by_loc[FIX.as_uri()][1], LRT, "checksum") == tok["inputs"][0]["checksum"]
    assert tok["inputs"][0]["checksum"].startswith("adler32:")
    assert "sandbox" in roles and "task_description" in roles
    sandbox = [e for e in ents.values() if attr(e, LRT, "sha256") == tok["sandbox"]["sha256"]]
    assert len(sandbox) == 1
    desc = [e for e in ents.values() if attr(e, LRT, "sha256") == task.sha256]
    assert len(desc) == 1
    params = {attr(e, VOPROV, "name"): attr(e, VOPROV, "value") for e in ents.values()
              if any(str(v).endswith("ValueEntity") for v in e.get_asserted_types())}
    assert params["min_length"] == 3 and params["label"] == "p1"
    agents = records(doc, "Agent")
    hist = tok["history"][-1]
    pilot = [a for a in agents if attr(a, VOPROV, "name") == hist["pilot"]]
    assert len(pilot) == 1 and attr(pilot[0], LRT, "host") == hist["host"]
    assert [a for a in agents if attr(a, VOPROV, "name") == users["alice"][0]]
    assert records(doc, "Delegation")

    for fmt, marker in (("provn", "activity(lrt:job_"), ("xml", "<prov:document")):
        r = lrt(couch, db, "provenance", tid, "--format", fmt)
        assert r.returncode == 0 and marker in r.stdout, r.stderr
    x = ProvDocument.deserialize(content=lrt(couch, db, "provenance", tid, "--format", "xml").stdout,
                                 format="xml")
    assert len(records(x, "Activity")) == 1


def test_a_token_set_document_links_producer_and_consumer(couch, db, tasks_dir, tmp_path):
    # the second job counts the words of the first job's summary: one entity, two activities
    task = TaskRegistry(tasks_dir).get("wordcount")
    a = submit_task(db, task, {"texts": [FIX.as_uri()]})
    run_all(couch, db, [a])
    summary = [o["url"] for o in db.get(a)["output"] if o["url"].endswith("summary.json")][0]
    b = submit_task(db, task, {"texts": [summary]})
    run_all(couch, db, [b])
    r = lrt(couch, db, "provenance", a, b)
    assert r.returncode == 0, r.stderr
    doc = ProvDocument.deserialize(content=r.stdout, format="json")
    assert len(records(doc, "Activity")) == 2
    shared = [e for e in records(doc, "Entity") if attr(e, VOPROV, "location") == summary]
    assert len(shared) == 1
    gen = [g for g in records(doc, "Generation") if g.get_attribute("prov:entity").pop() == shared[0].identifier]
    use = [u for u in records(doc, "Usage") if u.get_attribute("prov:entity").pop() == shared[0].identifier]
    assert len(gen) == 1 and len(use) == 1
    assert gen[0].get_attribute("prov:activity").pop() != use[0].get_attribute("prov:activity").pop()
    r = lrt(couch, db, "provenance", "--tokenset", "wordcount")
    assert r.returncode == 0, r.stderr
    assert len(records(ProvDocument.deserialize(content=r.stdout, format="json"), "Activity")) == 2
    r = lrt(couch, db, "provenance", "--tokenset", "nosuch")
    assert r.returncode == 1 and "no tokens" in r.stderr


def test_uws_provenance_resource(serve, users, uws_db):
    base, alice = serve.url, session(users["alice"])
    r = alice.post(f"{base}/uws/sleeper", data={"seconds": "0", "PHASE": "RUN"}, allow_redirects=False)
    loc = r.headers["location"]
    assert alice.get(loc + "/provenance").status_code == 409  # not finished yet
    p = start_pilot(serve.env, "--idle-exit", "30", "--poll", "0.2", "--type", "sleeper")
    try:
        poll(lambda: "COMPLETED" in alice.get(loc + "?WAIT=10").text, timeout=90, what="COMPLETED")
    finally:
        stop(p)
    r = alice.get(loc + "/provenance")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = ProvDocument.deserialize(content=r.text, format="json")
    outs = [attr(e, VOPROV, "location") for e in records(doc, "Entity")
            if attr(e, VOPROV, "location")]
    assert outs == [o["url"] for o in uws_db.get(loc.rsplit("/", 1)[-1])["output"]]
    assert "activity(" in alice.get(loc + "/provenance?format=provn").text
    assert session(users["bob"]).get(loc + "/provenance").status_code == 403
    assert alice.get(loc + "/provenance?format=rdf").status_code == 400
