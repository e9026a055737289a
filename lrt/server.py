"""The embedded local CouchDB-API server (pouchdb-server on Node.js).

Apache CouchDB is what production runs; this local server is for ``make demo``,
for trying lrt on a laptop, and for the test suite.  Its only requirement is
Node.js (with npm for the first install): ``pouchdb-server`` is installed from
the npm registry into a folder lrt owns (``$LRT_HOME/node``, default
``~/.local/share/lrt/node``), bound to 127.0.0.1 only, with a data directory and
a generated admin password stored in a 0600 state file.

Known differences from Apache CouchDB are avoided, not patched: databases are
created and deleted as server admin only, ``_bulk_docs`` results are matched by
id, and lrt does not use ``_changes`` feeds.  See docs/server.md.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .errors import LrtError

POUCHDB_SERVER_VERSION = "4.2.0"
DEFAULT_PORT = 5985  # not 5984, so a real CouchDB on the same machine is left alone


class ServerSetupError(LrtError):
    """The local server could not be installed or started."""


def lrt_home() -> Path:
    """Where lrt keeps its own files (``$LRT_HOME``, else ``~/.local/share/lrt``)."""
    env = os.environ.get("LRT_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "lrt"


def node_dir() -> Path:
    return lrt_home() / "node"


def server_bin() -> Path:
    return node_dir() / "node_modules" / "pouchdb-server" / "bin" / "pouchdb-server"


def install(quiet: bool = False) -> Path:
    """Install pouchdb-server from npm (once); return its entry point."""
    binp = server_bin()
    if binp.exists():
        return binp
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise ServerSetupError("the local server needs Node.js and npm "
                               "(Debian: apt-get install -y nodejs npm)")
    nd = node_dir()
    nd.mkdir(parents=True, exist_ok=True)
    pkg = nd / "package.json"
    if not pkg.exists():
        pkg.write_text('{"private": true}\n')
    # --ignore-scripts: leveldown ships an N-API prebuild; this only skips the
    # optional sqlite backend's native build, so no compiler is needed.
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
           f"pouchdb-server@{POUCHDB_SERVER_VERSION}"]
    res = subprocess.run(cmd, cwd=nd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0 or not binp.exists():
        raise ServerSetupError(f"npm install pouchdb-server failed:\n{res.stdout[-2000:]}")
    return binp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, from the first byte."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


@dataclass
class LocalServer:
    """A running (or recorded) local server instance."""

    base: str
    port: int
    pid: int
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"LocalServer(url={self.url!r}, pid={self.pid}, user={self.user!r})"

    # -- lifecycle -----------------------------------------------------------------
    @classmethod
    def start(cls, base: Optional[Path] = None, port: Optional[int] = None,
              memory: bool = False, timeout: float = 60.0, strict_port: bool = False,
              attempts: int = 5) -> "LocalServer":
        """Start a server whose files live in ``base``; wait until it answers as admin.

        ``port`` is a preference: when it is taken -- also when another process
        binds it between our check and the server's bind -- a fresh free port is
        tried (up to ``attempts`` times), unless ``strict_port``.  A server that
        cannot start raises :class:`ServerSetupError` with the reason in one line
        (pouchdb-server's own stack trace stays in ``server.out``).
        """
        base = Path(base) if base else lrt_home() / "server"
        existing = cls.load(base)
        if existing is not None and existing.alive():
            return existing
        binp = install()
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)
        (base / "data").mkdir(exist_ok=True)
        port = port or (existing.port if existing else None) or DEFAULT_PORT
        password = existing.password if existing else secrets.token_urlsafe(18)
        for attempt in range(1, attempts + 1):
            if _port_busy(port):
                if strict_port:
                    raise ServerSetupError(f"port {port} on 127.0.0.1 is in use by another process")
                port = free_port()
            try:
                return cls._start_on(base, binp, port, password, memory, timeout)
            except _PortTaken:
                if strict_port:
                    raise ServerSetupError(f"port {port} on 127.0.0.1 is in use by another process") from None
                if attempt == attempts:
                    raise ServerSetupError(f"local server could not bind a port after {attempts} tries "
                                           f"(each was taken before it could listen)") from None
                port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _start_on(cls, base: Path, binp: Path, port: int, password: str, memory: bool,
                  timeout: float) -> "LocalServer":
        """One start on ``port``: the running server, or :class:`_PortTaken` / :class:`ServerSetupError`."""
        user = "admin"
        cfg = {"admins": {user: password},
               "log": {"file": str(base / "log.txt"), "level": "warning"}}
        _write_private(base / "config.json", json.dumps(cfg))
        args = ["node", "--unhandled-rejections=warn", str(binp), "-o", "127.0.0.1", "-p", str(port),
                "-d", str(base / "data") + os.sep, "-c", str(base / "config.json"), "-n"]
        if memory:
            args.append("-m")
        outp = base / "server.out"
        out = open(outp, "ab")
        offset = out.tell()
        proc = subprocess.Popen(args, cwd=str(base), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        srv = cls(str(base), port, proc.pid, user, password)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if not _can_bind(port):
                    raise _PortTaken(port)
                with open(outp, "rb") as fh:
                    fh.seek(offset)
                    text = fh.read().decode(errors="replace")
                raise ServerSetupError(f"local server exited at start (status {proc.returncode}): "
                                       f"{_reason(text)}; details in {outp}")
            if srv.ready():
                _settle_config(base / "config.json", password, srv.url)
                srv.save()
                return srv
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise ServerSetupError(f"local server not ready after {timeout:.0f}s; see {outp}")

    def ready(self) -> bool:
        import requests  # here: `lrt server stop/status` start faster without it

        try:
            r = requests.get(self.url + "/_session", auth=(self.user, self.password), timeout=1)
            return r.ok and "_admin" in r.json().get("userCtx", {}).get("roles", [])
        except (requests.RequestException, ValueError):
            return False

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return self.ready()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server; True if it was running."""
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            try:  # reap it if it is our child
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True

    # -- state file ----------------------------------------------------------------
    def save(self) -> None:
        _write_private(Path(self.base) / "state.json", json.dumps(asdict(self)))

    @classmethod
    def load(cls, base: Optional[Path] = None) -> Optional["LocalServer"]:
        base = Path(base) if base else lrt_home() / "server"
        try:
            data = json.loads((base / "state.json").read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def _settle_config(path: Path, password: str, url: str = "", timeout: float = 30.0) -> None:
    """Make pouchdb-server write config.json for the last time, then make it 0600.

    The server rewrites config.json (world-readable) when it replaces the plain
    password by its hash, some time after it starts answering, and again at the
    first ``GET /``, which makes it store a server uuid.  So: ask ``GET /`` once,
    wait until the file has the hash and the uuid, then chmod (before those
    rewrites it would be undone).
    """
    if url:
        import requests

        try:
            requests.get(url + "/", timeout=5).close()
        except requests.RequestException:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
            if password not in text and ('"uuid"' in text or not url):
                break
        except OSError:
            pass
        time.sleep(0.05)
    os.chmod(path, 0o600)


class _PortTaken(Exception):
    """The server could not listen: another process has the port."""


def _can_bind(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now (False: another process has it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Node's listen does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _reason(output: str) -> str:
    """One line of what a failed start printed: its first error message, never a stack trace."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"^(\w*Error|Error)\b.*:", ln) or "EADDRINUSE" in ln or "EACCES" in ln:
            return ln[:200]
    text = [ln for ln in lines if not ln.startswith("at ") and not ln.startswith("^")
            and not ln.startswith("Node.js v") and not ln.startswith("/")]
    return (text[-1][:200] if text else "no output")


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def running(base: Optional[Path] = None) -> Optional[LocalServer]:
    """The default local server if it is running, else None."""
    srv = LocalServer.load(base)
    return srv if srv is not None and srv.alive() else None
