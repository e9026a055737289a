"""Pilot processes against the real local server: payloads, signals, leases, fencing.

Every test starts real ``lrt pilot`` processes and real payload processes and
sends real signals; conditions are polled, never slept for.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lrt.couch import Conflict
from lrt.protocol.conflicts import resolve_conflicts

from pilot_helpers import (RECORD, ROOT, alive, executions, make_tokens, poll, start_pilot, stop,
                           token)

#: runs once: the first execution records its pid and sleeps; later ones succeed at once
ONCE_THEN_SLEEP = ["sh", "-c", 'if [ -e "$1/marker" ]; then echo second; exit 0; fi; '
                   'touch "$1/marker"; echo $$ > "$1/pid"; echo started; exec sleep 300', "once"]


def run_pilot(env, *args, timeout=120, log=None):
    p = start_pilot(env, *args, log=log)
    try:
        return p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()


def cli(lrt_cmd, env, *args):
    return subprocess.run([*lrt_cmd, *args], cwd=str(ROOT), env=env, capture_output=True, text=True,
                          timeout=60)


def test_token_fields_reach_the_payload_literally(db, couch, tmp_path, lrt_cmd):
    nasty = ["a;b", "$(touch " + str(tmp_path / "pwned") + ")", "`id`", "'\"", "line1\nline2",
             "&& rm -rf /", "*", "$HOME"]
    script = ("import json, os, sys; "
              "json.dump({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() "
              "if k.startswith('LRT_')}, 'token': json.load(open('token.json')), 'cwd': os.getcwd()}, "
              "open(os.environ['LRT_P_OUT'], 'w')); print('hello from the payload'); "
              "print('to stderr', file=sys.stderr)")
    out = tmp_path / "seen.json"
    make_tokens(db, [token("inj", [sys.executable, "-c", script, *nasty],
                           payload={"out": str(out), "nasty": nasty[1], "n": 3, "cfg": {"a": [1, 2]}})])
    env = couch.env(db.name)
    env["LRT_P_STALE"] = "must not leak"
    assert run_pilot(env, "--max-tokens", "1", "--idle-exit", "5") == 0
    seen = json.loads(out.read_text())
    assert seen["argv"] == nasty
    assert not (tmp_path / "pwned").exists()
    e = seen["env"]
    assert e["LRT_TOKEN_ID"] == "inj" and e["LRT_TOKEN_TYPE"] == "test" and e["LRT_ATTEMPT"] == "1"
    assert e["LRT_P_NASTY"] == nasty[1] and json.loads(e["LRT_P_N"]) == 3
    assert json.loads(e["LRT_P_CFG"]) == {"a": [1, 2]}
    assert "LRT_P_STALE" not in e and "LRT_COUCH_PASSWORD" not in e
    assert seen["token"]["_id"] == "inj" and seen["token"]["command"][3:] == nasty
    doc = db.get("inj")
    assert doc["state"] == "done" and doc["exit_code"] == 0
    assert doc["log_tail"]["stdout"] == "hello from the payload\n"
    for k in ("claimed", "started", "finished", "wall", "cpu", "max_rss_kb"):
        assert k in doc["timings"], k
    res = cli(lrt_cmd, env, "logs", "inj")
    assert res.returncode == 0 and res.stdout == "hello from the payload\n"
    res = cli(lrt_cmd, env, "logs", "inj", "--stderr")
    assert res.stdout == "to stderr\n"


def test_timeout_kills_the_whole_process_group(db, couch, tmp_path):
    cmd = ["sh", "-c", 'sleep 300 & echo $! > "$1/child"; echo $$ > "$1/parent"; wait', "x", str(tmp_path)]
    make_tokens(db, [token("slow", cmd, timeout=2)])
    assert run_pilot(couch.env(db.name), "--max-tokens", "1", "--idle-exit", "5", "--term-grace", "1") == 0
    doc = db.get("slow")
    assert doc["state"] == "error" and doc["error"]["name"] == "PAYLOAD_TIMEOUT"
    for name in ("child", "parent"):
        pid = int((tmp_path / name).read_text())
        poll(lambda: not alive(pid), timeout=10, what=f"{name} {pid} gone")


def test_failures_retry_backoff_and_quarantine(db, couch, tmp_path):
    make_tokens(db, [
        token("flaky", ["sh", "-c", "echo boom >&2; exit 3"], max_attempts=2,
              retry={"backoff": 0.5, "payload_errors": True}),
        token("fails", ["sh", "-c", "exit 4"]),
        token("nocmd", ["/nonexistent/program"]),
        token("bad", []),
        token("badsandbox", ["true"], sandbox={"sha256": "not-a-hash"}),
        token("noinput", ["true"], max_attempts=1,
              inputs=[{"url": "file:///nonexistent/lrt-test/input.dat", "checksum": None}]),
    ])
    assert run_pilot(couch.env(db.name), "--idle-exit", "4", "--poll", "0.5") == 0
    flaky = db.get("flaky")
    assert flaky["state"] == "failed" and flaky["attempts"] == 2 and flaky["exit_code"] == 3
    assert [h["state"] for h in flaky["history"]] == ["todo", "failed"]
    assert flaky["history"][1]["claimed"] >= flaky["history"][0]["finished"] + 0.5  # backoff honoured
    assert flaky["log_tail"]["stderr"] == "boom\n"
    fails = db.get("fails")
    assert fails["state"] == "error" and fails["error"]["name"] == "PAYLOAD_FAILED" and fails["attempts"] == 1
    assert db.get("nocmd")["error"]["name"] == "COMMAND_NOT_FOUND"
    assert db.get("bad")["error"]["name"] == "BAD_TOKEN"
    assert db.get("badsandbox")["error"]["name"] == "BAD_TOKEN"
    noinput = db.get("noinput")  # a system error, retried: here max_attempts 1 -> quarantine
    assert noinput["state"] == "failed" and noinput["error"]["class"] == "system"
    assert noinput["error"]["name"] in ("STAGE_IN_FAILED", "DATA_NOT_ONLINE")


def test_final_save_survives_concurrent_writes(db, couch, tmp_path):
    """An admin edits the token while it runs: the pilot's writes meet 409s and are repeated."""
    make_tokens(db, [token("busy", ["sh", "-c", "sleep 2; echo finished"])])
    stats = tmp_path / "stats.json"
    p = start_pilot(couch.env(db.name), "--max-tokens", "1", "--idle-exit", "5", "--lease", "2",
                    "--stats", str(stats))
    stop_ev = threading.Event()
    edits = [0]

    def scribble():
        while not stop_ev.is_set():
            try:
                d = db.get("busy")
                if d["state"] == "todo":
                    continue  # edit it while it runs (see docs/pilot.md on claims and edits)
                if d["state"] != "locked":
                    return
                d["admin_note"] = edits[0]
                db.put(d)
                edits[0] += 1
            except Conflict:
                pass

    t = threading.Thread(target=scribble)
    t.start()
    try:
        assert p.wait(120) == 0
    finally:
        stop_ev.set()
        t.join()

    def settled():
        # on a cluster an edit from a stale read can be accepted by a lagging copy (202)
        # beside the pilot's final save; the resolver (pilots' housekeeping, `lrt reap`)
        # keeps the terminal leaf
        resolve_conflicts(db, ["busy"])
        d = db.get("busy", conflicts=True)
        return d if d["state"] == "done" and not d.get("_conflicts") else None

    doc = poll(settled, timeout=60, what="the final save")
    assert doc["log_tail"]["stdout"] == "finished\n"
    assert edits[0] > 0 and "admin_note" in doc
    s = json.loads(stats.read_text())
    assert s["tokens"] == 1 and s["fenced"] == 0
    print("handler 409s repeated:", s["handler_409"], "admin edits:", edits[0])


