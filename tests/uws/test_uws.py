"""The UWS 1.1 interface of `lrt serve`, driven over real HTTP (plain requests for creation and
filters, pyvo's job class for the lifecycle) with real pilots running the jobs; every XML
answer is validated against the IVOA UWS 1.1 schema (tests/data/uws/UWS.xsd)."""
from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
import requests
from lxml import etree

from pilot_helpers import poll, start_pilot, stop

from .conftest import Checked, session

NS = {"uws": "http://www.ivoa.net/xml/UWS/v1.0", "xlink": "http://www.w3.org/1999/xlink"}


def xml(resp):
    assert resp.headers["content-type"].startswith("application/xml"), resp.text
    return etree.fromstring(resp.content)


def phase(s, url):
    return xml(s.get(url)).findtext("uws:phase", namespaces=NS)


def create(s, base, task, expect=303, **params):
    r = s.post(f"{base}/uws/{task}", data=params, allow_redirects=False)
    assert r.status_code == expect, r.text
    return r


def job_ids(s, url, **params):
    r = s.get(url, params=params)
    assert r.status_code == 200, r.text
    return [j.get("id") for j in xml(r).findall("uws:jobref", NS)]


def pilot(serve, *args):
    return start_pilot(serve.env, "--idle-exit", "60", "--poll", "0.2", "--cancel-check", "1", *args)


