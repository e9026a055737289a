"""The token protocol's update handlers, called directly against the real server."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrt import errorcodes, states
from lrt.couch import CouchError
from lrt.protocol.client import TokenClient
from lrt.protocol.conflicts import choose_leaf, resolve_conflicts
from lrt.protocol.reaping import reap_expired
from lrt.protocol.window import Candidates

from pilot_helpers import ROOT, make_tokens, poll, token

UPDATES = ROOT / "lrt" / "views" / "lrt-claim" / "updates"


def client(db, name="p1", lease=60.0):
    return TokenClient(db, pilot=name, host="h", batch_job={"system": "local", "id": "1"},
                       lease_seconds=lease)


def test_claim_sets_lease_on_server_clock_and_is_exclusive(db):
    make_tokens(db, [token("a", ["true"], not_before=time.time() - 5)])
    c1, c2 = client(db, "p1"), client(db, "p2")
    got = c1.claim("a")
    assert got is not None
    doc = db.get("a")
    assert doc["state"] == "locked" and doc["attempts"] == 1
    assert doc["lease"]["claim"] == got.claim and doc["lease"]["pilot"] == "p1"
    assert doc["lease"]["expires"] == pytest.approx(doc["lease"]["claimed"] + 60.0)
    assert doc["batch_job"] == {"system": "local", "id": "1"}
    assert doc["not_before"] is None  # the backoff it waited for is over
    assert got.doc["_rev"] == doc["_rev"]
    assert "_revisions" not in doc
    assert c2.claim("a") is None
    assert c2.stats.lost == 1


def test_claim_sent_again_after_a_lost_answer_is_recognised(db):
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    p = c.prepare_claim(db.get("a"))
    first = c.commit(pending=p).claimed
    again = c.commit(pending=p).claimed  # e.g. the first answer was lost in transit
    assert first is not None and again is not None and again.claim == first.claim
    assert db.get("a")["attempts"] == 1


def test_finish_of_one_token_and_claim_of_the_next_is_one_request(db):
    make_tokens(db, [token("a", ["true"]), token("b", ["true"])])
    c = client(db)
    got = c.claim("a")
    nxt = c.prepare_claim(db.get("b"))
    sent = db.server.requests_sent
    res = c.commit(_finishing(got, {"outcome": "done", "exit_code": 0}), nxt)
    assert db.server.requests_sent - sent == 1
    assert res.ok and res.finish.body["state"] == "done" and res.claimed is not None
    a, b = db.get("a"), db.get("b")
    assert a["state"] == "done" and a["history"][-1]["claim"] == got.claim
    assert b["state"] == "locked" and b["lease"]["claim"] == res.claimed.claim
    assert res.claimed.doc["_rev"] == b["_rev"]


def _finishing(got, body):
    from lrt.protocol.client import Finishing
    return Finishing(got.doc, got.claim, body)


@pytest.mark.parametrize("fields,reason", [
    ({"not_before": time.time() + 3600}, "not_before"),
    ({"state": "done"}, "state"),
    ({"state": "waiting"}, "state"),
    ({"kind": "sandbox"}, "not_token"),
    ({"expected_duration": 7200}, "walltime"),
    ({"cancel_requested": True}, "cancel_requested"),
])
def test_claim_refusals_write_nothing(db, fields, reason):
    make_tokens(db, [token("a", ["true"], **fields)])
    rev = db.get("a")["_rev"]
    c = client(db)
    assert c.prepare_claim(db.get("a"), remaining=3600.0) == reason
    assert c.claim("a", remaining=3600.0) is None
    assert db.get("a")["_rev"] == rev


def test_claim_of_a_token_taken_meanwhile_is_lost(db):
    make_tokens(db, [token("a", ["true"])])
    stale = db.get("a")
    assert client(db, "p2").claim("a") is not None
    c = client(db, "p1")
    assert c.commit(pending=c.prepare_claim(stale)).claimed is None
    assert c.stats.lost == 1 and db.get("a")["lease"]["pilot"] == "p2"


def test_heartbeat_renews_and_fences(db):
    make_tokens(db, [token("a", ["true"])])
    c = client(db, lease=5)
    got = c.claim("a")
    before = db.get("a")["lease"]["expires"]
    time.sleep(0.01)
    ans = c.heartbeat("a", got.claim)
    assert ans.ok and ans.body["cancel_requested"] is False
    assert db.get("a")["lease"]["expires"] >= before
    other = c.heartbeat("a", "not-my-claim")
    assert not other.ok and other.reason == "fenced"
    assert not c.finish("a", "not-my-claim", {"outcome": "done"}).ok
    assert db.get("a")["state"] == "locked"


def test_finish_done_records_history_and_attachments(db):
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    got = c.claim("a")
    import base64
    body = {"outcome": "done", "exit_code": 0, "timings": {"wall": 1.5, "cpu": 0.1},
            "log_tail": {"stdout": "hi", "stderr": ""},
            "attachments": {"stdout.log": {"content_type": "text/plain",
                                           "data": base64.b64encode(b"hi\n").decode()}}}
    assert c.finish("a", got.claim, body).ok
    again = c.finish("a", got.claim, body)  # repeated after a lost answer: no second write
    assert again.ok and again.body.get("repeated")
    doc = db.get("a")
    assert doc["state"] == "done" and doc["lease"] is None and doc["exit_code"] == 0
    assert doc["timings"]["wall"] == 1.5 and "claimed" in doc["timings"]
    assert len(doc["history"]) == 1 and doc["history"][0]["state"] == "done"
    assert db.get_attachment("a", "stdout.log") == b"hi\n"


def _fail(c, doc_id, code="PAYLOAD_FAILED"):
    got = c.claim(doc_id)
    assert got is not None
    e = errorcodes.get(code)
    return c.finish(doc_id, got.claim, {"outcome": "error", "error": e.error("x"), "retryable": e.retry,
                                        "exit_code": 1})


def test_retry_backoff_then_quarantine(db):
    make_tokens(db, [token("a", ["true"], max_attempts=2, retry={"backoff": 100, "payload_errors": True})])
    c = client(db)
    ans = _fail(c, "a")
    doc = db.get("a")
    assert ans.body["state"] == "todo" and doc["state"] == "todo"
    assert doc["not_before"] == pytest.approx(ans.body["now"] + 100)  # backoff * 2**(1-1)
    assert doc["error"]["name"] == "PAYLOAD_FAILED"
    assert c.claim("a") is None  # not before its backoff
    doc["not_before"] = None  # (time travel: let it be claimed)
    db.put(doc)
    ans = _fail(c, "a")
    doc = db.get("a")
    assert doc["state"] == "failed" and doc["attempts"] == 2
    assert [h["state"] for h in doc["history"]] == ["todo", "failed"]


def test_payload_error_not_retried_by_default_system_error_is(db):
    make_tokens(db, [token("p", ["true"]), token("s", ["true"])])
    c = client(db)
    assert _fail(c, "p").body["state"] == "error"
    assert _fail(c, "s", "STAGE_IN_FAILED").body["state"] == "todo"


def test_release_is_not_counted(db):
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    got = c.claim("a")
    ans = c.release("a", got.claim, {"message": "SIGTERM", "log_tail": {"stdout": "partial", "stderr": ""}})
    assert ans.ok
    doc = db.get("a")
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["preemptions"] == 1
    assert doc["error"]["name"] == "PREEMPTED" and doc["log_tail"]["stdout"] == "partial"
    assert doc["history"][-1]["error"]["name"] == "PREEMPTED"
    assert c.claim("a") is not None  # claimable at once


def test_reap_only_after_expiry_plus_grace(db):
    make_tokens(db, [token("a", ["true"], max_attempts=1), token("b", ["true"])])
    c = client(db, lease=1.0)
    ga, gb = c.claim("a"), c.claim("b")
    assert not c.reap("a", 0).ok  # lease still running
    poll(lambda: c.reap("b", 0.5).ok, timeout=20, what="lease of b to expire")
    # a (max_attempts 1) goes to failed; (on a cluster the locked view may be read from a copy
    # that lags behind: until a is listed, or while b still is, reap again -- the handler decides)
    rep = poll(lambda: [r for r in reap_expired(c, 0.5) if r["id"] == "a"], timeout=30,
               what="a listed as expired")
    assert rep[0]["state"] == "failed"
    a, b = db.get("a"), db.get("b")
    assert b["state"] == "todo" and b["lease"] is None and b["history"][-1]["error"]["name"] == "PILOT_LOST"
    assert a["state"] == "failed" and a["error"]["name"] == "PILOT_LOST"
    # the old holder is fenced
    assert c.finish("b", gb.claim, {"outcome": "done"}).reason == "fenced"


def test_cancel_todo_and_running(db):
    make_tokens(db, [token("a", ["true"]), token("b", ["true"]), token("c", ["true"], state="done")])
    c = client(db)
    assert c.cancel("a").body["state"] == "cancelled"
    got = c.claim("b")
    ans = c.cancel("b")
    assert ans.ok and ans.body["cancel_requested"]
    assert c.heartbeat("b", got.claim).body["cancel_requested"] is True
    e = errorcodes.get("CANCELLED")
    assert c.finish("b", got.claim, {"outcome": "cancelled", "error": e.error("stopped")}).body["state"] == "cancelled"
    assert not c.cancel("c").ok
    assert db.get("a")["state"] == "cancelled" and db.get("b")["state"] == "cancelled"


def test_finish_meeting_concurrent_writes_is_redecided_not_dropped(db):
    """Writes to the token while the pilot holds it (an admin, a cancel): the finish
    meets 409s, re-reads, decides again on the fresh document and is recorded."""
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    got = c.claim("a")
    import threading

    stop = threading.Event()

    def scribble():
        from lrt.couch import Conflict
        n = 0
        while not stop.is_set():
            try:
                d = db.get("a")
                d["note"] = n
                db.put(d)
                n += 1
            except Conflict:
                pass

    t = threading.Thread(target=scribble)
    t.start()
    try:
        poll(lambda: "note" in db.get("a"), what="a concurrent write")
        # the pilot's copy (got.doc) is now stale: its first write must meet a 409
        ans = c.finish("a", got.claim, {"outcome": "done", "exit_code": 0}, doc=got.doc)
    finally:
        stop.set()
        t.join()
    assert ans.ok and c.stats.handler_409 >= 1
    doc = db.get("a")
    assert doc["state"] == "done" and "note" in doc  # decided on the fresh document


def test_candidates_skip_not_before_and_walltime(db):
    now = time.time()
    make_tokens(db, [token("later", ["true"], not_before=now + 3600),
                     token("long", ["true"], expected_duration=5000),
                     token("ok", ["true"], priority=5), token("ok2", ["true"])])
    cands = Candidates(db, "test", batch=10)
    got = []
    for _ in range(3):
        row = cands.pop(db.server.now(), remaining=1000.0)
        if row is None:
            break
        got.append(row["id"])
        assert row["doc"]["_id"] == row["id"]  # the window carries the documents
        db.put(dict(row["doc"], state="done"))  # (as if claimed and run)
        # (on a cluster a view read may come from a copy the write has not reached yet: a pilot's
        # claim from such a row is refused by its revision; this test waits instead)
        poll(lambda: row["id"] not in {r["id"] for r in db.view("lrt-window", "todo", reduce=False)["rows"]},
             timeout=30, what=f"{row['id']} gone from the queue")
    assert got == ["ok", "ok2"]  # priority first; "later" and "long" skipped
    assert cands.next_ready == pytest.approx(now + 3600)


def test_candidates_spread_pilots_over_the_queue(db):
    """Windows start at random shards: pilots reading the same queue get different rows."""
    make_tokens(db, [token(f"t{i:03d}", ["true"]) for i in range(200)])
    firsts = set()
    for _ in range(8):
        cands = Candidates(db, "test", batch=5)
        row = cands.pop(db.server.now(), None)
        firsts.add(row["id"])
        assert len(cands.rows) <= 4  # a small window, not the whole queue (shorter at the end)
    assert len(firsts) >= 6  # more than one window's worth: not all from the queue's head


def test_the_window_view_is_the_claim_queue_with_documents(db):
    """lrt-window/todo has lrt-claim/todo's rows, in its order, each with the document as indexed."""
    now = time.time()
    make_tokens(db, [token(f"w{i:02d}", ["true"], priority=i % 3) for i in range(30)]
                + [token("later", ["true"], priority=9, not_before=now + 60), token("gone", ["true"], state="done")])
    # (on a cluster a view read may come from a copy the writes have not reached yet)
    poll(lambda: len(db.view("lrt-claim", "todo", reduce=False)["rows"]) == 31
         and len(db.view("lrt-window", "todo", reduce=False)["rows"]) == 31, timeout=30,
         what="the 31 claimable tokens in both views")
    queue = db.view("lrt-claim", "todo", reduce=False)["rows"]
    window = db.view("lrt-window", "todo", reduce=False)["rows"]
    assert [r["key"] for r in window] == [r["key"] for r in queue] and len(queue) == 31
    for r in window:
        assert r["value"] == db.get(r["id"])  # _id, _rev and all: a claim from it is a conditional write
    rows = Candidates(db, "test", batch=100)
    rows.refresh()
    assert {r["id"]: r["value"] for r in rows.rows}["later"] == {"nb": pytest.approx(now + 60), "dur": 0}


