#!/usr/bin/env python3
"""lrt vs picas 1.1.2: the same workload, the same server, the same run.

    python3 bench/compare_picas.py [--tokens 2000] [--pilots 8,32] [--systems picas,lrt]
    LRT_BENCH_COUCH_USER=admin LRT_BENCH_COUCH_PASSWORD_FILE=pw \
        python3 bench/compare_picas.py --url http://127.0.0.1:5984 --server-pid PID

For each pilot count and each system: a fresh database on one server (a local
lrt.server.LocalServer started here on a free loopback port, or the external
server of ``--url``, see bench/benchlib.py), N no-op tokens,
N pilots started at once, each payload appending its token id to that pilot's
own file. Reported per run:

* tokens/s over the drain (first payload to last payload, from the output
  files' appearance and mtimes) and end to end (launch to last pilot exit,
  including interpreter start-up and lrt's idle-exit wait);
* tokens executed more than once, and never;
* HTTP requests per token, counted inside each pilot (couchdb-python's
  ``Session.request`` for picas; ``lrt.couch.Server.requests_sent`` for lrt);
* server CPU seconds per token: utime+stime of the server process and all its
  descendants (Apache CouchDB: beam.smp plus its JavaScript processes) from
  /proc before and after; the JavaScript share is also given;
* pilot + payload CPU per token: the rusage of the reaped pilots and, through
  them, of their payloads.

picas runs from bench/.venv-picas (created here from bench/requirements-picas.txt
on first use); it is never a dependency of lrt. Both systems' payload is the
same command, ``sh -c 'echo "$ID" >> "$FILE"'``.

lrt's pilots are ``python -m lrt.cli pilot --type bench --idle-exit 2``, run
through a two-line wrapper that sums ``requests_sent`` at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lrt import design  # noqa: E402
from lrt.couch import Database, Server  # noqa: E402
from benchlib import Target, add_affinity_arg, child_env, add_server_args, apply_affinity, target  # noqa: E402

VENV = HERE / ".venv-picas"
VENV_PY = VENV / "bin" / "python"
PAYLOAD = 'echo "$LRT_TOKEN_ID" >> "$BENCH_OUT"'

# Runs `lrt` as `python -m lrt.cli` does, and writes the HTTP request count at exit.
LRT_WRAPPER = r"""
import atexit, json, os, runpy, sys
import lrt.couch as couch
servers = []
_init = couch.Server.__init__
def _tracking_init(self, *a, **kw):
    _init(self, *a, **kw)
    servers.append(self)
couch.Server.__init__ = _tracking_init
@atexit.register
def _dump():
    with open(os.environ["BENCH_REQ_FILE"], "w") as fh:
        json.dump({"requests": sum(s.requests_sent for s in servers)}, fh)
sys.argv = ["lrt"] + sys.argv[1:]
runpy.run_module("lrt.cli", run_name="__main__", alter_sys=True)
"""


def ensure_picas_venv() -> None:
    if VENV_PY.exists() and subprocess.run([str(VENV_PY), "-c", "import picas, couchdb"],
                                           capture_output=True).returncode == 0:
        return
    print(f"creating {VENV} with picas (one time)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(HERE / "requirements-picas.txt")], check=True)



def lrt_token(i: int, now: float) -> Dict[str, Any]:
    """A token as COMMON.md's schema v1 defines it."""
    return {"_id": f"bench-{i:05d}", "kind": "token", "schema": 1, "type": "bench", "state": "todo",
            "priority": 0, "created": now, "updated": now, "tokenset": "bench", "attempts": 0,
            "max_attempts": 3, "retry": {"backoff": 30, "payload_errors": False}, "not_before": None,
            "expected_duration": None, "timeout": None, "command": ["sh", "-c", PAYLOAD],
            "sandbox": None, "payload": {}, "inputs": [], "outputs": None, "needs_staging": False,
            "lease": None, "pilot": None, "host": None, "batch_job": None, "exit_code": None,
            "error": None, "timings": {}, "output": [], "log_tail": None, "history": [],
            "cancel_requested": False}


def setup_lrt(db: Database, n: int) -> None:
    design.install(db)
    now = time.time()
    for _batch, res in db.save_batches((lrt_token(i, now) for i in range(n)), 1000):
        if res.errors or res.conflicts:
            raise SystemExit(f"lrt setup: {len(res.errors) + len(res.conflicts)} tokens not saved")
    db.view("lrt-claim", "todo", limit=1)  # build the claim index before the clock starts
    db.view("lrt", "tokens", limit=1, reduce=False)


def setup_picas(srv: Target, db: Database, n: int) -> None:
    env = child_env(BENCH_COUCH_PASSWORD=srv.password or "")
    subprocess.run([str(VENV_PY), str(HERE / "picas_pilot.py"), "setup", srv.url, db.name, srv.user or "",
                    str(n)], env=env, check=True)
    db.view("Monitor", "todo", limit=1)  # build the index before the clock starts


