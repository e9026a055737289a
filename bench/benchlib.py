"""What the bench scripts share: the server to measure, and its CPU clock.

Imported by scripts in this folder (which put the checkout on ``sys.path``).

The server is either a fresh local server (lrt.server.LocalServer, started in a
temporary folder and stopped afterwards) or an external one, e.g. an Apache
CouchDB started by the operator::

    export LRT_BENCH_COUCH_USER=admin
    export LRT_BENCH_COUCH_PASSWORD_FILE=~/.couch-admin-password   # or LRT_BENCH_COUCH_PASSWORD
    python3 bench/compare_picas.py --url http://127.0.0.1:5984 --server-pid $(cat couchdb.pid)

Credentials come from the environment (never from argv, never printed).  The
server's CPU is read from /proc for ``--server-pid`` and every descendant of it
(for Apache CouchDB: beam.smp, its ``erl_child_setup`` and the JavaScript
query-server processes that one starts); without ``--server-pid`` an external
server's CPU is not reported.  The bench creates uniquely named databases and
deletes them again; it never touches others.
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from lrt.couch import Server
from lrt.server import LocalServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def add_server_args(ap: argparse.ArgumentParser) -> None:
    """``--url`` and ``--server-pid``: measure an external server instead of a local one."""
    g = ap.add_argument_group("external server (default: a fresh local server)")
    g.add_argument("--url", default=os.environ.get("LRT_BENCH_COUCH_URL"),
                   help="CouchDB URL (env LRT_BENCH_COUCH_URL); credentials from env "
                        "LRT_BENCH_COUCH_USER and LRT_BENCH_COUCH_PASSWORD or LRT_BENCH_COUCH_PASSWORD_FILE")
    g.add_argument("--server-pid", action="append", type=int, default=[],
                   help="pid of the server process (repeatable); its CPU and that of all its "
                        "descendant processes (e.g. CouchDB's JavaScript processes) is measured")


@dataclass
class Target:
    """The server under measurement: where it is, who we are there, whose CPU is its CPU."""

    url: str
    user: Optional[str]
    password: Optional[str] = field(repr=False)
    pids: List[int]
    local: Optional[LocalServer] = None

    @property
    def external(self) -> bool:
        return self.local is None

    def server(self, **kw) -> Server:  # type: ignore[no-untyped-def]
        return Server(self.url, self.user, self.password, **kw)

    def env(self) -> Dict[str, str]:
        """``LRT_COUCH_*`` for an lrt child process (credentials in the environment only)."""
        e = {"LRT_COUCH_URL": self.url}
        if self.user is not None:
            e["LRT_COUCH_USER"] = self.user
        if self.password is not None:
            e["LRT_COUCH_PASSWORD"] = self.password
        return e

    @property
    def has_cpu(self) -> bool:
        return bool(self.pids)

    def cpu(self) -> float:
        """CPU seconds of the server's processes so far (see :func:`tree_cpu_seconds`)."""
        return sum(tree_cpu_seconds(p) for p in self.pids)

    def cpu_split(self) -> Tuple[float, float]:
        """(CPU seconds of the ``--server-pid`` processes themselves, of the whole tree)."""
        return sum(cpu_seconds(p) for p in self.pids), self.cpu()

    def describe(self) -> str:
        kind = "local server" if self.local else "external server"
        return f"{kind} {self.url}" + (f", CPU of pid(s) {self.pids} and descendants" if self.pids else
                                       ", server CPU not measured (no --server-pid)")


def add_affinity_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--pilot-cpus", help="run this bench and the pilots it starts on these CPUs only "
                    "(e.g. 1, or 0-1; sched_setaffinity, inherited by child processes); pin the "
                    "server yourself, e.g. taskset -a -c -p 0 PID")