def test_cancel_todo_and_running_tokens(db, couch, tmp_path, lrt_cmd):
    make_tokens(db, [token("run", ONCE_THEN_SLEEP + [str(tmp_path)], priority=10),
                     token("wait1", ["true"]), token("wait2", ["true"], state="waiting")])
    env = couch.env(db.name)
    p = start_pilot(env, "--max-tokens", "1", "--idle-exit", "30", "--lease", "2")
    try:
        poll(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
             timeout=60, what="payload started")
        pid = int((tmp_path / "pid").read_text())
        res = cli(lrt_cmd, env, "cancel", "--type", "test", "--state", "todo", "--state", "waiting")
        assert res.returncode == 0, res.stderr
        res = cli(lrt_cmd, env, "cancel", "run")
        assert res.returncode == 0 and "running" in res.stdout
        poll(lambda: db.get("run")["state"] == "cancelled", timeout=60, what="running token cancelled")
        poll(lambda: not alive(pid), timeout=10, what="payload stopped")
        assert p.wait(60) == 0
    finally:
        stop(p)
    doc = db.get("run")
    assert doc["error"]["name"] == "CANCELLED" and doc["history"][-1]["state"] == "cancelled"
    assert db.get("wait1")["state"] == "cancelled" and db.get("wait2")["state"] == "cancelled"


