"""The CouchDB HTTP protocol, in one module.

A thin layer over :mod:`http.client` written to Apache CouchDB 3.x's
documented semantics.  We do not use ``cloudant`` (archived) or ``couchdb``
(couchdb-python, unmaintained since 2018): both are heavier than what a pilot
needs and neither is maintained.  This layer gives:

* connection pooling (a small pool of keep-alive connections per :class:`Server`,
  shared by threads),
* timeouts on every request (connect, read),
* retries with exponential backoff and full jitter on connection errors, 5xx
  and 429 (``Retry-After`` honoured) -- never on 409, never on 401/403: Apache
  CouchDB 3.5 locks an account after repeated authentication failures, so a
  fleet of pilots retrying a wrong password would lock it for everybody,
* cookie authentication (one ``POST /_session``, then the ``AuthSession`` cookie),
* streamed uploads and downloads (attachments),
* one exception hierarchy rooted at :class:`CouchError`,
* credentials that never appear in ``repr``, logs or exception messages.

Why not ``requests``: importing requests/urllib3 costs about 0.1 s of CPU at
every start of a command or a pilot (``lrt status`` would spend most of its
time importing it), and each request through it about 1 ms of client CPU
against 0.3 ms for http.client (bench/pilots.py --profile, bench/status.py,
docs/benchmarks.md).  CouchDB's API needs none of what requests adds: JSON
bodies, a cookie, no redirects, no proxies (``trust_env`` was off anyway).

Only the standard library is imported: this module is on the pilot path.
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import select
import socket
import threading
import time
import urllib.parse
from email.utils import parsedate_to_datetime
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast

from .errors import LrtError

log = logging.getLogger("lrt.couch")

JSON = Dict[str, Any]

#: what every request announces
USER_AGENT = "lrt (http.client)"

# ---------------------------------------------------------------------------
# exceptions


class CouchError(LrtError):
    """An error answered by (or while talking to) a CouchDB server.

    ``status`` is the HTTP status (None for connection errors), ``error`` and
    ``reason`` are CouchDB's fields from the error body.
    """

    def __init__(self, message: str, status: Optional[int] = None,
                 error: Optional[str] = None, reason: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.reason = reason


class CouchConnectionError(CouchError):
    """The server could not be reached (after retries)."""


class BadRequest(CouchError):
    """400: the server refused the request as malformed."""


class AuthError(CouchError):
    """401 or 403: both are authentication/authorisation failures; never retried."""

    exit_code = 4


class Unauthorized(AuthError):
    """401: wrong or missing credentials."""


class Forbidden(AuthError):
    """403: the credentials are valid but not allowed (or the account is locked)."""


class NotFound(CouchError):
    """404: no such database, document, design document or attachment."""


class Conflict(CouchError):
    """409: the document changed since the revision we sent.  Re-read, re-decide."""


class PreconditionFailed(CouchError):
    """412: e.g. the database already exists."""


class ServerError(CouchError):
    """5xx or 429 that persisted through every retry."""


_STATUS_CLASS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                 409: Conflict, 412: PreconditionFailed}

# ---------------------------------------------------------------------------
# helpers


def redact_url(url: str, keep_query: bool = True) -> str:
    """``url`` without any ``user:password@`` part (nor its query string, which may
    hold a token such as a presigned signature, unless ``keep_query``)."""
    parts = urllib.parse.urlsplit(url)
    if not keep_query and (parts.query or parts.fragment):
        parts = parts._replace(query="", fragment="")
        url = urllib.parse.urlunsplit(parts)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class _Auth:
    """Basic-auth credentials whose ``repr`` never shows the password."""

    __slots__ = ("username", "password", "header")

    def __init__(self, username: str, password: str):
        self.username = username
        self.password = password
        #: the ``Authorization`` header value
        self.header = basic_header(username, password)

    def __repr__(self) -> str:  # pragma: no cover - trivial
        return f"<BasicAuth user={self.username!r} password=***>"


def basic_header(user: Union[str, bytes], password: Union[str, bytes]) -> str:
    """The ``Authorization`` value for HTTP basic auth (latin-1, as requests encoded it)."""
    raw = (user if isinstance(user, bytes) else str(user).encode("latin1")) + b":" + \
        (password if isinstance(password, bytes) else str(password).encode("latin1"))
    return "Basic " + base64.b64encode(raw).decode("ascii")


def quote_id(doc_id: str) -> str:
    """Quote a document id for a URL path; ``_design/x`` keeps its slash."""
    if doc_id.startswith("_design/"):
        return "_design/" + urllib.parse.quote(doc_id[8:], safe="")
    if doc_id.startswith("_local/"):
        return "_local/" + urllib.parse.quote(doc_id[7:], safe="")
    return urllib.parse.quote(doc_id, safe="")


def winning_leaf(leaves: Sequence[JSON]) -> Optional[JSON]:
    """The leaf CouchDB makes a conflicted document's winner: among the leaves not
    deleted, the one with the highest revision number, ties broken by the highest
    revision id in ASCII order (`Replication and conflict model
    <https://docs.couchdb.org/en/3.5.1/replication/conflicts.html>`_).  Every
    client that sees the same leaves picks the same one.  None if all are deleted."""
    def key(d: JSON) -> Tuple[int, str]:
        n, _, h = str(d.get("_rev")).partition("-")
        return (int(n), h) if n.isdigit() else (0, h)

    live = [d for d in leaves if not d.get("_deleted")]
    return max(live, key=key) if live else None


_JSON_PARAMS = {"key", "keys", "startkey", "endkey", "start_key", "end_key"}


def _encode_params(params: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    """CouchDB wants JSON for keys and lowercase booleans."""
    if not params:
        return None
    out: Dict[str, str] = {}
    for k, v in params.items():
        if v is None:
            continue
        if k in _JSON_PARAMS:
            out[k] = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


# ---------------------------------------------------------------------------
# the fast transport


class _Response:
    """What :meth:`Server.request` answers: ``status_code``, ``headers`` (with a
    case-insensitive ``.get``), ``content``, ``text``, ``json()``.

    A streamed response (``stream=True``) keeps its connection until the body
    has been read (:attr:`content`, or :meth:`iter_content` to its end) or the
    response is closed; a connection whose body was read to the end goes back
    to the pool.
    """

    __slots__ = ("status_code", "headers", "_content", "_raw", "_release", "_where")

    def __init__(self, status: int, headers: http.client.HTTPMessage, content: Optional[bytes] = None,
                 raw: Optional[http.client.HTTPResponse] = None,
                 release: Optional[Callable[[bool], None]] = None, where: str = ""):
        self.status_code = status
        self.headers = headers
        self._content = content
        self._raw = raw
        self._release = release
        self._where = where

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_content(1 << 20))
        return self._content

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        """The body in chunks of at most ``chunk_size`` bytes; a connection lost on
        the way raises :class:`CouchConnectionError`."""
        raw = self._raw
        if raw is None:
            if self._content:
                yield self._content
            return
        try:
            while True:
                try:
                    chunk = raw.read(chunk_size)
                except (OSError, http.client.HTTPException) as exc:
                    raise CouchConnectionError(f"lost the connection to CouchDB while reading "
                                               f"{self._where} ({_failure_kind(exc)})") from None
                if not chunk:
                    if raw.length:  # http.client's read(n) ends quietly at an early EOF
                        raise CouchConnectionError(f"lost the connection to CouchDB while reading "
                                                   f"{self._where} ({raw.length} bytes missing)")
                    break
                yield chunk
        finally:
            self.close()
        if self._content is None:
            self._content = b""

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def close(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None and self._release is not None:
            self._release(raw.isclosed())  # read to the end: the connection can be reused


class _FastTransport:
    """Keep-alive :mod:`http.client` connections to one server, shared by threads.

    A connection is taken from the idle list (or made), used for one request
    and response, and put back unless the server said it will close it.  An
    idle connection the server has closed meanwhile (its socket is readable:
    EOF) is dropped before use, as urllib3 does, so a request is never sent on
    it and a write is not replayed for that reason.
    """

    def __init__(self, url: str, verify: Union[bool, str], maxsize: int):
        parts = urllib.parse.urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.verify = verify
        self.maxsize = maxsize
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ctx: Any = None

    def _context(self) -> Any:
        if self._ctx is None:
            import ssl

            if self.verify is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif self.verify is True:
                ctx = ssl.create_default_context(cafile=_default_ca_bundle())
            else:
                ca = str(self.verify)
                ctx = ssl.create_default_context(cafile=None if _isdir(ca) else ca,
                                                 capath=ca if _isdir(ca) else None)
            self._ctx = ctx
        return self._ctx

    def _get(self, connect_timeout: float) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            sock = conn.sock
            try:
                dropped = sock is None or bool(select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                dropped = True
            if not dropped:
                return conn
            conn.close()
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=connect_timeout,
                                               context=self._context(), blocksize=1 << 16)
        return http.client.HTTPConnection(self.host, self.port, timeout=connect_timeout,
                                          blocksize=1 << 16)

    def _put(self, conn: http.client.HTTPConnection, r: http.client.HTTPResponse, reuse: bool) -> None:
        if reuse and not r.will_close:
            with self._lock:
                if len(self._idle) < self.maxsize:
                    self._idle.append(conn)
                    return
        conn.close()

    def send(self, method: str, path: str, body: Any, headers: Mapping[str, str],
             timeout: Tuple[float, float], stream: bool = False) -> _Response:
        """One request; OSError / http.client.HTTPException on connection failures.

        ``body``: None, bytes or a binary file object (sent in blocks).
        ``stream``: the answer's body is left to be read from the response.
        """
        conn = self._get(timeout[0])
        try:
            if conn.sock is None:
                conn.connect()
                assert conn.sock is not None  # connect() made it
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(timeout[1])
            conn.request(method, self.base_path + path, body=body, headers=headers)
            r = conn.getresponse()
            if stream and method != "HEAD":
                return _Response(r.status, r.headers, raw=r, where=f"{method} {path.split('?')[0]}",
                                 release=lambda reuse: self._put(conn, r, reuse))
            content = r.read()
        except BaseException:
            conn.close()
            raise
        self._put(conn, r, True)
        return _Response(r.status, r.headers, content)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _isdir(path: str) -> bool:
    import os

    return os.path.isdir(path)


def _default_ca_bundle() -> Optional[str]:
    """certifi's bundle when installed (what ``verify=True`` used through requests), else
    None: the system's CAs."""
    try:
        import certifi  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return certifi.where()


