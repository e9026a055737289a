"""Credentials: what pilots need to reach the database, with the password kept apart.

The password travels as a 0600 file (shared filesystem, or the job's input
sandbox) or through the environment the batch system passes on, never inside
a script, submit description or JDL; a job gets only the variables it needs
(:data:`PASS_THROUGH`), not the whole submitting shell.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, LrtError

if TYPE_CHECKING:
    from ..settings import Settings


@dataclass
class Connection:
    """Where pilots find the database; the password is held apart and never rendered."""

    url: str
    user: Optional[str]
    db: str
    password: Optional[str] = field(default=None, repr=False)
    password_file: Optional[str] = None
    verify: Union[bool, str] = True

    def public_env(self) -> Dict[str, str]:
        """The non-secret environment a pilot needs (goes into job scripts)."""
        env = {"LRT_COUCH_URL": self.url, "LRT_COUCH_DB": self.db}
        if self.user:
            env["LRT_COUCH_USER"] = self.user
        if isinstance(self.verify, str):
            env["LRT_CA_BUNDLE"] = self.verify
        return env


def connection(settings: "Settings") -> Connection:
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
