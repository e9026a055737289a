"""One login for everything ``lrt serve`` serves: HTTP basic, checked against CouchDB.

Wraps the whole app (dashboard and UWS), so both interfaces share one process,
one port and one authentication: each request's credentials are checked
against CouchDB's ``/_session`` (:meth:`lrt.couch.Server.check_credentials`)
and never kept; the user found is put in the request scope, where the UWS
routes read it.  The vendored static files (``/static``) are public.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Optional

from starlette.concurrency import run_in_threadpool

from ...couch import AuthError, CouchConnectionError

SCOPE_KEY = "lrt_user"
REALM = 'Basic realm="lrt", charset="UTF-8"'


def parse_basic(header: str) -> Optional[tuple]:
    """(name, password) from an ``Authorization: Basic ...`` value, or None."""
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "basic" or not cred:
        return None
    try:
        name, sep, password = base64.b64decode(cred.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not sep or not name:
        return None
    return name, password


class BasicAuth:
    """Pure ASGI middleware: 401 unless the request carries a CouchDB user's credentials."""

    def __init__(self, app: Any, check: Callable[[str, str], Any], public: tuple = ("/static/",)):
        self.app = app
        self.check = check
        self.public = public

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.public):
            await self.app(scope, receive, send)
            return
        header = ""
        for k, v in scope.get("headers", []):
            if k.lower() == b"authorization":
                header = v.decode("latin-1")
        cred = parse_basic(header)
        status, why = 401, "authentication required (HTTP basic: your CouchDB user)"
        if cred is not None:
            try:
                scope[SCOPE_KEY] = await run_in_threadpool(self.check, *cred)
                await self.app(scope, receive, send)
                return
            except AuthError:
                why = "authentication failed"
            except CouchConnectionError:
                status, why = 503, "the database is unreachable"
            except Exception as exc:  # a refused check (e.g. UwsError 401) without detail
                status = getattr(exc, "status", 401)
                why = "authentication failed" if status == 401 else str(exc)
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if status == 401:
            headers.append((b"www-authenticate", REALM.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": (why + "\n").encode()})
