"""The edge specs of lrt/states.py: consistent with the transition table and the error
codes, and applied as written by the Python decisions and the JavaScript handlers (the
handlers against the real server)."""
from __future__ import annotations

import json

import pytest

from lrt import design, errorcodes, states
from lrt.protocol.client import TokenClient
from lrt.protocol.decisions import FinishKind, Refusal, finish_doc, lock_doc

from pilot_helpers import make_tokens, poll, token

NOW = 1_800_000_000.0


def test_every_edge_is_allowed_by_the_transition_table():
    for e in states.EDGES.values():
        assert e.src and e.dst, e.name
        for s in e.src:
            for d in e.dst:
                assert states.allowed(s, d), (e.name, s, d)
        if e.error:
            assert errorcodes.get(e.error).name == e.error


def test_edges_reach_the_handlers_as_json():
    edges = json.loads(states.edges_json())
    assert set(edges) == set(states.EDGES)
    assert edges["reap"]["error"]["code"] == errorcodes.get("PILOT_LOST").code == 41
    assert edges["release"]["error"]["code"] == errorcodes.get("PREEMPTED").code == 42
    assert edges["reap"]["defaults"] == {"max_attempts": states.DEFAULT_MAX_ATTEMPTS}
    prelude_users = design.build("lrt-claim")["updates"]
    assert all(states.edges_json() in src for src in prelude_users.values())


def test_apply_fields_and_default():
    doc = {"lease": {"claim": "x"}, "pilot": "p", "_revisions": {}, "release_requested": {"by": "u"},
           "exit_code": 3, "max_attempts": None, "cancel_requested": True}
    states.REAP.apply_fields(doc)
    assert all(doc[k] is None for k in states.REAP.clears)
    assert not any(k in doc for k in states.REAP.removes)
    assert doc["cancel_requested"] is False
    assert states.REAP.default(doc, "max_attempts") == states.DEFAULT_MAX_ATTEMPTS
    assert states.REAP.default({"max_attempts": 0}, "max_attempts") == 0


def _held(**extra):
    doc = {"_id": "t", "_rev": "1-a", "kind": "token", "state": "todo", "attempts": 0,
           "exit_code": 1, "error": {"code": 60}, "log_tail": {"stdout": "old"}, "not_before": NOW - 1,
           "release_requested": {"by": "u"}, "_revisions": {"start": 1, "ids": ["a"]}}
    doc.update(extra)
    return doc


def test_claim_clears_what_its_edge_says():
    doc = _held()
    assert lock_doc(doc, claim="c", now=NOW, lease_seconds=60, pilot="p", host="h") is None
    assert all(doc[k] is None for k in states.CLAIM.clears)
    assert not any(k in doc for k in states.CLAIM.removes)
    assert doc["cancel_requested"] is False
    refused = _held(state="done")
    assert lock_doc(refused, claim="c", now=NOW, lease_seconds=60) is Refusal.STATE
    assert Refusal.STATE.lost and not Refusal.NOT_BEFORE.lost and refused["exit_code"] == 1


@pytest.mark.parametrize("outcome,edge,dst", [("done", states.FINISH, "done"),
                                              ("error", states.RETRY, "todo")])
def test_finish_clears_what_its_edge_says(outcome, edge, dst):
    doc = _held(max_attempts=None, retry={})
    assert lock_doc(doc, claim="c", now=NOW, lease_seconds=60, pilot="p", host="h") is None
    doc["release_requested"] = {"by": "u"}
    kind, ans = finish_doc(doc, "c", {"outcome": outcome, "retryable": True,
                                      "error": {"code": 44, "class": "system"}}, NOW + 5)
    assert kind is FinishKind.WRITE and ans["state"] == dst == doc["state"]
    assert all(doc[k] is None for k in edge.clears)
    assert not any(k in doc for k in edge.removes)
    assert doc["history"][-1]["late_request"] == "release"  # read before the edge removed it
    if edge is states.RETRY:
        assert doc["not_before"] == NOW + 5 + states.DEFAULT_BACKOFF
    else:
        assert doc["pilot"] == "p"  # who ran a finished token stays on it
    assert finish_doc(doc, "c", {"outcome": outcome}, NOW + 6)[0] is FinishKind.REPEATED
    assert finish_doc(doc, "other", {"outcome": outcome}, NOW + 6)[0] is FinishKind.REFUSED


def test_handlers_apply_their_edges(db):
    make_tokens(db, [token("r", ["true"]), token("x", ["true"])])
    c = TokenClient(db, pilot="p1", host="h", lease_seconds=1.0)
    got = c.claim("x")
    assert c.requeue("x").ok  # release_requested is set: the release removes it
    assert c.release("x", got.claim, {"message": "stop"}).ok
    x = db.get("x")
    assert all(x.get(k) is None for k in states.RELEASE.clears)
    assert not any(k in x for k in states.RELEASE.removes)
    assert x["error"]["code"] == errorcodes.get(states.RELEASE.error).code
    c.claim("r")
    poll(lambda: c.reap("r", 0.0).ok, timeout=20, what="lease of r to expire")
    r = db.get("r")
    assert r["state"] == "todo" and all(r.get(k) is None for k in states.REAP.clears)
    assert r["error"]["code"] == errorcodes.get(states.REAP.error).code and r["cancel_requested"] is False
