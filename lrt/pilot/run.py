"""Running one payload: work directory, environment, process group, logs, rusage.

The payload is an argument vector from the token, executed without a shell,
so token content (``;``, ``$(...)``, quotes, newlines) reaches it literally.
It runs in a session of its own (``start_new_session``) so the pilot can stop
it *and everything it started* with one ``killpg``.  A pilot killed with
SIGKILL must not leave its payload running while the token is handed to
another pilot: a per-pilot watchdog process (:class:`Watchdog`, started once)
learns each payload's process group over a pipe and SIGKILLs the groups it
knows when the pipe reaches end-of-file, i.e. when the pilot is gone.  Where no
watchdog can be started, the payload gets ``PR_SET_PDEATHSIG`` = SIGKILL
instead (``setpriv`` or a ``preexec_fn``), which covers the payload itself but
not what it forked.

stdout/stderr go to files in the work directory; the token keeps a bounded
tail of each and the full logs (capped) are attached to it.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

#: bytes of each stream kept on the token as ``log_tail``
TAIL_BYTES = 4096
#: full logs larger than this are attached truncated (head + marker + tail)
LOG_CAP = 10 * 1024 * 1024
#: logs up to this size travel inline (base64) in the finish request: no extra request
INLINE_MAX = 256 * 1024

_PR_SET_PDEATHSIG = 1
_libc: Any = None


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: die with the pilot (Linux only; silently skipped elsewhere)."""
    try:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


try:  # resolved once in the parent, so the child only makes one call
    _libc = ctypes.CDLL(None, use_errno=True) if os.uname().sysname == "Linux" else None
except OSError:  # pragma: no cover
    _libc = None

_SETPRIV: Optional[List[str]] = None
_SETPRIV_CHECKED = False


