#!/usr/bin/env python3
"""The UWS interface of ``lrt serve``: what a job costs a client.

A fresh database, a real ``lrt serve`` process (with the shipped tasks), an
admin client over HTTP:

* ``create``: POST /uws/sleeper (PENDING jobs), one after another -- each is a
  credential check against /_session, the parameter checks, the sandbox build
  (reproducible tarball; uploaded once) and one token write;
* ``small GET``: /phase of one job (credential check + one document read);
* ``job list``: /uws/sleeper with N jobs, all / LAST=10 / PHASE=PENDING;
* ``WAIT wake``: a client blocked in GET ?WAIT=30 on a PENDING job, another
  POSTs PHASE=RUN; the time from that POST's answer to the waiter's answer
  (the change feed's latency, no polling).

Starts its own local server unless LRT_COUCH_URL is set.

    python3 bench/uws.py            # N = 200
    python3 bench/uws.py --jobs 1000 --wakes 20
"""
from __future__ import annotations

import argparse
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from lrt import design  # noqa: E402
from lrt.server import free_port  # noqa: E402
from benchlib import bench_server  # noqa: E402


def ms(xs: List[float]) -> str:
    xs = sorted(xs)
    return (f"median {statistics.median(xs) * 1000:7.1f} ms  p90 {xs[int(len(xs) * 0.9)] * 1000:7.1f} ms"
            f"  (n={len(xs)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--wakes", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, bench_server(Path(tmp)) as (server, local, env):
        db = server.database(f"lrt_bench_uws_{secrets.token_hex(3)}")
        db.create()
        design.install(db)
        port = free_port()
        env = dict(env, LRT_COUCH_DB=db.name)
        log = open(Path(tmp) / "serve.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "lrt.cli", "serve", "--port", str(port), "--tasks",
                                 str(ROOT / "tasks"), "--no-dashboard"], cwd=str(ROOT), env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}/uws/sleeper"
        s = requests.Session()
        s.auth = (server.user or "", env.get("LRT_COUCH_PASSWORD", ""))
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(base, timeout=2).status_code == 401:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("lrt serve did not start: " + (Path(tmp) / "serve.log").read_text())
                time.sleep(0.2)
            print(f"server {server.url}  database {db.name}  jobs {a.jobs}")
            t_create, jobs = [], []
            for i in range(a.jobs):
                t0 = time.perf_counter()
                r = s.post(base, data={"seconds": "1"}, allow_redirects=False)
                t_create.append(time.perf_counter() - t0)
                assert r.status_code == 303, r.text
                jobs.append(r.headers["location"])
            print(f"create (POST, PENDING)      {ms(t_create)}  {a.jobs / sum(t_create):6.1f} jobs/s")
            t_small = []
            for url in jobs[:50]:
                t0 = time.perf_counter()
                s.get(url + "/phase").raise_for_status()
                t_small.append(time.perf_counter() - t0)
            print(f"small GET (/phase)          {ms(t_small)}")
            for label, params in (("all", {}), ("LAST=10", {"LAST": "10"}), ("PHASE=PENDING", {"PHASE": "PENDING"})):
                ts = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    s.get(base, params=params).raise_for_status()
                    ts.append(time.perf_counter() - t0)
                print(f"job list {label:<18} {ms(ts)}")
            wakes = []
            for url in jobs[: a.wakes]:
                got = {}

                def waiter() -> None:
                    w = requests.Session()
                    w.auth = s.auth
                    r = w.get(url, params={"WAIT": "30"}, timeout=60)
                    got["t"] = time.perf_counter()
                    got["queued"] = "QUEUED" in r.text

                th = threading.Thread(target=waiter)
                th.start()
                time.sleep(0.5)  # the waiter's feed request is at the server
                s.post(url + "/phase", data={"PHASE": "RUN"}, allow_redirects=False)
                t_post = time.perf_counter()
                th.join(60)
                assert got.get("queued"), "the waiter did not see QUEUED"
                wakes.append(max(0.0, got["t"] - t_post))
            print(f"WAIT wake after PHASE=RUN   {ms(wakes)}")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            db.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