def _is_couchdb(db):
    """Apache CouchDB (which has the multi-query endpoint), not the embedded stand-in."""
    return ((db.server.json("GET", "/").get("vendor") or {}).get("name") or "").startswith("The Apache")


def test_view_queries_several_in_one_request_or_a_clear_error(db):
    """CouchDB answers several queries of a view in one request; pouchdb-server refuses (400)."""
    make_tokens(db, [token(f"q{i}", ["true"]) for i in range(5)])
    poll(lambda: len(db.view("lrt-window", "todo", reduce=False)["rows"]) == 5, timeout=30,
         what="the 5 tokens in the window view")
    queries = [{"limit": 1, "reduce": False}, {"startkey": ["test", 0, 0], "endkey": ["test", 0, {}],
                                               "reduce": False}]
    if not _is_couchdb(db):
        with pytest.raises(CouchError) as exc:
            db.view_queries("lrt-window", "todo", queries)
        assert exc.value.status in Candidates._NO_MULTI
        return
    sent = db.server.requests_sent
    first, every = db.view_queries("lrt-window", "todo", queries)
    assert db.server.requests_sent == sent + 1
    assert len(first["rows"]) == 1 and sorted(r["id"] for r in every["rows"]) == [f"q{i}" for i in range(5)]
    assert first["rows"][0]["key"] == every["rows"][0]["key"]


