"""The pilot's liveness load while a long payload runs, and how fast a cancel reaches it.

    python3 bench/liveness.py [--pilots 8] [--long 120] [--lease 600] [--checks 20,0]

Starts its own local server (pouchdb-server) in a temporary folder and, all at
once, for each ``--cancel-check`` value C in ``--checks``: ``--pilots`` pilots
that each run one token whose payload sleeps ``--long`` seconds, and as many
that each run one 1-second payload (the baseline: start-up, claim, finish).
Requests per pilot-minute while the payload runs =
(requests of a long pilot - requests of a baseline pilot) / ((long - 1) / 60),
from the pilots' own request counters (``--stats``).  Alongside, ``--pilots``
pilots (default settings) run 60-second payloads that are cancelled with
``lrt cancel`` at a random moment 2-30 s after they start: the time from the
cancel to the payload's end (the token ``cancelled``) is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lrt import design  # noqa: E402
from lrt.couch import Server  # noqa: E402
from lrt.server import LocalServer, free_port  # noqa: E402

SLEEP = ["sh", "-c", 'echo $$ > "$1/$LRT_TOKEN_ID.pid"; exec sleep "$LRT_P_D"', "sleep"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pilots", type=int, default=8)
    ap.add_argument("--long", type=float, default=120.0, help="seconds of the long payloads")
    ap.add_argument("--lease", type=float, default=600.0)
    ap.add_argument("--checks", default="20,0", help="--cancel-check values to measure")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    checks = [float(x) for x in a.checks.split(",")]
    with tempfile.TemporaryDirectory(prefix="lrt-bench-liveness-") as tmp:
        work = Path(tmp)
        srv = LocalServer.start(base=work / "couch", port=free_port())
        try:
            admin = Server(srv.url, srv.user, srv.password)
            db = admin.database("liveness")
            db.create()
            design.install(db)
            now = time.time()
            docs = []
            groups: Dict[str, dict] = {}
            for c in checks:
                for kind, dur in (("long", a.long), ("base", 1.0)):
                    t = f"{kind}{c:g}"
                    groups[t] = {"check": c, "kind": kind, "dur": dur}
                    docs += [{"_id": f"{t}-{k}", "kind": "token", "schema": 1, "type": t, "state": "todo",
                              "priority": 0, "created": now, "attempts": 0, "command": SLEEP + [str(work)],
                              "payload": {"d": str(dur)}, "inputs": [], "outputs": None, "lease": None,
                              "history": []} for k in range(a.pilots)]
            docs += [{"_id": f"cancel-{k}", "kind": "token", "schema": 1, "type": "cancel", "state": "todo",
                      "priority": 0, "created": now, "attempts": 0, "command": SLEEP + [str(work)],
                      "payload": {"d": "60"}, "inputs": [], "outputs": None, "lease": None, "history": []}
                     for k in range(a.pilots)]
            db.bulk_docs(docs)
            env = dict(os.environ, LRT_COUCH_URL=srv.url, LRT_COUCH_USER=srv.user,
                       LRT_COUCH_PASSWORD=srv.password, LRT_COUCH_DB=db.name,
                       LRT_CONFIG="/nonexistent/lrt-config.yaml", PYTHONPATH=str(ROOT))
            procs: List[tuple] = []
            for t, g in list(groups.items()) + [("cancel", {"check": 20.0})]:
                for k in range(a.pilots):
                    st = work / f"{t}-{k}.json"
                    p = subprocess.Popen([sys.executable, "-m", "lrt.cli", "pilot", "--type", t, "--max-tokens", "1",
                                          "--idle-exit", "5", "--lease", str(a.lease), "--cancel-check",
                                          str(g["check"]), "--stats", str(st)],
                                         env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    procs.append((t, st, p))
            # cancel the "cancel" tokens at random moments after their payloads started
            lat: List[float] = []
            pending = {f"cancel-{k}": None for k in range(a.pilots)}
            started: Dict[str, float] = {}
            when = {i: random.uniform(2, 30) for i in pending}
            while pending:
                for i in list(pending):
                    pidf = work / f"{i}.pid"
                    if i not in started and pidf.exists():
                        started[i] = time.monotonic()
                    if i in started and pending[i] is None and time.monotonic() - started[i] >= when[i]:
                        subprocess.run([sys.executable, "-m", "lrt.cli", "cancel", i], env=env, cwd=str(ROOT),
                                       capture_output=True, check=True)
                        pending[i] = time.monotonic()
                    if pending[i] is not None and db.get(i)["state"] == "cancelled":
                        lat.append(time.monotonic() - pending[i])
                        del pending[i]
                time.sleep(0.2)
            for _, _, p in procs:
                p.wait()
            req: Dict[str, List[int]] = {}
            for t, st, _ in procs:
                req.setdefault(t, []).append(json.loads(st.read_text())["requests"])
        finally:
            srv.stop()
    results = []
    for c in checks:
        long_r, base_r = req[f"long{c:g}"], req[f"base{c:g}"]
        per_min = (statistics.mean(long_r) - statistics.mean(base_r)) / ((a.long - 1.0) / 60.0)
        results.append({"cancel_check": c, "lease": a.lease, "payload_s": a.long,
                        "requests_long_pilot": statistics.mean(long_r),
                        "requests_baseline_pilot": statistics.mean(base_r),
                        "requests_per_pilot_minute": round(per_min, 2)})
    out = {"liveness": results, "cancel_latency_s": {
        "n": len(lat), "median": round(statistics.median(lat), 1), "max": round(max(lat), 1),
        "min": round(min(lat), 1)}}
    print(json.dumps(out, indent=None if a.json else 1))
    if not a.json:
        print()
        print("| --cancel-check s | lease s | payload s | requests per pilot-minute while it runs |")
        print("|---|---|---|---|")
        for r in results:
            print(f"| {r['cancel_check']:g} | {r['lease']:g} | {r['payload_s']:g} | {r['requests_per_pilot_minute']} |")
        cl = out["cancel_latency_s"]
        print(f"\ncancel -> token cancelled (default --cancel-check 20): n={cl['n']} min {cl['min']} s, "
              f"median {cl['median']} s, max {cl['max']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
