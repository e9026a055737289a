"""``lrt run-local``: N pilot processes on this machine, as a batch system would start them.

Each pilot is a separate ``lrt pilot`` process (separate HTTP session, own
process group for its payloads), so local runs exercise exactly the code that
runs on worker nodes.  Connection settings reach the children through the
environment (never their argument vectors, which ``ps`` shows to everyone).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass
class LocalSummary:
    pilots: int
    exit_codes: List[int] = field(default_factory=list)
    stats: List[Dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.exit_codes)

    @property
    def tokens(self) -> int:
        return sum(int(s.get("tokens", 0)) for s in self.stats)

    def text(self) -> str:
        reqs = sum(int(s.get("requests", 0)) for s in self.stats)
        lost = sum(int(s.get("lost", 0)) for s in self.stats)
        claims = sum(int(s.get("claims", 0)) for s in self.stats)
        rate = self.tokens / self.elapsed if self.elapsed > 0 else 0.0
        bad = [rc for rc in self.exit_codes if rc != 0]
        lines = [f"{self.pilots} pilot(s) ran {self.tokens} token(s) in {self.elapsed:.1f}s "
                 f"({rate:.1f} tokens/s)",
                 f"HTTP requests: {reqs} ({reqs / self.tokens:.2f} per token)" if self.tokens else
                 f"HTTP requests: {reqs}",
                 f"claims: {claims}, lost to other pilots: {lost}"]
        if bad:
            lines.append(f"{len(bad)} pilot(s) exited non-zero: {sorted(set(bad))}")
        return "\n".join(lines)


def child_env(settings: "Settings") -> Dict[str, str]:
    env = dict(os.environ)
    if settings.url:
        env["LRT_COUCH_URL"] = settings.url
    if settings.user is not None:
        env["LRT_COUCH_USER"] = settings.user
    if settings.password is not None:
        env["LRT_COUCH_PASSWORD"] = settings.password
    env["LRT_COUCH_DB"] = settings.db
    if isinstance(settings.verify, str):
        env["LRT_CA_BUNDLE"] = settings.verify
    pkg_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_local(settings: "Settings", n: int, argv_for: Callable[[Optional[Path]], List[str]]) -> LocalSummary:
    """Start ``n`` pilots (``argv_for(stats_file)`` gives each one's argv) and wait for all.

    SIGINT/SIGTERM to this process are passed on to the pilots, which release
    their tokens and exit.
    """
    env = child_env(settings)
    tmp = Path(tempfile.mkdtemp(prefix="lrt-run-local-"))
    procs: List[subprocess.Popen] = []
    stats_files = [tmp / f"pilot-{i}.json" for i in range(n)]
    t0 = time.monotonic()

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signum)
                except ProcessLookupError:
                    pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sf in stats_files:
            procs.append(subprocess.Popen(argv_for(sf), env=env, stdin=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    summary = LocalSummary(n, codes, elapsed=time.monotonic() - t0)
    for sf in stats_files:
        try:
            summary.stats.append(json.loads(sf.read_text()))
            sf.unlink()
        except (OSError, ValueError):
            pass
    try:
        tmp.rmdir()
    except OSError:
        pass
    return summary
