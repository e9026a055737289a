#!/usr/bin/env python3
"""Dependencies between tokens: what they cost the pilots, and how fast children are released.

    python3 bench/deps.py [--parents 244] [--pilots 4]

Starts its own local server (pouchdb-server) and runs three cases, each in a fresh
database with real pilots (``python -m lrt.cli pilot --idle-exit 2 --stats FILE``):

* none: N tokens without dependencies (the baseline: requests per token);
* per-token: N parents, N children each ``after: {id: parent}``;
* set: N parents, one child ``after: {tokenset: parents}``.

Figures: HTTP requests per token run (the pilots' counters), release latency (child's
``released`` minus its parent's finish, server clock estimate; median and max), and for
the set case how many times the child was written after its creation (its revision
number minus one; the pilots run only the parents there): 1 = released once.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lrt import design  # noqa: E402
from lrt.server import LocalServer, free_port  # noqa: E402
from lrt.tokens import TokenSet  # noqa: E402


def case(srv: LocalServer, admin, kind: str, n: int, pilots: int, work: Path) -> dict:
    db = admin.database(f"bench_deps_{kind}_{int(time.time())}")
    db.create()
    design.install(db)
    base = f"command: ['true']\nsweep: {{n: {{range: [0, {n}]}}}}\n"
    TokenSet.from_text(f"tokenset: par\ntype: par\nid: 'par_{{n}}'\n{base}").create(db)
    if kind == "per-token":
        TokenSet.from_text(f"tokenset: kid\ntype: kid\nid: 'kid_{{n}}'\nafter: {{id: 'par_{{n}}'}}\n{base}").create(db)
    elif kind == "set":
        TokenSet.from_text("tokenset: kid\ntype: kid\nid: kid\nafter: {tokenset: par}\n"
                           "command: ['true']\n").create(db)
    env = dict(os.environ, LRT_COUCH_URL=srv.url, LRT_COUCH_USER=srv.user,
               LRT_COUCH_PASSWORD=srv.password, LRT_COUCH_DB=db.name,
               LRT_CONFIG="/nonexistent/lrt-config.yaml", PYTHONPATH=str(ROOT))
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    only = ["--type", "par"] if kind == "set" else []
    procs = [subprocess.Popen([sys.executable, "-m", "lrt.cli", "pilot", "--idle-exit", "2", "--poll", "0.5",
                               "--stats", str(out / f"s{i}.json"), *only], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(pilots)]
    for p in procs:
        p.wait()
    stats = [json.loads((out / f"s{i}.json").read_text()) for i in range(pilots)]
    tokens = sum(s["tokens"] for s in stats)
    requests = sum(s["requests"] for s in stats)
    docs = {r["id"]: r["doc"] for r in db.all_docs(include_docs=True)["rows"] if not r["id"].startswith("_")}
    lat = []
    writes = None
    if kind == "per-token":
        for i in range(n):
            kid, par = docs[f"kid_{i}"], docs[f"par_{i}"]
            if kid.get("released"):
                lat.append(kid["released"] - par["history"][-1]["finished"])
    elif kind == "set":
        kid = docs["kid"]
        last = max(docs[f"par_{i}"]["history"][-1]["finished"] for i in range(n))
        lat.append(kid["released"] - last)
        writes = int(kid["_rev"].split("-")[0]) - 1  # the pilots do not run it (--type par)
    db.delete()
    return {"case": kind, "tokens": tokens, "requests/token": round(requests / max(1, tokens), 2),
            "release median s": round(statistics.median(lat), 3) if lat else None,
            "release max s": round(max(lat), 3) if lat else None, "set child writes after creation": writes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parents", type=int, default=244)
    ap.add_argument("--pilots", type=int, default=4)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lrt-bench-deps-"))
    srv = LocalServer.start(base=work / "server", port=free_port())
    try:
        from lrt.couch import Server

        admin = Server(srv.url, srv.user, srv.password)
        for kind in ("none", "per-token", "set"):
            print(json.dumps(case(srv, admin, kind, a.parents, a.pilots, work)), flush=True)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
