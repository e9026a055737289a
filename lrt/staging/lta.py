"""Client of the LOFAR Long Term Archive stager service (XML-RPC).

The LTA stages archive data from tape for a user's account and reports when
it is online; the documented interface (ASTRON's ``stager_access`` module)
is XML-RPC on ``https://webportal.astron.nl/service-public/xmlrpc`` with HTTP
basic authentication, methods under ``LtaStager``:

=================  ==========================================  ===================
lrt method         what                                         XML-RPC method
=================  ==========================================  ===================
``stage``          submit SURLs, returns the request id         ``add_getid``
``status``         "new", "scheduled", "in progress", "success" ``getstatus``
                   (or "completed"), "failed", "aborted", ...
``surls_online``   SURLs of the request already online          ``getstagedurls``
``srm_token``      the SRM request token (for gfal2/SRM tools)  ``gettoken``
``reschedule``     retry a (failed) request                     ``reschedule``
``abort``          abort it / release its data                  ``abort``
``progress``       all the user's requests: {id: {...}}         ``getprogress``
=================  ==========================================  ===================

Credentials: ``LRT_LTA_USER`` / ``LRT_LTA_PASSWORD``, else ``~/.stagingrc``
(``user=...`` and ``password=...`` lines, the LTA's own convention; refused when
group or world readable).  The password goes only into the Authorization
header: never into a URL (xmlrpc.client would show it in ``ProtocolError.url``
and the proxy's repr), ``repr``, an error message or a log line.
"""
from __future__ import annotations

import base64
import os
import urllib.parse
import xmlrpc.client
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, LrtError
from ..settings import read_private_file

DEFAULT_URL = "https://webportal.astron.nl/service-public/xmlrpc"


class LtaError(LrtError):
    """The LTA stager refused a call or could not be reached."""


def read_stagingrc(path: Union[str, Path, None] = None) -> Tuple[str, str]:
    """(user, password) from a ``.stagingrc`` (``user=...``, ``password=...``)."""
    p = Path(path or os.environ.get("LRT_STAGINGRC") or Path.home() / ".stagingrc").expanduser()
    text = read_private_file(p, "LTA credentials file")
    user = password = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "user":
            user = value.strip()
        elif key == "password":
            password = value.strip()
    if not user or password is None:
        raise ConfigError("expected 'user=...' and 'password=...' lines", path=str(p))
    return user, password


class _AuthTransport(xmlrpc.client.SafeTransport):
    """HTTP(S) transport that sends basic authentication from memory, not from the URL."""

    def __init__(self, user: str, password: str, https: bool, timeout: float):
        super().__init__()
        self._header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._https = https
        self._timeout = timeout

    def __repr__(self) -> str:
        return "<LTA transport (credentials hidden)>"

    def get_host_info(self, host: Any) -> Any:
        chost, headers, x509 = super().get_host_info(host)
        return chost, list(headers or []) + [("Authorization", self._header)], x509

    def make_connection(self, host: Any) -> Any:
        conn: Any
        if self._https:
            conn = super().make_connection(host)
        else:
            conn = xmlrpc.client.Transport.make_connection(self, host)
        conn.timeout = self._timeout
        return conn


class LtaStager:
    """The LTA stager for one account (see the module docstring for the calls)."""

    def __init__(self, user: str, password: str, url: str = DEFAULT_URL, timeout: float = 120.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"not an http(s) URL for the LTA stager: {url!r}")
        if parts.username or parts.password:
            raise ConfigError("put LTA credentials in ~/.stagingrc or LRT_LTA_USER/LRT_LTA_PASSWORD, "
                              "not in the URL")
        self.url = url
        self.user = user
        self._transport = _AuthTransport(user, password, parts.scheme == "https", timeout)
        self._proxy = xmlrpc.client.ServerProxy(url, transport=self._transport, allow_none=True)

    def __repr__(self) -> str:
        return f"<LtaStager {self.url} user={self.user!r}>"

    @classmethod
    def from_environment(cls, url: Optional[str] = None, stagingrc: Union[str, Path, None] = None,
                         timeout: float = 120.0) -> "LtaStager":
        """Credentials from LRT_LTA_USER/LRT_LTA_PASSWORD, else ~/.stagingrc; URL from LRT_LTA_URL."""
        env = os.environ
        if env.get("LRT_LTA_USER") and env.get("LRT_LTA_PASSWORD") is not None:
            user, password = env["LRT_LTA_USER"], env["LRT_LTA_PASSWORD"]
        else:
            rc = Path(stagingrc or env.get("LRT_STAGINGRC") or Path.home() / ".stagingrc").expanduser()
            if not rc.exists():
                raise ConfigError("no LTA credentials: set LRT_LTA_USER and LRT_LTA_PASSWORD, or write "
                                  f"{rc} (user=..., password=..., mode 0600)")
            user, password = read_stagingrc(rc)
        return cls(user, password, url or env.get("LRT_LTA_URL") or DEFAULT_URL, timeout)

    def _call(self, method: str, *args: Any) -> Any:
        fn = getattr(self._proxy.LtaStager, method)
        try:
            return fn(*args)
        except xmlrpc.client.ProtocolError as exc:
            hint = " (check your LTA user and password)" if exc.errcode in (401, 403) else ""
            raise LtaError(f"LTA stager {self.url}: {method} refused: HTTP {exc.errcode} "
                           f"{exc.errmsg}{hint}") from None
        except xmlrpc.client.Fault as exc:
            raise LtaError(f"LTA stager {self.url}: {method} failed: {exc.faultString}") from None
        except (OSError, xmlrpc.client.Error) as exc:
            raise LtaError(f"cannot reach the LTA stager at {self.url} "
                           f"({type(exc).__name__}: {getattr(exc, 'strerror', None) or ''})") from None

    # -- the documented calls ------------------------------------------------------------
    def stage(self, surls: Sequence[str]) -> int:
        """Submit a staging request; returns its id."""
        if isinstance(surls, str):
            surls = [surls]
        surls = list(surls)
        if not surls:
            raise LtaError("nothing to stage: empty SURL list")
        return int(self._call("add_getid", surls))

    def status(self, request_id: int) -> str:
        return str(self._call("getstatus", int(request_id))).strip()

    def surls_online(self, request_id: int) -> List[str]:
        return list(self._call("getstagedurls", int(request_id)) or [])

    def srm_token(self, request_id: int) -> str:
        return str(self._call("gettoken", int(request_id)))

    def reschedule(self, request_id: int) -> Any:
        return self._call("reschedule", int(request_id))

    def abort(self, request_id: int) -> Any:
        return self._call("abort", int(request_id))

    def progress(self) -> Dict[str, Any]:
        return dict(self._call("getprogress") or {})