def test_walltime_fit(db, couch, tmp_path):
    make_tokens(db, [token("long", RECORD + [str(tmp_path)], expected_duration=3600),
                     token("short", RECORD + [str(tmp_path)], expected_duration=10)])
    (tmp_path / "rec").mkdir()
    for t in ("long", "short"):
        d = db.get(t)
        d["command"] = RECORD + [str(tmp_path / "rec")]
        db.put(d)
    assert run_pilot(couch.env(db.name), "--walltime", "00:10:00", "--idle-exit", "2") == 0
    assert executions(tmp_path / "rec") == ["short"]
    assert db.get("long")["state"] == "todo" and db.get("long")["attempts"] == 0


def test_sigterm_releases_the_token_at_once(db, couch, tmp_path):
    make_tokens(db, [token("t", ONCE_THEN_SLEEP + [str(tmp_path)])])
    p = start_pilot(couch.env(db.name), "--idle-exit", "30", "--term-grace", "2")
    try:
        poll(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
             timeout=60, what="payload started")
        pid = int((tmp_path / "pid").read_text())
        p.send_signal(signal.SIGTERM)
        poll(lambda: db.get("t")["state"] == "todo", timeout=30, what="token released")
        assert p.wait(30) == 128 + signal.SIGTERM
    finally:
        stop(p)
    assert not alive(pid)
    doc = db.get("t")
    assert doc["attempts"] == 0 and doc["preemptions"] == 1 and doc["lease"] is None
    assert doc["error"]["name"] == "PREEMPTED"
    assert doc["log_tail"]["stdout"] == "started\n"
    assert db.get_attachment("t", "stdout.log") == b"started\n"


def test_sigkill_pilot_token_recovered_once(db, couch, tmp_path):
    make_tokens(db, [token("k", ONCE_THEN_SLEEP + [str(tmp_path)])])
    env = couch.env(db.name)
    a = start_pilot(env, "--idle-exit", "30", "--lease", "3", "--reap-grace", "1")
    try:
        poll(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
             timeout=60, what="payload started")
        pid = int((tmp_path / "pid").read_text())
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        poll(lambda: not alive(pid), timeout=10, what="orphaned payload gone (PDEATHSIG)")
        assert db.get("k")["state"] == "locked"
        b_stats = tmp_path / "b.json"
        assert run_pilot(env, "--idle-exit", "15", "--lease", "3", "--reap-grace", "1", "--poll", "0.5",
                         "--stats", str(b_stats)) == 0
    finally:
        stop(a)
    doc = db.get("k")
    assert doc["state"] == "done" and doc["log_tail"]["stdout"] == "second\n"
    assert [(h["state"], (h["error"] or {}).get("name")) for h in doc["history"]] == \
        [("todo", "PILOT_LOST"), ("done", None)]
    assert json.loads(b_stats.read_text())["reaped"] == 1


def test_sigstop_pilot_is_fenced_after_sigcont(db, couch, tmp_path):
    make_tokens(db, [token("s", ONCE_THEN_SLEEP + [str(tmp_path)])])
    env = couch.env(db.name)
    a_stats = tmp_path / "a.json"
    a = start_pilot(env, "--idle-exit", "3", "--lease", "3", "--reap-grace", "1", "--stats", str(a_stats))
    try:
        poll(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
             timeout=60, what="payload started")
        pid = int((tmp_path / "pid").read_text())
        a.send_signal(signal.SIGSTOP)
        b_stats = tmp_path / "b.json"
        assert run_pilot(env, "--idle-exit", "15", "--lease", "3", "--reap-grace", "1", "--poll", "0.5",
                         "--stats", str(b_stats)) == 0
        done = db.get("s")
        assert done["state"] == "done" and json.loads(b_stats.read_text())["tokens"] == 1
        assert alive(pid)  # the stopped pilot's payload still runs ...
        a.send_signal(signal.SIGCONT)
        poll(lambda: not alive(pid), timeout=30, what="fenced payload killed")  # ... until it wakes
        assert a.wait(60) == 0
    finally:
        a.send_signal(signal.SIGCONT)
        stop(a)
    after = db.get("s")
    assert after["_rev"] == done["_rev"]  # the fenced pilot wrote nothing
    sa = json.loads(a_stats.read_text())
    assert sa["fenced"] == 1 and sa["tokens"] == 0
    assert after["history"][0]["error"]["name"] == "PILOT_LOST"
    assert after["history"][0]["pilot"] == sa["pilot"] and after["history"][1]["pilot"] != sa["pilot"]


