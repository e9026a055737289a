#!/usr/bin/env python3
"""Latency of ``lrt status`` with a warm index, at several database sizes.

For each size N: a fresh database gets N tokens (two types, three states), the
``lrt/tokens`` index is warmed by one query (its build time is printed too), then

* the function behind ``lrt status`` (``lrt.queries.status.status_json``) is timed
  over several calls (median, min, max), and
* ``lrt status`` is run as a subprocess (the user's wall time, including Python
  start-up), several times: min and median wall and CPU.

Before that, start-up alone (min and median of --runs runs; --compare-with DIR adds
another checkout, measured in turns): ``python -c pass``
(the interpreter), ``lrt --version``, and the CPU a pilot (``python -m lrt.cli
pilot``) has used when it opens its first connection to the server (an audit
hook on ``socket.connect`` in a ``sitecustomize`` reads ``getrusage`` there and
ends the process).  On a shared machine the minimum is the figure to quote.

Starts its own local server in a temporary folder unless LRT_BENCH_COUCH_URL
(credentials as in bench/benchlib.py) or LRT_COUCH_URL is set.

    python3 bench/status.py                       # N = 10000 and 100000
    python3 bench/status.py --sizes 10000 --repeat 5
    git archive c12dedd | tar -x -C /tmp/base && python3 bench/status.py --sizes "" --compare-with /tmp/base
    LRT_BENCH_COUCH_URL=http://127.0.0.1:5984 python3 bench/status.py --sizes 1000000 --keep
        # --keep: the database (lrt_bench_status_N) is kept, and reused by the next --keep run
    LRT_BENCH_COUCH_URL=http://127.0.0.1:5984 python3 bench/status.py --sizes "" --db NAME --compare-with DIR
        # --db: `lrt status` on an existing database (only read), in turns with the start-up runs
"""
from __future__ import annotations

import argparse
import os
import resource
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
from lrt.queries.status import status_json  # noqa: E402
from lrt.tokens import TokenSet  # noqa: E402
from benchlib import bench_server  # noqa: E402

CONFIG = """\
type: {type}
id: "{type}_{{i:07d}}"
command: ["python3", "process.py"]
sweep:
  i: {{range: [0, {n}]}}
"""


#: loaded through PYTHONPATH by the pilot run: report CPU at the first connect, then stop
SITECUSTOMIZE = """\
import os, resource, sys
def _lrt_bench_hook(event, args):
    if event == "socket.connect":
        r = resource.getrusage(resource.RUSAGE_SELF)
        os.write(2, ("LRT-BENCH-CPU %.4f\\n" % (r.ru_utime + r.ru_stime)).encode())
        os._exit(0)
sys.addaudithook(_lrt_bench_hook)
"""