def _body_length(body: Any) -> Optional[int]:
    """Bytes left in a seekable file object (for ``Content-Length``); None if unknown
    (the body is then sent with chunked transfer encoding)."""
    try:
        here = body.tell()
        end = body.seek(0, 2)
        body.seek(here)
        return int(end - here)
    except (AttributeError, OSError, ValueError):
        return None


def _failure_kind(exc: BaseException) -> str:
    """One name for a failed connection: ``Timeout`` or ``ConnectionError``."""
    return "Timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else "ConnectionError"


# ---------------------------------------------------------------------------
# server


class Server:
    """A CouchDB server: a pool of keep-alive connections, credentials, retry policy.

    ``url`` may carry ``user:password@``; it is split off and kept only in the
    server's auth object.  ``verify`` is True (certifi's CAs when installed, else
    the system's), False, or the path of a CA bundle (file or directory).
    """

    def __init__(self, url: str, user: Optional[str] = None, password: Optional[str] = None, *,
                 verify: Union[bool, str] = True, timeout: Tuple[float, float] = (10.0, 120.0),
                 retries: int = 6, backoff: float = 0.25, max_backoff: float = 30.0,
                 pool_size: int = 10, cookie_auth: bool = False, fail_fast: bool = False):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LrtError(f"not a CouchDB URL (want http[s]://host:port): {redact_url(url)}")
        if parts.username is not None and user is None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        self.url = redact_url(url).rstrip("/")
        self.user = user
        self.verify = verify
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.pool_size = pool_size
        self._fast = _FastTransport(self.url, verify, pool_size)
        self._basic: Optional[_Auth] = None
        if user is not None:
            self._basic = _Auth(user, password or "")
        #: the ``AuthSession`` cookie's value (a credential: never logged), once logged in
        self._cookie: Optional[str] = None
        #: "basic" (every request carries the password), "cookie" (logged in once through
        #: /_session; requests carry the AuthSession cookie), or "wanted" (cookie_auth
        #: asked for, login not tried yet).  See :meth:`_login`.
        self.auth_mode = "wanted" if (cookie_auth and user is not None) else "basic"
        #: number of HTTP requests sent (each retry counts); benchmarks read it
        self.requests_sent = 0
        #: requests sent again after a connection error, 5xx or 429 (a replayed write may
        #: already have been applied: callers that care compare this before and after)
        self.replays = 0
        #: server clock minus local clock in seconds (Date headers, refined by handler times)
        self.clock_offset: Optional[float] = None
        self._fine_offset: Optional[float] = None
        #: until the server has answered once, connection errors are not retried: a person
        #: at a terminal learns at once that the URL is wrong or the server down (the CLI;
        #: pilots keep their patience)
        self.fail_fast = fail_fast
        self._answered = False
        #: where the credentials came from, named in an authentication error (lrt.settings sets it)
        self.credentials_from = "LRT_COUCH_USER / LRT_COUCH_PASSWORD (or your lrt config)"

    def __repr__(self) -> str:
        return f"<Server {self.url} user={self.user!r}>"

    def clone(self) -> "Server":
        """The same server, credentials and policy with a connection pool and login of
        its own (for another thread: the login state and counters are per object)."""
        basic = self._basic
        twin = Server(self.url, self.user, basic.password if basic else None, verify=self.verify,
                      timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                      max_backoff=self.max_backoff, cookie_auth=self.auth_mode != "basic",
                      fail_fast=self.fail_fast and not self._answered, pool_size=self.pool_size)
        twin.clock_offset = self.clock_offset
        twin.credentials_from = self.credentials_from
        return twin

    def close(self) -> None:
        self._fast.close()
        chk = getattr(self, "_check_pool", None)
        if chk is not None:
            chk.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the one request function ------------------------------------------------
    def request(self, method: str, path: str, *, params: Optional[Mapping[str, Any]] = None,
                json_body: Any = None, data: Any = None, headers: Optional[Mapping[str, str]] = None,
                stream: bool = False, ok: Sequence[int] = (), retry: bool = True,
                timeout: Optional[Tuple[float, float]] = None) -> _Response:
        """Send one request, retrying transient failures; raise the mapped error.

        ``ok`` lists extra statuses (>= 400) to hand back instead of raising.
        ``data``: bytes, str, or a binary file object (streamed, with its length
        when it is seekable).  Bodies that are file objects cannot be replayed, so
        they are not retried.  ``stream``: the answer's body is read by the caller
        (``iter_content``), who closes the response.
        """
        hdrs = dict(headers or {})
        body = data
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":"), allow_nan=False).encode()
            hdrs["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode("utf-8")
        replayable = retry and (body is None or isinstance(body, bytes))
        if body is not None and not isinstance(body, bytes) and "Content-Length" not in hdrs:
            length = _body_length(body)
            if length is not None:
                hdrs["Content-Length"] = str(length)
        enc = _encode_params(params)
        target = "/" + path.lstrip("/") + ("?" + urllib.parse.urlencode(enc) if enc else "")
        if self.auth_mode == "wanted":
            self._login()
        relogged = False
        attempt = 0
        while True:
            attempt += 1
            self.requests_sent += 1
            if attempt > 1:
                self.replays += 1
            resp: _Response
            try:
                resp = self._fast.send(method, target, body, self._headers(hdrs),
                                       timeout or self.timeout, stream=stream)
            except (OSError, http.client.HTTPException) as exc:
                kind = _failure_kind(exc)
                if replayable and attempt <= self.retries and (self._answered or not self.fail_fast):
                    self._sleep(attempt, None, f"{method} {path}: {kind}")
                    continue
                raise CouchConnectionError(
                    f"cannot reach CouchDB at {self.url} ({kind}) after {attempt} attempt(s)") from None
            self._keep_cookie(resp)
            self._note_date(resp)
            self._answered = True
            status = resp.status_code
            if (status >= 500 or status == 429) and replayable and attempt <= self.retries:
                retry_after = resp.headers.get("Retry-After")
                resp.close()
                self._sleep(attempt, retry_after, f"{method} {path}: HTTP {status}")
                continue
            if status == 401 and self.auth_mode == "cookie" and replayable:
                resp.close()
                attempt -= 1
                if not relogged:
                    # the AuthSession cookie expired (CouchDB: [chttpd_auth] timeout, 600 s by
                    # default, unless refreshed by use): log in again, once, and resend
                    relogged = True
                    self._login()
                else:
                    # a fresh cookie is refused too (e.g. a proxy that drops cookies): keep
                    # to basic auth from now on
                    log.info("session cookie refused by %s: using basic auth", self.url)
                    self._cookie = None
                    self.auth_mode = "basic"
                continue
            if status >= 400 and status not in ok:
                raise self._error(resp, method, path)
            return resp

    def _headers(self, extra: Mapping[str, str], auth: bool = True) -> Dict[str, str]:
        """Every request's headers: ours, the credentials (the ``AuthSession`` cookie
        once logged in, else basic auth), then ``extra``."""
        h = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if auth:
            if self.auth_mode == "cookie" and self._cookie:
                h["Cookie"] = "AuthSession=" + self._cookie
            elif self._basic is not None:
                h["Authorization"] = self._basic.header
        h.update(extra)
        return h

    def _keep_cookie(self, resp: _Response) -> None:
        """Keep the ``AuthSession`` cookie the server set (at login; CouchDB also renews
        it on use); an empty value (a logout) drops it."""
        for line in resp.headers.get_all("Set-Cookie") or ():
            name, _, rest = line.partition("=")
            if name.strip() == "AuthSession":
                self._cookie = rest.split(";", 1)[0].strip() or None

    def _login(self) -> None:
        """Switch to cookie authentication: one ``POST /_session`` with the password.

        Why: with basic auth every request makes the server verify the password
        (a PBKDF2 hash on Apache CouchDB; about 1 ms of server CPU per request on
        the local server), while a session cookie is checked with one HMAC.  A
        pilot makes thousands of requests, so it logs in once.  The cookie is a
        credential too: it lives only in this object, never in logs.  A wrong
        password raises :class:`Unauthorized` at once (never retried); a server
        without ``/_session`` (or one that sets no cookie) keeps basic auth.  When
        the server cannot be reached, this request goes with basic auth and the
        next one tries to log in again.
        """
        basic = self._basic
        if basic is None:
            self.auth_mode = "basic"
            return
        self._cookie = None
        body = json.dumps({"name": basic.username, "password": basic.password}).encode()
        try:
            resp = self._fast.send("POST", "/_session", body,
                                   self._headers({"Content-Type": "application/json"}, auth=False),
                                   self.timeout)
        except (OSError, http.client.HTTPException):
            self.auth_mode = "wanted"
            return
        self.requests_sent += 1
        self._keep_cookie(resp)
        self._note_date(resp)
        if resp.status_code in (401, 403):
            self._cookie = None
            raise self._error(resp, "POST", "/_session")
        if resp.status_code >= 300 or not self._cookie:
            log.info("no session cookie from %s (HTTP %s): keeping basic auth", self.url, resp.status_code)
            self._cookie = None
            self.auth_mode = "basic"
            return
        self.auth_mode = "cookie"

    def _sleep(self, attempt: int, retry_after: Optional[str], why: str) -> None:
        delay = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = random.uniform(0, delay)  # full jitter: pilots must not retry in lockstep
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        log.warning("%s; retry %d/%d in %.2fs", why, attempt, self.retries, delay)
        time.sleep(delay)

    def _note_date(self, resp: Any) -> None:
        """Estimate the server clock from the ``Date`` header (one-second resolution).

        A finer estimate from :meth:`note_server_time` is kept while the header
        agrees with it (the header floors the server time to the second).
        """
        date = resp.headers.get("Date")
        if not date:
            return
        try:
            coarse = parsedate_to_datetime(date).timestamp() - time.time()
        except (TypeError, ValueError):
            return
        fine = self._fine_offset
        if fine is not None and -1.5 <= fine - coarse <= 1.5:
            return
        self._fine_offset = None
        self.clock_offset = coarse + 0.5  # the header floors: the middle of the second is closer

    @property
    def clock_is_fine(self) -> bool:
        """True when :attr:`clock_offset` comes from a millisecond server timestamp."""
        return self._fine_offset is not None

    def note_server_time(self, server_now: float, sent: Optional[float] = None) -> None:
        """Refine the clock estimate with a server timestamp that was just answered
        (an update handler's ``Date.now()``): millisecond resolution.

        ``sent``: the local time the request was sent.  The server read its clock
        between sending and now, so ``server_now - sent`` is an upper bound of the
        offset: an estimate that errs late by at most the round trip, never early
        -- a lease stamped with it never ends, on the server, before the pilot's own
        clock says it does (under load a reply can take seconds).  Without ``sent``
        the reply's arrival is used (errs early by the reply's transit time).
        """
        self._fine_offset = self.clock_offset = server_now - (time.time() if sent is None else sent)

    def _error(self, resp: Any, method: str, path: str) -> CouchError:
        status = resp.status_code
        error = reason = None
        try:
            body = resp.json()
            if isinstance(body, dict):
                error, reason = body.get("error"), body.get("reason")
        except ValueError:
            pass
        where = f"{method} {self.url}/{path.lstrip('/')}".split("?")[0]
        if status in (401, 403):
            who = f"user {self.user!r}" if self.user else "anonymous access"
            why = f"{status} {error}: {reason}" if error or reason else str(status)
            msg = (f"CouchDB refused {who} ({why}) on {where}. "
                   f"Check {self.credentials_from} and that this user is a member of the database.")
            if reason and "locked" in str(reason).lower():
                msg += " The account is locked after repeated failures: wait before retrying."
        else:
            msg = f"{where}: HTTP {status} {error or ''}" + (f": {reason}" if reason else "")
        cls = _STATUS_CLASS.get(status)
        if cls is None:
            cls = ServerError if status >= 500 or status == 429 else CouchError
        return cls(msg, status=status, error=error, reason=reason)

    # -- helpers --------------------------------------------------------------------
    def json(self, method: str, path: str, **kw: Any) -> JSON:
        """The JSON object CouchDB answers (every endpoint lrt uses but ``_all_dbs`` answers an object)."""
        return cast(JSON, self.decode(self.request(method, path, **kw), method, path))

    @staticmethod
    def decode(resp: Any, method: str, path: str) -> Any:
        """The JSON body of ``resp``; :class:`CouchError` if it is not JSON."""
        try:
            return resp.json()
        except ValueError:
            raise CouchError(f"{method} {path}: server answered non-JSON "
                             f"(HTTP {resp.status_code})", status=resp.status_code) from None

    def info(self) -> JSON:
        return self.json("GET", "/")

    def now(self) -> float:
        """The server's clock (Unix seconds), estimated from the last ``Date`` header.

        The ``Date`` header has one-second resolution; leases are judged with a
        grace period well above that (see docs/design.md).
        """
        if self.clock_offset is None:
            # any answer carries a Date header; not HEAD /, which makes pouchdb-server
            # rewrite its config file world-readable (docs/server.md)
            self.request("GET", "/_session")
        return time.time() + (self.clock_offset or 0.0)

    def session_info(self) -> JSON:
        return self.json("GET", "/_session")

    def check_credentials(self, name: str, password: str) -> JSON:
        """``GET /_session`` as ``name`` (basic auth on this request only): the ``userCtx``.

        For services that act for their users (the UWS): the credentials are
        checked and kept nowhere.  A separate connection pool of this server
        object is used, and no cookie it answers is kept, so nothing of the
        user's login can leak into this client's own requests.  Raises
        :class:`Unauthorized` for a wrong password; never retried (retried wrong
        passwords help lock an account on Apache CouchDB).  Not thread-safe:
        one server object per thread, as everywhere in lrt.
        """
        chk = getattr(self, "_check_pool", None)
        if chk is None:
            chk = self._check_pool = _FastTransport(self.url, self.verify, 2)
        hdrs = self._headers({"Authorization": basic_header(name, password)}, auth=False)
        try:
            resp = chk.send("GET", "/_session", None, hdrs, self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise CouchConnectionError(f"cannot reach CouchDB at {self.url} "
                                       f"({_failure_kind(exc)})") from None
        self.requests_sent += 1
        if resp.status_code >= 400:
            raise self._error(resp, "GET", "/_session")
        return (self.decode(resp, "GET", "/_session") or {}).get("userCtx") or {}

    def all_dbs(self) -> List[str]:
        return cast(List[str], self.decode(self.request("GET", "/_all_dbs"), "GET", "/_all_dbs"))

    def database(self, name: str) -> "Database":
        return Database(self, name)

    __getitem__ = database


# ---------------------------------------------------------------------------
# database


class BulkResult(Dict[str, Any]):
    """Per-document results of ``_bulk_docs``, keyed by document id.

    CouchDB answers in request order but we never rely on it (the local stand-in
    does not keep it): results are matched by ``id``.  ``status`` is the HTTP
    status (202 on a cluster: a write did not reach its quorum).
    """

    status: int = 201

    @property
    def ok(self) -> List[str]:
        return [i for i, r in self.items() if "rev" in r and "error" not in r]

    @property
    def conflicts(self) -> List[str]:
        return [i for i, r in self.items() if r.get("error") == "conflict"]

    @property
    def errors(self) -> Dict[str, JSON]:
        return {i: r for i, r in self.items() if "error" in r and r.get("error") != "conflict"}

    @property
    def unconfirmed(self) -> List[str]:
        """Written, but by fewer copies than the write quorum (a cluster's 202): another
        write of the same document may have been accepted by the other copies.
        CouchDB marks such rows ``"accepted": true``; a 202 that marks none is taken
        to concern every written row."""
        ok = self.ok
        marked = [i for i in ok if self[i].get("accepted")]
        return ok if self.status == 202 and not marked else marked


class Database:
    """One CouchDB database on a :class:`Server`."""

    def __init__(self, server: Server, name: str):
        self.server = server
        self.name = name
        self._path = "/" + urllib.parse.quote(name, safe="")
        self._copies: Optional[int] = None

    def __repr__(self) -> str:
        return f"<Database {self.server.url}/{self.name}>"

    def _p(self, *parts: str) -> str:
        return self._path + "".join("/" + p for p in parts)

    # -- database --------------------------------------------------------------------
    def exists(self) -> bool:
        resp = self.server.request("HEAD", self._path, ok=(404,))
        found: bool = resp.status_code == 200
        return found

    def info(self) -> JSON:
        return self.server.json("GET", self._path)

    def copies(self) -> int:
        """How many copies of each document the database keeps: ``cluster.n`` of the
        database info on Apache CouchDB 3 (read once, then cached), 1 on a server
        that reports none (a single node, the local stand-in)."""
        if self._copies is None:
            n = (self.info().get("cluster") or {}).get("n")
            self._copies = n if isinstance(n, int) and n > 0 else 1
        return self._copies

    def create(self, *, exist_ok: bool = True, members: Optional[Mapping[str, Sequence[str]]] = None,
               admins: Optional[Mapping[str, Sequence[str]]] = None) -> bool:
        """Create the database (server admin only on CouchDB 3) and set ``_security``.

        Returns True if it was created.  ``members``/``admins`` are
        ``{"names": [...], "roles": [...]}``.
        """
        resp = self.server.request("PUT", self._path, ok=(412,))
        created = resp.status_code in (201, 202)
        if not created and not exist_ok:
            raise PreconditionFailed(f"database {self.name} already exists", status=412)
        if members is not None or admins is not None:
            self.set_security(members=members, admins=admins)
        return created

    def delete(self) -> None:
        self.server.request("DELETE", self._path, ok=(404,))

    def security(self) -> JSON:
        return self.server.json("GET", self._p("_security"))

    def set_security(self, *, members: Optional[Mapping[str, Sequence[str]]] = None,
                     admins: Optional[Mapping[str, Sequence[str]]] = None) -> None:
        body = {"members": dict(members or {"names": [], "roles": []}),
                "admins": dict(admins or {"names": [], "roles": []})}
        self.server.json("PUT", self._p("_security"), json_body=body)

    # -- documents -------------------------------------------------------------------
    def get(self, doc_id: str, **params: Any) -> JSON:
        """The document; raises :class:`NotFound`."""
        return self.server.json("GET", self._p(quote_id(doc_id)), params=params)

    def get_or_none(self, doc_id: str, **params: Any) -> Optional[JSON]:
        resp = self.server.request("GET", self._p(quote_id(doc_id)), params=params, ok=(404,))
        return None if resp.status_code == 404 else resp.json()

    def leaves(self, doc_id: str, *, all_copies: bool = False) -> List[JSON]:
        """Every leaf revision of ``doc_id`` (``open_revs=all``); deleted leaves carry
        ``_deleted: true``.  [] if the document never existed.

        ``all_copies``: read with ``r`` = n (:meth:`copies`).  A cluster answers an
        ``open_revs=all`` read once ``r`` copies agree on the leaves, else when every
        copy has answered, merging their revision trees; with ``r`` = n every copy is
        asked, so a leaf that only a minority of copies accepted (a write answered
        202) is seen whichever node serves the read.
        """
        params: JSON = {"open_revs": "all"}
        if all_copies and self.copies() > 1:
            params["r"] = self.copies()
        path = self._p(quote_id(doc_id))
        resp = self.server.request("GET", path, params=params, ok=(404,))
        if resp.status_code == 404:
            return []
        body = self.server.decode(resp, "GET", path)
        return [r["ok"] for r in body if isinstance(r, dict) and isinstance(r.get("ok"), dict)]

    def get_if_changed(self, doc_id: str, rev: str) -> "Optional[JSON]":
        """The document if its revision is no longer ``rev``; None if unchanged.

        A conditional read (``If-None-Match: "<rev>"``): CouchDB answers 304
        without a body while the document is unchanged, so a pilot can watch
        the token it runs every few seconds for the cost of an empty answer.
        Servers that ignore the header (pouchdb-server) send the document;
        its ``_rev`` is then compared here.  A deleted document is returned as
        ``{"_id": id, "_deleted": True}``.
        """
        resp = self.server.request("GET", self._p(quote_id(doc_id)), ok=(404,),
                                   headers={"If-None-Match": f'"{rev}"'})
        if resp.status_code == 304:
            return None
        if resp.status_code == 404:
            return {"_id": doc_id, "_deleted": True}
        doc = self.server.decode(resp, "GET", doc_id)
        return None if isinstance(doc, dict) and doc.get("_rev") == rev else doc

    def update_seq(self) -> Any:
        """The database's current update sequence (opaque: pass it back as ``since``)."""
        return self.info().get("update_seq")

    def wait_for_change(self, doc_ids: Sequence[str], since: Any, timeout: float) -> Optional[Any]:
        """Block until one of ``doc_ids`` changes after ``since``, at most ``timeout`` s.

        One ``_changes?feed=longpoll&filter=_doc_ids`` request (the server answers
        when a change arrives): the way to wait for a document without polling
        it.  Returns the new ``last_seq``, or None when nothing changed in time.
        ``Accept-Encoding: identity`` because pouchdb-server holds back a gzip
        feed; it also ignores ``timeout=``, so the client's read timeout ends
        the wait there (CouchDB ends it itself, a little earlier).
        """
        timeout = max(0.0, float(timeout))
        if timeout == 0:
            return None
        params = {"feed": "longpoll", "filter": "_doc_ids", "since": since,
                  "timeout": int(timeout * 1000)}
        t0 = time.monotonic()
        try:
            resp = self.server.request("POST", self._p("_changes"), params=params,
                                       json_body={"doc_ids": list(doc_ids)},
                                       headers={"Accept-Encoding": "identity"}, retry=False,
                                       timeout=(self.server.timeout[0], timeout + 2.0))
        except CouchConnectionError:
            if time.monotonic() - t0 >= timeout:
                return None  # the read timed out: no change in time
            raise
        body = self.server.decode(resp, "POST", "_changes")
        return body.get("last_seq") if body.get("results") else None

    def put(self, doc: JSON, **params: Any) -> str:
        """Create or update ``doc`` (its ``_rev`` decides which); sets and returns the new rev."""
        if "_id" not in doc:
            raise ValueError("document has no _id")
        res = self.server.json("PUT", self._p(quote_id(doc["_id"])), json_body=doc, params=params)
        rev: str = res["rev"]
        doc["_rev"] = rev
        return rev

    def delete_doc(self, doc_id: str, rev: str) -> str:
        res = self.server.json("DELETE", self._p(quote_id(doc_id)), params={"rev": rev})
        new_rev: str = res["rev"]
        return new_rev

    def bulk_docs(self, docs: Sequence[JSON], *, new_edits: bool = True) -> BulkResult:
        """One ``_bulk_docs`` request; per-document results matched by id.

        Ids must be unique within one call (CouchDB would otherwise report
        results we could not tell apart).  ``status`` of the result is the HTTP
        status: 202 on a cluster means some write did not reach its quorum.
        """
        ids: List[Optional[str]] = [d.get("_id") for d in docs]
        if any(i is None for i in ids):
            raise ValueError("every document in a bulk write needs an _id")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate _id in one _bulk_docs batch")
        body: JSON = {"docs": list(docs)}
        if not new_edits:
            body["new_edits"] = False
        path = self._p("_bulk_docs")
        return self._bulk_result(self.server.request("POST", path, json_body=body), path, ids, new_edits)

    def bulk_docs_encoded(self, ids: Sequence[str], docs: Sequence[bytes]) -> BulkResult:
        """:meth:`bulk_docs` of documents already encoded as JSON objects (``docs[i]``
        is the document whose ``_id`` is ``ids[i]``, unique in the call).

        For bulk creation, which encodes its documents from a template
        (:class:`lrt.tokens.DocEncoder`) instead of building and encoding each.
        """
        if len(ids) != len(docs):
            raise ValueError("one id per encoded document")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate _id in one _bulk_docs batch")
        path = self._p("_bulk_docs")
        body = b'{"docs":[' + b",".join(docs) + b"]}"
        resp = self.server.request("POST", path, data=body, headers={"Content-Type": "application/json"})
        return self._bulk_result(resp, path, ids, True)

    def _bulk_result(self, resp: Any, path: str, ids: Sequence[Any], new_edits: bool) -> BulkResult:
        rows = self.server.decode(resp, "POST", path)
        out = BulkResult()
        out.status = resp.status_code
        for row in rows:
            if isinstance(row, dict) and "id" in row:
                out[row["id"]] = row
        if new_edits:
            missing = {i for i in ids if i is not None} - set(out)
            for i in missing:  # a result the server did not report is not a success
                out[i] = {"id": i, "error": "unknown", "reason": "no result returned"}
        return out

    def save_batches(self, docs: Iterable[JSON], batch_size: int = 1000) -> Iterator[Tuple[List[JSON], BulkResult]]:
        """Stream ``docs`` to ``_bulk_docs`` in batches; yield (batch, results).

        Memory stays bounded by one batch whatever the length of ``docs``.
        """
        batch: List[JSON] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= batch_size:
                yield batch, self.bulk_docs(batch)
                batch = []
        if batch:
            yield batch, self.bulk_docs(batch)

    def all_docs(self, keys: Optional[Sequence[str]] = None, **params: Any) -> JSON:
        if keys is not None:
            return self.server.json("POST", self._p("_all_docs"), params=params,
                                    json_body={"keys": list(keys)})
        return self.server.json("GET", self._p("_all_docs"), params=params)

    def existing_ids(self, ids: Sequence[str]) -> Dict[str, str]:
        """Which of ``ids`` exist (not deleted): id -> current rev."""
        res = self.all_docs(keys=ids)
        return {r["id"]: r["value"]["rev"] for r in res.get("rows", [])
                if "value" in r and not r["value"].get("deleted") and "error" not in r}

    # -- views -----------------------------------------------------------------------
    def view(self, ddoc: str, view: str, **params: Any) -> JSON:
        """One view query. ``keys=`` is sent as a POST body."""
        path = self._p("_design", urllib.parse.quote(ddoc, safe=""), "_view",
                       urllib.parse.quote(view, safe=""))
        keys = params.pop("keys", None)
        if keys is not None:
            return self.server.json("POST", path, params=params, json_body={"keys": list(keys)})
        return self.server.json("GET", path, params=params)

    def view_queries(self, ddoc: str, view: str, queries: Sequence[JSON]) -> List[JSON]:
        """Several queries of one view in one request (``POST .../_view/VIEW/queries``,
        CouchDB 2.2 and later): one result (with ``rows``) per query, in order.

        Each query is a dict of view parameters as JSON values (``startkey`` a
        list, ``limit`` an int), not the URL-encoded strings of :meth:`view`.
        A server without the endpoint answers with an error, e.g.
        :class:`BadRequest` from pouchdb-server, which takes the path for an
        attachment upload.
        """
        path = self._p("_design", urllib.parse.quote(ddoc, safe=""), "_view",
                       urllib.parse.quote(view, safe=""), "queries")
        res = self.server.json("POST", path, json_body={"queries": list(queries)})
        results = res.get("results") if isinstance(res, dict) else None
        if not isinstance(results, list) or len(results) != len(queries):
            raise BadRequest(f"view {ddoc}/{view}: the server's answer to several queries is not a "
                             "list of results", status=200)
        return results

    def iter_view(self, ddoc: str, view: str, page_size: int = 1000, **params: Any) -> Iterator[JSON]:
        """All rows of a (non-reduced) view, paged by start key and doc id, never ``skip``.

        ``skip`` makes CouchDB walk every skipped row: O(n^2) over a large range.
        We fetch ``page_size + 1`` rows and start the next page at the extra one.
        """
        params = dict(params)
        params["reduce"] = False
        if "key" in params:  # key= would override startkey= on the next pages
            params["startkey"] = params["endkey"] = params.pop("key")
        limit_total = params.pop("limit", None)
        seen = 0
        before: "set[str]" = set()  # the ids of the previous page
        while True:
            q = dict(params)
            q["limit"] = page_size + 1
            rows = self.view(ddoc, view, **q).get("rows", [])
            if rows and rows[0]["id"] in before:
                # CouchDB honours startkey_docid; a server that ignores it would hand back
                # rows of the previous page and make us loop over them forever.  (On a
                # cluster the next page may come from a copy that lacks the expected row:
                # it then starts later, which is a stale read, not a repeat.)
                raise CouchError(f"view {ddoc}/{view}: the server ignored startkey_docid while "
                                 "paging over equal keys; page over a view with unique keys")
            before = {r["id"] for r in rows[:page_size]}
            for row in rows[:page_size]:
                yield row
                seen += 1
                if limit_total is not None and seen >= limit_total:
                    return
            if len(rows) <= page_size:
                return
            nxt = rows[page_size]
            params["startkey"] = nxt["key"]
            params["startkey_docid"] = nxt["id"]

    def find(self, selector: JSON, *, fields: Optional[Sequence[str]] = None,
             sort: Optional[Sequence[Any]] = None, limit: int = 25, bookmark: Optional[str] = None,
             use_index: Optional[Union[str, Sequence[str]]] = None) -> JSON:
        """``_find``; always sends ``limit`` (CouchDB's default is 25, the stand-in's is all)."""
        body: JSON = {"selector": selector, "limit": limit}
        if fields is not None:
            body["fields"] = list(fields)
        if sort is not None:
            body["sort"] = list(sort)
        if bookmark:
            body["bookmark"] = bookmark
        if use_index:
            body["use_index"] = use_index
        return self.server.json("POST", self._p("_find"), json_body=body)

    def create_index(self, fields: Sequence[Any], name: str, ddoc: Optional[str] = None,
                     partial_filter_selector: Optional[JSON] = None) -> JSON:
        index: JSON = {"fields": list(fields)}
        if partial_filter_selector:
            index["partial_filter_selector"] = partial_filter_selector
        body: JSON = {"index": index, "name": name, "type": "json"}
        if ddoc:
            body["ddoc"] = ddoc
        return self.server.json("POST", self._p("_index"), json_body=body)

    # -- update handlers -------------------------------------------------------------
    def update_handler(self, ddoc: str, name: str, doc_id: Optional[str] = None, *,
                       body: Any = None, params: Optional[Mapping[str, Any]] = None,
                       ok: Sequence[int] = ()) -> Tuple[int, Any, Optional[str]]:
        """Call ``_update/name[/doc_id]``; return (status, JSON body or text, new rev)."""
        path = self._p("_design", urllib.parse.quote(ddoc, safe=""), "_update",
                       urllib.parse.quote(name, safe=""))
        if doc_id is not None:
            path += "/" + urllib.parse.quote(doc_id, safe="")
        resp = self.server.request("POST" if doc_id is None else "PUT", path, params=params,
                                   json_body=body if body is not None else {}, ok=ok)
        try:
            payload: Any = resp.json()
        except ValueError:
            payload = resp.text
        return resp.status_code, payload, resp.headers.get("X-Couch-Update-NewRev")

    # -- attachments -----------------------------------------------------------------
    def put_attachment(self, doc_id: str, rev: str, name: str, data: Union[bytes, IO[bytes]],
                       content_type: str = "application/octet-stream") -> str:
        """Upload an attachment; a file object is streamed, not read into memory."""
        path = self._p(quote_id(doc_id), urllib.parse.quote(name, safe=""))
        res = self.server.request("PUT", path, params={"rev": rev}, data=data,
                                  headers={"Content-Type": content_type}).json()
        new_rev: str = res["rev"]
        return new_rev

    def open_attachment(self, doc_id: str, name: str,
                        chunk_size: int = 1 << 16) -> Tuple[str, Optional[int], Iterator[bytes]]:
        """Start streaming an attachment: (content type, length, chunks).

        The response stays open until the chunks are consumed (or the iterator is
        closed), so a web page can pass a large log through without holding it.
        Asked with ``Accept-Encoding: identity``: Apache CouchDB stores text
        attachments gzip-compressed and sends them so to a client that accepts
        gzip, with the compressed length, while the chunks are decoded; the
        length returned is that of the chunks (None if a server encodes anyway).
        """
        path = self._p(quote_id(doc_id), urllib.parse.quote(name, safe=""))
        resp = self.server.request("GET", path, stream=True,
                                   headers={"Accept": "*/*", "Accept-Encoding": "identity"})
        length = resp.headers.get("Content-Length")
        if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
            length = None

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in resp.iter_content(chunk_size):
                    yield chunk
            finally:
                resp.close()

        return (resp.headers.get("Content-Type") or "application/octet-stream",
                int(length) if length and length.isdigit() else None, chunks())

    def get_attachment(self, doc_id: str, name: str, dest: Optional[IO[bytes]] = None,
                       chunk_size: int = 1 << 20) -> Optional[bytes]:
        """Download an attachment; streamed into ``dest`` when given, else returned."""
        path = self._p(quote_id(doc_id), urllib.parse.quote(name, safe=""))
        resp = self.server.request("GET", path, stream=True,
                                   headers={"Accept": "*/*"})
        try:
            if dest is None:
                content: bytes = resp.content
                return content
            for chunk in resp.iter_content(chunk_size):
                dest.write(chunk)
            return None
        finally:
            resp.close()