def apply_affinity(spec: Optional[str]) -> Optional[List[int]]:
    """Pin this process (and so the pilots it starts) to the CPUs in ``spec`` ("1", "0-1", "0,1")."""
    if not spec:
        return None
    cpus: List[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    os.sched_setaffinity(0, cpus)
    return sorted(os.sched_getaffinity(0))


def child_env(**extra: str) -> Dict[str, str]:
    """This process's environment for a child, without the bench's own credential variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRT_BENCH_COUCH_PASSWORD")}
    env.update(extra)
    return env


def _password_from_env() -> Optional[str]:
    pw = os.environ.get("LRT_BENCH_COUCH_PASSWORD")
    if pw is not None:
        return pw
    pw_file = os.environ.get("LRT_BENCH_COUCH_PASSWORD_FILE")
    if pw_file:
        with open(os.path.expanduser(pw_file)) as fh:
            return fh.read().strip()
    return None


@contextmanager
def target(args: argparse.Namespace, tmp: Path) -> Iterator[Target]:
    """The server named by :func:`add_server_args`' options, or a fresh local one in ``tmp``."""
    if getattr(args, "url", None):
        yield Target(args.url.rstrip("/"), os.environ.get("LRT_BENCH_COUCH_USER"), _password_from_env(),
                     list(args.server_pid))
        return
    local = LocalServer.start(base=tmp / "couch", port=free_port())
    try:
        yield Target(local.url, local.user, local.password, [local.pid], local)
    finally:
        local.stop()


@contextmanager
def bench_server(tmp: Path, use_configured: bool = True) -> Iterator[Tuple[Server, Optional[LocalServer], Dict[str, str]]]:
    """(admin server, the local server or None, environment for child processes).

    With ``LRT_BENCH_COUCH_URL`` set (credentials as in :func:`add_server_args`),
    or else ``LRT_COUCH_URL`` (lrt's own settings), and ``use_configured``, that
    server is measured; otherwise a fresh local server is started in ``tmp`` and
    stopped afterwards.  The environment reaches the same server (credentials in
    the environment only, never in argument vectors) and the checkout's code.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), LRT_CONFIG="/nonexistent/lrt-config.yaml")
    local: Optional[LocalServer] = None
    if use_configured and os.environ.get("LRT_BENCH_COUCH_URL"):
        t = Target(os.environ["LRT_BENCH_COUCH_URL"].rstrip("/"), os.environ.get("LRT_BENCH_COUCH_USER"),
                   _password_from_env(), [])
        server = t.server()
        env.pop("LRT_COUCH_PASSWORD_FILE", None)
        env.update(t.env())
    elif use_configured and os.environ.get("LRT_COUCH_URL"):
        from lrt.settings import resolve

        st = resolve(use_local=False)
        server = st.server()
        if st.password is not None:
            env["LRT_COUCH_PASSWORD"] = st.password
    else:
        local = LocalServer.start(base=tmp / "couch", port=free_port())
        server = Server(local.url, local.user, local.password)
        env.update(LRT_COUCH_URL=local.url, LRT_COUCH_USER=local.user, LRT_COUCH_PASSWORD=local.password)
    try:
        yield server, local, env
    finally:
        server.close()
        if local is not None:
            local.stop()


def _stat(pid: int) -> Tuple[int, float]:
    """(parent pid, utime + stime + cutime + cstime in seconds) of ``pid`` from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return int(fields[1]), ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and all its live descendants, including children they reaped.

    Each process counts its own time plus that of its waited-for children
    (``cutime``/``cstime``), so a JavaScript process that exits during a run
    still counts: its time moves into its parent's figure.  A process started
    during the run counts from zero.  Read before and after; the difference is
    the server's CPU over the run.
    """
    info: Dict[int, Tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                info[int(name)] = _stat(int(name))
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _) in info.items():
        children.setdefault(ppid, []).append(pid)
    if root not in info:
        raise ProcessLookupError(f"no process {root}")
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += info[pid][1]
        todo.extend(children.get(pid, []))
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (from /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