def launch(system: str, srv: Target, db: Database, k: int, out: Path) -> subprocess.Popen:
    outfile, reqfile = out / f"pilot-{k:03d}.ids", out / f"pilot-{k:03d}.req.json"
    if system == "picas":
        env = child_env(BENCH_COUCH_PASSWORD=srv.password or "")
        cmd = [str(VENV_PY), str(HERE / "picas_pilot.py"), "pilot", srv.url, db.name, srv.user or "",
               str(outfile), str(reqfile)]
        cwd = str(out)
    else:
        env = child_env(**srv.env())
        env.pop("LRT_COUCH_PASSWORD_FILE", None)
        env.update(LRT_COUCH_DB=db.name,
                   LRT_CONFIG="/nonexistent/lrt-config.yaml", BENCH_OUT=str(outfile),
                   BENCH_REQ_FILE=str(reqfile), PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-c", LRT_WRAPPER, "pilot", "--type", "bench", "--idle-exit", "2",
               "--workdir", str(out / f"work-{k:03d}"), "--stats", str(out / f"pilot-{k:03d}.stats.json")]
        cwd = str(ROOT)
    log = open(out / f"pilot-{k:03d}.log", "wb")
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    finally:
        log.close()


def count_done(system: str, db: Database) -> Dict[str, int]:
    rows = db.all_docs(include_docs=True)["rows"]
    c: Counter = Counter()
    for r in rows:
        d = r.get("doc") or {}
        if system == "picas" and d.get("type") == "token":
            c["done" if d.get("done", 0) > 0 else ("locked" if d.get("lock", 0) > 0 else "todo")] += 1
        elif system == "lrt" and d.get("kind") == "token":
            c[d.get("state", "?")] += 1
    return dict(c)


def run_one(system: str, srv: Target, admin: Server, n_tokens: int, n_pilots: int,
            base: Path, timeout: float) -> Dict[str, Any]:
    """One drain on a fresh, uniquely named database (deleted afterwards, whatever happens)."""
    db = admin.database(f"bench_{system}_{n_pilots}_{secrets.token_hex(4)}")
    db.create(exist_ok=False)
    try:
        return _drain(system, srv, db, n_tokens, n_pilots, base, timeout)
    finally:
        db.delete()


