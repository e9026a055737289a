"""Launchers: put pilots on batch systems and remember that we did.

A launcher renders a job script from a template (top-level ``launch/`` in the
source tree, or the user's own), submits it with the batch system's own client
(an argument vector, never a shell string), and records the submission in the
database as a ``kind: "launch"`` document so ``lrt status`` can say how many
pilots were submitted and how many are queued or running.

What every launcher shares lives here:

* :func:`render` -- the tiny template language (``${name}``, lower-case names
  only, so shell variables such as ``$SLURM_JOB_ID`` or ``$(date)`` pass through
  untouched; ``$${`` gives a literal ``${``).  Unknown names are an error that
  lists them, before anything is written or submitted.
* :class:`Connection` / :func:`connection` -- what a pilot needs to reach the
  database, with the password kept apart: it travels as a 0600 file (shared
  filesystem, or the job's input sandbox) or through the environment the batch
  system passes on, never inside a script, submit description or JDL.
* :func:`lrt_command` -- how a job runs *this* lrt: the absolute interpreter
  plus ``PYTHONPATH`` when the package is not installed into it.
* launch records (:func:`record_launch`) and :func:`launch_summary` for
  ``lrt status``.

Admin side: this package is never imported by the pilot.
"""
from __future__ import annotations

import datetime
import getpass
import hashlib
import ipaddress
import os
import re
import secrets
import shlex
import site
import socket
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError, LrtError

__all__ = ["render", "template_variables", "find_template", "Connection", "connection",
           "lrt_command", "new_launch_id", "launch_dir", "record_launch", "launch_summary",
           "LaunchError", "TEMPLATE_DIRS", "job_env_names", "job_env", "loopback_warning",
           "PilotEnd", "launch_flag", "pilot_walltime"]


class LaunchError(LrtError):
    """A submission failed (the batch system's client said no, or is missing)."""


# ---------------------------------------------------------------------------
# templates

_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([a-z][a-z0-9_]*)\}")


def template_variables(text: str) -> List[str]:
    """The ``${name}`` placeholders used in ``text``, in order of first use."""
    seen: List[str] = []
    for m in _PLACEHOLDER.finditer(text):
        name = m.group(1)
        if name and name not in seen:
            seen.append(name)
    return seen


def render(text: str, variables: Mapping[str, str], source: str = "template") -> str:
    """Substitute ``${name}`` placeholders; refuse unknown names.

    Only ``${lower_case}`` is a placeholder: ``$HOME``, ``${SLURM_JOB_ID}``,
    ``$(cmd)``, ``$1`` are left for the shell.  ``$${`` renders as ``${`` for
    the rare lower-case shell variable in braces.  Values are inserted as given;
    the launchers pass shell-quoted values for anything that lands in a shell
    script.  Raises :class:`ConfigError` naming every unknown placeholder.
    """
    unknown = [n for n in template_variables(text) if n not in variables]
    if unknown:
        raise ConfigError(f"unknown template variable(s): {', '.join('${' + n + '}' for n in unknown)}; "
                          f"known: {', '.join(sorted(variables))} (write $${{ for a literal ${{)",
                          path=source)

    def sub(m: "re.Match[str]") -> str:
        if m.group(1) is None:
            return "${"
        return str(variables[m.group(1)])

    return _PLACEHOLDER.sub(sub, text)


def _source_template_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "launch"


#: where built-in templates are looked up, first match wins
TEMPLATE_DIRS: List[Path] = []


def find_template(name: str, user_file: Optional[str] = None) -> Path:
    """The template to use: the user's file, else the built-in ``name``.

    Built-ins are looked up in ``$LRT_TEMPLATE_DIR``, then the ``launch/``
    folder of the source tree this package was imported from, then
    ``<sys.prefix>/share/lrt/launch`` (where a wheel's data files land).
    """
    if user_file:
        p = Path(user_file).expanduser()
        if not p.is_file():
            raise ConfigError("template not found", path=str(p))
        return p.resolve()
    dirs = list(TEMPLATE_DIRS)
    if os.environ.get("LRT_TEMPLATE_DIR"):
        dirs.append(Path(os.environ["LRT_TEMPLATE_DIR"]).expanduser())
    dirs.append(_source_template_dir())
    # an installed (non-editable) lrt: templates shipped as data files
    dirs.append(Path(sys.prefix) / "share" / "lrt" / "launch")
    for d in dirs:
        if (d / name).is_file():
            return (d / name).resolve()
    raise ConfigError(f"built-in template {name!r} not found in {', '.join(map(str, dirs))}; "
                      "pass --template FILE or set LRT_TEMPLATE_DIR")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def q(value: Any) -> str:
    """Shell-quote one value (for templates that are shell scripts)."""
    return shlex.quote(str(value))


