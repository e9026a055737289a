"""Pilots under faults: every token done exactly once, and the extra runs by cause.

    python3 bench/faults.py [--tokens 5000] [--pilots 32] [--lease 20] [--reap-grace 2]
                            [--duration 0.05,0.5] [--kill-every 1,3] [--stop-every 5,10]
                            [--stop-for S] [--server-kills 2] [--server-down S] [--seed N] [--json]

Starts its own local server (pouchdb-server) in a temporary folder, creates the
tokens (a few with shell metacharacters in their ids) and keeps ``--pilots``
real ``lrt pilot`` processes running while it

* SIGKILLs a random pilot every ``--kill-every`` seconds (and starts a new one),
* SIGSTOPs a random pilot every ``--stop-every`` seconds for ``--stop-for``
  seconds (default: twice the lease plus the grace: past its lease), then SIGCONTs it,
* SIGKILLs the server ``--server-kills`` times (evenly over the run) and
  restarts it on the same port and data directory after ``--server-down`` seconds.

Every payload appends one line (``O_APPEND``, one ``write``) to a journal when
it starts and when it ends: token id, claim id (``LRT_CLAIM_ID``), pilot id,
the time on the server clock as the pilot estimates it (local time +
``LRT_CLOCK_OFFSET``) and the lease end the pilot believed
(``LRT_LEASE_EXPIRES``); it prints ``result:<claim id>``.

Checked at the end (:func:`analyse`): every token is ``done`` exactly once in
its history, its recorded result is the one its finishing claim's payload wrote
to the journal, and no payload started on a lease the server already treated as
expired: the start was before the lease end the pilot believed, that belief was
not later than the lease end recorded in the claim's history entry, and a
reaped claim's start was before ``reaped - grace``.  Extra runs (payload starts
whose result was not the one recorded) are counted by cause: a **killed**
pilot, a **stopped** pilot (SIGSTOP while it held the claim), a **server
outage** during the claim, or a **live** pilot (none of these: the target is 0).
tests/test_pilot_faults.py runs this at a small size.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lrt import design  # noqa: E402
from lrt.couch import CouchError, Server  # noqa: E402
from lrt.server import LocalServer, free_port  # noqa: E402

#: the payload: journal its start, sleep $LRT_P_D seconds, print and journal its result
PAYLOAD = r'''j=$1
printf 'start\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LRT_TOKEN_ID" "$LRT_CLAIM_ID" "$LRT_PILOT_ID" \
  "$EPOCHREALTIME" "$LRT_CLOCK_OFFSET" "$LRT_LEASE_EXPIRES" >> "$j"
sleep "$LRT_P_D"
r="result:$LRT_CLAIM_ID"
printf '%s\n' "$r"
printf 'end\t%s\t%s\t%s\t%s\t%s\n' "$LRT_TOKEN_ID" "$LRT_CLAIM_ID" "$LRT_PILOT_ID" "$EPOCHREALTIME" "$r" >> "$j"
'''


@dataclass
class Faults:
    """One fault-injection run's parameters."""

    tokens: int = 5000
    pilots: int = 32
    lease: float = 20.0
    reap_grace: float = 2.0
    duration: Tuple[float, float] = (0.05, 0.5)
    #: SIGKILL one pilot every uniform(a, b) seconds (None: never)
    kill_every: Optional[Tuple[float, float]] = (1.0, 3.0)
    #: SIGSTOP one pilot every uniform(a, b) seconds for stop_for seconds (None: never)
    stop_every: Optional[Tuple[float, float]] = (5.0, 10.0)
    stop_for: Optional[float] = None
    server_kills: int = 2
    server_down: float = 3.0
    seed: Optional[int] = None
    timeout: float = 1800.0

    @property
    def stop_seconds(self) -> float:
        return self.stop_for if self.stop_for is not None else 2 * self.lease + self.reap_grace


