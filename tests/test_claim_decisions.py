"""The pilot's two pure decisions, lock_doc (todo -> locked) and finish_doc
(locked -> done/error/failed/todo/cancelled), on documents made by the code's
own schema (lrt.tokens.new_token via a real config); the writes they lead to
are exercised against the real server in test_pilot_protocol.py."""
from __future__ import annotations

import copy

import pytest

from lrt.config import TokenConfig
from lrt.protocol.decisions import finish_doc, lock_doc
from lrt.tokens import new_token

NOW = 1_800_000_000.0


@pytest.fixture
def todo(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("type: unit\ntokenset: decisions\ncommand: [\"true\"]\nmax_attempts: 2\n"
                        "retry: {backoff: 10}\nsweep: {n: [1]}\n")
    cfg = TokenConfig.load(cfg_file)
    item = next(iter(cfg.items()))
    doc = dict(new_token(cfg, item, NOW - 100))
    doc["_rev"] = "1-abc"
    return doc


def locked(doc, claim="c1", now=NOW):
    d = copy.deepcopy(doc)
    assert lock_doc(d, claim=claim, now=now, lease_seconds=60, pilot="p1") is None
    return d


def test_lock_doc_claims_a_todo_token_and_refuses_the_rest(todo):
    d = locked(todo)
    assert d["state"] == "locked" and d["attempts"] == 1
    assert d["lease"]["claim"] == "c1" and d["lease"]["expires"] == NOW + 60
    for field, value, why in (("state", "done", "state"), ("cancel_requested", True, "cancel_requested"),
                              ("not_before", NOW + 5, "not_before"), ("_conflicts", ["2-x"], "conflicted")):
        other = copy.deepcopy(todo)
        other[field] = value
        before = copy.deepcopy(other)
        assert lock_doc(other, claim="c2", now=NOW, lease_seconds=60) == why
        assert other == before  # a refusal changes nothing
    assert lock_doc(copy.deepcopy(todo), claim="c", now=NOW, lease_seconds=60, token_type="other") == "type"


def test_finish_doc_done_is_recorded_once(todo):
    d = locked(todo)
    what, ans = finish_doc(d, "c1", {"outcome": "done", "exit_code": 0}, NOW + 5)
    assert (what, ans["state"], d["state"], d["lease"]) == ("write", "done", "done", None)
    assert d["history"][-1]["claim"] == "c1" and d["history"][-1]["state"] == "done"
    again, _ = finish_doc(d, "c1", {"outcome": "done", "exit_code": 0}, NOW + 6)
    assert again == "repeated"


def test_finish_doc_refuses_another_claims_finish(todo):
    d = locked(todo, claim="mine")
    before = copy.deepcopy(d)
    what, ans = finish_doc(d, "someone-else", {"outcome": "done", "exit_code": 0}, NOW + 5)
    assert what == "refused" and ans["reason"] == "fenced" and d == before


def test_finish_doc_retries_with_backoff_then_quarantines(todo):
    err = {"code": 30, "name": "STAGE_IN_FAILED", "class": "staging", "message": "x"}
    d = locked(todo)
    what, ans = finish_doc(d, "c1", {"outcome": "error", "error": err, "retryable": True}, NOW + 5)
    assert what == "write" and d["state"] == "todo"
    assert d["not_before"] == NOW + 5 + 10  # backoff * 2^(attempts-1), attempt 1
    d = locked(d, claim="c2", now=NOW + 20)
    finish_doc(d, "c2", {"outcome": "error", "error": err, "retryable": True}, NOW + 25)
    assert d["state"] == "failed" and d["attempts"] == 2  # max_attempts used up


def test_finish_doc_keeps_timings_in_order(todo):
    """A start estimated with a clock estimate refined after the claim stamp is never
    recorded before the claim (issue: started tens of ms before claimed)."""
    d = locked(todo, now=NOW)
    finish_doc(d, "c1", {"outcome": "done", "exit_code": 0,
                         "timings": {"started": NOW - 0.04, "finished": NOW - 0.01, "wall": 0.03}}, NOW + 1)
    t = d["timings"]
    assert t["claimed"] == NOW <= t["started"] <= t["finished"]
    assert t["wall"] == 0.03