def test_a_refresh_is_one_request_where_the_server_takes_several_queries(db):
    """The head query and the guessed group's window go in one request on CouchDB; a wrong
    guess (a higher priority group) costs a second; pouchdb-server gets the queries one by one
    and the rows are the same."""
    make_tokens(db, [token(f"r{i:02d}", ["true"]) for i in range(20)])
    poll(lambda: len(db.view("lrt-window", "todo", reduce=False)["rows"]) == 20, timeout=30,
         what="the 20 tokens in the window view")
    cands = Candidates(db, "test", batch=100)
    sent = db.server.requests_sent
    cands.refresh()
    ids = {r["id"] for r in cands.rows}
    assert ids and ids <= {f"r{i:02d}" for i in range(20)}
    assert all(r["doc"]["_id"] == r["id"] and r["doc"]["state"] == "todo" for r in cands.rows)
    used = db.server.requests_sent - sent
    if _is_couchdb(db):
        assert cands._multi and used <= 2  # 2 only if the random shard was past every row (wrap)
    else:
        assert not cands._multi and used in (3, 4)  # the refused try, head, window (+ wrap)
    make_tokens(db, [token("urgent", ["true"], priority=7)])
    poll(lambda: db.view("lrt-window", "todo", reduce=False, limit=1)["rows"][0]["id"] == "urgent",
         timeout=30, what="the urgent token at the head of the queue")
    fresh = Candidates(db, "test", batch=100)
    fresh.refresh()
    assert [r["id"] for r in fresh.rows] == ["urgent"]  # the group the head query found, not the guess


