"""``lrt dashboard``: the web dashboard (``pip install lrt[web]``).

Binds to a loopback address only (reach it from a laptop with ``ssh -L``),
read-only unless ``--allow-actions``.  The web stack is imported here, when the
command runs, never by the rest of lrt.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import LrtError

if TYPE_CHECKING:
    from ..couch import Database


class DashboardError(LrtError):
    exit_code = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="web dashboard: progress, failures, tokens, pilots (lrt[web])")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="loopback address to listen on (default 127.0.0.1; use ssh -L from elsewhere)")
    p.add_argument("--port", type=int, default=8742, metavar="N", help="port (default 8742)")
    p.add_argument("--refresh", type=float, default=5.0, metavar="S",
                   help="seconds between page refreshes, and how long query results are shared (default 5)")
    p.add_argument("--allow-actions", action="store_true",
                   help="allow reset/cancel of failure groups (each confirmed with the CouchDB "
                        "user's own password, CSRF-protected)")
    p.set_defaults(func=cmd_dashboard)


def _loopback(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_dashboard(ctx) -> int:
    a = ctx.args
    if not _loopback(a.bind):
        raise DashboardError(f"--bind {a.bind}: the dashboard listens on loopback addresses only "
                             "(it has no login of its own); reach it with `ssh -L 8742:127.0.0.1:8742 host`")
    if a.refresh <= 0:
        raise DashboardError("--refresh must be positive")
    try:  # the web extra; lrt.web itself always ships, so its imports stay outside the guard
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401 - served by serve_app
    except ImportError as exc:
        raise DashboardError(f"the dashboard needs the web extra: pip install 'lrt[web]' ({exc.name} missing)")
    from ..web.app import WebContext, create_app
    db = ctx.db
    if not db.exists():
        raise LrtError(f"database {db.name} does not exist on {db.server.url}")
    warn_outdated(db, ("lrt-web", "lrt-rates"), "lrt dashboard")
    web = web_context(ctx, WebContext)
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1", a.bind]
    app = create_app(web, allowed_hosts=hosts)
    host = f"[{a.bind}]" if ":" in a.bind else a.bind
    print(f"lrt dashboard: http://{host}:{a.port}/  (database {db.name} on {db.server.url}, "
          f"{'actions allowed' if a.allow_actions else 'read-only'}; Ctrl-C stops)", flush=True)
    return serve_app(app, a, "lrt dashboard")


def warn_outdated(db: "Database", ddocs: Sequence[str], prog: str) -> None:
    """A warning on stderr for each design document the pages need that is missing or outdated."""
    from .. import design

    for ddoc in ddocs:
        have = db.get_or_none(f"_design/{ddoc}")
        if have is None or have.get("lrt_hash") != design.build(ddoc)["lrt_hash"]:
            print(f"{prog}: warning: _design/{ddoc} is missing or outdated; run `lrt views install` "
                  "(pages need it)", file=sys.stderr, flush=True)


def web_context(ctx: Any, context_class: Any) -> Any:
    """The web app's context for the configured database; actions are written as the
    user who confirms them (``make_user_db``), never as the configured account."""
    from ..couch import Server

    a, settings = ctx.args, ctx.settings

    def make_user_db(user: str, password: str) -> Any:
        return Server(settings.url, user, password, verify=settings.verify, retries=1).database(settings.db)

    return context_class(lambda: settings.database(), allow_actions=a.allow_actions, refresh=a.refresh,
                         make_user_db=make_user_db)


def serve_app(app: Any, a: Any, prog: str) -> int:
    """Serve ``app`` on ``a.bind``:``a.port`` until Ctrl-C or SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, host=a.bind, port=a.port, log_level="warning", access_log=False,
                            lifespan="off", server_header=False)
    try:
        uvicorn.Server(config).run()  # shuts down gracefully on SIGINT/SIGTERM
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: the normal way to stop
        pass
    print(f"{prog}: stopped", flush=True)
    return 0
