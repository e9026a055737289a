"""Tape-aware dispatch: `lrt stage run` moves staging tokens to todo / error (code 20)
against the real local CouchDB-API server and real gfal2 (mock plug-in, tape XRootD)."""
from __future__ import annotations

import json
import os
import subprocess
import time


from lrt.staging.dispatch import Stager, staging_tokens
from lrt.staging.gfal import Gfal

from pilot_helpers import poll

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def token(tid, inputs, ttype="calib", state="staging"):
    now = time.time()
    return {"_id": tid, "kind": "token", "schema": 1, "type": ttype, "state": state, "priority": 0,
            "created": now, "updated": now, "tokenset": "test", "attempts": 0, "max_attempts": 3,
            "retry": {"backoff": 30, "payload_errors": False}, "not_before": None,
            "expected_duration": None, "timeout": None, "command": ["true"], "sandbox": None,
            "payload": {}, "inputs": [{"url": u, "checksum": None} for u in inputs],
            "outputs": None, "needs_staging": True, "lease": None, "exit_code": None,
            "error": None, "history": [], "cancel_requested": False}


def mock(name, extra=""):
    return f"mock://tape.example.org/lofar/{name}?size=100&user.status=NEARLINE{extra}"


def run_once(couch, db, lrt_cmd, *extra):
    env = couch.env(db.name)
    env["PYTHONPATH"] = ROOT
    r = subprocess.run(lrt_cmd + ["stage", "run", "--once", *extra], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_run_once_moves_tokens_to_todo_and_error(gfal2, couch, db, lrt_cmd):
    bad = mock("L5_SB001.tar", "&staging_errno=5")
    docs = [token("t-online", [mock("L5_SB000.tar"), mock("L5_SB002.tar")]),
            token("t-bad", [mock("L5_SB003.tar"), bad]),
            token("t-noinputs", []),
            token("t-other", [mock("L6_SB000.tar")], ttype="target"),
            token("t-todo", [mock("L7_SB000.tar")], state="todo")]
    assert len(db.bulk_docs(docs).ok) == 5
    out = run_once(couch, db, lrt_cmd, "--type", "calib")
    assert "3 token(s): 2 -> todo, 1 -> error, 0 still staging" in out
    got = {d: db.get(d) for d in ("t-online", "t-bad", "t-noinputs", "t-other", "t-todo")}
    assert got["t-online"]["state"] == "todo" and got["t-noinputs"]["state"] == "todo"
    assert got["t-online"]["staging"]["online"] == 2
    err = got["t-bad"]["error"]
    assert got["t-bad"]["state"] == "error"
    assert err["code"] == 20 and err["name"] == "STAGING_FAILED" and err["class"] == "system"
    assert list(err["files"]) == [bad] and "Input/output error" in err["files"][bad]
    assert got["t-other"]["state"] == "staging"  # other type untouched
    assert got["t-todo"]["state"] == "todo" and "staging" not in got["t-todo"]
    # the pilots' claim view now offers the staged tokens
    todo = db.view("lrt-claim", "todo", reduce=False)["rows"]
    assert {r["id"] for r in todo} == {"t-online", "t-noinputs", "t-todo"}


def test_loop_waits_for_staging_delay(gfal2, db):
    docs = [token("slow", [mock(f"L8_SB{i:03d}.tar", "&staging_time=2") for i in range(3)])]
    db.bulk_docs(docs)
    stager = Stager(db, Gfal(batch=2), pin=600)
    first = stager.run_once()
    assert first["staging"] == 1 and first["requested"] == 3
    doc = db.get("slow")
    assert doc["state"] == "staging" and doc["staging"]["online"] == 0
    assert sum(len(r["urls"]) for r in doc["staging"]["requests"]) == 3  # recorded for later passes
    passes = []
    last = stager.run(interval=0.3, report=passes.append)
    assert last["todo"] == 1 and len(passes) >= 2
    assert all(p["requested"] == 0 for p in passes)  # never asked twice
    assert db.get("slow")["state"] == "todo"


def test_tape_xrootd_across_processes(gfal2, xrootd_tape, put_on_tape, couch, db, lrt_cmd):
    urls = [put_on_tape(xrootd_tape, f"obs2/L11_SB{i:03d}.tar", b"d" * 500, delay=2) for i in range(2)]
    broken = put_on_tape(xrootd_tape, "obs2/L12_SB000.tar", b"d", delay=0.5, fail="no such cartridge")
    db.bulk_docs([token("tape-ok", urls), token("tape-bad", [broken])])
    out = run_once(couch, db, lrt_cmd)
    assert "3 file(s) requested" in out and db.get("tape-ok")["state"] == "staging"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = run_once(couch, db, lrt_cmd)
        assert "0 file(s) requested" in out  # later processes poll the recorded requests
        if db.get("tape-ok")["state"] != "staging" and db.get("tape-bad")["state"] != "staging":
            break
        time.sleep(0.5)
    assert db.get("tape-ok")["state"] == "todo"
    bad = db.get("tape-bad")
    assert bad["state"] == "error" and "no such cartridge" in bad["error"]["files"][broken]


class _Interfering:
    """A Database whose first bulk write is preceded by a user cancelling one token."""

    def __init__(self, db, victim):
        self._db, self._victim, self._done = db, victim, False

    def __getattr__(self, name):
        return getattr(self._db, name)

    def bulk_docs(self, docs, **kw):
        if not self._done:
            self._done = True
            doc = self._db.get(self._victim)
            doc["state"] = "cancelled"
            doc["cancel_requested"] = True
            self._db.put(doc)
        return self._db.bulk_docs(docs, **kw)


def test_conflict_is_reread_and_redecided(gfal2, db):
    db.bulk_docs([token("c1", [mock("L13_SB000.tar")]), token("c2", [mock("L13_SB001.tar")])])
    # (on a cluster the staging view may be read from a copy the writes have not reached yet)
    poll(lambda: len(list(staging_tokens(db))) == 2, timeout=30, what="both tokens in the staging view")
    res = Stager(_Interfering(db, "c1"), Gfal()).run_once()
    assert res["todo"] == 1
    assert db.get("c1")["state"] == "cancelled"  # the user's change wins; not overwritten
    assert db.get("c2")["state"] == "todo"


def test_status_and_request_by_token_type(gfal2, couch, db, lrt_cmd):
    db.bulk_docs([token("s1", [mock("L20_SB000.tar"), mock("L20_SB001.tar")]),
                  token("s2", [mock("L20_SB001.tar"), mock("L20_SB002.tar", "&staging_errno=2")]),
                  token("s3", [mock("L21_SB000.tar")], ttype="other", state="todo")])
    env = couch.env(db.name)
    env["PYTHONPATH"] = ROOT
    r = subprocess.run(lrt_cmd + ["stage", "status", "--type", "calib", "--json"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total"] == 3 and out["counts"] == {"NEARLINE": 3}  # shared input counted once
    r = subprocess.run(lrt_cmd + ["stage", "request", "--type", "calib", "--wait", "--interval", "0.2"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 1  # one file failed: said so, per file
    assert "online: 2, failed: 1" in r.stdout and "failed mock://tape.example.org/lofar/L20_SB002.tar" in r.stdout
    r = subprocess.run(lrt_cmd + ["stage", "status", "--type", "nosuchtype"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "no token of type 'nosuchtype' has inputs" in r.stderr


def test_a_202_stage_write_beside_a_users_cancel_is_withdrawn(gfal2, db, couch):
    """On a cluster the stager's write (staging -> todo) may be accepted by fewer copies than
    the quorum (202) while the others accepted a user's cancel from the same revision: the
    stager checks every copy, removes its own revision (no conflict stays, the cancel stands)
    and does not count the token; a 202 write alone on every copy is counted."""
    from cluster_helpers import QuorumProxy

    db.bulk_docs([token("c1", [mock("L13_SB000.tar")]), token("c2", [mock("L13_SB001.tar")])])
    # (on a cluster the staging view may be read from a copy the writes have not reached yet)
    poll(lambda: len(list(staging_tokens(db))) == 2, timeout=30, what="both tokens in the staging view")

    def users_cancel_on_the_other_copies(docs):
        cur = db.get("c1")
        h = "f" * 32  # the highest revision id: CouchDB's winner, as if answered 201
        pos, parent = cur["_rev"].split("-", 1)
        cancelled = dict(cur, state="cancelled", cancel_requested=True, _rev=f"{int(pos) + 1}-{h}",
                         _revisions={"start": int(pos) + 1, "ids": [h, parent]})
        assert not db.bulk_docs([cancelled], new_edits=False).errors

    proxy = QuorumProxy(couch.url, users_cancel_on_the_other_copies,
                        match=lambda docs: any(d.get("state") == "todo" for d in docs))
    try:
        res = Stager(couch.server(proxy.url).database(db.name), Gfal()).run_once()
    finally:
        proxy.close()
    assert proxy.rewritten == 1
    assert res["todo"] == 1  # c2 only
    leaves = [d for d in db.leaves("c1", all_copies=True) if not d.get("_deleted")]
    assert [d["state"] for d in leaves] == ["cancelled"]
    assert [d["state"] for d in db.leaves("c2") if not d.get("_deleted")] == ["todo"]