def _drain(system: str, srv: Target, db: Database, n_tokens: int, n_pilots: int,
           base: Path, timeout: float) -> Dict[str, Any]:
    load_before = os.getloadavg()[0]
    if system == "picas":
        setup_picas(srv, db, n_tokens)
    else:
        setup_lrt(db, n_tokens)
    out = Path(tempfile.mkdtemp(prefix=f"{system}-{n_pilots}-", dir=base))
    cpu0 = srv.cpu_split() if srv.has_cpu else (0.0, 0.0)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    procs = [launch(system, srv, db, k, out) for k in range(n_pilots)]
    t_first = None
    deadline = t0 + timeout
    while any(p.poll() is None for p in procs):
        if t_first is None and any(out.glob("*.ids")):
            t_first = time.time()
        if time.time() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.01)
    for p in procs:
        p.wait()
    t_exit = time.time()
    cpu1 = srv.cpu_split() if srv.has_cpu else (0.0, 0.0)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    timed_out = t_exit > deadline
    ids: Counter = Counter()
    t_last = t0
    for f in out.glob("*.ids"):
        ids.update(line.strip() for line in f.read_text().splitlines() if line.strip())
        t_last = max(t_last, f.stat().st_mtime)
    requests = 0
    extra: Counter = Counter()
    missing_req = 0
    for k in range(n_pilots):
        rf = out / f"pilot-{k:03d}.req.json"
        if not rf.exists():
            missing_req += 1
            continue
        data = json.loads(rf.read_text())
        requests += data.get("requests", 0)
        extra["give_ups"] += data.get("give_ups", 0)
    rcs = Counter(p.returncode for p in procs)
    executed = len(ids)
    doubles = sum(1 for v in ids.values() if v > 1)
    drain = max(1e-9, t_last - (t_first or t0))
    res = {
        "system": system, "pilots": n_pilots, "tokens": n_tokens,
        "executed_distinct": executed, "never_executed": n_tokens - executed,
        "executions": sum(ids.values()), "executed_more_than_once": doubles,
        "drain_s": round(drain, 3), "tokens_per_s": round(n_tokens / drain, 1),
        "end_to_end_s": round(t_exit - t0, 3), "tokens_per_s_end_to_end": round(n_tokens / (t_exit - t0), 1),
        "startup_s": round((t_first or t0) - t0, 3),
        "http_requests_per_token": round(requests / n_tokens, 2) if not missing_req else None,
        # the server's processes and all their descendants (CouchDB: beam.smp + JavaScript)
        "server_cpu_ms_per_token": round(1000 * (cpu1[1] - cpu0[1]) / n_tokens, 3) if srv.has_cpu else None,
        # of which in the descendants (CouchDB: the JavaScript query servers)
        "server_children_cpu_ms_per_token": (round(1000 * ((cpu1[1] - cpu1[0]) - (cpu0[1] - cpu0[0])) / n_tokens, 3)
                                             if srv.has_cpu else None),
        # pilots and their payloads (sh), reaped children of this process
        "pilot_cpu_ms_per_token": round(1000 * client_cpu / n_tokens, 3),
        "db_states": count_done(system, db), "pilot_exit_codes": dict(rcs),
        "picas_claim_give_ups": extra["give_ups"] if system == "picas" else None,
        "pilots_without_request_count": missing_req, "timed_out": timed_out,
        # other work on the machine disturbs the figures: say how busy it was
        "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    return res


def fmt_table(results: List[Dict[str, Any]]) -> str:
    lines = ["| pilots | system | run | load before/after | tokens/s (drain) | tokens/s (end to end) | executed >1 | never executed "
             "| HTTP req/token | server CPU ms/token (of which children, e.g. JS) | pilot+payload CPU ms/token |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['pilots']} | {r['system']} | {r.get('repeat', 0) + 1} "
                     f"| {r['loadavg_1min_before']}/{r['loadavg_1min_after']} | {r['tokens_per_s']} | {r['tokens_per_s_end_to_end']} "
                     f"| {r['executed_more_than_once']} | {r['never_executed']} "
                     f"| {r['http_requests_per_token']} | {r['server_cpu_ms_per_token']} ({r['server_children_cpu_ms_per_token']}) "
                     f"| {r['pilot_cpu_ms_per_token']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--pilots", default="8,32", help="comma-separated pilot counts")
    ap.add_argument("--systems", default="picas,lrt")
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per system and pilot count, alternating the order; the summary "
                         "takes each system's best (least disturbed) run")
    ap.add_argument("--warmup", type=int, default=500,
                    help="tokens of an unrecorded warm-up drain per system, 8 pilots (0: none)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, id files)")
    add_server_args(ap)
    add_affinity_arg(ap)
    args = ap.parse_args()
    cpus = apply_affinity(args.pilot_cpus)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "picas" in systems:
        ensure_picas_venv()
    base = Path(tempfile.mkdtemp(prefix="lrt-bench-picas-"))
    results = []
    try:
        with target(args, base / "server") as srv:
            admin = srv.server(cookie_auth=True)
            print(f"{srv.describe()}; {admin.info().get('version', '?')}; pilots on CPUs "
                  f"{cpus or sorted(os.sched_getaffinity(0))}", file=sys.stderr)
            # The local server is a Node process: its first thousands of requests run
            # while V8 is still compiling the hot paths (measured: the same lrt run used
            # 14 ms of server CPU per token on a fresh server, 9 ms on a warm one).  Both
            # systems get an unrecorded warm-up drain, so neither pays for it in the table.
            if args.warmup:
                for system in systems:
                    run_one(system, srv, admin, args.warmup, 8, base, args.timeout)
            for n_pilots in [int(x) for x in args.pilots.split(",")]:
                for rep in range(args.repeat):
                    # alternate the order so neither system always runs first
                    for system in (systems if rep % 2 == 0 else systems[::-1]):
                        r = run_one(system, srv, admin, args.tokens, n_pilots, base, args.timeout)
                        r["repeat"] = rep
                        results.append(r)
                        print(json.dumps(r), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}", file=sys.stderr)
    print()
    print(fmt_table(results))
    by: Dict[Any, Dict[str, Any]] = {}
    for r in results:
        key = (r["system"], r["pilots"])
        if key not in by or r["tokens_per_s"] > by[key]["tokens_per_s"]:
            by[key] = r
    for n in sorted({r["pilots"] for r in results}):
        if ("picas", n) in by and ("lrt", n) in by:
            ratio = by[("lrt", n)]["tokens_per_s"] / max(1e-9, by[("picas", n)]["tokens_per_s"])
            # each repeat ran both systems back to back: the ratio within a repeat shares
            # the machine's state of that moment
            pairs = []
            for rep in range(args.repeat):
                rr = {r["system"]: r["tokens_per_s"] for r in results
                      if r["pilots"] == n and r.get("repeat") == rep}
                if "lrt" in rr and "picas" in rr:
                    pairs.append(rr["lrt"] / max(1e-9, rr["picas"]))
            pairs.sort()
            med = statistics.median(pairs) if pairs else float("nan")
            print(f"{n} pilots: lrt/picas tokens/s = {ratio:.2f}x (best of each); per repeat "
                  + ", ".join(f"{x:.2f}x" for x in pairs) + f"; median {med:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
