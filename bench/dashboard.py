#!/usr/bin/env python3
"""Dashboard pages: render time and CouchDB requests per page per refresh.

For each size N a fresh database gets N synthetic tokens in bulk (two types;
60 % done with finish times spread over the last three hours, 10 % error with
a few error codes and messages, 5 % locked under leases of 20 pilots, the rest
todo), every index is built once (its time printed), then the real app
(:func:`lrt.web.app.create_app`, served by uvicorn on a loopback port in this
process) is asked for each page over HTTP:

* ``cold``: the shared cache cleared first -- what one refresh costs the
  database (time and number of CouchDB requests);
* ``warm``: the same page again within the cache TTL (no database request);
* ``10 tabs``: the cache cleared, then 10 concurrent requests for the page --
  the CouchDB requests must equal one viewer's (single flight).

Starts its own local server in a temporary folder unless LRT_COUCH_URL is set
(then that server is measured, e.g. Apache CouchDB).

With ``--keep`` the databases stay, and a later run with ``--keep`` reuses one
that holds at least N documents instead of writing N tokens again (10^6 took
24 minutes).  The tokens' times were spread over the three hours before their
database was written (that clock is kept in ``_local/lrt-bench-dashboard``), so
a reused database is measured at that clock: lrt's view of the server clock
(``Server.now``, which the read models and the app use) is shifted back by the
database's age, and the rate plot's window holds the same tokens as on the
first run.

    python3 bench/dashboard.py                      # N = 10000
    python3 bench/dashboard.py --sizes 10000,100000 --repeat 5
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from lrt import design  # noqa: E402
from lrt.couch import Server  # noqa: E402
from lrt.server import free_port  # noqa: E402
from benchlib import bench_server  # noqa: E402

ERRORS = [(60, "PAYLOAD_FAILED", "payload", "payload exited with status {k}"),
          (61, "PAYLOAD_TIMEOUT", "payload", "payload ran past its timeout of {k}00 s"),
          (21, "STAGE_IN_FAILED", "system", "input srm://example.org/f{k}.tar: connection refused"),
          (41, "PILOT_LOST", "system", "lease expired {k} s ago")]

#: the server clock at which the tokens were written (a kept database is measured at it)
CLOCK_DOC = "_local/lrt-bench-dashboard"


class ShiftedServer(Server):
    """lrt's client with its view of the server clock shifted back by ``shift`` seconds."""

    shift = 0.0

    def now(self) -> float:
        return super().now() - self.shift


def data_clock(db) -> float:
    """The clock the tokens of a kept database were made at (from CLOCK_DOC, or else the
    last finish minute of ``lrt-rates/finished``, and then stored in CLOCK_DOC)."""
    have = db.get_or_none(CLOCK_DOC)
    if have is not None:
        return float(have["now"])
    rows = db.view("lrt-rates", "finished", reduce=False, descending=True, limit=1,
                   startkey=[None, {}], endkey=[None]).get("rows", [])
    t = (int(rows[0]["key"][3]) + 1) * 60.0 if rows else db.server.now()
    db.put({"_id": CLOCK_DOC, "now": t})
    return t


