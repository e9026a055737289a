"""`lrt why`: what holds a token back, against the real local server with real tokens and pilots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from lrt.protocol.client import TokenClient
from lrt.queries.why import Reason, explain, summarize
from pilot_helpers import make_tokens, poll, start_pilot, stop, token

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def lrt(couch, db, lrt_cmd, tmp_path):
    """Run the CLI against the test database (LRT_HOME in tmp); stop local launches afterwards."""
    env = couch.env(db.name)
    env["LRT_HOME"] = str(tmp_path / "lrt-home")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(lrt_cmd + list(args), env=env, cwd=str(ROOT), capture_output=True, text=True,
                             timeout=120)
        if check:
            assert res.returncode == 0, f"lrt {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    run.env = env
    yield run
    for r in db.all_docs(startkey="launch:", endkey="launch:\ufff0", include_docs=True)["rows"]:
        for pid in r["doc"].get("pids") or []:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def why(lrt, *args: str) -> Dict[str, Any]:
    return json.loads(lrt("why", *args, "--json").stdout)


def reasons(w: Dict[str, Any]) -> List[str]:
    return [r["reason"] for r in w["reasons"]]


def sleeper_launch(lrt, ttype: str, *extra: str) -> None:
    """A local launch of stand-in pilots (a sleeping interpreter): a launch with pilots running, claiming nothing."""
    lrt("launch", "local", "--pilots", "1", "--type", ttype, "--lrt",
        f"{sys.executable} -c 'import time; time.sleep(120)'", *extra)


# ---------------------------------------------------------------- states that say it all

def test_staging_names_the_command_that_moves_it(lrt, db):
    """The LOFAR example: tokens start in staging; `why` says so and how to move them."""
    lrt("create", str(ROOT / "configs" / "lofar_example.yaml"))
    ids = [r["id"] for r in db.view("lrt", "tokens", startkey=["staging"], endkey=["staging", {}],
                                    reduce=False)["rows"]]
    assert ids
    w = why(lrt, ids[0])
    assert (w["state"], w["reason"], reasons(w)) == ("staging", "staging", ["staging"])
    assert w["reasons"][0]["command"] == "lrt stage run --type lofar_calib"
    text = lrt("why", ids[0]).stdout
    assert "staging" in text and "-> lrt stage run --type lofar_calib" in text
    s = why(lrt, "--type", "lofar_calib")
    assert s["total"] == len(ids) and s["reasons"] == {"staging": len(ids)}
    assert [h["command"] for h in s["hints"]] == ["lrt stage run --type lofar_calib"]
    assert "lrt stage run --type lofar_calib" in lrt("why", "--type", "lofar_calib").stdout


def test_finished_tokens_done_error_failed(lrt, db, couch):
    make_tokens(db, [
        token("ok", ["true"], type="fin"),
        token("bad", ["sh", "-c", "exit 3"], type="fin"),
        token("retried", ["sh", "-c", "exit 4"], type="fin", max_attempts=1,
              retry={"backoff": 0, "payload_errors": True}),
    ])
    p = start_pilot(couch.env(db.name), "--type", "fin", "--idle-exit", "1", "--poll", "0.2")
    assert p.wait(60) == 0
    got = {i: why(lrt, i) for i in ("ok", "bad", "retried")}
    assert {i: (w["state"], w["reason"]) for i, w in got.items()} == {
        "ok": ("done", "done"), "bad": ("error", "error"), "retried": ("failed", "attempts_exhausted")}
    assert got["bad"]["reasons"][0]["command"] == "lrt reset --state error --type fin"
    assert "PAYLOAD" in got["bad"]["reasons"][0]["message"] or "exit" in got["bad"]["reasons"][0]["message"]
    assert got["retried"]["reasons"][0]["command"] == "lrt reset --state failed --type fin"
    assert "nothing holds it" in lrt("why", "ok").stdout
    s = why(lrt, "--type", "fin")
    assert s["reasons"] == {"attempts_exhausted": 1, "error": 1, "done": 1}


# ---------------------------------------------------------------- todo tokens: queue, backoff, pilots, walltime

def test_todo_without_any_pilot(lrt, db):
    make_tokens(db, [token(f"np-{i}", ["true"], type="lonely") for i in range(3)])
    w = why(lrt, "np-0")
    assert reasons(w) == ["no_pilot"] and w["pilots"]["seen"] is False
    assert "lrt launch slurm --pilots N --type lonely" in w["reasons"][0]["command"]
    s = why(lrt, "--type", "lonely")
    assert s["reasons"] == {"no_pilot": 3} and s["sampled"]["todo"] == {"read": 3, "of": 3}


def test_todo_with_a_launch_is_queued_and_walltime_is_checked(lrt, db):
    make_tokens(db, [token("short", ["true"], type="wt", expected_duration=60),
                     token("long", ["true"], type="wt", expected_duration=3600)])
    sleeper_launch(lrt, "wt", "--pilot-args", "--walltime 00:10:00")
    w = why(lrt, "short")
    assert reasons(w) == ["queued"] and w["pilots"]["seen"] is True
    assert [l["walltime"] for l in w["pilots"]["launches"]] == [600.0]
    w = why(lrt, "long")
    assert reasons(w) == ["walltime"]
    assert "3600" in w["reasons"][0]["message"] and "600" in w["reasons"][0]["message"]
    s = why(lrt, "--type", "wt")
    assert s["reasons"] == {"walltime": 1, "queued": 1}
    # a launch of any type (no --type) serves this type too, and without a walltime everything fits
    for r in db.all_docs(startkey="launch:", endkey="launch:\ufff0", include_docs=True)["rows"]:
        for pid in r["doc"]["pids"]:
            os.kill(pid, signal.SIGTERM)
    poll(lambda: why(lrt, "short")["reason"] == "no_pilot", 30, 0.3, "the stand-in pilot to be gone")
    lrt("launch", "local", "--pilots", "1", "--lrt", f"{sys.executable} -c 'import time; time.sleep(120)'")
    assert reasons(why(lrt, "long")) == ["queued"]


def test_backoff_after_a_real_retry(lrt, db, couch):
    """A pilot retries a failed payload with a backoff: `why` gives the time, and no 'no pilot' (it just ran)."""
    make_tokens(db, [token("flaky", ["sh", "-c", "exit 5"], type="bo",
                           retry={"backoff": 600, "payload_errors": True})])
    p = start_pilot(couch.env(db.name), "--type", "bo", "--idle-exit", "1", "--poll", "0.2")
    assert p.wait(60) == 0
    doc = db.get("flaky")
    assert doc["state"] == "todo" and doc["not_before"] > time.time() + 500
    w = why(lrt, "flaky")
    assert reasons(w) == ["backoff"]
    assert w["reasons"][0]["until"] == doc["not_before"]
    assert "attempt 1" in w["reasons"][0]["message"]
    s = why(lrt, "--type", "bo")
    # the summary has no token history to go by: no pilot is what holds it first
    assert s["reasons"] == {"no_pilot": 1} and s["backoff_until"] == doc["not_before"]
    sleeper_launch(lrt, "bo")
    assert why(lrt, "--type", "bo")["reasons"] == {"backoff": 1}


def test_summary_samples_the_queue(lrt, db):
    make_tokens(db, [token(f"many-{i:03d}", ["true"], type="many", created=i) for i in range(30)])
    sleeper_launch(lrt, "many")
    s = why(lrt, "--type", "many", "--sample", "10")
    assert s["sampled"]["todo"] == {"read": 10, "of": 30, "not_sampled": 20}
    assert s["reasons"] == {"queued": 10}
    assert "20 not sampled" in lrt("why", "--type", "many", "--sample", "10").stdout


# ---------------------------------------------------------------- running tokens

def test_claimed_by_a_real_pilot_then_its_lease_expires(lrt, db, couch, tmp_path):
    make_tokens(db, [token("busy", ["sleep", "30"], type="run")])
    p = start_pilot(couch.env(db.name), "--type", "run", "--lease", "4", "--idle-exit", "60",
                    log=tmp_path / "pilot.log")
    try:
        poll(lambda: db.get("busy")["state"] == "locked", 60, 0.2, "the pilot to claim the token")
        w = why(lrt, "busy")
        doc = db.get("busy")
        assert reasons(w) == ["claimed"], w
        lease = doc["lease"]
        assert lease["pilot"] in w["reasons"][0]["message"]
        # the lease is renewed every 2 s: the end we report is the one stored (or an earlier one)
        assert w["server_time"] < w["reasons"][0]["until"] <= lease["expires"] + 0.001
        assert "lease ends at" in lrt("why", "busy").stdout
    finally:
        p.send_signal(signal.SIGKILL)   # the pilot dies without releasing; its lease runs out
        p.wait(30)
    exp = db.get("busy")["lease"]["expires"]
    # both clock estimates come from Date headers (whole seconds, +-0.5 s): wait until the
    # lease has ended by any estimate the `lrt why` process may make
    poll(lambda: db.server.now() > exp + 1.5, 30, 0.2, "the dead pilot's lease to expire")
    w = why(lrt, "busy")
    assert reasons(w) == ["lease_expired"] and w["reasons"][0]["command"] == "lrt reap"
    s = why(lrt, "--type", "run")
    assert s["reasons"] == {"lease_expired": 1}


def test_cancel_requested_on_a_claimed_token(lrt, db):
    make_tokens(db, [token("held", ["true"], type="cx")])
    holder = TokenClient(db, pilot="holder-1", lease_seconds=600)
    assert holder.claim("held", token_type="cx") is not None
    assert why(lrt, "held")["reason"] == "claimed"
    lrt("cancel", "held")
    w = why(lrt, "held")
    assert reasons(w) == ["cancel_requested", "claimed"] and "holder-1" in w["reasons"][1]["message"]
    s = why(lrt, "--type", "cx")
    assert s["reasons"] == {"claimed": 1}


def test_cancelled_token(lrt, db):
    make_tokens(db, [token("gone", ["true"], type="cx2")])
    lrt("cancel", "gone")
    w = why(lrt, "gone")
    assert reasons(w) == ["cancelled"] and w["reasons"][0]["command"] == "lrt reset --state cancelled --type cx2"


# ---------------------------------------------------------------- conflicts, waiting, bad input

def test_conflicted_token(lrt, db):
    make_tokens(db, [token("twin", ["true"], type="cf")])
    doc = db.get("twin")
    sibling = dict(doc, _rev="1-" + "f" * 32, priority=5)
    res = db.bulk_docs([sibling], new_edits=False)
    assert not res.errors
    assert db.get("twin", conflicts=True).get("_conflicts")
    sleeper_launch(lrt, "cf")
    # (on a cluster the views may be read from a copy that has not seen the sibling yet)
    w = poll(lambda: (lambda w: w if reasons(w)[0] == "conflicted" else None)(why(lrt, "twin")),
             timeout=60, interval=1.0, what="lrt why seeing the conflict")
    assert w["reasons"][0]["command"] == "lrt reap"
    s = why(lrt, "--type", "cf")
    assert s["reasons"].get("conflicted") == 1


def test_waiting_token_names_its_unmet_dependency(lrt, db):
    make_tokens(db, [token("first", ["true"], type="dep"),
                     token("later", ["true"], type="dep", state="waiting",
                           after=[{"id": "first", "on": "ok"}])])
    w = why(lrt, "later")
    assert reasons(w) == ["waiting"]
    assert "parent first (todo)" in w["reasons"][0]["message"] and "on: ok" in w["reasons"][0]["message"]
    assert why(lrt, "--type", "dep")["reasons"] == {"waiting": 1, "no_pilot": 1}


def test_blocked_and_pending_tokens(lrt, db):
    make_tokens(db, [token("bad", ["false"], type="blk", state="error"),
                     token("child", ["true"], type="blk", state="blocked", after=[{"id": "bad", "on": "ok"}],
                           blocked_by={"id": "bad", "state": "error", "on": "ok"}),
                     token("job", ["true"], type="blk", state="pending")])
    w = why(lrt, "child")
    assert reasons(w) == ["blocked"] and "token bad" in w["reasons"][0]["message"]
    assert w["reasons"][0]["command"] == "lrt show bad"
    assert reasons(why(lrt, "job")) == ["pending"]
    assert why(lrt, "--type", "blk")["reasons"] == {"blocked": 1, "pending": 1, "error": 1}


def test_bad_input(lrt, db):
    res = lrt("why", "no-such-token", check=False)
    assert res.returncode == 1 and res.stderr.startswith("lrt: error: no token 'no-such-token'")
    res = lrt("why", check=False)
    assert res.returncode == 2 and "give a token ID or --type" in res.stderr
    res = lrt("why", "x", "--type", "y", check=False)
    assert res.returncode == 2
    assert "no tokens of type nothing" in lrt("why", "--type", "nothing").stdout
    assert "Traceback" not in res.stderr


def test_reasons_are_an_enum_with_every_documented_value():
    doc = (ROOT / "docs" / "why.md").read_text()
    for r in Reason:
        assert f"`{r.value}`" in doc, r


def test_library_api(db):
    make_tokens(db, [token("api", ["true"], type="lib")])
    w = explain(db, "api")
    assert w.primary is Reason.NO_PILOT and w.as_json()["reason"] == "no_pilot"
    s = summarize(db, "lib")
    assert s.reasons == {"no_pilot": 1} and s.total == 1