# ---------------------------------------------------------------------------
# how jobs run lrt


def _package_parent() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def _installed_in_interpreter() -> bool:
    """Is the imported lrt inside the interpreter's own site-packages?"""
    parent = _package_parent()
    dirs = []
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # pragma: no cover - old virtualenv
        pass
    try:
        dirs.append(site.getusersitepackages())
    except AttributeError:  # pragma: no cover
        pass
    return any(str(parent) == str(Path(d).resolve()) for d in dirs if d)


def lrt_command(override: Optional[str] = None) -> Dict[str, str]:
    """``{"lrt": shell words running the CLI, "pythonpath": dir or ""}`` for job scripts.

    Default: the absolute path of the interpreter running this command, with
    ``-m lrt.cli``; on a site lrt lives in a venv on the shared filesystem, so
    the same path works on the worker nodes.  When the package is not installed
    in that interpreter (a source checkout, as in the tests) ``pythonpath`` is
    the checkout, for the script to export.  ``override`` (``--lrt``) replaces
    the command as given (e.g. ``apptainer exec lrt.sif lrt``).
    """
    if override:
        words = shlex.split(override)
        if not words:
            raise ConfigError("--lrt is empty")
        return {"lrt": " ".join(q(w) for w in words), "pythonpath": ""}
    exe = os.path.abspath(sys.executable)
    pythonpath = "" if _installed_in_interpreter() else str(_package_parent())
    return {"lrt": f"{q(exe)} -m lrt.cli", "pythonpath": pythonpath}


# ---------------------------------------------------------------------------
# credentials


@dataclass
class Connection:
    """Where pilots find the database; the password is held apart and never rendered."""

    url: str
    user: Optional[str]
    db: str
    password: Optional[str] = field(default=None, repr=False)
    password_file: Optional[str] = None
    verify: Any = True

    def public_env(self) -> Dict[str, str]:
        """The non-secret environment a pilot needs (goes into job scripts)."""
        env = {"LRT_COUCH_URL": self.url, "LRT_COUCH_DB": self.db}
        if self.user:
            env["LRT_COUCH_USER"] = self.user
        if isinstance(self.verify, str):
            env["LRT_CA_BUNDLE"] = self.verify
        return env


def connection(settings: Any) -> Connection:
    """A :class:`Connection` from resolved settings, refusing URLs that embed a password."""
    from ..couch import redact_url
    import urllib.parse

    if not settings.url:
        raise ConfigError("no CouchDB server configured: set LRT_COUCH_URL (or --url), "
                          "or start the local one with `lrt server start`")
    url, user = settings.url, settings.user
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        raise ConfigError("the CouchDB URL contains a password; pilots would carry it in their job "
                          "scripts. Put the user in --user/LRT_COUCH_USER and the password in a file "
                          "(--password-file) instead")
    if parts.username is not None:
        user = user or urllib.parse.unquote(parts.username)
        url = redact_url(url)
    pw_file = os.environ.get("LRT_COUCH_PASSWORD_FILE")
    return Connection(url=url, user=user, db=settings.db, password=settings.password,
                      password_file=str(Path(pw_file).expanduser().resolve()) if pw_file else None,
                      verify=settings.verify)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def password_file_for(conn: Connection, explicit: Optional[str] = None, write: bool = True) -> Optional[Path]:
    """A 0600 file holding the password, for jobs to read; None without a password.

    An explicit ``--password-file`` (or ``LRT_COUCH_PASSWORD_FILE``) is used as
    is -- it must already be private.  Otherwise lrt writes one file per server
    and user under ``$LRT_HOME/credentials/`` (0700 directory, 0600 file) and
    reuses it; on a cluster ``$LRT_HOME`` (default ``~/.local/share/lrt``) must
    be on the filesystem the worker nodes share.  ``write=False`` (dry runs)
    only computes the path.
    """
    from ..settings import read_private_file

    src = explicit or conn.password_file
    if src:
        p = Path(src).expanduser().resolve()
        read_private_file(p, "password file")  # refuses group/world-readable files
        return p
    if not conn.password:
        return None
    from ..server import lrt_home

    key = hashlib.sha256(f"{conn.url}\0{conn.user or ''}".encode()).hexdigest()[:16]
    p = lrt_home() / "credentials" / f"{key}.password"
    if write and (not p.exists() or p.read_text() != conn.password):
        _write_private(p, conn.password)
    return p


