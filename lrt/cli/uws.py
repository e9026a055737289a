"""``lrt serve`` (the dashboard and the UWS job interface in one app) and ``lrt provenance``."""
from __future__ import annotations

import argparse
import sys

from ..errors import LrtError


class ServeError(LrtError):
    exit_code = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web app: the dashboard and the IVOA UWS 1.1 job interface "
                                     "/uws/{task} (lrt[web])")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="loopback address to listen on (default 127.0.0.1; put a TLS proxy in front "
                        "for remote users: basic credentials must not cross a network in clear)")
    p.add_argument("--port", type=int, default=8742, metavar="N", help="port (default 8742)")
    p.add_argument("--tasks", metavar="DIR", help="task folder (default: $LRT_TASKS, else ./tasks)")
    p.add_argument("--refresh", type=float, default=5.0, metavar="S",
                   help="dashboard refresh and query cache seconds (default 5)")
    p.add_argument("--allow-actions", action="store_true", help="allow the dashboard's group actions")
    p.add_argument("--no-dashboard", action="store_true", help="serve only /uws")
    p.add_argument("--max-wait", type=float, default=60.0, metavar="S",
                   help="longest a UWS WAIT blocks (default 60; WAIT=-1 means this)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("provenance", help="W3C PROV document of finished token(s) (lrt[prov])")
    p.add_argument("ids", nargs="*", metavar="ID", help="token id(s); several give one linked document")
    p.add_argument("--tokenset", help="every finished token of this token set, in one document")
    p.add_argument("--format", choices=("json", "provn", "xml"), default="json")
    p.set_defaults(func=cmd_provenance)


def cmd_serve(ctx) -> int:
    from .dashboard import _loopback, serve_app, warn_outdated, web_context

    a = ctx.args
    if not _loopback(a.bind):
        raise ServeError(f"--bind {a.bind}: lrt serve listens on loopback addresses only; "
                         "reach it through ssh -L or a TLS reverse proxy")
    try:  # the web extra; lrt.web itself always ships, so its imports stay outside the guard
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401 - served by serve_app
    except ImportError as exc:
        raise ServeError(f"lrt serve needs the web extra: pip install 'lrt[web]' ({exc.name} missing)")
    from ..web.app import WebContext, create_app
    from ..web.uws import make_routes
    from ..tasks import TaskRegistry

    db = ctx.db
    if not db.exists():
        raise LrtError(f"database {db.name} does not exist on {db.server.url}")
    warn_outdated(db, ("lrt-web", "lrt-uws"), "lrt serve")
    tasks = TaskRegistry(a.tasks)
    web = web_context(ctx, WebContext)
    lists = [make_routes(tasks, max_wait=a.max_wait)]
    if not a.no_dashboard:
        from ..web.dashboard import routes as dashboard_routes

        lists.insert(0, dashboard_routes)
    app = create_app(web, lists, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1", a.bind])
    # one login for the dashboard and the UWS: every request's CouchDB credentials
    from ..web.uws import UwsService
    from ..web.uws.auth import BasicAuth

    checker = UwsService(web, tasks)
    app = BasicAuth(app, checker._session_user)
    host = f"[{a.bind}]" if ":" in a.bind else a.bind
    print(f"lrt serve: http://{host}:{a.port}/ (UWS: /uws/{{task}}, tasks {', '.join(tasks.names()) or 'none'} "
          f"from {tasks.folder}; database {db.name} on {db.server.url}; Ctrl-C stops)", flush=True)
    return serve_app(app, a, "lrt serve")


def cmd_provenance(ctx) -> int:
    try:
        import prov  # noqa: F401 - the prov extra
    except ImportError as exc:
        raise ServeError(f"provenance needs the prov extra: pip install 'lrt[prov]' ({exc.name} missing)")
    from ..provenance import serialize, set_document, token_document
    from ..tokens import Token

    a = ctx.args
    db = ctx.db
    if a.tokenset:
        rows = db.iter_view("lrt-web", "list", startkey=["ts", a.tokenset],
                            endkey=["ts", a.tokenset, {}], include_docs=True)
        docs = [r["doc"] for r in rows if r.get("doc")]
        if not docs:
            raise LrtError(f"no tokens of token set {a.tokenset!r}")
        doc = set_document(docs, db, name=a.tokenset)
    elif len(a.ids) == 1:
        doc = token_document(dict(Token.load(db, a.ids[0])), db)
    elif a.ids:
        doc = set_document([dict(Token.load(db, i)) for i in a.ids], db)
    else:
        raise ServeError("give token id(s) or --tokenset NAME")
    out = serialize(doc, a.format)
    sys.stdout.write(out if out.endswith("\n") else out + "\n")
    return 0
