"""The application factory: one Starlette app from explicit route lists.

:func:`create_app` takes a :class:`WebContext` (database access, cache,
templates, whether actions are allowed) and the route lists to serve, each a
function ``routes(web) -> [Route, ...]``; the dashboard is one such list and a
later interface (UWS) adds its own next to it.  What every page shares is here:
security headers, allowed Host names (no DNS rebinding), the CSRF cookie, and
error pages that never show a credential or a traceback.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from ..couch import AuthError, CouchConnectionError, Database
from ..errors import LrtError
from .cache import QueryCache

log = logging.getLogger("lrt.web")

HERE = Path(__file__).parent
CSRF_COOKIE = "lrt_csrf"

#: scripts and styles only from this server (htmx and uPlot are vendored), no inline code
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

RouteList = Callable[["WebContext"], List[BaseRoute]]


class WebContext:
    """What every route gets: the database (one client per server thread, so no
    HTTP session is shared between threads), the shared query cache, templates
    and the action settings."""

    def __init__(self, make_db: Callable[[], Database], *, allow_actions: bool = False,
                 refresh: float = 5.0, cache_ttl: Optional[float] = None,
                 make_user_db: Optional[Callable[[str, str], Database]] = None):
        self._make_db = make_db
        self._local = threading.local()
        self._dbs: List[Database] = []
        self._dbs_lock = threading.Lock()
        self.allow_actions = allow_actions
        self.refresh = refresh
        self.cache = QueryCache(ttl=refresh if cache_ttl is None else cache_ttl)
        #: a database client acting as the user who confirms an action
        self.make_user_db = make_user_db
        self._pool: Optional[ThreadPoolExecutor] = None
        self.secret = secrets.token_bytes(32)
        self.db_name = make_db().name
        self.templates = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                                     autoescape=select_autoescape(["html"], default=True),
                                     trim_blocks=True, lstrip_blocks=True)

    @property
    def db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._make_db()
            with self._dbs_lock:
                self._dbs.append(db)
        return db

    def requests_sent(self) -> int:
        """HTTP requests sent to CouchDB so far by every thread (the bench reads it)."""
        with self._dbs_lock:
            return sum(d.server.requests_sent for d in self._dbs)

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        return self.cache.get(key, compute)

    def gather(self, *fns: Callable[[], Any]) -> List[Any]:
        """Run independent reads at the same time (a page's latency is its slowest
        query, not their sum); results in order, the first error raised."""
        if self._pool is None:
            with self._dbs_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lrt-web")
        return [f.result() for f in [self._pool.submit(fn) for fn in fns]]

    # -- CSRF: a random cookie per browser, the form carries its HMAC -----------------
    def csrf_token(self, request: Request) -> str:
        nonce = request.cookies.get(CSRF_COOKIE) or request.scope.get("lrt_new_csrf") or ""
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, token: str) -> bool:
        nonce = request.cookies.get(CSRF_COOKIE)
        if not nonce or not token:
            return False
        want = hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, token)

    def render(self, request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        tpl = self.templates.get_template(name)
        html = tpl.render(request=request, web=self, csrf=self.csrf_token(request), **ctx)
        return HTMLResponse(html, status_code=status_code)


class _Headers:
    """Pure ASGI middleware: security headers on every answer, and the CSRF cookie."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = None
        if f"{CSRF_COOKIE}=" not in _header(scope, b"cookie"):
            cookie = secrets.token_hex(16)
            scope["lrt_new_csrf"] = cookie

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                h = list(message.get("headers", []))
                names = {k.lower() for k, _ in h}
                if b"content-security-policy" not in names:
                    h.append((b"content-security-policy", CSP.encode()))
                h += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                      (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store")]
                if cookie:
                    h.append((b"set-cookie", f"{CSRF_COOKIE}={cookie}; Path=/; HttpOnly; "
                                             "SameSite=Strict".encode()))
                message = dict(message, headers=h)
            await send(message)

        await self.app(scope, receive, wrapped)


def _header(scope: Any, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def error_page(web: WebContext, request: Request, status: int, message: str) -> HTMLResponse:
    """An error as a page (or as the refreshed fragment), its text escaped."""
    return web.render(request, "error.html", status_code=status, status=status, message=message)


def create_app(web: WebContext, route_lists: Sequence[RouteList] = (),
               allowed_hosts: Sequence[str] = ("127.0.0.1", "localhost", "[::1]", "::1")) -> Starlette:
    """The app serving ``route_lists`` (default: the dashboard) and the static files."""
    if not route_lists:
        from .dashboard import routes as dashboard_routes

        route_lists = (dashboard_routes,)
    routes: List[BaseRoute] = []
    for rl in route_lists:
        routes.extend(rl(web))
    routes.append(Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"))

    async def lrt_error(request: Request, exc: Exception) -> Response:
        status = 403 if isinstance(exc, AuthError) else 503 if isinstance(exc, CouchConnectionError) else 400
        return error_page(web, request, status, str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return error_page(web, request, 500, "internal error (see the dashboard's log)")

    app = Starlette(routes=routes,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
                                Middleware(_Headers)],
                    exception_handlers={LrtError: lrt_error, Exception: server_error})
    app.state.web = web
    return app