def check_no_secret(texts: Iterable[str], conn: Connection) -> None:
    """Refuse to write anything that contains the password (last line of defence)."""
    pw = conn.password
    if not pw or len(pw) < 4:
        return
    for t in texts:
        if pw in t:
            raise LrtError("refusing to write a job description that contains the CouchDB password "
                           "(is it in --pilot-args or the template?)")


def submit_env(conn: Connection, mode: str) -> Dict[str, str]:
    """The environment for the submitting client (sbatch, condor_submit).

    ``mode == "env"``: the password is added as ``LRT_COUCH_PASSWORD`` so the
    batch system carries it to the job in the job's environment.  ``"file"``:
    the password variable is *removed*, so a password in the submitting shell
    does not travel along (sbatch exports the whole environment by default).
    """
    env = dict(os.environ)
    env.pop("LRT_COUCH_PASSWORD", None)
    if mode == "env":
        if conn.password:
            env["LRT_COUCH_PASSWORD"] = conn.password
        env.pop("LRT_COUCH_PASSWORD_FILE", None)
    env.update(conn.public_env())
    return env


#: what a job takes from the submitting environment: shell basics and lrt's
#: non-secret knobs (docs/launch.md, "What the job's environment holds").  The job
#: script sets the connection itself; the password travels only as the password
#: file or, with ``--credentials env``, as ``LRT_COUCH_PASSWORD``.  Everything
#: else in the submitting shell -- tokens, keys, other passwords -- stays behind.
PASS_THROUGH: Tuple[str, ...] = (
    "PATH", "LD_LIBRARY_PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
    "LRT_HOME", "LRT_SANDBOX_CACHE", "LRT_SANDBOX_MAX_BYTES", "LRT_STAGE_RETRIES", "LRT_STAGE_BACKOFF",
    "LRT_STAGE_TIMEOUT",
    # where grid/TLS clients (gfal2, payloads) find CAs and the user's proxy: paths, not secrets
    "X509_USER_PROXY", "X509_CERT_DIR", "X509_VOMS_DIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PASSWORD_VARS = ("LRT_COUCH_PASSWORD", "LRT_COUCH_PASSWORD_FILE")


def job_env_names(conn: Connection, mode: str, extra: Sequence[str] = (),
                  environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Names of the variables a job gets from the submitting environment.

    :data:`PASS_THROUGH` (those that are set), the connection's public
    variables, ``extra`` (``--env NAME``, checked to be plain names and not a
    password variable) and, in ``mode == "env"`` with a password,
    ``LRT_COUCH_PASSWORD``.  Values are never part of the list (``sbatch
    --export=NAME`` takes them from its own environment), so they do not show in
    ``ps`` or in the launch record.
    """
    env = os.environ if environ is None else environ
    for name in extra:
        if not _ENV_NAME.match(name):
            raise ConfigError(f"--env wants a variable name, got {name!r}")
        if name in _PASSWORD_VARS:
            raise ConfigError(f"--env {name}: the password reaches jobs through --credentials, not --env")
    names = [n for n in PASS_THROUGH if n in env] + sorted(conn.public_env()) + list(extra)
    if mode == "env" and conn.password:
        names.append("LRT_COUCH_PASSWORD")
    out: List[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def job_env(conn: Connection, mode: str, extra: Sequence[str] = ()) -> Dict[str, str]:
    """The environment itself (for processes lrt starts directly: local pilots)."""
    src = submit_env(conn, mode)
    return {n: src[n] for n in job_env_names(conn, mode, extra, environ=src) if n in src}


def loopback_warning(url: str) -> Optional[str]:
    """A warning when pilots on other machines would be pointed at a loopback URL, else None.

    ``localhost`` (and ``*.localhost``), 127.0.0.0/8 and ``::1`` (also as an
    IPv4-mapped address) name the machine the pilot runs on, not this one.
    """
    import urllib.parse

    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    h = host.lower().rstrip(".")
    loop = h == "localhost" or h.endswith(".localhost")
    if not loop:
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            ip = None
        if ip is not None:
            mapped = getattr(ip, "ipv4_mapped", None)
            loop = ip.is_loopback or bool(mapped and mapped.is_loopback)
    if not loop:
        return None
    return (f"the pilots will connect to {url}, a loopback address: on a worker node that is the node "
            f"itself, not this machine. Give the server's network name (--url or LRT_COUCH_URL) unless "
            f"the jobs run on this host")


def pilot_walltime(batch_time: Optional[str], pilot_argv: Sequence[str]) -> Optional[float]:
    """Seconds a launch's pilots may run, when known: the shorter of the batch limit and ``--walltime``.

    ``batch_time`` is Slurm's ``--time`` (a lone number there means minutes).
    Used by ``lrt why`` to tell a token that no pilot's walltime fits.
    """
    from ..batch import parse_duration

    found: List[float] = []
    if batch_time:
        t = str(batch_time).strip()
        try:
            found.append(float(t) * 60 if t.isdigit() else parse_duration(t))
        except ValueError:
            pass
    for i, a in enumerate(pilot_argv):
        val = None
        if a == "--walltime" and i + 1 < len(pilot_argv):
            val = pilot_argv[i + 1]
        elif a.startswith("--walltime="):
            val = a.split("=", 1)[1]
        if val is not None:
            try:
                found.append(parse_duration(val))
            except ValueError:
                pass
    return min(found) if found else None


# ---------------------------------------------------------------------------
# launch records


def new_launch_id(system: str) -> str:
    """Sortable, unique: ``<system>-20261121T202400Z-<6 hex>``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{system}-{stamp}-{secrets.token_hex(3)}"


def launch_dir(launch_id: str, base: Optional[str] = None) -> Path:
    """Folder for a launch's rendered files and job logs (created 0700).

    ``base`` (``--dir``) else ``$LRT_HOME/launches``.  Jobs write their logs
    here, so on a cluster it must be on the shared filesystem.
    """
    if base:
        root = Path(base).expanduser().resolve()
    else:
        from ..server import lrt_home

        root = lrt_home() / "launches"
    d = root / launch_id
    d.mkdir(parents=True, exist_ok=False, mode=0o700)
    return d


from ..queries.pilots import LAUNCH_PREFIX as RECORD_PREFIX  # noqa: E402  (read there too)


def record_launch(db: Any, launch_id: str, system: str, batch_id: Optional[str], count: int,
                  token_type: Optional[str], template_text: str, **extra: Any) -> Dict[str, Any]:
    """Store the launch document ``launch:<launch_id>`` and return it.

    Fields: kind "launch", system, batch_id, count, time, template_sha256, type,
    db, host, user, plus what the launcher adds (options, dir, pids, after...).
    """
    doc: Dict[str, Any] = {
        "_id": RECORD_PREFIX + launch_id, "kind": "launch", "schema": 1, "launch_id": launch_id,
        "system": system, "batch_id": batch_id, "count": int(count), "time": time.time(),
        "template_sha256": sha256_text(template_text), "type": token_type, "db": db.name,
        "host": socket.gethostname(), "user": getpass.getuser(),
    }
    doc.update(extra)
    doc["_rev"] = db.put(doc)
    return doc


def launch_records(db: Any, limit: Optional[int] = 50, system: Optional[str] = None,
                   token_type: Optional[str] = None) -> List[Dict[str, Any]]:
    """Launch documents, newest first (ids sort by time within a system)."""
    res = db.all_docs(startkey=RECORD_PREFIX, endkey=RECORD_PREFIX + "\ufff0", include_docs=True)
    docs = [r["doc"] for r in res.get("rows", []) if r.get("doc") and r["doc"].get("kind") == "launch"]
    if system:
        docs = [d for d in docs if d.get("system") == system]
    if token_type is not None:
        docs = [d for d in docs if d.get("type") == token_type]
    docs.sort(key=lambda d: d.get("time") or 0, reverse=True)
    return docs[:limit] if limit else docs


class PilotEnd(str, Enum):
    """How one pilot of a launch ended, as ``lrt launch list`` and ``lrt status`` count it."""

    FINISHED = "finished"  #: exit status 0 (Slurm COMPLETED)
    FAILED = "failed"      #: non-zero exit, killed, timed out, node failure, lost

    def __str__(self) -> str:
        return self.value


def ended_entry(end: PilotEnd, state: Optional[str], exit_code: Optional[int],
                signal_no: Optional[int] = None) -> Dict[str, Any]:
    """One ended pilot as stored in a launch record's ``ended`` map."""
    e: Dict[str, Any] = {"end": end.value, "state": state, "exit": exit_code}
    if signal_no:
        e["signal"] = signal_no
    return e


#: how often ``sacct`` is asked again about pilots it did not know (seconds)
ACCOUNTING_EVERY = 3600.0


def launch_flag(row: Mapping[str, Any]) -> str:
    """``"ALL FAILED"``, ``"N FAILED"`` or ``""`` for a :func:`launch_summary` row."""
    failed = int(row.get("failed") or 0)
    if not failed:
        return ""
    if failed >= int(row.get("submitted") or 0):
        return "ALL FAILED"
    return f"{failed} FAILED"


def _save_ended(db: Any, doc: Dict[str, Any], ended: Dict[str, Any], **more: Any) -> None:
    """Keep what we learnt about ended pilots in the launch record (best effort).

    Batch systems forget finished jobs (Slurm after ``MinJobAge``, accounting
    after its purge); the record keeps them.  A conflict or a read-only
    account only means the next look asks the batch system again.
    """
    new = dict(doc)
    new["ended"] = ended
    new.update(more)
    try:
        new["_rev"] = db.put(new)
    except LrtError:
        return
    doc.clear()
    doc.update(new)


def record_walltime(d: Mapping[str, Any]) -> Optional[float]:
    """A launch record's pilot walltime in seconds (None: unknown or unlimited)."""
    if d.get("walltime") is not None:
        return float(d["walltime"])
    opts = d.get("options") or {}
    try:
        argv = shlex.split(opts.get("pilot_args") or "")
    except ValueError:
        argv = []
    return pilot_walltime(opts.get("time"), argv)


def launch_summary(db: Any, limit: int = 20) -> List[Dict[str, Any]]:
    """Per recent launch: what was submitted, what runs now and how the ended pilots ended.

    One dict per launch, newest first: ``{"launch_id", "system", "batch_id",
    "type", "time", "submitted", "queued", "running", "finished", "failed",
    "exit_codes", "flag", "walltime", "host"}``.  ``queued`` and ``running`` come from
    ``squeue`` (Slurm), ``condor_q`` or ``/proc`` (local pilots on this host);
    they are None when the batch system cannot be asked from here.
    ``finished``/``failed`` count ended pilots: Slurm states and exit codes
    from ``squeue --states=all`` (recently ended jobs) and ``sacct`` (older
    ones, where accounting is on); local pilots' exit status from the files
    their wrapper writes.  What was learnt is kept in the launch record
    (``ended``), so it survives the batch system forgetting the jobs.
    ``exit_codes`` maps each non-zero exit code (or ``"SIG<n>"``/state) to a
    count; ``flag`` is :func:`launch_flag`.  One ``squeue`` for all launches,
    and one ``sacct`` per launch only while some of its pilots are unaccounted
    (at most every :data:`ACCOUNTING_EVERY` seconds when accounting does not
    know them either).
    """
    docs = launch_records(db, limit=limit)
    if not docs:
        return []  # (without importing the launchers: `lrt status` starts faster)
    from . import local as _local
    from . import slurm as _slurm

    def complete(d: Dict[str, Any]) -> bool:
        return len(d.get("ended") or {}) >= int(d.get("count") or 0)

    slurm_users = sorted({str(d.get("user") or getpass.getuser()) for d in docs
                          if d.get("system") == "slurm" and not complete(d)})
    slurm_states = _slurm.queue_states(",".join(slurm_users)) if slurm_users else None
    out: List[Dict[str, Any]] = []
    for d in docs:
        queued: Optional[int] = None
        running: Optional[int] = None
        system = d.get("system")
        ended: Dict[str, Any] = dict(d.get("ended") or {})
        seen: Dict[str, Any] = {}
        accounted: Optional[float] = None
        if complete(d):
            queued, running = 0, 0
        elif system == "slurm" and d.get("batch_id"):
            if slurm_states is not None:
                queued, running, seen = _slurm.element_states(slurm_states, str(d["batch_id"]))
                live = queued + running
                if live + len(set(ended) | set(seen)) < int(d.get("count") or 0) and \
                        time.time() - float(d.get("accounted") or 0) > ACCOUNTING_EVERY:
                    got = _slurm.accounted_ends(str(d["batch_id"])) or {}
                    seen.update(got)
                    if live + len(set(ended) | set(seen)) < int(d.get("count") or 0):
                        accounted = time.time()   # accounting does not know them either: ask less often
        elif system == "local" and d.get("host") == socket.gethostname():
            running, seen = _local.process_states(d)
            queued = 0
        elif system == "htcondor" and d.get("batch_id"):
            from . import htcondor as _condor

            counts = _condor.queue_counts(str(d["batch_id"]))
            if counts is not None:
                queued, running = counts
        fresh = {k: v for k, v in seen.items() if k not in ended}
        if fresh or accounted:
            ended.update(fresh)
            _save_ended(db, d, ended, **({"accounted": accounted} if accounted else {}))
        codes: Dict[str, int] = {}
        for e in ended.values():
            if e.get("end") == PilotEnd.FAILED.value:
                key = (f"SIG{e['signal']}" if e.get("signal") else
                       str(e["exit"]) if e.get("exit") not in (None, 0) else str(e.get("state") or "?"))
                codes[key] = codes.get(key, 0) + 1
        row = {"launch_id": d.get("launch_id"), "system": system, "batch_id": d.get("batch_id"),
               "type": d.get("type"), "time": d.get("time"), "submitted": d.get("count", 0),
               "queued": queued, "running": running,
               "finished": sum(1 for e in ended.values() if e.get("end") == PilotEnd.FINISHED.value),
               "failed": sum(1 for e in ended.values() if e.get("end") == PilotEnd.FAILED.value),
               "exit_codes": codes, "walltime": record_walltime(d), "host": d.get("host")}
        row["flag"] = launch_flag(row)
        out.append(row)
    return out


def pilot_args(token_type: Optional[str], extra: Optional[str]) -> List[str]:
    """The argument vector after ``lrt pilot``: ``--type T`` plus the user's extras."""
    args: List[str] = []
    if token_type:
        args += ["--type", token_type]
    if extra:
        try:
            args += shlex.split(extra)
        except ValueError as exc:
            raise ConfigError(f"--pilot-args: {exc}") from None
    return args


def common_variables(conn: Connection, launch_id: str, token_type: Optional[str],
                     pilot_argv: Sequence[str], lrt_cmd: Dict[str, str], count: int,
                     password_setup: str) -> Dict[str, str]:
    """Variables every template receives (documented in docs/launch.md)."""
    env_lines = [f"export {k}={q(v)}" for k, v in sorted(conn.public_env().items())]
    env_lines.append(f"export LRT_LAUNCH_ID={q(launch_id)}")
    if lrt_cmd["pythonpath"]:
        env_lines.append(f"export PYTHONPATH={q(lrt_cmd['pythonpath'])}${{PYTHONPATH:+:$PYTHONPATH}}")
    if password_setup:
        env_lines.append(password_setup)
    return {
        "lrt": lrt_cmd["lrt"],
        "pythonpath": q(lrt_cmd["pythonpath"]) if lrt_cmd["pythonpath"] else "''",
        "pilot_args": " ".join(q(a) for a in pilot_argv),
        "pilot_command": lrt_cmd["lrt"] + " pilot" + "".join(" " + q(a) for a in pilot_argv),
        "type": q(token_type or ""),
        "launch_id": q(launch_id),
        "count": str(int(count)),
        "couch_url": q(conn.url),
        "couch_user": q(conn.user or ""),
        "couch_db": q(conn.db),
        "env_setup": "\n".join(env_lines),
    }
