#!/usr/bin/env python3
"""Staging throughput through real gfal2 (mock plug-in): how many gfal2 calls, how long.

1. State query of N mock SURLs (default 10^4): ``Gfal.states`` -- one
   ``getxattr("user.status")`` per file, because gfal2 has no bulk xattr call.
2. Bring-online request for M files (default 10^3) in bulk batches of B
   (default 100 and 1000) -- one ``bring_online(list)`` per batch -- followed by
   one bulk poll round; against the same M files requested one call per file.
3. A ``lrt stage run`` pass (Stager.run_once) over T staging tokens of F inputs
   each on a local server (default 200 x 5): gfal2 calls and CouchDB requests.

The mock plug-in answers from the URL itself, so the times measure lrt and gfal2
overhead, not a storage system; the call counts are what transfers to a real SRM
endpoint, where each call is a round trip.  Needs gfal2's Python bindings
(scripts/testbed-gfal2.sh VENV).

    python3 bench/staging.py
    python3 bench/staging.py --n 10000 --m 1000 --batches 100,1000 --tokens 200
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrt.staging.gfal import Gfal, require, summarize  # noqa: E402

URL = "mock://srm.example.org/pnfs/lofar/ops/L{obs}_SB{sb:03d}_uv.MS.tar?size=1000&user.status={st}"


def urls(n: int, obs: int = 100000) -> list:
    states = ("NEARLINE", "NEARLINE", "NEARLINE", "ONLINE_AND_NEARLINE")
    return [URL.format(obs=obs + i // 1000, sb=i % 1000, st=states[i % 4]) for i in range(n)]


def bench_states(n: int) -> None:
    g = Gfal()
    lst = urls(n)
    t0 = time.perf_counter()
    st = g.states(lst)
    dt = time.perf_counter() - t0
    s = summarize(st)
    print(f"state query: {n} files in {dt:.2f} s ({n / dt:.0f} files/s), {g.calls} gfal2 calls, "
          f"{s['percent_online']:.0f}% online")


def bench_bring_online(m: int, batches: list) -> None:
    lst = urls(m, obs=200000)
    for b in batches:
        g = Gfal(batch=b)
        t0 = time.perf_counter()
        req = g.bring_online(lst, pin=3600)
        t1 = time.perf_counter()
        res = g.poll(req.batches)
        t2 = time.perf_counter()
        print(f"bring-online bulk (batch {b}): {m} files requested in {t1 - t0:.3f} s with "
              f"{len(req.batches)} call(s); one poll round {t2 - t1:.3f} s "
              f"({len(res.online)} online); {g.calls} gfal2 calls in total")
    g = Gfal()
    t0 = time.perf_counter()
    for u in lst:
        g.calls += 1
        g.ctx.bring_online(u, 3600, 86400, True)
    dt = time.perf_counter() - t0
    print(f"bring-online one call per file: {m} files in {dt:.3f} s with {g.calls} gfal2 calls")


def bench_stager(tokens: int, per_token: int) -> None:
    from lrt import design
    from lrt.couch import Server
    from lrt.server import LocalServer, free_port
    from lrt.staging.dispatch import Stager

    local = None
    url = os.environ.get("LRT_COUCH_URL")
    if url:
        server = Server(url, os.environ.get("LRT_COUCH_USER"), os.environ.get("LRT_COUCH_PASSWORD"))
    else:
        local = LocalServer.start(base=Path(tempfile.mkdtemp(prefix="lrt-bench-staging-")),
                                  port=free_port())
        server = Server(local.url, local.user, local.password)
    db = server.database(f"lrt_bench_staging_{os.getpid()}")
    try:
        db.create()
        design.install(db)
        now = time.time()
        lst = urls(tokens * per_token, obs=300000)
        docs = [{"_id": f"stage-{i:05d}", "kind": "token", "schema": 1, "type": "bench",
                 "state": "staging", "priority": 0, "created": now, "updated": now, "attempts": 0,
                 "max_attempts": 3, "inputs": [{"url": u, "checksum": None}
                                               for u in lst[i * per_token:(i + 1) * per_token]],
                 "needs_staging": True, "lease": None, "error": None}
                for i in range(tokens)]
        for i in range(0, len(docs), 1000):
            db.bulk_docs(docs[i:i + 1000])
        t0 = time.perf_counter()
        db.view("lrt", "tokens", limit=1, reduce=False)  # build the view index first
        print(f"(view index for {tokens} tokens built in {time.perf_counter() - t0:.2f} s, not counted)")
        g = Gfal()
        stager = Stager(db, g)
        before = server.requests_sent
        t0 = time.perf_counter()
        res = stager.run_once()
        dt = time.perf_counter() - t0
        print(f"stage run pass: {tokens} tokens x {per_token} inputs -> {res['todo']} todo in "
              f"{dt:.2f} s; {g.calls} gfal2 calls, {server.requests_sent - before} CouchDB requests")
    finally:
        db.delete()
        if local is not None:
            local.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="files for the state query")
    ap.add_argument("--m", type=int, default=1000, help="files for bring-online")
    ap.add_argument("--batches", default="100,1000", help="bulk batch sizes to try")
    ap.add_argument("--tokens", type=int, default=200, help="staging tokens for the stager pass (0: skip)")
    ap.add_argument("--per-token", type=int, default=5)
    a = ap.parse_args()
    require()
    import gfal2

    print(f"gfal2 {gfal2.get_version()}, python {sys.version.split()[0]}, mock plug-in")
    bench_states(a.n)
    bench_bring_online(a.m, [int(x) for x in a.batches.split(",") if x])
    if a.tokens:
        bench_stager(a.tokens, a.per_token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