def test_authentication_and_owners(serve, users, uws_db):
    base = serve.url
    r = requests.get(f"{base}/uws/sleeper")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    r = requests.get(f"{base}/uws/sleeper", auth=(users["bob"][0], "wrong password"))
    assert r.status_code == 401 and "wrong password" not in r.text
    alice, bob, admin = session(users["alice"]), session(users["bob"]), session(users["admin"])
    # one login for the whole app: the dashboard behind the same CouchDB credentials
    assert requests.get(f"{base}/").status_code == 401
    r = alice.get(f"{base}/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert users["alice"][1] not in r.text
    loc = create(alice, base, "sleeper", seconds="1").headers["location"]
    jid = loc.rsplit("/", 1)[-1]
    assert loc == f"{base}/uws/sleeper/{jid}"
    assert uws_db.get(jid)["owner"] == users["alice"][0]
    assert job_ids(alice, f"{base}/uws/sleeper") == [jid]
    assert job_ids(bob, f"{base}/uws/sleeper") == []
    assert job_ids(admin, f"{base}/uws/sleeper") == [jid]
    for path in ("", "/phase", "/parameters", "/owner", "/results"):
        assert bob.get(loc + path).status_code == 403
    assert bob.post(loc + "/phase", data={"PHASE": "RUN"}, allow_redirects=False).status_code == 403
    assert bob.delete(loc, allow_redirects=False).status_code == 403
    assert uws_db.get(jid)["state"] == "pending"
    assert alice.get(loc + "/owner").text == users["alice"][0]
    assert admin.get(loc).status_code == 200
    assert alice.get(f"{base}/uws/sleeper/nosuchjob").status_code == 404
    assert alice.get(f"{base}/uws/nosuchtask").status_code == 404


def test_creation_is_validated_and_filters_work(serve, users, uws_db):
    base, alice = serve.url, session(users["alice"])
    url = f"{base}/uws/sleeper"
    r = create(alice, base, "sleeper", expect=400, seconds="lots")
    assert "'seconds'" in r.text and "not a number" in r.text
    r = create(alice, base, "sleeper", expect=400, seconds="99999")
    assert "above the maximum 3600" in r.text
    r = create(alice, base, "sleeper", expect=400, colour="red")
    assert "no parameter 'colour'" in r.text
    r = create(alice, base, "sleeper", expect=400, PHASE="ABORT")
    assert job_ids(alice, url) == []  # nothing written by a refused POST
    r = alice.post(url, files={"SECONDS": (None, "2")}, allow_redirects=False)  # multipart
    assert r.status_code == 303
    assert alice.delete(r.headers["location"], allow_redirects=False).status_code == 303
    assert job_ids(alice, url) == []

    first = create(alice, base, "sleeper", seconds="1").headers["location"].rsplit("/", 1)[-1]
    time.sleep(0.05)  # distinct creation times (AFTER compares them)
    second = create(alice, base, "sleeper", PHASE="RUN", RUNID="r2", exit_code="4").headers["location"]
    second = second.rsplit("/", 1)[-1]
    doc = xml(alice.get(f"{url}/{second}"))
    assert doc.findtext("uws:phase", namespaces=NS) == "QUEUED"  # no pilot runs here
    assert doc.findtext("uws:runId", namespaces=NS) == "r2"
    params = {p.get("id"): p.text for p in doc.findall("uws:parameters/uws:parameter", NS)}
    assert params == {"seconds": "0.5", "exit_code": "4"}
    assert phase(alice, f"{url}/{first}") == "PENDING"

    assert sorted(job_ids(alice, url)) == sorted([first, second])
    assert job_ids(alice, url, PHASE="PENDING") == [first]
    assert sorted(job_ids(alice, url, PHASE=["PENDING", "QUEUED"])) == sorted([first, second])
    assert job_ids(alice, url, PHASE="EXECUTING") == []
    assert job_ids(alice, url, LAST=1) == [second]
    created = xml(alice.get(f"{url}/{first}")).findtext("uws:creationTime", namespaces=NS)
    assert job_ids(alice, url, AFTER=created) == [second]
    assert alice.get(url, params={"PHASE": "NOPE"}).status_code == 400
    assert alice.get(url, params={"LAST": "0"}).status_code == 400

    # abort the pending one, then destroy it in the past: ARCHIVED, left out unless asked for
    r = alice.post(f"{url}/{first}/phase", data={"PHASE": "ABORT"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"{url}/{first}"
    assert phase(alice, f"{url}/{first}") == "ABORTED"
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    r = alice.post(f"{url}/{first}/destruction", data={"DESTRUCTION": past}, allow_redirects=False)
    assert r.status_code == 303
    assert phase(alice, f"{url}/{first}") == "ARCHIVED"
    assert job_ids(alice, url) == [second]
    assert job_ids(alice, url, PHASE="ARCHIVED") == [first]

    # ACTION=DELETE on the job answers 303 to the list; the token is gone
    r = alice.post(f"{url}/{second}", data={"ACTION": "DELETE"}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == url
    assert alice.get(f"{url}/{second}").status_code == 404
    assert uws_db.get_or_none(second) is None


def test_parameters_change_while_pending(serve, users, uws_db):
    base, alice = serve.url, session(users["alice"])
    job = create(alice, base, "sleeper", seconds="1").headers["location"]
    r = alice.post(job + "/parameters", data={"SECONDS": "2.5"}, allow_redirects=False)
    assert r.status_code == 303
    params = {p.get("id"): p.text for p in xml(alice.get(job + "/parameters")).findall("uws:parameter", NS)}
    assert params["seconds"] == "2.5"
    assert uws_db.get(job.rsplit("/", 1)[-1])["payload"]["seconds"] == 2.5
    r = alice.post(job + "/parameters", data={"seconds": "-1"}, allow_redirects=False)
    assert r.status_code == 400 and "below the minimum" in r.text
    alice.post(job + "/phase", data={"PHASE": "RUN"})
    r = alice.post(job + "/parameters", data={"seconds": "3"}, allow_redirects=False)
    assert r.status_code == 400 and "PENDING" in r.text


def test_pyvo_lifecycle_with_a_real_pilot(serve, users, uws_db, tmp_path):
    from pyvo.dal.tap import AsyncTAPJob

    base, alice = serve.url, session(users["alice"])
    loc = create(alice, base, "sleeper", seconds="0.5").headers["location"]
    jid = loc.rsplit("/", 1)[-1]
    job = AsyncTAPJob(loc, session=alice)
    assert job.phase == "PENDING" and job.job_id == jid and job.owner == users["alice"][0]
    job.execution_duration = 120
    assert job.execution_duration.sec == 120 and uws_db.get(jid)["timeout"] == 120
    assert alice.get(loc + "/executionduration").text == "120"
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=2)
    job.destruction = when
    assert abs((job.destruction.datetime.replace(tzinfo=dt.timezone.utc) - when).total_seconds()) < 1
    assert abs(uws_db.get(jid)["destruction"] - when.timestamp()) < 1
    assert alice.get(loc + "/quote").status_code == 200
    job.run()
    assert job.phase == "QUEUED"
    p = pilot(serve, "--type", "sleeper")
    try:
        job.wait(timeout=90)
    finally:
        stop(p)
    assert job.phase == "COMPLETED"
    job.raise_if_error()
    results = xml(alice.get(loc + "/results")).findall("uws:result", NS)
    assert [r.get("id") for r in results] == ["done.txt"]
    href = results[0].get(f"{{{NS['xlink']}}}href")
    assert job.result_uris == [href]
    path = Path(href[len("file://"):])
    assert path.read_text().strip() == jid and str(path).startswith(str(tmp_path))
    summary = xml(alice.get(loc))
    assert summary.findtext("uws:startTime", namespaces=NS) and summary.findtext("uws:endTime", namespaces=NS)
    # a finished job: WAIT does not block
    t0 = time.monotonic()
    assert phase(alice, loc + "?WAIT=20") == "COMPLETED"
    assert time.monotonic() - t0 < 15
    job.delete()
    assert alice.get(loc).status_code == 404


def test_abort_a_running_job_with_pyvo(serve, users, uws_db):
    from pyvo.dal.tap import AsyncTAPJob

    base, alice = serve.url, session(users["alice"])
    loc = create(alice, base, "sleeper", seconds="300", PHASE="RUN").headers["location"]
    job = AsyncTAPJob(loc, session=alice)
    p = pilot(serve, "--type", "sleeper")
    try:
        job.wait(phases={"EXECUTING"}, timeout=60)
        assert job.phase == "EXECUTING"
        job.abort()
        # the pilot sees the cancel request within --cancel-check; (pyvo's wait() refuses to
        # wait for ABORTED, so the blocking WAIT is asked for directly)
        poll(lambda: phase(alice, loc + "?WAIT=10") == "ABORTED", timeout=60, what="ABORTED")
        assert job.phase == "ABORTED"
    finally:
        stop(p)
    doc = uws_db.get(loc.rsplit("/", 1)[-1])
    assert doc["state"] == "cancelled"
    job.delete()
    assert uws_db.get_or_none(doc["_id"]) is None


def test_failed_job_reports_its_error(serve, users):
    from pyvo.dal import DALQueryError
    from pyvo.dal.tap import AsyncTAPJob

    base, alice = serve.url, session(users["alice"])
    loc = create(alice, base, "sleeper", seconds="0", exit_code="3", PHASE="RUN").headers["location"]
    p = pilot(serve, "--type", "sleeper")
    try:
        job = AsyncTAPJob(loc, session=alice)
        job.wait(timeout=90)
    finally:
        stop(p)
    assert job.phase == "ERROR"
    with pytest.raises(DALQueryError):
        job.raise_if_error()
    es = xml(alice.get(loc)).find("uws:errorSummary", NS)
    assert es.get("type") == "fatal" and "PAYLOAD_FAILED" in es.findtext("uws:message", namespaces=NS)
    err = alice.get(loc + "/error")
    assert err.status_code == 200 and "exit" in err.text.lower()


def test_wait_blocks_on_the_change_feed_until_the_phase_changes(serve, users):
    base, alice = serve.url, session(users["alice"])
    loc = create(alice, base, "sleeper").headers["location"]
    # nothing changes: WAIT returns after about WAIT seconds, still PENDING
    t0 = time.monotonic()
    assert phase(alice, loc + "?WAIT=2") == "PENDING"
    assert time.monotonic() - t0 >= 1.5
    # a change wakes the waiter: the phase it sees is the new one
    seen = {}

    def waiter():
        s = session(users["alice"])
        t = time.monotonic()
        seen["phase"] = phase(s, loc + "?WAIT=25")
        seen["took"] = time.monotonic() - t

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(1.0)  # let the waiter's feed request reach the server
    alice.post(loc + "/phase", data={"PHASE": "RUN"})
    th.join(40)
    assert seen["phase"] == "QUEUED" and seen["took"] < 20
    # PHASE= with WAIT: no blocking when the job is not in that phase
    t0 = time.monotonic()
    assert phase(alice, loc + "?WAIT=20&PHASE=PENDING") == "QUEUED"
    assert time.monotonic() - t0 < 10
    assert Checked.checked > 0


def test_delete_a_running_job_stops_it_first(serve, users, uws_db):
    base, alice = serve.url, session(users["alice"])
    loc = create(alice, base, "sleeper", seconds="300", PHASE="RUN").headers["location"]
    jid = loc.rsplit("/", 1)[-1]
    p = pilot(serve, "--type", "sleeper")
    try:
        poll(lambda: phase(alice, loc + "?WAIT=10") == "EXECUTING", timeout=60, what="EXECUTING")
        r = alice.delete(loc, allow_redirects=False, timeout=60)
        assert r.status_code == 303 and r.headers["location"] == f"{base}/uws/sleeper"
        assert uws_db.get_or_none(jid) is None  # aborted, let go by the pilot, then removed
        assert alice.get(loc).status_code == 404
    finally:
        stop(p)


def test_quote_from_expected_duration_and_queue(serve, users):
    base, alice = serve.url, session(users["alice"])
    a = create(alice, base, "sleeper", PHASE="RUN").headers["location"]
    b = create(alice, base, "sleeper", PHASE="RUN").headers["location"]
    t0 = time.time()
    q = alice.get(b + "/quote").text
    when = dt.datetime.strptime(q, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()
    # sleeper expects 1 s per job; two queued jobs of the task: about 3 s from now
    assert t0 + 1.5 <= when <= time.time() + 3.5
    job = xml(alice.get(a))
    assert job.findtext("uws:quote", namespaces=NS)
