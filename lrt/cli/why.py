"""``lrt why ID`` / ``lrt why --type T``: what holds a token, or a type's tokens, back.

A thin view over :mod:`lrt.queries.why` (docs/why.md).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, List

from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("why", help="what holds a token (or the tokens of a type) back",
                       description="Say why a token is not running: staging, backoff, no pilot of its type, "
                                   "walltime, attempts used up, cancel, conflict, or the pilot that runs it.")
    p.add_argument("id", nargs="?", metavar="ID", help="a token id")
    p.add_argument("--type", dest="token_type", metavar="T",
                   help="a summary for all tokens of this type: counts per reason")
    p.add_argument("--sample", type=int, default=1000, metavar="N",
                   help="with --type: claim-queue rows read to split todo tokens by reason (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable (reasons as their enum values)")
    p.set_defaults(func=cmd_why)


def _pilots_line(p: Any) -> str:
    parts: List[str] = []
    for r in p.launches:
        parts.append(f"{r.get('system')} {r.get('batch_id') or r.get('launch_id')}: {r.get('queued') or 0} queued, "
                     f"{r.get('running') or 0} running"
                     + (f", walltime {r['walltime']:.0f} s" if r.get("walltime") else ""))
    for r in p.unknown:
        parts.append(f"{r.get('system')} {r.get('batch_id') or r.get('launch_id')}: state unknown from here")
    if p.leases:
        parts.append(f"{p.leases}{'+' if p.leases_sampled else ''} token(s) of the type running")
    return "pilots: " + ("; ".join(parts) if parts else "none seen")


def cmd_why(ctx: Any) -> int:
    from ..queries import why

    a = ctx.args
    if bool(a.id) == bool(a.token_type):
        raise ConfigError("give a token ID or --type T (not both)")
    if a.id:
        w = why.explain(ctx.db, a.id)
        if a.json:
            ctx.out(json.dumps(w.as_json(), indent=1))
            return 0
        head = "nothing holds it" if w.primary in (why.Reason.DONE,) else (
            "running" if w.primary == why.Reason.CLAIMED else "held back by")
        ctx.out(f"{w.id} ({w.state}, type {w.type}): {head}")
        for hold in w.holds:
            ctx.out(f"  {hold.reason.value:<18} {hold.message}")
            if hold.command:
                ctx.out(f"  {'':<18} -> {hold.command}")
        if w.pilots is not None:
            ctx.out("  " + _pilots_line(w.pilots))
        return 0
    s = why.summarize(ctx.db, a.token_type, sample=a.sample)
    if a.json:
        ctx.out(json.dumps(s.as_json(), indent=1))
        return 0
    if not s.total:
        ctx.out(f"no tokens of type {a.token_type} in database {ctx.db.name}")
        return 0
    ctx.out(f"type {s.token_type}: {s.total} token(s)")
    ctx.out(f"  {'reason':<18} {'tokens':>8}")
    hints = {h.reason.value: h for h in s.holds}
    for reason, n in s.reasons.items():
        h = hints.get(reason)
        ctx.out(f"  {reason:<18} {n:>8}" + (f"   -> {h.command}" if h and h.command else ""))
    t = s.sampled.get("todo")
    if t and t.get("not_sampled"):
        ctx.out(f"  (todo split from the first {t['read']} of {t['of']} in claim order; "
                f"{t['not_sampled']} not sampled: --sample N reads more)")
    ctx.out("  " + _pilots_line(s.pilots))
    return 0
