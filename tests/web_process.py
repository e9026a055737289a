"""A real lrt web server process (``lrt dashboard``, ``lrt serve``) for the web and UWS tests."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import requests

from pilot_helpers import ROOT, poll


class WebProcess:
    """``lrt <args> --port P`` on a free loopback port, pointed at database ``dbname``.

    Up once ``GET <probe>`` answers ``status`` (a process that exits first fails
    the test with its log); :meth:`stop` sends SIGINT, as Ctrl-C would.
    """

    def __init__(self, couch: Any, dbname: str, log: Path, args: Sequence[str], probe: str,
                 status: int = 200):
        from lrt.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.probe, self.status = probe, status
        self.env = couch.env(dbname)
        self.env["PYTHONPATH"] = str(ROOT)
        self.out = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lrt.cli", args[0], "--port", str(self.port),
                                      *args[1:]], cwd=str(ROOT), env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT)
        poll(self._up, timeout=60, interval=0.2, what=f"lrt {args[0]} on {self.url}")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"lrt exited: {self.log.read_text()}")
        try:
            return requests.get(self.url + self.probe, timeout=5).status_code == self.status
        except requests.ConnectionError:
            return False

    def stop(self) -> Optional[int]:
        """Stop it (SIGINT, SIGKILL after 20 s); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        return self.proc.returncode
