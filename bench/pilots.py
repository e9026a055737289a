"""Pilot throughput on a no-op payload: tokens/s, requests/token, conflicts, overhead, RSS, server CPU.

    python3 bench/pilots.py [--pilots 1,8,32] [--tokens 2000] [--tokens-single 500]
    python3 bench/pilots.py --url http://127.0.0.1:5984 --server-pid PID   # see benchlib.py

Starts its own local server (pouchdb-server) in a temporary folder unless
``--url`` names an external one, and for each pilot count: a fresh, uniquely
named database (deleted afterwards), N tokens whose command is ``["true"]``, N pilots
(``python -m lrt.cli pilot --type bench --idle-exit 2 --stats FILE``, the default poll) started at once.

Figures:

* drain tokens/s: N / (last finish - first claim), both on the server clock
  (from the tokens' history), so pilot start-up and idle exit are excluded;
* end to end: N / (launch -> last pilot exit), including start-up and the idle exit;
* HTTP requests per token: the pilots' own request counters (every retry counts);
* lost claims per claim: claim requests that found the token taken;
* median overhead between payloads: the time from one payload's exit to the next
  payload's start in the same pilot (finish + claim + spawn), median over all;
* pilot RSS: largest ``ru_maxrss`` of any pilot;
* server CPU per token: utime+stime of the server process and its descendants
  (CouchDB: beam.smp + JavaScript) from /proc, before/after;
* pilot + payload CPU per token: rusage of the reaped pilots (and so of their payloads).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lrt import design  # noqa: E402
from lrt.couch import Database, Server  # noqa: E402
from benchlib import Target, add_affinity_arg, add_server_args, apply_affinity, child_env, target  # noqa: E402


# `lrt` under cProfile with a CPU-time clock (waiting for the server costs nothing); argv[1]: output
PROFILE_WRAPPER = r"""
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
prof = cProfile.Profile(time.process_time)
sys.argv = ["lrt"] + sys.argv[1:]
prof.enable()
try:
    runpy.run_module("lrt.cli", run_name="__main__", alter_sys=True)
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def run(srv: Target, admin: Server, n_pilots: int, n_tokens: int, work: Path,
        batch: int = 0, profile: Optional[Path] = None) -> dict:
    db = admin.database(f"bench_pilots_{n_pilots}_{secrets.token_hex(4)}")
    db.create(exist_ok=False)
    try:
        return _drain(srv, db, n_pilots, n_tokens, work, batch, profile)
    finally:
        db.delete()


