"""Where the CouchDB server, credentials and database come from.

Resolution order, first match wins for each field:

1. explicit arguments (CLI flags),
2. environment: ``LRT_COUCH_URL``, ``LRT_COUCH_USER``, ``LRT_COUCH_PASSWORD`` or
   ``LRT_COUCH_PASSWORD_FILE``, ``LRT_COUCH_DB``, ``LRT_CA_BUNDLE``,
3. ``~/.config/lrt/config.yaml`` (``$LRT_CONFIG``) -- refused if group or world
   readable, because it may hold a password,
4. ``~/.netrc`` for the URL's host (user and password only),
5. the embedded local server, if one is running (``lrt server start``).

Passwords are kept out of ``repr`` and never logged.  Pilots get their
credentials the same way (a password file or environment passed by the batch
system), never through job arguments.
"""
from __future__ import annotations

import netrc
import os
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import ConfigError, LrtError

DEFAULT_DB = "lrt"


@dataclass
class Settings:
    url: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    db: str = DEFAULT_DB
    verify: Union[bool, str] = True
    source: str = "default"
    #: where user and password came from, for the hint of an authentication error
    #: (names a variable or a file, never the secret)
    credentials_from: str = "LRT_COUCH_USER / LRT_COUCH_PASSWORD (or your lrt config)"

    def __repr__(self) -> str:
        pw = "***" if self.password else None
        return (f"Settings(url={self.url!r}, user={self.user!r}, password={pw}, db={self.db!r}, "
                f"verify={self.verify!r}, source={self.source!r})")

    def server(self, **kw: Any) -> "Any":
        from .couch import Server

        if not self.url:
            raise LrtError("no CouchDB server configured: set LRT_COUCH_URL (or --url), "
                           "or start the local one with `lrt server start`")
        srv = Server(self.url, self.user, self.password, verify=self.verify, **kw)
        srv.credentials_from = self.credentials_from
        return srv

    def database(self, **kw: Any) -> "Any":
        return self.server(**kw).database(self.db)


def config_path() -> Path:
    env = os.environ.get("LRT_CONFIG")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "lrt" / "config.yaml"


def read_private_file(path: Union[str, Path], what: str) -> str:
    """Read a secret-bearing file, refusing it when others can read it."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", path=str(p)) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} is readable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {p}", path=str(p))
    return p.read_text()


def _config_file() -> Dict[str, Any]:
    p = config_path()
    if not p.exists():
        return {}
    import yaml

    text = read_private_file(p, "lrt config file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"malformed YAML: {getattr(exc, 'problem', exc)}", path=str(p),
                          line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping", path=str(p))
    known = {"url", "user", "password", "password_file", "db", "ca_bundle", "verify"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                          path=str(p))
    return data


def _netrc(url: str) -> Optional[tuple]:
    host = urllib.parse.urlsplit(url).hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not host or not path.exists():
        return None
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    if not auth:
        return None
    return auth[0], auth[2]


def resolve(url: Optional[str] = None, user: Optional[str] = None, password: Optional[str] = None,
            db: Optional[str] = None, password_file: Optional[str] = None,
            ca_bundle: Optional[str] = None, use_local: bool = True) -> Settings:
    """Resolve settings in the documented order (see the module docstring)."""
    env = os.environ
    cfg = _config_file()
    s = Settings()
    s.url = url or env.get("LRT_COUCH_URL") or cfg.get("url")
    s.source = "flags" if url else ("environment" if env.get("LRT_COUCH_URL") else
                                    ("config file" if cfg.get("url") else "default"))
    s.user = user or env.get("LRT_COUCH_USER") or cfg.get("user")
    pw_file = password_file or env.get("LRT_COUCH_PASSWORD_FILE") or cfg.get("password_file")
    s.password = password or env.get("LRT_COUCH_PASSWORD")
    who = ("the user given" if user else "LRT_COUCH_USER" if env.get("LRT_COUCH_USER")
           else f"the user in {config_path()}" if cfg.get("user") else "no user")
    if password is not None:
        s.credentials_from = f"{who} and the password given"
    elif s.password is not None:
        s.credentials_from = f"{who} and LRT_COUCH_PASSWORD"
    if s.password is None and pw_file:
        s.password = read_private_file(pw_file, "password file").strip("\r\n")
        via = ("--password-file" if password_file else "LRT_COUCH_PASSWORD_FILE"
               if env.get("LRT_COUCH_PASSWORD_FILE") else f"password_file in {config_path()}")
        s.credentials_from = f"{who} and the password file {pw_file} ({via})"
    if s.password is None and cfg.get("password") is not None:
        s.password = cfg.get("password")
        s.credentials_from = f"{who} and the password in {config_path()}"
    s.db = db or env.get("LRT_COUCH_DB") or cfg.get("db") or DEFAULT_DB
    ca = ca_bundle or env.get("LRT_CA_BUNDLE") or cfg.get("ca_bundle")
    if ca:
        s.verify = str(Path(ca).expanduser())
    elif cfg.get("verify") is False:
        s.verify = False
    if s.url and s.user is None and urllib.parse.urlsplit(s.url).username is None:
        found = _netrc(s.url)
        if found:
            s.user, s.password = found
            s.credentials_from = "~/.netrc"
    if not s.url and use_local:
        from .server import running

        local = running()
        if local is not None:
            s.url, s.user, s.password, s.source = local.url, local.user, local.password, "local server"
            s.credentials_from = f"the local server's state file {local.base}/state.json"
    return s