def death_signal_prefix() -> Optional[List[str]]:
    """``setpriv --pdeathsig KILL --`` if this node's util-linux has it (>= 2.33), else None.

    Why: a ``preexec_fn`` (the other way to set the parent-death signal) makes
    Python fork the whole pilot and run Python code in the child, which costs
    about 2.5 ms of pilot CPU and 2.3 ms of child CPU per payload on a
    2-core machine; with no ``preexec_fn`` Python uses vfork and the extra
    exec of setpriv is cheaper (see docs/pilot.md).  Checked once per pilot.
    """
    global _SETPRIV, _SETPRIV_CHECKED
    if not _SETPRIV_CHECKED:
        _SETPRIV_CHECKED = True
        path = shutil.which("setpriv")
        if path and os.uname().sysname == "Linux":
            try:
                ok = subprocess.run([path, "--pdeathsig", "KILL", "--", "true"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    timeout=10).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                _SETPRIV = [path, "--pdeathsig", "KILL", "--"]
    return _SETPRIV


#: the watchdog's program (run with ``python -I -S``: no site, no user paths; a few ms of CPU once)
_WATCHDOG_SRC = r"""
import os, signal, sys
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a job-wide signal is for the pilot: end at its end
    signal.signal(s, signal.SIG_IGN)
fd = int(sys.argv[1])
groups, pending, buf = set(), set(), b""
while True:
    try:
        data = os.read(fd, 65536)
    except InterruptedError:
        continue
    except OSError:
        data = b""
    if not data:
        break
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        op, _, arg = line.partition(b" ")
        if op == b"?":
            pending.add(arg)
        elif op == b"+":
            pid, _, mark = arg.partition(b" ")
            groups.add(int(pid))
            pending.discard(mark)
        elif op == b"-":
            groups.discard(int(arg))
        elif op == b"!":
            pending.discard(arg)
for g in groups:
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
marks = [b"\0" + m + b"\0" for m in pending if m]
if marks:  # the pilot died between starting a payload and telling us its pid: find it by its environment
    me = os.getuid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat("/proc/" + name).st_uid != me:
                continue
            with open("/proc/" + name + "/environ", "rb") as fh:
                env = b"\0" + fh.read()
        except OSError:
            continue
        if any(m in env for m in marks):
            pid = int(name)
            for kill in (lambda: os.killpg(os.getpgid(pid), signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except OSError:
                    pass
"""


class Watchdog:
    """Kills this process's payloads (their whole process groups) when this process dies.

    Why: ``PR_SET_PDEATHSIG`` has to be set in the child between fork and
    exec, which costs either a second exec per payload (``setpriv``, about
    1 ms of CPU) or a full fork with Python code in the child (a
    ``preexec_fn``, more).  The watchdog is started once per pilot, in a
    session of its own (a signal to the pilot's process group does not reach
    it); per payload the pilot writes three short lines to a pipe: ``? MARK``
    before the spawn, ``+ PID MARK`` after it, ``- PID`` once the payload has
    exited and its group was killed (before the zombie is reaped, so the pid
    cannot have been reused).  The watchdog holds the only read end; when the
    pilot is gone, for whatever reason, the read returns end-of-file and the
    watchdog SIGKILLs every group still registered.  ``MARK`` is the payload's
    ``LRT_CLAIM_ID=...`` environment entry: a pilot killed after the spawn but
    before its ``+`` line leaves a payload the watchdog finds by that entry in
    ``/proc/*/environ``.  If the watchdog itself dies, the next write fails and
    a new one is started with the live groups.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # also guards ``live`` (waiter threads end payloads)
        self._fd = -1
        self._owner = 0
        self.proc: Optional[subprocess.Popen] = None
        self.live: Dict[int, bytes] = {}

    def _start(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        r, w = os.pipe()  # both ends non-inheritable: payloads never hold the write end
        try:
            self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG_SRC, str(r)],
                                         pass_fds=(r,), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self._fd, self._owner = w, os.getpid()
        if self.live:
            self._write(b"".join(b"+ %d\n" % g for g in self.live))

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._fd, data):]

    def send(self, data: bytes) -> None:
        """One message; (re)starts the watchdog if there is none or it died.  OSError if it cannot."""
        with self._lock:
            if self._fd < 0 or self._owner != os.getpid():
                self._fd = -1  # a forked child: that pipe belongs to the parent
                self._start()
            try:
                self._write(data)
            except OSError:  # EPIPE: the watchdog is gone; a new one learns the live groups first
                self._start()
                self._write(data)

    def spawning(self, mark: bytes) -> None:
        """Before a spawn; OSError if no watchdog can run (the caller falls back)."""
        self.send(b"? " + mark + b"\n")

    def started(self, pgid: int, mark: bytes) -> None:
        with self._lock:
            self.live[pgid] = mark
        self._quiet(b"+ %d %s\n" % (pgid, mark))

    def failed(self, mark: bytes) -> None:
        self._quiet(b"! " + mark + b"\n")

    def ended(self, pgid: int) -> None:
        with self._lock:
            self.live.pop(pgid, None)
        self._quiet(b"- %d\n" % pgid)

    def _quiet(self, data: bytes) -> None:
        # after the spawn the payload runs either way: a watchdog that cannot be
        # restarted now is logged, not an error of this payload
        try:
            self.send(data)
        except OSError as exc:  # pragma: no cover - needs a node that stops starting processes
            import logging
            logging.getLogger("lrt.pilot").warning("payload watchdog unavailable: %s", exc)


_WATCHDOG: Optional[Watchdog] = None
#: False once a watchdog could not be started: payloads then get PR_SET_PDEATHSIG
_WATCHDOG_OK = True


def watchdog() -> Optional[Watchdog]:
    """This process's watchdog (started at the first payload), or None if it cannot run."""
    global _WATCHDOG
    if _WATCHDOG is None and _WATCHDOG_OK:
        _WATCHDOG = Watchdog()
    return _WATCHDOG if _WATCHDOG_OK else None


#: (argv[0], PATH) -> the program found on PATH last time (checked again before each use)
_WHICH_CACHE: Dict[Tuple[str, str], str] = {}


def resolve_executable(argv0: str, env: Mapping[str, str], cwd: Path) -> str:
    """The program the payload's argv[0] names; OSError (ENOENT/EACCES) if there is none.

    Resolved here, before starting anything, so a missing program is reported
    as COMMAND_NOT_FOUND whether or not a wrapper (setpriv) execs it.  A PATH
    lookup is remembered per (name, PATH): the next token with the same
    command only checks that the program found is still an executable file
    (a PATH walk per token cost about 0.3 ms of pilot CPU).
    """
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) else str(cwd / argv0)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "no such file", argv0)
        if not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, "not executable", argv0)
        return path
    key = (argv0, env.get("PATH", os.defpath))
    found = _WHICH_CACHE.get(key)
    if found is not None and os.path.isfile(found) and os.access(found, os.X_OK):
        return found
    found = shutil.which(argv0, path=key[1])
    if found is None:
        _WHICH_CACHE.pop(key, None)
        raise FileNotFoundError(errno.ENOENT, "not found on PATH", argv0)
    if len(_WHICH_CACHE) < 256:
        _WHICH_CACHE[key] = found
    return found