@dataclass
class Events:
    """What the run did, on the local clock (the server runs on the same machine)."""

    killed: Dict[int, float] = field(default_factory=dict)                 #: pid -> SIGKILL time
    stopped: Dict[int, List[Tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    outages: List[Tuple[float, float]] = field(default_factory=list)       #: (killed, answering again)
    unexpected_exits: List[Tuple[int, int]] = field(default_factory=list)  #: (pid, code)
    started_pilots: int = 0


def _ids(n: int) -> List[str]:
    # every 97th id carries shell metacharacters: they must never be interpreted
    return [f"f-{i:05d}" + ("-$(touch x);`id`|&*" if i % 97 == 5 else "") for i in range(n)]


def _tokens(cfg: Faults, journal: Path, rnd: random.Random) -> List[Dict[str, Any]]:
    now = time.time()
    lo, hi = cfg.duration
    return [{"_id": i, "kind": "token", "schema": 1, "type": "faults", "state": "todo", "priority": 0,
             "created": now, "updated": now, "attempts": 0, "max_attempts": 1000,
             "retry": {"backoff": 1, "payload_errors": False},
             "command": ["bash", "-c", PAYLOAD, "faults", str(journal)],
             "payload": {"d": f"{rnd.uniform(lo, hi):.3f}"}, "inputs": [], "outputs": None,
             "lease": None, "history": [], "cancel_requested": False}
            for i in _ids(cfg.tokens)]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _pid_of(pilot_id: str) -> int:
    try:
        return int(pilot_id.rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return -1


class _Run:
    def __init__(self, cfg: Faults, work: Path):
        self.cfg = cfg
        self.work = work
        self.rnd = random.Random(cfg.seed)
        self.ev = Events()
        self.base = work / "couch"
        self.srv = LocalServer.start(base=self.base, port=free_port())
        self.port = self.srv.port
        self.journal = work / "journal.tsv"
        self.journal.touch()
        self.procs: Dict[int, subprocess.Popen] = {}
        self.logs: Dict[int, Path] = {}
        self.stopped_now: Dict[int, float] = {}  # pid -> when to SIGCONT
        self.env = dict(os.environ, LRT_COUCH_URL=self.srv.url, LRT_COUCH_USER=self.srv.user,
                        LRT_COUCH_PASSWORD=self.srv.password, LRT_COUCH_DB="faults",
                        LRT_CONFIG="/nonexistent/lrt-config.yaml", PYTHONPATH=str(ROOT),
                        PYTHONUNBUFFERED="1")

    def admin(self, read_timeout: float = 20.0) -> Server:
        return Server(self.srv.url, self.srv.user, self.srv.password, retries=1,
                      timeout=(2.0, read_timeout))

    def start_pilot(self) -> None:
        k = self.ev.started_pilots
        self.ev.started_pilots += 1
        log = self.work / f"pilot{k:04d}.log"
        out = open(log, "ab")
        c = self.cfg
        p = subprocess.Popen([sys.executable, "-m", "lrt.cli", "pilot", "--type", "faults",
                              "--idle-exit", "3600", "--poll", "0.5", "--lease", str(c.lease),
                              "--reap-grace", str(c.reap_grace), "--term-grace", "1",
                              "--workdir", str(self.work / "w"), "--stats", str(self.work / f"s{k:04d}.json")],
                             env=self.env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT)
        out.close()
        self.procs[p.pid] = p
        self.logs[p.pid] = log

    def running(self) -> List[int]:
        return [pid for pid, p in self.procs.items() if p.poll() is None and pid not in self.stopped_now]

    def done_count(self) -> Optional[int]:
        """Tokens neither todo nor locked (no other state is reachable here), from the two
        indexes the pilots keep up to date anyway: the status view is not, and bringing it
        up to date under this load took pouchdb-server minutes."""
        try:
            with self.admin() as s:
                db = s.database("faults")
                todo = db.view("lrt-claim", "todo", limit=0)["total_rows"]
                locked = db.view("lrt", "locked", limit=0)["total_rows"]
        except CouchError:
            return None
        return self.cfg.tokens - todo - locked

    def kill_server(self) -> None:
        t0 = time.time()
        try:
            os.killpg(self.srv.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.srv.pid, 0)
        except ChildProcessError:
            pass
        self._tick_until(time.monotonic() + self.cfg.server_down)
        self.srv = LocalServer.start(base=self.base, port=self.port)
        if self.srv.port != self.port:
            raise RuntimeError(f"server came back on port {self.srv.port}, not {self.port}")
        self.ev.outages.append((t0, time.time()))

    def _tick_until(self, until: float) -> None:
        while time.monotonic() < until:
            self.tick()
            time.sleep(0.1)

    def tick(self) -> None:
        """SIGCONT stopped pilots whose time is up; replace pilots that exited."""
        now = time.time()
        for pid, when in list(self.stopped_now.items()):
            if now >= when:
                _signal(pid, signal.SIGCONT)
                del self.stopped_now[pid]
                self.ev.stopped[pid][-1] = (self.ev.stopped[pid][-1][0], time.time())
        for pid, p in list(self.procs.items()):
            code = p.poll()
            if code is not None and pid not in self.ev.killed and not getattr(p, "_counted", False):
                p._counted = True  # type: ignore[attr-defined]
                self.ev.unexpected_exits.append((pid, code))
                self.start_pilot()

    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        with self.admin(600.0) as s:
            db = s.database("faults")
            db.create()
            design.install(db)
            docs = _tokens(cfg, self.journal, self.rnd)
            for i in range(0, len(docs), 1000):
                res = db.bulk_docs(docs[i:i + 1000])
                assert not res.errors and not res.conflicts
            db.view("lrt-claim", "todo", limit=1)
            db.view("lrt", "locked", limit=1)
            db.view("lrt", "tokens", limit=1)
        t_start = time.time()
        for _ in range(cfg.pilots):
            self.start_pilot()
        kill_marks = [(k + 1) / (cfg.server_kills + 1) for k in range(cfg.server_kills)]
        next_kill = time.monotonic() + self.rnd.uniform(*cfg.kill_every) if cfg.kill_every else None
        next_stop = time.monotonic() + self.rnd.uniform(*cfg.stop_every) if cfg.stop_every else None
        deadline = time.monotonic() + cfg.timeout
        done = 0
        try:
            while True:
                self.tick()
                d = self.done_count()
                done = d if d is not None else done
                if done >= cfg.tokens:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out with {done}/{cfg.tokens} done")
                if kill_marks and done >= kill_marks[0] * cfg.tokens:
                    kill_marks.pop(0)
                    self.kill_server()
                    continue
                now = time.monotonic()
                if next_kill is not None and now >= next_kill:
                    next_kill = now + self.rnd.uniform(*cfg.kill_every)
                    pids = self.running()
                    if pids:
                        pid = self.rnd.choice(pids)
                        self.ev.killed[pid] = time.time()
                        os.kill(pid, signal.SIGKILL)
                        self.procs[pid].wait()
                        self.start_pilot()
                if next_stop is not None and now >= next_stop:
                    next_stop = now + self.rnd.uniform(*cfg.stop_every)
                    pids = self.running()
                    if len(pids) > 1:
                        pid = self.rnd.choice(pids)
                        os.kill(pid, signal.SIGSTOP)
                        t = time.time()
                        self.stopped_now[pid] = t + cfg.stop_seconds
                        self.ev.stopped[pid].append((t, t + cfg.stop_seconds))
                time.sleep(0.5)
            t_done = time.time()
        finally:
            for pid in list(self.stopped_now):
                _signal(pid, signal.SIGCONT)
                self.ev.stopped[pid][-1] = (self.ev.stopped[pid][-1][0], time.time())
            self.stopped_now.clear()
            for p in self.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            until = time.monotonic() + 60
            for p in self.procs.values():
                try:
                    p.wait(max(0.1, until - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        with self.admin(600.0) as s:
            docs = [r["doc"] for r in s.database("faults").all_docs(include_docs=True)["rows"]
                    if (r.get("doc") or {}).get("kind") == "token"]
        report = analyse(docs, read_journal(self.journal), self.ev, cfg)
        tracebacks = sum(lg.read_text(errors="replace").count("Traceback") for lg in self.logs.values())
        stats = [json.loads(f.read_text()) for f in sorted(self.work.glob("s*.json"))]
        report.update({
            "config": {k: v for k, v in asdict(cfg).items() if k != "timeout"},
            "seconds": round(t_done - t_start, 1),
            "pilots_started": self.ev.started_pilots, "pilots_killed": len(self.ev.killed),
            "pilots_stopped": sum(len(v) for v in self.ev.stopped.values()),
            "server_outages_s": [round(b - a, 1) for a, b in self.ev.outages],
            "unexpected_pilot_exits": self.ev.unexpected_exits,
            "pilot_tracebacks": tracebacks,
            "renewed_before_start": sum(s.get("renewed_before_start", 0) for s in stats),
            "fenced": sum(s.get("fenced", 0) for s in stats),
            "reaped": sum(s.get("reaped", 0) for s in stats),
        })
        return report

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        self.srv.stop()


def read_journal(path: Path) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for line in path.read_text().splitlines():
        f = line.split("\t")
        if f[0] == "start" and len(f) == 7:
            off = float(f[5] or 0)
            out.append({"kind": "start", "token": f[1], "claim": f[2], "pilot": f[3],
                        "t": float(f[4]) + off, "expires": float(f[6])})
        elif f[0] == "end" and len(f) == 6:
            out.append({"kind": "end", "token": f[1], "claim": f[2], "pilot": f[3], "t": float(f[4]),
                        "result": f[5]})
        else:
            raise ValueError(f"journal line not understood: {line!r}")
    return out


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 <= b1 and b0 <= a1


def analyse(docs: List[Dict[str, Any]], journal: List[Dict[str, Any]], ev: Events,
            cfg: Faults) -> Dict[str, Any]:
    """The checks and the figures (see the module docstring)."""
    starts: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    ends: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for e in journal:
        if e["kind"] == "start":
            starts[e["token"]].append(e)
        else:
            ends[(e["token"], e["claim"])] = e
    problems: List[str] = []
    extra: Counter = Counter()
    late: Counter = Counter()  # payload starts on an expired lease, by cause
    late_examples: List[Dict[str, Any]] = []
    not_done = [d["_id"] for d in docs if d.get("state") != "done"]
    if not_done:
        problems.append(f"{len(not_done)} token(s) not done, e.g. {not_done[:3]}")
    for d in docs:
        tid = d["_id"]
        hist = d.get("history") or []
        by_claim = {h.get("claim"): h for h in hist}
        dones = [h for h in hist if h.get("end") == "finish" and h.get("state") == "done"]
        if len(dones) != 1 or hist[-1] is not dones[0]:
            problems.append(f"{tid}: {len(dones)} done entries in its history")
            continue
        claim = dones[0]["claim"]
        end = ends.get((tid, claim))
        if end is None or (d.get("log_tail") or {}).get("stdout") != end["result"] + "\n":
            problems.append(f"{tid}: recorded result {(d.get('log_tail') or {}).get('stdout')!r} is not "
                            f"the journal's {end and end['result']!r} for claim {claim}")
        seen = Counter(s["claim"] for s in starts[tid])
        if seen[claim] != 1:
            problems.append(f"{tid}: finishing claim {claim} started {seen[claim]} time(s)")
        twice = [c for c, n in seen.items() if n > 1]
        if twice:
            problems.append(f"{tid}: claim(s) {twice} started more than once")
        for s in starts[tid]:
            h = by_claim.get(s["claim"])
            pid = _pid_of(s["pilot"])
            if h is None:
                problems.append(f"{tid}: claim {s['claim']} started but is not in the history")
                continue
            t0, t1 = h.get("claimed") or s["t"], h.get("finished") or s["t"]
            stopped_between = any(_overlaps(a, b, t0, s["t"]) for a, b in ev.stopped.get(pid, []))
            # started on an expired lease? (on the server clock, as the pilot estimated it)
            why = None
            if s["t"] >= s["expires"]:
                why = "after the lease end the pilot believed"
            elif h.get("expires") is not None and s["expires"] > h["expires"] + 0.01:
                why = "the pilot believed a later lease end than the server recorded"
            elif h.get("end") == "reap" and s["t"] >= h["finished"] - cfg.reap_grace:
                why = "the claim was reaped as expired before this start"
            if why:
                cause = "stopped" if stopped_between else ("killed" if pid in ev.killed else "live")
                late[cause] += 1
                if len(late_examples) < 10:
                    late_examples.append({"token": tid, "claim": s["claim"], "why": why, "cause": cause,
                                          "start": s["t"], "believed": s["expires"],
                                          "history": h})
            if s["claim"] == claim:
                continue
            if pid in ev.killed:
                extra["killed pilot"] += 1
            elif any(_overlaps(a, b, t0, t1) for a, b in ev.stopped.get(pid, [])):
                extra["stopped pilot"] += 1
            elif any(_overlaps(a, b + 1.0, t0, t1) for a, b in ev.outages):
                extra["server outage"] += 1
            else:
                extra["live pilot"] += 1
    n_starts = sum(len(v) for v in starts.values())
    return {
        "tokens": len(docs), "done": len(docs) - len(not_done), "payload_starts": n_starts,
        "extra_runs": n_starts - len(docs),
        "extra_by_cause": {k: extra.get(k, 0) for k in ("killed pilot", "stopped pilot", "server outage",
                                                         "live pilot")},
        "late_starts_by_cause": dict(late), "late_start_examples": late_examples,
        "problems": problems,
    }


def run(cfg: Faults, work: Path) -> Dict[str, Any]:
    """One fault-injection run in ``work`` (its own local server); the report."""
    r = _Run(cfg, work)
    try:
        return r.run()
    finally:
        r.close()


def _pair(text: str) -> Optional[Tuple[float, float]]:
    if text in ("", "0", "none", "off"):
        return None
    a, _, b = text.partition(",")
    return (float(a), float(b or a))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # stopped by SIGINT/SIGTERM (SIGINT is ignored in background jobs): clean up pilots and server
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Faults()
    ap.add_argument("--tokens", type=int, default=d.tokens)
    ap.add_argument("--pilots", type=int, default=d.pilots)
    ap.add_argument("--lease", type=float, default=d.lease)
    ap.add_argument("--reap-grace", type=float, default=d.reap_grace)
    ap.add_argument("--duration", default="0.05,0.5", help="payload seconds: uniform(a, b)")
    ap.add_argument("--kill-every", default="1,3", help="seconds between pilot SIGKILLs: uniform(a, b); 0: off")
    ap.add_argument("--stop-every", default="5,10", help="seconds between pilot SIGSTOPs; 0: off")
    ap.add_argument("--stop-for", type=float, default=None, help="default: 2 x lease + grace")
    ap.add_argument("--server-kills", type=int, default=d.server_kills)
    ap.add_argument("--server-down", type=float, default=d.server_down)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (journal, pilot logs)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cfg = Faults(tokens=a.tokens, pilots=a.pilots, lease=a.lease, reap_grace=a.reap_grace,
                 duration=_pair(a.duration) or (0.0, 0.0), kill_every=_pair(a.kill_every),
                 stop_every=_pair(a.stop_every), stop_for=a.stop_for, server_kills=a.server_kills,
                 server_down=a.server_down, seed=a.seed)
    work = Path(tempfile.mkdtemp(prefix="lrt-bench-faults-"))
    try:
        rep = run(cfg, work)
    finally:
        if not a.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}", file=sys.stderr)
    print(json.dumps(rep, indent=None if a.json else 1, default=str))
    if not a.json:
        e = rep["extra_by_cause"]
        print()
        print("| tokens | pilots | lease s | s | pilots killed | pilots stopped | server outages | extra runs "
              "| killed pilot | stopped pilot | server outage | live pilot | late starts | problems |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {rep['tokens']} | {cfg.pilots} | {cfg.lease:g} | {rep['seconds']} | {rep['pilots_killed']} "
              f"| {rep['pilots_stopped']} | {len(rep['server_outages_s'])} | {rep['extra_runs']} "
              f"| {e['killed pilot']} | {e['stopped pilot']} | {e['server outage']} | {e['live pilot']} "
              f"| {sum(rep['late_starts_by_cause'].values())} | {len(rep['problems'])} |")
    return 0 if not rep["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