def test_candidates_without_the_window_design_document(db):
    """A database set up by an older lrt (no lrt-window): the window is read with include_docs."""
    make_tokens(db, [token("a", ["true"]), token("b", ["true"], priority=2)])
    ddoc = db.get("_design/lrt-window")
    db.delete_doc("_design/lrt-window", ddoc["_rev"])
    cands = Candidates(db, "test", batch=10)
    row = cands.pop(db.server.now(), None)
    assert row["id"] == "b" and row["doc"]["_rev"] == db.get("b")["_rev"]
    assert cands._window is False


def test_candidates_read_the_next_priority_when_the_first_is_backing_off(db):
    now = time.time()
    make_tokens(db, [token("hi", ["true"], priority=9, not_before=now + 3600), token("lo", ["true"])])
    row = Candidates(db, "test", batch=5).pop(db.server.now(), None)
    assert row["id"] == "lo"


def test_conflicted_tokens_are_resolved_deterministically(db):
    # a done leaf and a todo leaf that is CouchDB's winner (higher rev hash)
    base = token("c1", ["true"])
    done = dict(base, _rev="2-aaaa", state="done", exit_code=0)
    todo = dict(base, _rev="2-ffff")
    db.bulk_docs([done], new_edits=False)
    db.bulk_docs([todo], new_edits=False)
    # two todo leaves
    t2 = token("c2", ["true"])
    db.bulk_docs([dict(t2, _rev="2-bbbb")], new_edits=False)
    db.bulk_docs([dict(t2, _rev="2-cccc")], new_edits=False)
    assert db.get("c1", conflicts=True)["_conflicts"]
    # the claim queue leaves conflicted documents out
    for ddoc in ("lrt-claim", "lrt-window"):
        ids = [r["id"] for r in db.view(ddoc, "todo")["rows"]]
        assert "c1" not in ids and "c2" not in ids
    reps = {r["id"]: r for r in resolve_conflicts(db)}
    assert reps["c1"]["kept"] == "2-aaaa" and reps["c1"]["state"] == "done"
    assert reps["c2"]["kept"] == "2-cccc"
    c1 = db.get("c1", conflicts=True)
    assert c1["state"] == "done" and "_conflicts" not in c1
    assert "_conflicts" not in db.get("c2", conflicts=True)
    for ddoc in ("lrt-claim", "lrt-window"):
        # (on a cluster the view may be read from a copy the resolution has not reached yet)
        ids = poll(lambda: (lambda ids: ids if "c2" in ids else None)(
            [r["id"] for r in db.view(ddoc, "todo")["rows"]]), timeout=30, what=f"c2 back in {ddoc}/todo")
        assert "c1" not in ids


