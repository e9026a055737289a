#!/usr/bin/env python3
"""Server CPU per CouchDB operation: what one token's protocol costs the server.

Sequential single requests (one client), the server process's CPU time read
from /proc before and after each group of N operations.  Shows what a token
costs the server: one claim and one finish (two writes of the document, sent
by the pilot in one ``_bulk_docs`` with the neighbouring token's), two updates
of the claim-view index, and a share of a ``todo`` window read.

    python3 bench/server_ops.py [--n 300]
    python3 bench/server_ops.py --url http://127.0.0.1:5984 --server-pid PID   # see benchlib.py

Starts its own local server (in a temporary folder) unless ``--url`` names an
external one; the figures need the server's CPU time, so an external server
must run on this machine and be named by ``--server-pid`` (its descendants,
e.g. CouchDB's JavaScript processes, count too).  The database is fresh,
uniquely named, and deleted afterwards.
"""
from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import Target, add_server_args, target  # noqa: E402
from lrt import design  # noqa: E402
from lrt.couch import Database, Server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="operations per kind")
    add_server_args(ap)
    args = ap.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory(prefix="lrt-bench-ops-") as tmp, target(args, Path(tmp)) as srv:
        if not srv.has_cpu:
            raise SystemExit("server_ops.py needs the server's CPU: give --server-pid")
        server = srv.server()
        db = server.database(f"lrt_bench_ops_{secrets.token_hex(4)}")
        db.create(exist_ok=False)
        try:
            _measure(srv, server, db, n)
        finally:
            db.delete()


def _measure(srv: Target, server: Server, db: Database, n: int) -> None:
    design.ensure(db)
    db.bulk_docs([{"_id": f"d{i:05d}", "kind": "token", "type": "x", "state": "todo",
                   "created": i, "v": 0} for i in range(n)])
    docs = [db.get(f"d{i:05d}") for i in range(n)]
    db.view("lrt-claim", "todo", limit=1)  # indexes built before measuring
    db.view("lrt-window", "todo", limit=1)

    def measure(label, fn):
        c0, t0 = srv.cpu(), time.perf_counter()
        fn()
        c1, t1 = srv.cpu(), time.perf_counter()
        print(f"| {label} | {(c1 - c0) / n * 1000:.2f} | {(t1 - t0) / n * 1000:.2f} |")

    print(f"N = {n} per row; server CPU and wall time per operation\n")
    print("| operation | server CPU ms/op | wall ms/op |\n|---|---:|---:|")
    measure("GET document (basic auth)", lambda: [db.get(d["_id"]) for d in docs])
    cookie = srv.server(cookie_auth=True).database(db.name)
    cookie.exists()  # logs in
    measure("GET document (session cookie)", lambda: [cookie.get(d["_id"]) for d in docs])

    def puts():
        for d in docs:
            d["v"] = 1
            cookie.put(d)
    measure("PUT document with _rev", puts)
    measure("`_update/heartbeat` refusal (no write)", lambda: [
        cookie.update_handler("lrt-claim", "heartbeat", d["_id"], body={"claim": "none"}) for d in docs])

    def pairs():  # what a pilot sends per token: finish of one + claim of the next
        for i in range(0, n - 1, 2):
            a, b = docs[i], docs[i + 1]
            a["v"] = b["v"] = 2
            res = cookie.bulk_docs([a, b])
            a["_rev"], b["_rev"] = res[a["_id"]]["rev"], res[b["_id"]]["rev"]
    measure("`_bulk_docs` of 2 documents (per token: finish + next claim), per document", pairs)
    for ddoc in ("lrt-claim", "lrt-window"):
        c0 = srv.cpu()
        db.view(ddoc, "todo", limit=1)
        print(f"| `{ddoc}/todo` index update, per changed document (batched) | "
              f"{(srv.cpu() - c0) / (3 * n) * 1000:.2f} | |")
    for ddoc, limit, docs_too in (("lrt-claim", 25, True), ("lrt-claim", 100, True), ("lrt-window", 100, False),
                                  ("lrt-claim", 500, True), ("lrt-window", 500, False),
                                  ("lrt-claim", 500, False)):
        k = max(1, n // 10)
        c0, t0 = srv.cpu(), time.perf_counter()
        for _ in range(k):
            cookie.view(ddoc, "todo", limit=limit, reduce=False, include_docs=docs_too)
        what = " with include_docs" if docs_too else (" (documents as values)" if ddoc == "lrt-window" else "")
        print(f"| `{ddoc}/todo` query, {limit} rows{what} (per query) | "
              f"{(srv.cpu() - c0) / k * 1000:.2f} | {(time.perf_counter() - t0) / k * 1000:.2f} |")


if __name__ == "__main__":
    main()
