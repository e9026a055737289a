"""``lrt errors``: failures grouped by error code and message prefix (the
terminal view of the dashboard's Failures page; same read model,
:mod:`lrt.queries.failures`)."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from typing import Any, Dict, List


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("errors", help="failures grouped by error code and message (counts, first/last seen)")
    p.add_argument("--type", help="only this token type")
    p.add_argument("--samples", type=int, default=3, metavar="N", help="sample token ids per group (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_errors)


def _t(t: Any) -> str:
    if not isinstance(t, (int, float)) or not t:
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def format_errors(doc: Dict[str, Any]) -> str:
    if not doc["codes"]:
        return f"no failed tokens{' of type ' + doc['type'] if doc['type'] else ''} in database {doc['db']}"
    lines: List[str] = []
    for c in doc["codes"]:
        name = c["name"] or "unknown code"
        lines.append(f"{c['code']} {name} ({c['class'] or '?'}): {c['count']} token(s), "
                     f"first {_t(c['first'])}, last {_t(c['last'])}")
        for g in c["groups"]:
            states = ", ".join(f"{s} {n}" for s, n in g["states"].items())
            lines.append(f"  {g['count']:>6}  {g['prefix'] or '(no message)'}  [{states}]")
            if g.get("sample"):
                lines.append(f"          e.g. {' '.join(g['sample'])}")
    lines.append(f"total {doc['total']} (reset a group's tokens with `lrt reset --state error` "
                 "or from the dashboard)")
    return "\n".join(lines)


def cmd_errors(ctx) -> int:
    from ..queries.failures import errors_json

    doc = errors_json(ctx.db, ctx.args.type, samples=max(0, ctx.args.samples))
    ctx.out(json.dumps(doc) if ctx.args.json else format_errors(doc))
    return 0