_ENV_NAME = re.compile(r"[^A-Za-z0-9_]")
_PILOT_SECRETS = ("LRT_COUCH_PASSWORD", "LRT_COUCH_PASSWORD_FILE", "LRT_COUCH_USER", "LRT_COUCH_URL")
#: (a copy of os.environ's raw data, the payload's base environment derived from it)
_BASE_ENV: Optional[Tuple[Dict[bytes, bytes], Dict[str, str]]] = None


def _base_env(base: Optional[Mapping[str, str]]) -> Dict[str, str]:
    """The pilot's environment without its secrets and stale ``LRT_P_*`` (a fresh dict).

    For ``base=None`` (the pilot's own environment) the result is derived
    once and reused while ``os.environ`` is unchanged: decoding and filtering
    the whole environment for every token cost about 0.3 ms of pilot CPU; the
    check is one comparison of the raw environment.
    """
    global _BASE_ENV
    raw = getattr(os.environ, "_data", None)
    if base is None and isinstance(raw, dict) and _BASE_ENV is not None and _BASE_ENV[0] == raw:
        return dict(_BASE_ENV[1])
    env = dict(os.environ if base is None else base)
    for k in _PILOT_SECRETS:
        env.pop(k, None)
    for k in [k for k in env if k.startswith("LRT_P_")]:
        del env[k]
    if base is None and isinstance(raw, dict):
        _BASE_ENV = (dict(raw), dict(env))
    return env