def _drain(srv: Target, db: Database, n_pilots: int, n_tokens: int, work: Path, batch: int,
           profile: Optional[Path]) -> dict:
    design.install(db)
    now = time.time()
    docs = [{"_id": f"b-{i:06d}", "kind": "token", "schema": 1, "type": "bench", "state": "todo",
             "priority": 0, "created": now, "attempts": 0, "max_attempts": 3, "command": ["true"],
             "payload": {}, "inputs": [], "outputs": None, "lease": None, "history": []}
            for i in range(n_tokens)]
    for i in range(0, n_tokens, 1000):
        db.bulk_docs(docs[i:i + 1000])
    db.view("lrt-claim", "todo", limit=1)  # build the index before the clock starts
    db.view("lrt", "locked", limit=1)
    env = child_env(**srv.env())
    env.pop("LRT_COUCH_PASSWORD_FILE", None)
    env.update(LRT_COUCH_DB=db.name, LRT_CONFIG="/nonexistent/lrt-config.yaml", PYTHONPATH=str(ROOT))
    out = Path(tempfile.mkdtemp(prefix=f"p{n_pilots}-", dir=work))
    cpu0 = srv.cpu() if srv.has_cpu else 0.0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    def cmd(k: int) -> List[str]:  # `python -m lrt.cli`, or the same under a CPU-time profiler
        if profile is None:
            return [sys.executable, "-m", "lrt.cli"]
        return [sys.executable, "-c", PROFILE_WRAPPER, str(profile / f"pilot-{n_pilots}-{k:03d}.prof")]
    procs = [subprocess.Popen(cmd(k) + ["pilot", "--type", "bench",
                               "--idle-exit", "2", "--workdir", str(out / f"w{k}"),
                               "--stats", str(out / f"s{k}.json")]
                              + (["--batch", str(batch)] if batch else []),
                              env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k in range(n_pilots)]
    codes = [p.wait() for p in procs]
    t_end = time.time()
    cpu1 = srv.cpu() if srv.has_cpu else 0.0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    stats = [json.loads((out / f"s{k}.json").read_text()) for k in range(n_pilots)]
    rows = db.all_docs(include_docs=True)["rows"]
    claimed, finished, done = [], [], 0
    for r in rows:
        d = r.get("doc") or {}
        if d.get("kind") != "token":
            continue
        if d.get("state") == "done":
            done += 1
        h = (d.get("history") or [{}])[-1]
        if h.get("claimed") and h.get("finished"):
            claimed.append(h["claimed"])
            finished.append(h["finished"])
    drain = max(finished) - min(claimed)
    overheads = [x for s in stats for x in s.get("overhead_samples", [])]
    reqs = sum(s["requests"] for s in stats)
    claims = sum(s["claims"] for s in stats)
    lost = sum(s["lost"] for s in stats)
    return {
        "pilots": n_pilots, "tokens": n_tokens, "done": done, "exit_codes": sorted(set(codes)),
        "drain_tokens_per_s": round(n_tokens / drain, 1),
        "end_to_end_tokens_per_s": round(n_tokens / (t_end - t0), 1),
        "requests_per_token": round(reqs / n_tokens, 2),
        "claims_per_token": round(claims / n_tokens, 2),
        "lost_per_claim": round(lost / claims, 3) if claims else None,
        "view_queries": sum(s["view_queries"] for s in stats),
        "claims_with_finish": sum(s.get("combined", 0) for s in stats),
        "median_overhead_ms": round(1000 * statistics.median(overheads), 1) if overheads else None,
        "max_pilot_rss_mb": round(max(s["rss_kb"] for s in stats) / 1024, 1),
        "server_cpu_ms_per_token": round(1000 * (cpu1 - cpu0) / n_tokens, 2) if srv.has_cpu else None,
        "pilot_cpu_ms_per_token": round(1000 * client_cpu / n_tokens, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pilots", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--tokens-single", type=int, default=500, help="tokens for the 1-pilot run")
    ap.add_argument("--batch", type=int, default=0, help="pass --batch N to the pilots (0: their default)")
    ap.add_argument("--warmup", type=int, default=500,
                    help="tokens of an unrecorded warm-up drain, 8 pilots (0: none)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", type=Path, help="run each pilot under cProfile, profiles into this folder "
                    "(read them with python -m pstats; CPU figures then include the profiler)")
    add_server_args(ap)
    add_affinity_arg(ap)
    a = ap.parse_args()
    apply_affinity(a.pilot_cpus)
    with tempfile.TemporaryDirectory(prefix="lrt-bench-pilots-") as tmp:
        work = Path(tmp)
        with target(a, work) as srv:
            admin = srv.server(cookie_auth=True)
            print(srv.describe(), file=sys.stderr)
            results = []
            if a.warmup:  # unrecorded: V8 compiles the server's hot paths first (see compare_picas.py)
                run(srv, admin, 8, a.warmup, work, a.batch)
            for n in [int(x) for x in a.pilots.split(",")]:
                load = os.getloadavg()[0]
                r = run(srv, admin, n, a.tokens_single if n == 1 else a.tokens, work, a.batch, a.profile)
                r["load_before"] = round(load, 1)
                results.append(r)
                print(json.dumps(r), flush=True)
    if not a.json:
        print()
        print("| pilots | tokens | load | drain tokens/s | end-to-end tokens/s | HTTP req/token | lost claims/claim "
              "| median overhead ms | max pilot RSS MB | server CPU ms/token | pilot+payload CPU ms/token |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['pilots']} | {r['tokens']} | {r['load_before']} | {r['drain_tokens_per_s']} "
                  f"| {r['end_to_end_tokens_per_s']} | {r['requests_per_token']} | {r['lost_per_claim']} "
                  f"| {r['median_overhead_ms']} | {r['max_pilot_rss_mb']} | {r['server_cpu_ms_per_token']} "
                  f"| {r['pilot_cpu_ms_per_token']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