def test_conflicted_tokens_never_run_twice(db, couch, tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    base = token("c1", RECORD + [str(rec)])
    db.bulk_docs([dict(base, _rev="2-aaaa", state="done", exit_code=0)], new_edits=False)
    db.bulk_docs([dict(base, _rev="2-ffff")], new_edits=False)  # todo, CouchDB's winner
    t2 = token("c2", RECORD + [str(rec)])
    db.bulk_docs([dict(t2, _rev="2-bbbb")], new_edits=False)
    db.bulk_docs([dict(t2, _rev="2-cccc")], new_edits=False)
    make_tokens(db, [token("plain", RECORD + [str(rec)])])
    env = couch.env(db.name)
    procs = [start_pilot(env, "--idle-exit", "6", "--lease", "2", "--poll", "0.5") for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    assert sorted(executions(rec)) == ["c2", "plain"]
    c1 = db.get("c1", conflicts=True)
    assert c1["state"] == "done" and "_conflicts" not in c1
    c2 = db.get("c2", conflicts=True)
    assert c2["state"] == "done" and "_conflicts" not in c2


def test_reap_command(db, couch, lrt_cmd):
    past = time.time() - 100
    lease = {"pilot": "ghost", "claim": "c", "claimed": past - 10, "renewed": past, "expires": past}
    make_tokens(db, [token("dead", ["true"], state="locked", attempts=1, lease=lease, pilot="ghost"),
                     token("alive", ["true"], state="locked", attempts=1,
                           lease=dict(lease, expires=time.time() + 3600))])
    env = couch.env(db.name)
    res = cli(lrt_cmd, env, "reap", "--dry-run", "--grace", "10")
    assert res.returncode == 0 and "dead" in res.stdout and "alive" not in res.stdout
    assert db.get("dead")["state"] == "locked"
    res = cli(lrt_cmd, env, "reap", "--grace", "10")
    assert res.returncode == 0, res.stderr
    dead = db.get("dead")
    assert dead["state"] == "todo" and dead["history"][-1]["pilot"] == "ghost"
    assert db.get("alive")["state"] == "locked"


@pytest.mark.parametrize("use_setpriv", [True, False])
def test_fallback_sets_the_parent_death_signal(tmp_path, monkeypatch, use_setpriv):
    """Without a watchdog, both ways of setting the parent-death signal (setpriv, preexec_fn) work."""
    from lrt.pilot import run as runmod

    monkeypatch.setattr(runmod, "_WATCHDOG_OK", False)
    if use_setpriv:
        if runmod.death_signal_prefix() is None:
            pytest.skip("no setpriv --pdeathsig on this machine")
    else:
        monkeypatch.setattr(runmod, "_SETPRIV_CHECKED", True)
        monkeypatch.setattr(runmod, "_SETPRIV", None)
    code = ("import ctypes; c = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(c), 0, 0, 0); "
            "print(c.value)")  # PR_GET_PDEATHSIG
    p = runmod.Payload([sys.executable, "-c", code], tmp_path, dict(os.environ))
    assert p.wait(30) and p.exit_code == 0
    assert p.stdout_path.read_text().strip() == str(int(signal.SIGKILL))
    with pytest.raises(FileNotFoundError):
        runmod.Payload(["no-such-program-lrt"], tmp_path, dict(os.environ))


#: a stand-in pilot: starts payloads as the pilot does, prints their pids, then waits to be killed
_FAKE_PILOT = r"""
import os, subprocess, sys, time
from pathlib import Path
from lrt.pilot import run
tmp = Path(sys.argv[1])
mode = sys.argv[2]
env = dict(os.environ, LRT_CLAIM_ID="claim-" + mode)
# the payload forks a grandchild (same process group) and both sleep
cmd = ["sh", "-c", "sleep 300 & echo $! > " + str(tmp / "grandchild") + "; exec sleep 300"]
pids = []
def payload(name):
    wd = tmp / name
    wd.mkdir()
    p = run.Payload(cmd, wd, env)
    pids.append(p.pid)
    while not (tmp / "grandchild").exists():
        time.sleep(0.01)
    pids.append(int((tmp / "grandchild").read_text()))
    (tmp / "grandchild").unlink()
if mode == "window":   # killed after the spawn, before the watchdog learns the pid
    dog = run.watchdog()
    mark = b"LRT_CLAIM_ID=" + env["LRT_CLAIM_ID"].encode()
    dog.spawning(mark)
    pids.append(subprocess.Popen(["sleep", "300"], env=env, start_new_session=True).pid)
elif mode == "restart":  # the watchdog dies; the next payload starts a new one that knows both
    payload("a")
    old = run.watchdog().proc
    old.kill()
    old.wait()
    payload("b")
    assert run.watchdog().proc.pid != old.pid
else:
    payload("a")
print(" ".join(map(str, pids)), flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("mode", ["plain", "window", "restart"])
def test_payload_group_dies_with_a_sigkilled_pilot(tmp_path, mode):
    """The watchdog SIGKILLs a dead pilot's payloads and what they forked: registered groups,
    a payload started just before the pilot died (found by its claim id), and groups a
    restarted watchdog re-learned."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    fake = subprocess.Popen([sys.executable, "-c", _FAKE_PILOT, str(tmp_path), mode], env=env,
                            stdout=subprocess.PIPE, text=True)
    pids: list = []
    try:
        line = fake.stdout.readline()
        pids = [int(x) for x in line.split()]
        assert pids and all(alive(p) for p in pids), line
        fake.kill()
        fake.wait(10)
        poll(lambda: not any(alive(p) for p in pids), timeout=20, what="payloads gone with their pilot")
    finally:
        fake.kill()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_unexpected_pilot_error_is_recorded_not_stranded(db, couch):
    """A local failure (here: the work dir cannot be created) ends the attempt as PILOT_ERROR."""
    make_tokens(db, [token("w", ["true"], max_attempts=1)])
    assert run_pilot(couch.env(db.name), "--max-tokens", "1", "--idle-exit", "3",
                     "--workdir", "/proc/lrt-cannot-create-this") == 0
    doc = db.get("w")
    assert doc["state"] == "failed" and doc["error"]["name"] == "PILOT_ERROR"
    assert doc["lease"] is None


def test_job_wide_sigterm_releases_even_if_payload_dies_first(db, couch, tmp_path):
    """scancel/time limit signal the payload and the pilot together: release, not PAYLOAD_SIGNALED."""
    make_tokens(db, [token("j", ONCE_THEN_SLEEP + [str(tmp_path)])])
    p = start_pilot(couch.env(db.name), "--idle-exit", "30")
    try:
        poll(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
             timeout=60, what="payload started")
        pid = int((tmp_path / "pid").read_text())
        os.kill(pid, signal.SIGTERM)  # the payload first ...
        poll(lambda: not alive(pid), timeout=10, what="payload gone")
        p.send_signal(signal.SIGTERM)  # ... then the pilot
        assert p.wait(30) == 128 + signal.SIGTERM
    finally:
        stop(p)
    doc = db.get("j")
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["error"]["name"] == "PREEMPTED"


def test_token_claimed_with_a_finish_is_released_when_the_pilot_stops(db, couch, tmp_path):
    """The finish of token 1 also claims token 2; a stop signal arriving before token 2
    starts must give it back at once, not counted, instead of leaving it locked."""
    from lrt.couch import Server
    from lrt.pilot.pilot import Pilot, PilotOptions

    make_tokens(db, [token("one", ["true"], priority=5), token("two", ["true"])])

    class StoppedAfterFirst(Pilot):
        def _report(self, c, body, p):
            super()._report(c, body, p)
            self.stop_signal = signal.SIGTERM  # as if SIGTERM arrived right after the request

    pdb = Server(couch.url, couch.user, couch.password, cookie_auth=True).database(db.name)
    pilot = StoppedAfterFirst(pdb, PilotOptions(token_type="test", idle_exit=1,
                                                workdir=str(tmp_path / "w")))
    assert pilot.run() == 128 + signal.SIGTERM
    assert pilot.stats.combined == 1 and pilot.stats.tokens == 1
    one, two = db.get("one"), db.get("two")
    assert one["state"] == "done"
    assert two["state"] == "todo" and two["lease"] is None
    assert two["attempts"] == 0 and two["preemptions"] == 1
    assert two["history"][-1]["end"] == "release"