def payload_env(doc: Mapping[str, Any], pilot_id: str, workdir: Path,
                base: Optional[Mapping[str, str]] = None,
                sandbox: Optional[Path] = None, claim: Optional[str] = None,
                lease_expires: Optional[float] = None,
                clock_offset: Optional[float] = None) -> Dict[str, str]:
    """The payload's environment: the pilot's, plus the token's facts.

    ``LRT_P_<NAME>`` carries each payload parameter: strings as they are,
    anything else as JSON.  Secrets of the pilot (CouchDB credentials) are
    removed: the payload has no business writing to the token database.
    ``LRT_CLAIM_ID`` names this attempt (unique per claim: e.g. for output
    names); ``LRT_LEASE_EXPIRES`` (server clock, Unix seconds) and
    ``LRT_CLOCK_OFFSET`` (server clock minus this node's clock) say what the
    pilot believed when it started the payload -- for audits (bench/faults.py).
    """
    env = _base_env(base)
    env.update({
        "LRT_TOKEN_ID": str(doc.get("_id", "")),
        "LRT_TOKEN_TYPE": str(doc.get("type") or ""),
        "LRT_ATTEMPT": str(doc.get("attempts") or 0),
        "LRT_PILOT_ID": pilot_id,
        "LRT_WORKDIR": str(workdir),
        "LRT_TOKEN_FILE": str(workdir / "token.json"),
    })
    if sandbox is not None:
        env["LRT_SANDBOX"] = str(sandbox)
    for k in ("LRT_CLAIM_ID", "LRT_LEASE_EXPIRES", "LRT_CLOCK_OFFSET"):
        env.pop(k, None)
    if claim is not None:
        env["LRT_CLAIM_ID"] = claim
    if lease_expires is not None:
        env["LRT_LEASE_EXPIRES"] = f"{lease_expires:.3f}"
    if clock_offset is not None:
        env["LRT_CLOCK_OFFSET"] = f"{clock_offset:.4f}"
    payload = doc.get("payload") or {}
    if isinstance(payload, dict):
        for name, value in payload.items():
            key = "LRT_P_" + _ENV_NAME.sub("_", str(name)).upper()
            env[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return {k: v for k, v in env.items() if "\0" not in k and "\0" not in v}


def tail(path: Path, nbytes: int = TAIL_BYTES) -> str:
    """The last ``nbytes`` of a file as text (undecodable bytes replaced)."""
    try:
        if os.stat(path).st_size == 0:  # the usual case of a quiet payload: no open/read
            return ""
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - nbytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return text if size <= nbytes else "[...]" + text


def capped_log(path: Path, cap: int = LOG_CAP) -> Path:
    """``path`` itself if within ``cap``, else a copy with head + marker + tail."""
    size = path.stat().st_size
    if size <= cap:
        return path
    keep_tail = cap // 4
    marker = (f"\n[lrt: log truncated: {size} bytes written, first {cap - keep_tail} and "
              f"last {keep_tail} kept]\n").encode()
    out = path.with_name(path.name + ".capped")
    with open(path, "rb") as src, open(out, "wb") as dst:
        remaining = cap - keep_tail - len(marker)
        while remaining > 0:
            chunk = src.read(min(1 << 20, remaining))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)
        dst.write(marker)
        src.seek(size - keep_tail)
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
    return out