def timed(argv: List[str], env: dict, cwd: Path = ROOT) -> "tuple[float, float, str, str, int]":
    """(wall s, CPU s, stdout, stderr, exit status) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    # RUSAGE_CHILDREN accumulates over all waited-for children: difference it
    cpu = ru.ru_utime + ru.ru_stime - timed.cpu_before  # type: ignore[attr-defined]
    timed.cpu_before = ru.ru_utime + ru.ru_stime  # type: ignore[attr-defined]
    return wall, cpu, out.decode(errors="replace"), err.decode(errors="replace"), p.returncode


timed.cpu_before = 0.0  # type: ignore[attr-defined]


def spread(xs: List[float]) -> str:
    return f"min {min(xs) * 1000:.0f} ms, median {statistics.median(xs) * 1000:.0f} ms"


def LABELS(db: Optional[str]) -> List["tuple[str, List[str]]"]:
    """The commands start-up times: the interpreter, ``lrt --version``, and with ``db``
    ``lrt status`` on that (existing) database."""
    out = [("python -c pass", [sys.executable, "-c", "pass"]),
           ("lrt --version", [sys.executable, "-m", "lrt.cli", "--version"])]
    if db:
        out.append(("lrt status", [sys.executable, "-m", "lrt.cli", "--db", db, "status"]))
    return out


def startup(env: dict, tmp: Path, runs: int, others: List[Path], db: Optional[str] = None) -> None:
    """Start-up figures (see the module docstring) of this checkout and of ``others``
    (other checkouts, e.g. an older commit), measured in turns so that they share the
    machine's load."""
    import compileall

    trees = [ROOT] + others
    for t in trees:
        # lrt's own bytecode, as pip writes it at install (a checkout run with
        # PYTHONDONTWRITEBYTECODE would otherwise compile every module at each start)
        compileall.compile_dir(str(t / "lrt"), quiet=1)
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    figures: dict = {}
    timed([sys.executable, "-c", "pass"], env)  # warm the page cache
    for _ in range(runs):
        for t in trees:
            tenv = dict(env, PYTHONPATH=str(t))
            for label, argv in LABELS(db):
                w, c, _o, e, rc = timed(argv, tenv, cwd=t)
                assert rc == 0, e
                figures.setdefault((t, label, "wall"), []).append(w)
                figures.setdefault((t, label, "cpu"), []).append(c)
            penv = dict(tenv, PYTHONPATH=f"{site}{os.pathsep}{t}")
            _w, _c, _o, e, _rc = timed([sys.executable, "-m", "lrt.cli", "pilot", "--idle-exit", "0"],
                                       penv, cwd=t)
            line = [x for x in e.splitlines() if x.startswith("LRT-BENCH-CPU ")]
            assert line, e
            figures.setdefault((t, "pilot", "cpu"), []).append(float(line[0].split()[1]))
    for t in trees:
        name = "this checkout" if t == ROOT else str(t)
        print(f"start-up of {name} ({runs} runs each):")
        for label, _argv in LABELS(db):
            print(f"  {label:<16} wall {spread(figures[(t, label, 'wall')])}; "
                  f"CPU {spread(figures[(t, label, 'cpu')])}")
        print(f"  pilot CPU before its first connection: {spread(figures[(t, 'pilot', 'cpu')])}")


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
    ap.add_argument("--runs", type=int, default=10, help="runs of each start-up / `lrt status` subprocess")
    ap.add_argument("--compare-with", action="append", default=[], metavar="DIR",
                    help="also measure the start-up of another checkout (e.g. `git archive` of an "
                         "older commit), in turns with this one")
    ap.add_argument("--db", help="also time `lrt status` on this existing database (read only), "
                    "in turns with the start-up runs")
    ap.add_argument("--keep", action="store_true", help="keep each database (lrt_bench_status_N) and "
                    "reuse it if it holds N tokens already (then 'created' is not measured)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmpd:
        tmp = Path(tmpd)
        with bench_server(tmp) as (server, _local, env):
            info = server.info()
            print(f"server: {info.get('vendor', {}).get('name', '?')} {info.get('version', '?')} "
                  f"at {server.url}; python {sys.version.split()[0]}")
            if a.db:
                st = status_json(server.database(a.db))
                times = []
                for _ in range(a.repeat):
                    t0 = time.perf_counter()
                    status_json(server.database(a.db))
                    times.append(time.perf_counter() - t0)
                print(f"--db {a.db}: {st['total']} tokens; warm status_json median "
                      f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, "
                      f"max {max(times) * 1000:.0f}, {a.repeat} calls)")
            startup(env, tmp, a.runs, [Path(x).resolve() for x in a.compare_with], a.db)
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
                    walls, cpus = [], []
                    for _ in range(a.runs):
                        w, c, stdout, e, rc = timed([sys.executable, "-m", "lrt.cli", "--db", db.name,
                                                     "status"], env)
                        assert rc == 0 and str(n) in stdout, e
                        walls.append(w)
                        cpus.append(c)
                    print(f"N={n}: created+moved in {made:.1f} s; first query (index build) {cold:.2f} s; "
                          f"warm status_json median {statistics.median(times) * 1000:.0f} ms "
                          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {a.repeat} calls); "
                          f"`lrt status` subprocess wall {spread(walls)}, CPU {spread(cpus)} "
                          f"({a.runs} runs)")
                finally:
                    if not a.keep:
                        db.delete()
            if a.sizes:
                print(stdout.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
