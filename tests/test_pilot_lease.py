"""Lease stamping, requests to a running token and the conditional read, against the real server."""
from __future__ import annotations

import subprocess
import time

from lrt import errorcodes
from lrt.protocol.client import Finishing, TokenClient

from pilot_helpers import ROOT, make_tokens, pilot_cmd, token


def client(db, name="p1", lease=60.0):
    return TokenClient(db, pilot=name, host="h", lease_seconds=lease)


def test_a_claim_is_stamped_when_it_is_sent_not_when_it_was_prepared(db):
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    p = c.prepare_claim(db.get("a"))
    time.sleep(1.0)  # e.g. the server was unreachable meanwhile
    before = c.now()
    mono0 = time.monotonic()
    got = c.commit(pending=p).claimed
    mono1 = time.monotonic()
    lease = db.get("a")["lease"]
    assert lease["claimed"] >= before - 0.05 and lease["expires"] == lease["claimed"] + 60.0
    assert lease["claim"] == p.claim and db.get("a")["timings"]["claimed"] == lease["claimed"]
    # the pilot's lease clock starts at the send, not at the reply
    assert mono0 <= got.renewed_mono <= mono1


def test_a_resent_claim_whose_first_send_won_keeps_the_first_stamps_clock(db):
    make_tokens(db, [token("a", ["true"])])
    c = client(db)
    p = c.prepare_claim(db.get("a"))
    rev0 = p.doc["_rev"]
    first = c.commit(pending=p).claimed
    p.won, p.doc["_rev"] = None, rev0  # the answer was lost: the same claim is sent again
    time.sleep(0.5)
    again = c.commit(pending=p).claimed
    assert again is not None and again.claim == first.claim
    landed = db.get("a")["lease"]["claimed"]
    assert landed == again.doc["lease"]["claimed"]
    assert again.renewed_mono == p.stamps[landed] == min(p.stamps.values())  # the landed send's time
    assert db.get("a")["attempts"] == 1


def test_conditional_read_answers_only_changes(db):
    make_tokens(db, [token("a", ["true"])])
    rev = db.get("a")["_rev"]
    assert db.get_if_changed("a", rev) is None
    c = client(db)
    got = c.claim("a")
    cur = db.get_if_changed("a", rev)
    assert cur is not None and cur["_rev"] == got.doc["_rev"] and cur["state"] == "locked"
    assert db.get_if_changed("a", cur["_rev"]) is None
    db.delete_doc("a", cur["_rev"])
    assert db.get_if_changed("a", cur["_rev"]) == {"_id": "a", "_deleted": True}


def test_release_request_is_told_by_the_heartbeat_and_cleared_by_release(db):
    make_tokens(db, [token("a", ["true"]), token("b", ["true"])])
    c = client(db)
    got = c.claim("a")
    assert not c.requeue("b").ok and c.requeue("b").reason == "state"  # not running
    ans = c.requeue("a", by="tester")
    assert ans.ok and ans.body["release_requested"] is True
    assert c.requeue("a").reason == "already_requested"
    doc = db.get("a")
    assert doc["release_requested"]["by"] == "tester"
    hb = c.heartbeat("a", got.claim)
    assert hb.ok and hb.body["release_requested"] is True and hb.body["cancel_requested"] is False
    assert c.release("a", got.claim, {"message": "release requested by tester"}).ok
    doc = db.get("a")
    assert doc["state"] == "todo" and doc["attempts"] == 0 and "release_requested" not in doc
    assert doc["history"][-1]["late_request"] is None


def test_a_late_cancel_is_recorded_in_the_history_not_dropped(db):
    make_tokens(db, [token("a", ["true"]), token("b", ["true"])])
    c = client(db)
    ga, gb = c.claim("a"), c.claim("b")
    assert c.cancel("a").body["cancel_requested"] and c.cancel("b").body["cancel_requested"]
    # the payload of a had already succeeded: its result is kept, the cancel shows in the history
    expires = ga.doc["lease"]["expires"]
    assert c.commit(Finishing(ga.doc, ga.claim, {"outcome": "done", "exit_code": 0})).finish.ok
    a = db.get("a")
    assert a["state"] == "done" and a["cancel_requested"] is False
    assert a["history"][-1]["late_request"] == "cancel"
    assert a["history"][-1]["expires"] == expires
    # the payload of b failed: a failure after a cancel request is the cancel, acted upon
    err = errorcodes.get("PAYLOAD_FAILED").error("exit 1")
    ans = c.commit(Finishing(gb.doc, gb.claim, {"outcome": "error", "error": err, "exit_code": 1})).finish
    assert ans.ok and ans.body["state"] == "cancelled"
    assert db.get("b")["history"][-1]["late_request"] is None


def test_an_idle_pilot_says_once_where_its_tokens_are(db, couch):
    make_tokens(db, [token(f"s{i}", ["true"], type="lofar_calib", state="staging") for i in range(3)]
                + [token("w", ["true"], type="lofar_calib", state="waiting"),
                   token("other", ["true"], type="other", state="staging")])
    res = subprocess.run(pilot_cmd("--type", "lofar_calib", "--idle-exit", "2", "--poll", "0.5"),
                         cwd=str(ROOT), env=couch.env(db.name), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "no claimable token" in ln]
    assert len(lines) == 1, res.stderr
    assert "type lofar_calib" in lines[0] and "3 staging" in lines[0] and "1 waiting" in lines[0]
