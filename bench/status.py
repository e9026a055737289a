#!/usr/bin/env python3
"""Latency of ``lrt status`` with a warm index, at several database sizes.

For each size N: a fresh database gets N tokens (two types, three states), the
``lrt/tokens`` index is warmed by one query (its build time is printed too), then

* the function behind ``lrt status`` (``lrt.cli.tokens.status_json``) is timed
  over several calls (median, min, max), and
* ``lrt status`` is run once as a subprocess (the user's wall time, including
  Python start-up; the start-up of ``lrt --version`` is printed for reference).

Starts its own local server in a temporary folder unless LRT_BENCH_COUCH_URL
(credentials as in bench/benchlib.py) or LRT_COUCH_URL is set.

    python3 bench/status.py                       # N = 10000 and 100000
    python3 bench/status.py --sizes 10000 --repeat 5
    LRT_BENCH_COUCH_URL=http://127.0.0.1:5984 python3 bench/status.py --sizes 1000000 --keep
        # --keep: the database (lrt_bench_status_N) is kept, and reused by the next --keep run
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrt import design, states  # noqa: E402
from lrt.cli.tokens import status_json  # noqa: E402
from lrt.tokens import TokenSet  # noqa: E402
from benchlib import bench_server  # noqa: E402

CONFIG = """\
type: {type}
id: "{type}_{{i:07d}}"
command: ["python3", "process.py"]
sweep:
  i: {{range: [0, {n}]}}
"""


def populate(db, tmp: Path, n: int) -> None:
    """N tokens: half of type a, half of type b; 1 % of a done, 1 % error (real transitions)."""
    for t, k in (("a", n // 2), ("b", n - n // 2)):
        cfg = tmp / f"{t}_{n}.yaml"
        cfg.write_text(CONFIG.format(type=t, n=k))
        res = TokenSet.from_config(cfg).create(db)
        assert res.created == k, res
    moved = []
    for i in range(max(1, n // 50)):
        doc = db.get(f"a_{i:07d}")
        states.apply(doc, "locked")
        states.apply(doc, "done" if i % 2 else "error")
        moved.append(doc)
    db.bulk_docs(moved)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=5, help="timed function calls per size")
    ap.add_argument("--keep", action="store_true", help="keep each database (lrt_bench_status_N) and "
                    "reuse it if it holds N tokens already (then 'created' is not measured)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmpd:
        tmp = Path(tmpd)
        with bench_server(tmp) as (server, _local, env):
            info = server.info()
            print(f"server: {info.get('vendor', {}).get('name', '?')} {info.get('version', '?')} "
                  f"at {server.url}; python {sys.version.split()[0]}")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lrt.cli", "--version"], env=env, check=True,
                           capture_output=True, cwd=ROOT)
            print(f"python start-up of `lrt --version`: {time.perf_counter() - t0:.2f} s")
            for n in [int(x) for x in a.sizes.split(",") if x]:
                db = server.database(f"lrt_bench_status_{n}" + ("" if a.keep else f"_{os.getpid()}"))
                reuse = a.keep and db.exists() and status_json(db)["total"] == n
                if not reuse:
                    db.delete()
                    db.create()
                    design.install(db)
                try:
                    t0 = time.perf_counter()
                    if not reuse:
                        populate(db, tmp, n)
                    made = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    st = status_json(db)
                    cold = time.perf_counter() - t0
                    assert st["total"] == n, st
                    times = []
                    for _ in range(a.repeat):
                        t0 = time.perf_counter()
                        st = status_json(db)
                        times.append(time.perf_counter() - t0)
                    assert st["total"] == n
                    t0 = time.perf_counter()
                    out = subprocess.run([sys.executable, "-m", "lrt.cli", "--db", db.name, "status"],
                                         env=env, capture_output=True, text=True, cwd=ROOT)
                    cli = time.perf_counter() - t0
                    assert out.returncode == 0 and str(n) in out.stdout, out.stderr
                    print(f"N={n}: created+moved in {made:.1f} s; first query (index build) {cold:.2f} s; "
                          f"warm status_json median {statistics.median(times) * 1000:.0f} ms "
                          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {a.repeat} calls); "
                          f"`lrt status` subprocess {cli:.2f} s")
                finally:
                    if not a.keep:
                        db.delete()
            print(out.stdout.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
