"""``lrt server start|stop|status`` and ``lrt views install``.

Imports of lrt.server (requests) and lrt.design happen in the commands, so that
registering them costs nothing for every other command.
"""
from __future__ import annotations

import argparse
import json



def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="manage the embedded local CouchDB-API server")
    ss = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = ss.add_parser("start", help="install (first time) and start it; print its URL")
    s.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the last one, else 5985; a free one when it is taken)")
    s.set_defaults(func=cmd_start)
    s = ss.add_parser("stop", help="stop it")
    s.set_defaults(func=cmd_stop)
    s = ss.add_parser("status", help="is it running, and where")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    v = sub.add_parser("views", help="design documents (views and update handlers)")
    vs = v.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = vs.add_parser("install", help="create the database if needed; install or upgrade the design documents")
    s.set_defaults(func=cmd_views_install)


def cmd_start(ctx) -> int:
    from ..server import LocalServer

    srv = LocalServer.start(port=ctx.args.port, strict_port=ctx.args.port is not None)
    ctx.out(f"local server running at {srv.url} (pid {srv.pid}, data in {srv.base}/data)")
    ctx.out(f"admin user {srv.user!r}; password in {srv.base}/state.json (mode 0600)")
    return 0


def cmd_stop(ctx) -> int:
    from ..server import LocalServer

    srv = LocalServer.load()
    if srv is None or not srv.stop():
        ctx.out("local server was not running")
        return 0
    ctx.out(f"local server stopped (pid {srv.pid})")
    return 0


def cmd_status(ctx) -> int:
    from ..server import running

    srv = running()
    if ctx.args.json:
        ctx.out(json.dumps({"running": srv is not None, "url": srv.url if srv else None,
                            "pid": srv.pid if srv else None}))
    elif srv is None:
        ctx.out("local server is not running (start it with: lrt server start)")
    else:
        ctx.out(f"local server running at {srv.url} (pid {srv.pid})")
    return 0 if srv is not None else 1


def cmd_views_install(ctx) -> int:
    from .. import design

    db = ctx.db
    for name, what in design.ensure(db).items():
        ctx.out(f"created database {db.name}" if name == "database" else f"_design/{name}: {what}")
    return 0