def populate(db, n: int, now: float, batch: int = 2000) -> None:
    rnd = random.Random(n)
    docs: List[Dict[str, Any]] = []
    for i in range(n):
        r = rnd.random()
        t = "a" if i % 2 else "b"
        doc: Dict[str, Any] = {"_id": f"{t}_{i:08d}", "kind": "token", "schema": 1, "type": t,
                               "tokenset": f"set{i % 4}", "priority": 0, "created": now - 4 * 3600,
                               "attempts": 1, "max_attempts": 3, "command": ["true"], "payload": {"i": i},
                               "inputs": [], "history": [], "error": None, "lease": None, "pilot": None,
                               "host": None, "timings": {}, "log_tail": None}
        if r < 0.60:
            fin = now - rnd.random() * 3 * 3600
            doc.update(state="done", updated=fin, pilot=f"p{i % 20}", host="wn1",
                       timings={"claimed": fin - 30, "finished": fin, "wall": 30.0})
        elif r < 0.70:
            code, name, cls, msg = ERRORS[i % len(ERRORS)]
            fin = now - rnd.random() * 3 * 3600
            doc.update(state="error", updated=fin, pilot=f"p{i % 20}", host="wn1",
                       error={"code": code, "name": name, "class": cls, "message": msg.format(k=i % 7)},
                       timings={"finished": fin, "wall": 12.0},
                       log_tail={"stdout": "step 1\nstep 2\n", "stderr": "boom\n"})
        elif r < 0.75:
            doc.update(state="locked", updated=now - 60, pilot=f"p{i % 20}", host="wn2",
                       lease={"pilot": f"p{i % 20}", "claim": f"c{i}", "claimed": now - 120,
                              "renewed": now - 60, "expires": now + 540},
                       batch_job={"system": "slurm", "id": str(1000 + i % 20)})
        else:
            doc.update(state="todo", updated=now - 4 * 3600, attempts=0)
        docs.append(doc)
        if len(docs) >= batch:
            res = db.bulk_docs(docs)
            assert not res.errors, res.errors
            docs = []
    if docs:
        db.bulk_docs(docs)
    db.put({"_id": CLOCK_DOC, "now": now})


class App:
    """The dashboard app in this process, on a loopback port (uvicorn in a thread)."""

    def __init__(self, make_db, refresh: float = 5.0):
        import uvicorn

        from lrt.web.app import WebContext, create_app

        self.web = WebContext(make_db, refresh=refresh)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(create_app(self.web), host="127.0.0.1", port=self.port, log_level="warning",
                             access_log=False, lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/favicon.ico", timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the app did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def get(self, path: str) -> float:
        t0 = time.perf_counter()
        r = requests.get(self.url + path, timeout=600)
        dt = time.perf_counter() - t0
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        return dt


def measure(app: App, path: str, repeat: int) -> Dict[str, Any]:
    cold, reqs = [], []
    for _ in range(repeat):
        app.web.cache.clear()
        n0 = app.web.requests_sent()
        cold.append(app.get(path))
        reqs.append(app.web.requests_sent() - n0)
    n0 = app.web.requests_sent()
    warm = [app.get(path) for _ in range(repeat)]
    warm_reqs = app.web.requests_sent() - n0
    app.web.cache.clear()
    n0 = app.web.requests_sent()
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda _: app.get(path), range(10)))
    tabs = app.web.requests_sent() - n0
    return {"cold": statistics.median(cold), "cold_min": min(cold), "cold_max": max(cold),
            "reqs": max(reqs), "warm": statistics.median(warm),
            "warm_reqs": warm_reqs, "tabs": tabs}


def read_models(db):
    """What the pages call, one function per CouchDB query (the Overview's six first)."""
    from lrt.queries import failures, pilots, rates, status, tokens

    return [("status_json (lrt/tokens reduce)", lambda: status.status_json(db)),
            ("tokenset_counts (lrt-web/list reduce)", lambda: status.tokenset_counts(db)),
            ("finished_per_minute (180 min)", lambda: rates.finished_per_minute(db, 180)),
            ("staging rows (list, 10 rows)", lambda: tokens.page(db, tokens.TokenFilter(state="staging"), 10)),
            ("lease_counts (leases reduce)", lambda: pilots.lease_counts(db)),
            ("pilot_summary (launch records)", lambda: pilots.pilot_summary(db)),
            ("error_groups (errors _stats)", lambda: failures.error_groups(db)),
            ("token page rows (list, 100 rows)", lambda: tokens.page(db, tokens.TokenFilter(), 100)),
            ("leases page (200 rows)", lambda: pilots.leases(db, 200))]


