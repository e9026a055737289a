"""Launchers against a real Slurm (single node on loopback, scripts/testbed-slurm.sh).

`make test` sets Slurm up first; elsewhere these tests skip when `sinfo`
is missing or shows no usable node.  Every job a test submits is cancelled at
the end of the test (by the job ids in its launch records).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from lrt.launchers import launch_records, launch_summary
from pilot_helpers import make_tokens as write_tokens
from pilot_helpers import poll, token

ROOT = Path(__file__).resolve().parent.parent


def _slurm_ready() -> str:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm client tools (sinfo, sbatch) not installed; `make test` sets up a one-node Slurm"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    states = set(res.stdout.split())
    if res.returncode != 0 or not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no usable Slurm node (sinfo: {res.stdout.strip() or res.stderr.strip()}); run scripts/testbed-slurm.sh"
    return ""


_WHY = _slurm_ready()
pytestmark = pytest.mark.skipif(bool(_WHY), reason=_WHY)

PILOT_ARGS = "--idle-exit 3 --poll 1"


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    return poll(cond, timeout, interval, what)


def make_tokens(db, ttype: str, n: int, command: List[str], prefix: str) -> List[str]:
    """Tokens per the shared schema v1, written directly."""
    now = time.time()
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    return write_tokens(db, (token(tid, command, type=ttype, created=now + i * 1e-3, tokenset="launch-test",
                                   retry={"backoff": 0, "payload_errors": False}, payload={"n": tid})
                             for i, tid in enumerate(ids)))


def state_counts(db, ttype: str) -> Dict[str, int]:
    rows = db.view("lrt", "tokens", reduce=True, group_level=2)["rows"]
    return {r["key"][0]: r["value"] for r in rows if r["key"][1] == ttype}


def tokens(db, ids: List[str]) -> List[dict]:
    return [r["doc"] for r in db.all_docs(keys=ids, include_docs=True)["rows"]]


def squeue_ids(batch_id: str, field: int = 1) -> List[str]:
    """Array elements of ``batch_id`` still in the queue: ``123_4`` (field 1) or their own job ids (2)."""
    res = subprocess.run(["squeue", "-h", "-r", "-o", "%F %i %A %T"], capture_output=True, text=True, timeout=30)
    return [line.split()[field] for line in res.stdout.splitlines() if line.split()[0] == batch_id]


@pytest.fixture
def run_lrt(couch, db, lrt_cmd, tmp_path):
    """Run the CLI against the test database, LRT_HOME in tmp; scancel what it launched afterwards."""
    home = tmp_path / "lrt-home"
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)

    def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(lrt_cmd + list(args), env=env, cwd=str(ROOT), capture_output=True, text=True,
                             timeout=timeout)
        if check:
            assert res.returncode == 0, f"lrt {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    run.env, run.home = env, home
    yield run
    ids = [str(d["batch_id"]) for d in launch_records(db, limit=None, system="slurm") if d.get("batch_id")]
    if ids:
        subprocess.run(["scancel"] + ids, capture_output=True, timeout=30)


def pilot_log_tail(db) -> str:
    out = []
    for d in launch_records(db, limit=None):
        for p in sorted(Path(d["dir"]).glob("pilot-*.out"))[:2]:
            out.append(f"--- {p}\n" + p.read_text(errors="replace")[-1500:])
    return "\n".join(out)


# ---------------------------------------------------------------- batch.walltime_end in a real job

def test_walltime_end_inside_a_slurm_job(tmp_path):
    script = tmp_path / "job.sh"
    out = tmp_path / "job.out"
    code = ("import json, time, lrt.batch as b; e = b.walltime_end(); "
            "print('RESULT', json.dumps({'left': None if e is None else e - time.time(), 'info': b.job_info()}))")
    script.write_text(f"#!/bin/bash\nexport PYTHONPATH={ROOT}\nexec {sys.executable} -c \"{code}\"\n")
    res = subprocess.run(["sbatch", "--parsable", "--time=00:02:00", f"--output={out}", str(script)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    try:
        text = wait_for(lambda: out.exists() and "RESULT" in out.read_text() and out.read_text(), 90,
                        "the job's output")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    result = json.loads(text.split("RESULT", 1)[1])
    assert result["info"]["system"] == "slurm" and result["info"]["id"] == job
    assert result["left"] is not None, text
    assert 0 < result["left"] <= 120


def test_walltime_unknown_for_unlimited_job(tmp_path):
    """No --time on an unlimited partition: no end to plan for (None, not a date a year ahead)."""
    out = tmp_path / "job.out"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\nexport PYTHONPATH={ROOT}\n"
                      f"exec {sys.executable} -c 'import lrt.batch as b; print(\"RESULT\", b.walltime_end())'\n")
    res = subprocess.run(["sbatch", "--parsable", f"--output={out}", str(script)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    try:
        text = wait_for(lambda: out.exists() and "RESULT" in out.read_text() and out.read_text(), 90, "output")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    part = subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True, text=True).stdout
    if "MaxTime=UNLIMITED" not in part:
        pytest.skip("the partition has a time limit")
    assert text.split("RESULT", 1)[1].strip() == "None"


# ---------------------------------------------------------------- credentials reach the job, nowhere else

PROBE = """#!/bin/bash
set -eu
${env_setup}
exec PYEXE -c 'import os; from lrt.settings import resolve; from lrt.batch import job_info; \
db = resolve(use_local=False).database(); \
db.put({"_id": "probe-" + os.environ["SLURM_ARRAY_TASK_ID"], "kind": "probe", \
"pwfile": os.environ.get("LRT_COUCH_PASSWORD_FILE"), "pwenv": "LRT_COUCH_PASSWORD" in os.environ, \
"launch": os.environ["LRT_LAUNCH_ID"], "job": job_info(), "env": sorted(os.environ)})'
"""

#: secret-looking variables of the submitting shell that are none of the pilot's business
UNRELATED = {"MY_API_TOKEN": "tok-Zx81-unrelated-secret", "LRT_TEST_COUCH_PASSWORD": "suite-pw-Qq19",
             "AWS_SECRET_ACCESS_KEY": "aws-k3y-unrelated"}


def _files_containing(paths: List[Path], secret: bytes) -> List[str]:
    hits = []
    for top in paths:
        for p in ([top] if top.is_file() else top.rglob("*")):
            try:
                if p.is_file() and secret in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                pass
    return hits


@pytest.mark.parametrize("mode", ["file", "env"])
def test_credentials_reach_the_job_but_no_file(mode, run_lrt, db, couch, tmp_path):
    """The password reaches the job the one intended way; other secrets of the submitting shell not at all."""
    tpl = tmp_path / "probe.tmpl"
    tpl.write_text(PROBE.replace("PYEXE", sys.executable))
    run_lrt.env.update(UNRELATED)
    run_lrt("launch", "slurm", "--pilots", "2", "--template", str(tpl), "--credentials", mode,
            "--dir", str(tmp_path / "launches"))
    (rec,) = launch_records(db)
    probes = wait_for(lambda: [d for d in (db.get_or_none("probe-0"), db.get_or_none("probe-1")) if d]
                      if db.get_or_none("probe-0") and db.get_or_none("probe-1") else None, 90,
                      "both array elements to write with the credentials they were given")
    for p in probes:
        assert p["launch"] == rec["launch_id"]
        assert p["job"]["system"] == "slurm" and p["job"]["array_id"] == rec["batch_id"]
        if mode == "file":
            assert p["pwfile"] and Path(p["pwfile"]).read_text() == couch.password and not p["pwenv"]
        else:
            assert p["pwenv"] and p["pwfile"] is None
        assert not set(UNRELATED) & set(p["env"]), p["env"]
        assert "LRT_COUCH_URL" in p["env"] and "PATH" in p["env"]
    secret = couch.password.encode()
    # what lrt wrote: the launch folder (script, job logs) and the launch record
    assert _files_containing([Path(rec["dir"])], secret) == []
    assert couch.password not in json.dumps(db.get(rec["_id"]))
    # what Slurm keeps: the submitted script (and, in file mode, the job's stored environment)
    stored = subprocess.run(["scontrol", "write", "batch_script", rec["batch_id"], "-"], capture_output=True,
                            timeout=30)
    if stored.returncode == 0:
        assert stored.stdout and secret not in stored.stdout
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    state = Path(re.search(r"StateSaveLocation\s*=\s*(\S+)", conf).group(1))
    first = int(rec["batch_id"])   # array elements get ids from the array's id upwards
    job_dirs = [d for d in state.glob("hash.*/job.*") if d.name[4:].isdigit()
                and first <= int(d.name[4:]) <= first + 2]
    assert job_dirs, f"no job state for {first} under {state}"
    if mode == "file":
        assert _files_containing(job_dirs, secret) == []
    # the job's stored environment holds none of the unrelated secrets, in either mode
    for value in UNRELATED.values():
        assert _files_containing(job_dirs + [Path(rec["dir"])], value.encode()) == []


def test_nothing_is_submitted_when_the_record_cannot_be_written(run_lrt, couch, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    res = run_lrt("--db", "lrt_test_no_such_database", "launch", "slurm", "--pilots", "2",
                  "--dir", str(tmp_path / "L"), check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    # (the test cluster is on loopback like the server, so the loopback warning comes first)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("lrt: error:") and "lrt_test_no_such_database" in last, res.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert set(after) <= set(before)
    assert not (tmp_path / "L").exists()


# ---------------------------------------------------------------- pilots drain tokens

def test_pilot_array_drains_tokens(run_lrt, db):
    ids = make_tokens(db, "drain", 30, ["true"], "drain")
    out = run_lrt("launch", "slurm", "--pilots", "3", "--type", "drain", "--time", "00:10:00",
                  "--pilot-args", PILOT_ARGS).stdout
    (rec,) = launch_records(db)
    assert f"Slurm job {rec['batch_id']}" in out and rec["count"] == 3 and rec["type"] == "drain"
    try:
        wait_for(lambda: state_counts(db, "drain").get("done") == 30, 150, "30 tokens done")
    except AssertionError:
        raise AssertionError(f"{state_counts(db, 'drain')}\n{pilot_log_tail(db)}") from None
    docs = tokens(db, ids)
    assert {d["batch_job"]["system"] for d in docs} == {"slurm"}
    assert {d["batch_job"]["array_id"] for d in docs} == {rec["batch_id"]}
    assert {d["batch_job"]["array_task"] for d in docs} <= {"0", "1", "2"}
    # pilots leave when the queue is empty; status then shows none queued or running
    wait_for(lambda: not squeue_ids(rec["batch_id"]), 60, "the pilots to exit")
    (s,) = launch_summary(db)
    assert (s["system"], s["batch_id"], s["submitted"], s["queued"], s["running"]) == \
        ("slurm", rec["batch_id"], 3, 0, 0)
    # every element ended well (squeue --states=all), and the record keeps it
    assert (s["finished"], s["failed"], s["flag"]) == (3, 0, ""), s
    assert sorted(db.get(rec["_id"])["ended"]) == ["0", "1", "2"]


def test_status_counts_queued_and_running(run_lrt, db):
    """Two pilots held at the start: status says queued; released with no work, they end."""
    run_lrt("launch", "slurm", "--pilots", "2", "--type", "nothing", "--sbatch-arg=--hold",
            "--pilot-args", PILOT_ARGS)
    (s,) = launch_summary(db)
    assert (s["submitted"], s["queued"], s["running"]) == (2, 2, 0)
    status = json.loads(run_lrt("status", "--json").stdout)
    assert [(p["batch_id"], p["queued"], p["running"]) for p in status["pilots"]] == [(s["batch_id"], 2, 0)]
    assert "pilots (recent launches)" in run_lrt("status").stdout
    listed = json.loads(run_lrt("launch", "list", "--json").stdout)
    assert [(r["batch_id"], r["submitted"], r["queued"]) for r in listed] == [(s["batch_id"], 2, 2)]
    table = run_lrt("launch", "list").stdout.splitlines()
    assert len(table) == 2 and table[1].split()[2:] == ["slurm", s["batch_id"], "nothing", "2", "2", "0", "0", "0"]
    subprocess.run(["scontrol", "release", s["batch_id"]], check=True, capture_output=True)
    wait_for(lambda: launch_summary(db)[0]["running"] >= 1 or not squeue_ids(s["batch_id"]), 60,
             "a pilot to start")
    wait_for(lambda: not squeue_ids(s["batch_id"]), 60, "idle pilots to exit")
    assert launch_summary(db)[0]["queued"] == 0


@pytest.mark.parametrize("signal_name", [
    "KILL",
    "TERM",
])
def test_scancelled_pilots_tokens_are_recovered(signal_name, run_lrt, db, tmp_path):
    """Pilots killed by scancel mid-token; a later pilot reaps/reclaims; every token done, once."""
    marker = tmp_path / "completed.txt"
    ids = make_tokens(db, "victim", 8, ["sh", "-c", f'sleep 2 && echo "$LRT_P_N" >> {marker}'], "victim")
    args = "--lease 6 --reap-grace 1 " + PILOT_ARGS
    run_lrt("launch", "slurm", "--pilots", "2", "--type", "victim", "--pilot-args", args)
    (rec,) = launch_records(db)
    wait_for(lambda: state_counts(db, "victim").get("locked", 0) >= 2, 90, "two tokens locked by Slurm pilots")
    locked_before = {d["_id"] for d in tokens(db, ids) if d["state"] == "locked"}
    if signal_name == "KILL":
        # a node crash / OOM kill: every process of the pilots' jobs dies at once, nobody cleans up
        # (scancel --signal=KILL would be a normal cancel: SIGTERM first, KillWait, then SIGKILL)
        pids = []
        for job in squeue_ids(rec["batch_id"], field=2):
            lp = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True)
            pids += [int(ln.split()[0]) for ln in lp.stdout.splitlines()[1:] if ln.split() and ln.split()[0].isdigit()]
        assert pids
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    else:
        # what a user (or the walltime) does: Slurm sends SIGTERM to every process of the job, then SIGKILL
        subprocess.run(["scancel", rec["batch_id"]], check=True, capture_output=True, timeout=30)
    wait_for(lambda: not squeue_ids(rec["batch_id"]), 60, "the cancelled array to leave the queue")
    # leases of tokens still locked by the dead pilots must run out (server clock) before anyone may reap them
    expires = [d["lease"]["expires"] for d in tokens(db, ids) if d["state"] == "locked" and d.get("lease")]
    if expires:
        wait_for(lambda: db.server.now() > max(expires) + 1.5, 30, "the dead pilots' leases to expire")
    # a fresh local pilot reaps expired leases (or finds the released tokens) and finishes the rest
    run_lrt("pilot", "--type", "victim", *args.split(), timeout=150)
    assert state_counts(db, "victim") == {"done": 8}, (state_counts(db, "victim"), pilot_log_tail(db))
    lines = marker.read_text().split()
    assert sorted(set(lines)) == sorted(ids)
    # a payload killed mid-sleep never wrote its line; any second line would be a double completion
    assert len(lines) == len(ids), sorted(lines)
    docs = {d["_id"]: d for d in tokens(db, ids)}
    if signal_name == "KILL":
        # the killed pilots' tokens were taken again after their leases ran out
        assert all(docs[t]["attempts"] >= 2 for t in locked_before), {t: docs[t]["attempts"] for t in locked_before}


# ---------------------------------------------------------------- afterok chain

def test_afterok_chain(run_lrt, db):
    first = make_tokens(db, "stage1", 6, ["sleep", "1"], "s1")
    second = make_tokens(db, "stage2", 4, ["true"], "s2")
    run_lrt("launch", "slurm", "--pilots", "2", "--type", "stage1", "--pilot-args", PILOT_ARGS)
    (rec1,) = launch_records(db)
    run_lrt("launch", "slurm", "--pilots", "2", "--type", "stage2", "--after", rec1["batch_id"],
            "--pilot-args", PILOT_ARGS)
    rec2 = [r for r in launch_records(db) if r["type"] == "stage2"][0]
    assert rec2["after"] == rec1["batch_id"]
    shown = subprocess.run(["scontrol", "show", "job", "-o", rec2["batch_id"]], capture_output=True,
                           text=True).stdout
    assert f"Dependency=afterok:{rec1['batch_id']}" in shown, shown
    wait_for(lambda: state_counts(db, "stage2").get("done") == 4, 180, "stage 2 done",
             interval=1)
    assert state_counts(db, "stage1") == {"done": 6}
    a, b = tokens(db, first), tokens(db, second)
    assert min(t["timings"]["claimed"] for t in b) >= max(t["timings"]["finished"] for t in a)
    assert {t["batch_job"]["array_id"] for t in b} == {rec2["batch_id"]}


# ---------------------------------------------------------------- elastic launcher

def test_elastic_launcher_submits_to_the_backlog_and_stops(run_lrt, db):
    make_tokens(db, "elastic", 30, ["true"], "el")
    res = run_lrt("launch", "slurm", "--auto", "--type", "elastic", "--max-pilots", "2", "--tokens-per-pilot",
                  "10", "--interval", "2", "--max-rounds", "60", "--pilot-args", PILOT_ARGS, timeout=200)
    assert state_counts(db, "elastic") == {"done": 30}, res.stdout + pilot_log_tail(db)
    assert "no todo tokens and no pilots left" in res.stdout, res.stdout
    recs = sorted(launch_records(db, limit=None), key=lambda r: r["time"])
    assert recs and all(r["auto"] and r["system"] == "slurm" for r in recs)
    # 30 todo / 10 per pilot = 3 wanted, capped at --max-pilots 2
    assert recs[0]["count"] == 2
    assert sum(r["count"] for r in recs) >= 2
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("round 1:")]
    assert lines and "30 todo, 0 queued, 0 running -> submitted 2" in lines[0]


# ---------------------------------------------------------------- pilots that fail are shown failed

def test_pilots_that_fail_at_start_are_flagged(run_lrt, db):
    """Every array element dies at once (a broken site wrapper): list and status say so, with the code."""
    run_lrt("launch", "slurm", "--pilots", "2", "--type", "doomed", "--lrt", "sh -c 'exit 3'")
    (rec,) = launch_records(db)
    s = wait_for(lambda: (lambda r: r if r["failed"] == 2 else None)(launch_summary(db)[0]), 90,
                 "both elements to be counted failed")
    assert (s["batch_id"], s["queued"], s["running"], s["finished"]) == (rec["batch_id"], 0, 0, 0)
    assert s["exit_codes"] == {"3": 2} and s["flag"] == "ALL FAILED"
    assert {e["state"] for e in db.get(rec["_id"])["ended"].values()} == {"FAILED"}
    row = run_lrt("launch", "list").stdout.splitlines()[1]
    assert row.split()[2:10] == ["slurm", rec["batch_id"], "doomed", "2", "0", "0", "0", "2"], row
    assert row.endswith("ALL FAILED (3: 2)")
    assert "ALL FAILED" in run_lrt("status").stdout
    (p,) = json.loads(run_lrt("status", "--json").stdout)["pilots"]
    assert (p["failed"], p["flag"]) == (2, "ALL FAILED")


def test_bad_pilot_args_submit_nothing(run_lrt, db, tmp_path):
    res = run_lrt("launch", "slurm", "--pilots", "50", "--pilot-args", "--idle-exti 5",
                  "--dir", str(tmp_path / "L"), check=False)
    assert res.returncode == 2 and "unrecognized arguments: --idle-exti 5" in res.stderr, res.stderr
    # no job of this launch (work dir under tmp_path); other users' jobs on the shared Slurm may come and go
    dirs = subprocess.run(["squeue", "-h", "-o", "%Z"], capture_output=True, text=True).stdout.split()
    assert not [d for d in dirs if d.startswith(str(tmp_path))] and launch_records(db) == []
    assert not (tmp_path / "L").exists()
