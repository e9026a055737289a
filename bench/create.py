#!/usr/bin/env python3
"""Bulk token creation: lrt's TokenSet.create against raw _bulk_docs, and its memory.

1. Throughput: the same N token documents written (a) raw, pre-built in memory, one
   ``_bulk_docs`` stream (one batch at a time), and (b) by
   ``TokenSet.from_config(...).create(db, concurrency=C)`` (validation pass,
   id-collision check, generation, existence checks, writes) for each C in
   --concurrency.  Each run gets a fresh database on the same server; the runs go
   raw, lrt C..., lrt ...C, raw so that the server's drift hits all alike.  Prints
   tokens/s of each and the ratio lrt/raw.
2. Memory: peak RSS (VmHWM, see :func:`peak_rss_kb`) of a child process that runs
   ``TokenSet.create`` (the default concurrency) for each size in --rss-sizes; flat
   means creation streams.
3. Interrupts (--interrupts K): K runs of ``lrt create`` (a subprocess) get SIGINT
   at a random moment; prints the time from the signal to the exit (the promise:
   within 2 s) and checks that a re-run completes the set.

Starts its own local server in a temporary folder unless LRT_COUCH_URL is set (then
LRT_COUCH_USER / LRT_COUCH_PASSWORD[_FILE] are used, and databases named
``lrt_bench_create_*`` are created and deleted there).

    python3 bench/create.py                 # N = 100000
    python3 bench/create.py --n 10000 --rss-sizes 1000,10000 --concurrency 1,2,4 --interrupts 10
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrt import design  # noqa: E402
from lrt.couch import Database, Server  # noqa: E402
from lrt.tokens import TokenSet  # noqa: E402
from benchlib import bench_server  # noqa: E402

CONFIG = """\
type: bench
tokenset: bench
id: "bench_{{i:07d}}"
priority: 1
timeout: 600
expected_duration: 60
command: ["python3", "process.py", "--config", "process.yaml"]
payload:
  calibrator: L654320
  avg_freq_step: 2
sweep:
  i: {{range: [0, {n}]}}
"""


def fresh_db(server: Server, tag: str) -> Database:
    db = server.database(f"lrt_bench_create_{tag}_{os.getpid()}")
    db.delete()
    db.create()
    design.install(db)
    return db


def write_config(tmp: Path, n: int) -> Path:
    p = tmp / f"bench_{n}.yaml"
    p.write_text(CONFIG.format(n=n))
    return p


#: above this N the raw run builds each batch (untimed) instead of holding all documents
PREBUILT_MAX = 200_000


def run_raw(server: Server, cfg: Path, n: int, batch: int, tag: str,
            prebuilt: Optional[List[Dict[str, Any]]] = None) -> Dict[str, float]:
    """One ``_bulk_docs`` stream of the documents lrt writes: ``prebuilt`` (all in
    memory), or for a large N each batch built before its request with the clock
    stopped, so only encoding, the request and the server's work are timed.  (The
    server is idle while a batch is built, which lets CouchDB's background indexer
    catch up unseen: that favours the raw run, so up to :data:`PREBUILT_MAX` the
    documents are built before the database exists.)"""
    db = fresh_db(server, tag)
    try:
        req0 = server.requests_sent
        dt = 0.0
        ok = 0
        docs = iter(prebuilt if prebuilt is not None else TokenSet.from_config(cfg))
        while True:
            chunk = list(itertools.islice(docs, batch))
            if not chunk:
                break
            t0 = time.perf_counter()
            ok += len(db.bulk_docs(chunk).ok)
            dt += time.perf_counter() - t0
        assert ok == n, (ok, n)
        return {"seconds": dt, "rate": n / dt, "requests": server.requests_sent - req0}
    finally:
        db.delete()


def run_lrt(server: Server, cfg: Path, n: int, batch: int, tag: str,
            concurrency: Optional[int] = None) -> Dict[str, float]:
    db = fresh_db(server, tag)
    try:
        req0 = server.requests_sent
        t0 = time.perf_counter()
        res = TokenSet.from_config(cfg).create(db, batch_size=batch, concurrency=concurrency)
        dt = time.perf_counter() - t0
        assert (res.created, res.failed) == (n, 0), res
        return {"seconds": dt, "rate": n / dt, "requests": server.requests_sent - req0}
    finally:
        db.delete()


def peak_rss_kb() -> int:
    """This process's peak RSS in KiB.

    Linux's VmHWM belongs to the process's own address space, fresh at exec.
    ``ru_maxrss`` is not: Linux carries the *parent's* high-water mark across
    fork+exec, so a child of a parent that once held 100k documents would
    report the parent's peak.  ``ru_maxrss`` is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(cfg: Path, n: int, batch: int, materialize: bool = False) -> None:
    """Runs in a subprocess: create N tokens, print peak RSS.  Credentials come from env.

    ``materialize``: the contrast, i.e. what holding every document costs (the
    same documents as a list, written with raw _bulk_docs).
    """
    if materialize:
        rss0 = peak_rss_kb()
        t0 = time.perf_counter()
        docs = list(TokenSet.from_config(cfg))
        dt = time.perf_counter() - t0
        print(json.dumps({"n": len(docs), "maxrss_kb": peak_rss_kb(),
                          "rss_before_kb": rss0, "seconds": dt}))
        return
    server = Server(os.environ["BENCH_URL"], os.environ["BENCH_USER"], os.environ["BENCH_PASSWORD"])
    db = fresh_db(server, f"rss{n}")
    try:
        rss0 = peak_rss_kb()
        t0 = time.perf_counter()
        res = TokenSet.from_config(cfg).create(db, batch_size=batch)
        dt = time.perf_counter() - t0
        assert res.created == n, res
    finally:
        db.delete()
    rss = peak_rss_kb()
    print(json.dumps({"n": n, "maxrss_kb": rss, "rss_before_kb": rss0, "seconds": dt}))