def rates_ab(db, repeat: int) -> Dict[str, List[float]]:
    """The rate plot's buckets (:func:`lrt.queries.rates.plan`: hours, 5 minutes, minutes)
    against one row per minute over the same 180 minutes, read twice (the groups the layout
    before this one read: 180 per outcome), alternating so both meet the same load."""
    from lrt.queries import rates

    now = db.server.now()
    last = int(now // 60)
    sk, ek = rates.key_range(None, last - 179, last + 1)

    def minutes() -> None:
        for _ in range(2):
            db.view(rates.RATES_DDOC, "finished", group_level=4, startkey=sk, endkey=ek)

    fns = {"buckets (3 queries, ~29 rows)": lambda: rates.finished_per_minute(db, 180, now=now),
           "per minute (2 x 180 rows)": minutes}
    out: Dict[str, List[float]] = {k: [] for k in fns}
    for i in range(repeat):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            out[name].append(time.perf_counter() - t0)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000")
    ap.add_argument("--repeat", type=int, default=3, help="timed requests per page and mode")
    ap.add_argument("--keep", action="store_true", help="keep the databases (reuse with the same N)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lrt-bench-") as tmpd:
        with bench_server(Path(tmpd)) as (server, _local, env):
            info = server.info()
            print(f"server: {info.get('vendor', {}).get('name', '?')} {info.get('version', '?')} "
                  f"at {server.url}; python {sys.version.split()[0]}")
            for n in [int(x) for x in a.sizes.split(",") if x]:
                name = f"lrt_bench_dashboard_{n}"
                db = server.database(name)
                now = server.now()
                if not (a.keep and db.exists() and db.info().get("doc_count", 0) >= n):
                    db.delete()
                    db.create()
                    design.install(db)
                    t0 = time.perf_counter()
                    populate(db, n, now)
                    print(f"N={n}: {n} tokens written in {time.perf_counter() - t0:.1f} s")
                print(f"N={n}: design documents {design.install(db)}")  # a kept database gets the current views
                t0 = time.perf_counter()
                for ddoc, view in (("lrt", "tokens"), ("lrt-claim", "todo"), ("lrt-web", "list"),
                                   ("lrt-rates", "finished"), ("lrt-web", "errors"), ("lrt-web", "leases")):
                    db.view(ddoc, view, limit=1)
                print(f"N={n}: first view queries (index builds) {time.perf_counter() - t0:.1f} s")
                shift = max(0.0, server.now() - data_clock(db))
                print(f"N={n}: tokens written at server clock - {shift:.0f} s: measured at that clock")

                def make_db():
                    s = ShiftedServer(server.url, env.get("LRT_COUCH_USER") or server.user,
                                      env.get("LRT_COUCH_PASSWORD"), verify=server.verify)
                    s.shift = shift
                    return s.database(name)

                print(f"N={n}: read model (direct call, warm index)   median ms  (min, max)  load average")
                for label, fn in read_models(make_db()):
                    times = []
                    for _ in range(a.repeat):
                        t0 = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t0)
                    print(f"N={n}: {label:<36} {statistics.median(times) * 1000:9.0f}  "
                          f"({min(times) * 1000:.0f}, {max(times) * 1000:.0f})  {os.getloadavg()[0]:.1f}")
                print(f"N={n}: rate plot A/B, alternating          median ms  (min, max)  load average")
                for label, times in rates_ab(make_db(), max(3, a.repeat)).items():
                    print(f"N={n}: {label:<36} {statistics.median(times) * 1000:9.0f}  "
                          f"({min(times) * 1000:.0f}, {max(times) * 1000:.0f})  {os.getloadavg()[0]:.1f}")
                app = App(make_db)
                try:
                    grp = urllib.parse.quote("payload exited with status #")
                    pages = [("overview", "/"), ("failures", "/failures"),
                             ("failure group", f"/failures?code=60&prefix={grp}"),
                             ("tokens", "/tokens"), ("tokens error", "/tokens?state=error&type=a"),
                             ("token", "/token?id=a_00000001"), ("pilots", "/pilots")]
                    print(f"N={n}: page             cold ms  (min, max)  CouchDB req  warm ms  warm req  "
                          "10 tabs req  load")
                    for label, path in pages:
                        m = measure(app, path, a.repeat)
                        span = f"({m['cold_min'] * 1000:.0f}, {m['cold_max'] * 1000:.0f})"
                        print(f"N={n}: {label:<15} {m['cold'] * 1000:8.0f}  {span:<10}  {m['reqs']:11d}  "
                              f"{m['warm'] * 1000:7.1f}  {m['warm_reqs']:8d}  {m['tabs']:11d}  "
                              f"{os.getloadavg()[0]:.1f}")
                finally:
                    app.stop()
                    if not a.keep:
                        db.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
