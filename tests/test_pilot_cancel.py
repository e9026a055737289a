"""Requests to a running token reach its payload within seconds, whatever the lease.

A cancel (``lrt cancel``) or a release request (``lrt release``) is seen by the
pilot's conditional read of its token every ``--cancel-check`` seconds (20 by
default), not only at lease renewals (every lease/2: 300 s with the default
lease).  A cancel that comes while the payload is finishing leaves a trace in
the history.  Real pilot processes, real payload processes, the real CLI.
"""
from __future__ import annotations

import json
import subprocess
import time

from pilot_helpers import ROOT, alive, make_tokens, poll, start_pilot, stop, token

#: records its pid, then runs for 60 s
SIXTY = ["sh", "-c", 'echo $$ > "$1/pid"; echo started; exec sleep 60', "sixty"]
#: records its pid, waits for the file "go", then succeeds
WAIT_GO = ["sh", "-c", 'echo $$ > "$1/pid"; while [ ! -e "$1/go" ]; do sleep 0.05; done; echo finished',
           "waitgo"]


def cli(lrt_cmd, env, *args):
    return subprocess.run([*lrt_cmd, *args], cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=60)


def _started(tmp_path) -> int:
    poll(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
         timeout=60, what="payload started")
    return int((tmp_path / "pid").read_text())


def test_cancel_stops_a_running_payload_in_seconds_with_the_default_lease(db, couch, tmp_path, lrt_cmd):
    make_tokens(db, [token("long", SIXTY + [str(tmp_path)])])
    env = couch.env(db.name)
    stats = tmp_path / "stats.json"
    p = start_pilot(env, "--max-tokens", "1", "--idle-exit", "30", "--stats", str(stats))  # lease 600 s
    try:
        pid = _started(tmp_path)
        res = cli(lrt_cmd, env, "cancel", "long")
        assert res.returncode == 0 and "running" in res.stdout, res.stdout + res.stderr
        asked = time.monotonic()
        # promised: within 30 s (default --cancel-check 20 s + SIGTERM); the payload would run 60 s
        poll(lambda: not alive(pid), timeout=40, what="cancelled payload stopped")
        poll(lambda: db.get("long")["state"] == "cancelled", timeout=20, what="token cancelled")
        print(f"cancel took {time.monotonic() - asked:.1f}s")
        assert p.wait(60) == 0
    finally:
        stop(p)
    doc = db.get("long")
    assert doc["error"]["name"] == "CANCELLED" and doc["history"][-1]["state"] == "cancelled"
    assert doc["history"][-1]["late_request"] is None
    s = json.loads(stats.read_text())
    assert s["checks"] >= 1 and s["heartbeats"] >= 1  # a look found the change; the heartbeat confirmed


def test_cancel_too_late_to_stop_the_payload_is_kept_in_the_history(db, couch, tmp_path, lrt_cmd):
    make_tokens(db, [token("late", WAIT_GO + [str(tmp_path)])])
    env = couch.env(db.name)
    # no looks at the token while it runs and no renewal before the payload ends: the cancel
    # is first seen by the finish (which meets the cancel's write, re-reads and decides again)
    p = start_pilot(env, "--max-tokens", "1", "--idle-exit", "30", "--cancel-check", "0")
    try:
        _started(tmp_path)
        res = cli(lrt_cmd, env, "cancel", "late")
        assert res.returncode == 0 and "running" in res.stdout, res.stdout + res.stderr
        (tmp_path / "go").touch()
        assert p.wait(60) == 0
    finally:
        stop(p)
    doc = db.get("late")
    assert doc["state"] == "done" and doc["log_tail"]["stdout"] == "finished\n"
    assert doc["cancel_requested"] is False
    assert doc["history"][-1]["late_request"] == "cancel"
    shown = cli(lrt_cmd, env, "show", "late")
    assert shown.returncode == 0 and "cancel requested too late to stop it" in shown.stdout, shown.stdout


def test_release_request_stops_the_payload_and_requeues_uncounted(db, couch, tmp_path, lrt_cmd):
    make_tokens(db, [token("rel", SIXTY + [str(tmp_path)])])
    env = couch.env(db.name)
    p = start_pilot(env, "--idle-exit", "3", "--cancel-check", "2", "--term-grace", "2")
    try:
        pid = _started(tmp_path)
        assert cli(lrt_cmd, env, "release", "nope").returncode == 1
        res = cli(lrt_cmd, env, "release", "rel")
        assert res.returncode == 0 and "put it back to todo" in res.stdout, res.stdout + res.stderr
        poll(lambda: not alive(pid), timeout=30, what="released payload stopped")
        poll(lambda: db.get("rel")["state"] == "todo", timeout=20, what="token back in todo")
        assert p.wait(60) == 0  # it does not take the token it gave back again: idle, exits
    finally:
        stop(p)
    doc = db.get("rel")
    assert doc["attempts"] == 0 and doc["preemptions"] == 1 and doc["lease"] is None
    assert "release_requested" not in doc
    assert doc["error"]["name"] == "PREEMPTED" and "release requested by lrt release" in doc["error"]["message"]
    assert doc["history"][-1]["end"] == "release" and doc["log_tail"]["stdout"] == "started\n"
    res = cli(lrt_cmd, env, "release", "rel")  # not running any more
    assert res.returncode == 1 and "state todo" in res.stdout