def client_only(n: int, batch: int) -> None:
    """Client CPU per token and peak RSS without a server: the validation pass, then every
    batch's ``_bulk_docs`` body encoded from the template (what ``TokenSet.create`` does),
    then the same bodies the way it did before (``new_token`` dicts and ``json.dumps``)."""
    from lrt.tokens import DocEncoder, _batched, new_token

    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmpd:
        ts = TokenSet.from_config(write_config(Path(tmpd), n))
    rss0 = peak_rss_kb()
    t0 = time.process_time()
    ts.validate()
    t1 = time.process_time()
    enc = DocEncoder(ts.config)
    size = 0
    for items in _batched(ts.config.items(), batch):
        now = time.time()
        size += len(b'{"docs":[' + b",".join([enc.encode(it, now) for it in items]) + b"]}")
    t2 = time.process_time()
    rss = peak_rss_kb()
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    for items in _batched(ts.config.items(), batch):
        now = time.time()
        dumps({"docs": [new_token(ts.config, it, now, share=True) for it in items]}).encode()
    t3 = time.process_time()
    us = lambda dt: dt / n * 1e6  # noqa: E731
    print(f"N={n}: validate {us(t1 - t0):.1f} us/token; template encoding {us(t2 - t1):.1f} us/token "
          f"({size / n:.0f} bytes); dicts + json.dumps (before) {us(t3 - t2):.1f} us/token; peak RSS "
          f"{rss0 / 1024:.1f} MiB after imports, {rss / 1024:.1f} MiB after validating and encoding")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="tokens per throughput run")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--rss-sizes", default="10000,100000", help="comma-separated sizes for RSS runs")
    ap.add_argument("--no-throughput", action="store_true", help="only the memory runs")
    ap.add_argument("--concurrency", default="1,2,4",
                    help="comma-separated concurrencies of TokenSet.create to measure")
    ap.add_argument("--interrupts", type=int, default=0, metavar="K",
                    help="also measure K interrupted `lrt create` runs")
    ap.add_argument("--client-only", action="store_true",
                    help="no server: client CPU per token (validation, encoding) and peak RSS at --n")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--materialize", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(Path(a.config), a.n, a.batch_size, a.materialize)
        return 0
    if a.client_only:
        client_only(a.n, a.batch_size)
        return 0

    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmpd:
        tmp = Path(tmpd)
        with bench_server(tmp) as (server, _local, server_env):
            password = server_env.get("LRT_COUCH_PASSWORD", "")
            info = server.info()
            print(f"server: {info.get('vendor', {}).get('name', '?')} {info.get('version', '?')} "
                  f"at {server.url}; python {sys.version.split()[0]}; batch {a.batch_size}")
            if not a.no_throughput:
                cfg = write_config(tmp, a.n)
                from lrt.tokens import default_concurrency

                # the very documents lrt writes, built before any database exists
                prebuilt = list(TokenSet.from_config(cfg)) if a.n <= PREBUILT_MAX else None
                conc = [int(x) for x in a.concurrency.split(",") if x]
                chosen = default_concurrency(server.database("_users"))
                runs: Dict[str, List[Dict[str, float]]] = {"raw": []}
                order = ["raw"] + [f"c{c}" for c in conc] + [f"c{c}" for c in reversed(conc)] + ["raw"]
                for i, kind in enumerate(order):
                    if kind == "raw":
                        r = run_raw(server, cfg, a.n, a.batch_size, f"raw{i}", prebuilt)
                    else:
                        r = run_lrt(server, cfg, a.n, a.batch_size, f"lrt{i}", int(kind[1:]))
                    runs.setdefault(kind, []).append(r)
                    print(f"  {kind:3s} run {i + 1}: {a.n} tokens in {r['seconds']:.1f} s = "
                          f"{r['rate']:.0f} tokens/s ({r['requests']} requests)")
                raw = sum(r["rate"] for r in runs["raw"]) / 2
                print(f"throughput at N={a.n}: raw _bulk_docs (one stream) {raw:.0f} tokens/s")
                for c in conc:
                    rate = sum(r["rate"] for r in runs[f"c{c}"]) / 2
                    print(f"  TokenSet.create concurrency {c}: {rate:.0f} tokens/s, ratio {rate / raw:.2f}"
                          + ("  <- default on this server" if c == chosen else ""))

            env = dict(os.environ, BENCH_URL=server.url, BENCH_USER=server.user or "",
                       BENCH_PASSWORD=password, PYTHONPATH=str(ROOT))
            sizes = [int(x) for x in a.rss_sizes.split(",") if x]
            for n in sizes + ([-max(sizes)] if sizes else []):
                m = abs(n)
                ccfg = write_config(tmp, m)
                extra = ["--materialize"] if n < 0 else []
                out = subprocess.run([sys.executable, __file__, "--child", "--n", str(m),
                                      "--batch-size", str(a.batch_size), "--config", str(ccfg)] + extra,
                                     env=env, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if n > 0:
                    print(f"peak RSS creating {m:>7} tokens with TokenSet.create (child process): "
                          f"{r['maxrss_kb'] / 1024:.1f} MiB (before creating: "
                          f"{r['rss_before_kb'] / 1024:.1f} MiB)")
                else:
                    print(f"  contrast: holding the same {m} documents in a list: peak RSS "
                          f"{r['maxrss_kb'] / 1024:.1f} MiB (before: {r['rss_before_kb'] / 1024:.1f} MiB)")
            if a.interrupts:
                interrupts(server, server_env, tmp, a.n, a.batch_size, a.interrupts)
    return 0


def interrupts(server: Server, env: Dict[str, str], tmp: Path, n: int, batch: int, k: int) -> None:
    """K `lrt create` runs, SIGINT at a random moment of each; time from signal to exit."""
    cfg = write_config(tmp, n)
    argv = [sys.executable, "-m", "lrt.cli", "create", str(cfg), "--batch-size", str(batch)]
    db = server.database(f"lrt_bench_create_int_{os.getpid()}")
    db.delete()
    t0 = time.perf_counter()
    subprocess.run(argv, env=dict(env, LRT_COUCH_DB=db.name), check=True, capture_output=True, cwd=ROOT)
    full = time.perf_counter() - t0
    db.delete()
    rng = random.Random(1)
    took: List[float] = []
    reported = 0
    for i in range(k):
        db.delete()
        denv = dict(env, LRT_COUCH_DB=db.name)
        # SIGINT at its default, so the child's Python makes KeyboardInterrupt of it even when
        # this bench runs in the background (where the shell ignores SIGINT for it)
        p = subprocess.Popen(argv, env=denv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(rng.uniform(0.3, full * 0.9))
        p.send_signal(signal.SIGINT)
        ts = time.perf_counter()
        _out, err = p.communicate()
        took.append(time.perf_counter() - ts)
        reported += b"Run the same command again" in err
        again = subprocess.run(argv, env=denv, capture_output=True, text=True, cwd=ROOT)
        assert again.returncode == 0 and db.info()["doc_count"] == n + 2, again.stdout + again.stderr
    db.delete()
    print(f"interrupts: {k} runs of `lrt create` ({n} tokens, {full:.1f} s uninterrupted), SIGINT at "
          f"random moments: exit {statistics.median(took):.2f} s median, {max(took):.2f} s max after "
          f"the signal; {reported} reported counts and the re-run (the others had finished); every "
          "re-run completed the set")


if __name__ == "__main__":
    sys.exit(main())