class Payload:
    """One running payload process (group) and its result."""

    def __init__(self, argv: Sequence[str], workdir: Path, env: Mapping[str, str]):
        self.argv = [str(a) for a in argv]
        self.workdir = workdir
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.done = threading.Event()
        self.status: Optional[int] = None
        self.rusage: Any = None
        self.started = 0.0
        self.ended = 0.0
        self.killed_by: Optional[str] = None
        self.pid = 0
        resolve_executable(self.argv[0], env, workdir)  # argv itself is passed unchanged
        global _WATCHDOG_OK
        self._dog = watchdog()
        mark = ("LRT_CLAIM_ID=" + env["LRT_CLAIM_ID"]).encode() if env.get("LRT_CLAIM_ID") else b""
        if self._dog is not None:
            try:
                self._dog.spawning(mark)
            except OSError:  # no watchdog on this node (cannot start Python?): the parent-death signal
                _WATCHDOG_OK, self._dog = False, None
        argv, preexec = list(self.argv), None
        if self._dog is None:
            prefix = death_signal_prefix()
            if prefix is not None:
                argv = prefix + self.argv
            else:
                preexec = _set_pdeathsig if _libc is not None else None
        out = open(self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        try:
            self.started = time.time()
            self._t0 = time.monotonic()
            self.proc = subprocess.Popen(argv, cwd=str(workdir), env=dict(env),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True, close_fds=True, preexec_fn=preexec)
        except BaseException:
            if self._dog is not None:
                self._dog.failed(mark)
            raise
        finally:
            out.close()
            err.close()
        self.pid = self.proc.pid
        if self._dog is not None:
            self._dog.started(self.pid, mark)
        self._waiter = threading.Thread(target=self._wait, name=f"wait-{self.pid}", daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        if self._dog is not None:
            try:  # exited, not yet reaped: its pid (the group id) cannot be reused meanwhile
                if hasattr(os, "waitid"):  # (not on macOS before Python 3.13)
                    os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            self._killpg(signal.SIGKILL)
            self._dog.ended(self.pid)
        while True:
            try:
                _, status, usage = os.wait4(self.pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
            except ChildProcessError:
                status, usage = 0, None
                break
        self.ended = time.time()
        self.wall = time.monotonic() - self._t0
        self.status = status
        self.rusage = usage
        self.proc.returncode = os.waitstatus_to_exitcode(status) if usage is not None else -1
        # a payload must not leave processes behind in its group
        self._killpg(signal.SIGKILL)
        self.done.set()

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: Optional[float]) -> bool:
        return self.done.wait(timeout)

    def kill(self, why: str, term_grace: float = 5.0) -> None:
        """SIGTERM the whole group, SIGKILL it after ``term_grace`` s; wait for the leader."""
        if self.killed_by is None:
            self.killed_by = why
        if self.done.is_set():
            self._killpg(signal.SIGKILL)
            return
        self._killpg(signal.SIGTERM)
        if not self.done.wait(term_grace):
            self._killpg(signal.SIGKILL)
            self.done.wait(30)
        self._killpg(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        self._killpg(sig)

    # -- results ---------------------------------------------------------------------
    @property
    def exit_code(self) -> Optional[int]:
        if self.status is None:
            return None
        if os.WIFEXITED(self.status):
            return os.WEXITSTATUS(self.status)
        return None

    @property
    def signal_number(self) -> Optional[int]:
        if self.status is not None and os.WIFSIGNALED(self.status):
            return os.WTERMSIG(self.status)
        return None

    def timings(self, clock_offset: float = 0.0) -> Dict[str, Any]:
        """started/finished on the server clock (estimated), wall, cpu, max_rss_kb."""
        t: Dict[str, Any] = {"started": round(self.started + clock_offset, 3)}
        if self.done.is_set():
            t["finished"] = round(self.ended + clock_offset, 3)
            t["wall"] = round(self.wall, 4)
            if self.rusage is not None:
                t["cpu"] = round(self.rusage.ru_utime + self.rusage.ru_stime, 4)
                t["max_rss_kb"] = int(self.rusage.ru_maxrss)
        return t

    def log_tail(self) -> Dict[str, str]:
        return {"stdout": tail(self.stdout_path), "stderr": tail(self.stderr_path)}


def remove_workdir(path: Path) -> None:
    """Delete a payload's work directory (errors ignored, like ``shutil.rmtree(ignore_errors=True)``).

    The usual directory holds only files (logs, ``token.json``): they are
    unlinked directly, which costs a fraction of ``shutil.rmtree``'s
    descriptor-based walk; anything else (subdirectories, a directory that
    cannot be listed) goes through ``shutil.rmtree``.
    """
    try:
        with os.scandir(path) as it:
            entries = list(it)
        if all(e.is_file(follow_symlinks=False) or e.is_symlink() for e in entries):
            for e in entries:
                os.unlink(e.path)
            os.rmdir(path)
            return
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def write_token_file(doc: Mapping[str, Any], workdir: Path) -> None:
    """``token.json`` in the work dir: the token as claimed (without internals)."""
    public = {k: v for k, v in doc.items() if k not in ("_attachments", "_revisions")}
    tmp = workdir / ".token.json.tmp"
    # no indent: json's C encoder only serves compact output (indent=1 cost ~1 ms per token)
    tmp.write_text(json.dumps(public, sort_keys=True, default=str))
    os.replace(tmp, workdir / "token.json")


def describe_failure(p: Payload) -> str:
    if p.signal_number is not None:
        try:
            name = signal.Signals(p.signal_number).name
        except ValueError:
            name = str(p.signal_number)
        return f"payload killed by signal {name}"
    return f"payload exited with status {p.exit_code}"


def command_argv(doc: Mapping[str, Any]) -> List[str]:
    """The token's command as a list of strings; ValueError if it is not one."""
    cmd = doc.get("command")
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, (str, int, float)) for a in cmd):
        raise ValueError("token has no command (want a non-empty list of strings)")
    if isinstance(cmd[0], str) and not cmd[0]:
        raise ValueError("token command starts with an empty string")
    return [str(a) for a in cmd]