def test_choose_leaf_rules():
    lock = lambda rev, t, claim: {"_rev": rev, "state": "locked", "lease": {"claimed": t, "claim": claim}}
    assert choose_leaf([lock("3-a", 5, "z"), lock("3-b", 4, "y")])["_rev"] == "3-b"
    assert choose_leaf([lock("3-a", 4, "b"), lock("3-b", 4, "a")])["_rev"] == "3-b"
    assert choose_leaf([lock("3-a", 4, "b"), {"_rev": "2-x", "state": "error"},
                        {"_rev": "2-y", "state": "done"}])["_rev"] == "2-y"
    assert choose_leaf([{"_rev": "2-a", "state": "todo"}, {"_rev": "2-b", "state": "todo"}],
                       "2-a")["_rev"] == "2-a"


def test_handlers_agree_with_python_constants():
    from lrt import design

    updates = design.build("lrt-claim")["updates"]
    assert set(updates) == {"heartbeat", "release", "reap", "cancel", "requeue"}
    for name in ("release", "reap"):
        m = re.search(r"HISTORY_LIMIT = (\d+);", updates[name])
        assert m and int(m.group(1)) == states.HISTORY_LIMIT, name
        assert "__LRT" not in updates[name]
    # error codes and defaults come from lrt/states.py's edge specs, never from literals in the JS
    raw = "".join(p.read_text() for p in list(UPDATES.glob("*.js")) + list(UPDATES.parent.glob("lib/*.js")))
    assert not re.search(r"code: \d+, name", raw) and "max_attempts === null) ? 3" not in raw and "|| 600" not in raw
    edges = json.loads(states.edges_json())
    for name, code in (("reap", "PILOT_LOST"), ("release", "PREEMPTED"), ("cancel", "CANCELLED")):
        e = errorcodes.get(code)
        assert edges[name]["error"] == {"code": e.code, "name": e.name, "class": e.cls}
        assert f"failure('{name}', " in updates[name] and states.edges_json() in updates[name], name
    assert edges["reap"]["defaults"]["max_attempts"] == states.DEFAULT_MAX_ATTEMPTS


def test_error_code_doc_lists_every_code():
    text = (ROOT / "docs" / "error-codes.md").read_text()
    for c in errorcodes.all_codes():
        assert re.search(rf"^\| {c.code} \| `{c.name}` \| {c.cls} \| {'yes' if c.retry else 'no'} \|",
                         text, re.M), c.name


def test_pilot_path_imports_stay_lean():
    code = ("import sys; import lrt.pilot.pilot, lrt.protocol.client, lrt.pilot.run, lrt.cli.pilot; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tqdm', 'rich', 'click', 'numpy', 'pandas', 'gfal2') or m == 'lrt.tokens'); "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_history_entries_have_one_shape_whoever_writes_them(db):
    """The pilot writes finish entries (Python), the handlers release/reap entries (JS)."""
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    got = c.claim("a")
    assert c.release("a", got.claim, {"message": "SIGTERM"}).ok  # JS handler
    got = c.claim("a")
    assert c.finish("a", got.claim, {"outcome": "done", "exit_code": 0}).ok  # Python
    released, finished = db.get("a")["history"]
    assert (released["end"], finished["end"]) == ("release", "finish")
    assert set(released) == set(finished)
    assert finished["claim"] == got.claim and finished["attempt"] == 1 and finished["pilot"] == "p1"
