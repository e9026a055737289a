"""``lrt pilot``, ``lrt run-local``, ``lrt reap``, ``lrt cancel``, ``lrt release``, ``lrt logs``.

``lrt pilot``'s flags are a stable interface: batch job scripts and
bench/compare_picas.py call it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional

from ..errors import ConfigError, LrtError


def _duration(text: str) -> float:
    """Seconds from ``HH:MM:SS``, ``D-HH:MM:SS``, ``MM:SS`` or plain seconds."""
    from ..batch import parse_duration

    try:
        return float(parse_duration(text))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _positive(text: str) -> float:
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def add_pilot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--type", dest="token_type", help="claim only tokens of this type (default: any)")
    p.add_argument("--max-tokens", type=int, help="exit after this many tokens")
    p.add_argument("--idle-exit", type=float, default=60.0, metavar="SECONDS",
                   help="exit after this long without claimable work (default 60)")
    p.add_argument("--walltime", type=_duration, metavar="HH:MM:SS",
                   help="this pilot's time limit (the batch job's end is also honoured)")
    p.add_argument("--lease", type=_positive, default=600.0, metavar="SECONDS",
                   help="lease length; renewed when half has passed (default 600)")
    p.add_argument("--reap-grace", type=float, default=30.0, metavar="SECONDS",
                   help="reap leases expired this long ago by the server clock (default 30)")
    p.add_argument("--workdir", type=Path, help="parent of per-token work dirs (default: a temp dir)")
    p.add_argument("--keep-workdirs", action="store_true", help="keep per-token work dirs")
    p.add_argument("--batch", type=int, default=100,
                   help="candidates (with their documents) read per queue window (default 100)")
    p.add_argument("--term-grace", type=float, default=5.0, metavar="SECONDS",
                   help="between SIGTERM and SIGKILL when stopping a payload (default 5)")
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS",
                   help="idle poll interval (default 5)")
    p.add_argument("--cancel-check", type=float, default=20.0, metavar="SECONDS",
                   help="look at a running token this often for a cancel or release request "
                        "(a conditional read; 0: only at lease renewals; default 20)")
    p.add_argument("--stats", type=Path, metavar="FILE", help="write counters as JSON here at exit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pilot", help="claim and run tokens until none are left (worker node)")
    add_pilot_options(p)
    p.set_defaults(func=cmd_pilot)

    p = sub.add_parser("run-local", help="run N pilots on this machine and wait for them")
    p.add_argument("config", nargs="?", help="token config: create its tokens first")
    p.add_argument("--pilots", type=int, default=2, help="number of pilot processes (default 2)")
    add_pilot_options(p)
    p.set_defaults(func=cmd_run_local, idle_exit=5.0)

    p = sub.add_parser("reap", help="return tokens whose pilot's lease expired; resolve conflicts")
    p.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                   help="only leases expired this long ago by the server clock (default 30)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be reaped/resolved")
    p.set_defaults(func=cmd_reap)

    p = sub.add_parser("cancel", help="cancel tokens (running ones are stopped by their pilot)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--type", dest="token_type", help="all tokens of this type")
    p.add_argument("--state", action="append",
                   help="with --type: only these states (default todo, waiting, staging, locked)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("release", help="stop running tokens and put them back to todo (not counted)")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("logs", help="print a token's payload log (stdout.log, else the kept tail)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--stderr", action="store_true", help="stderr.log instead of stdout.log")
    p.set_defaults(func=cmd_logs)


def _options(args: argparse.Namespace) -> Any:
    from ..pilot.pilot import PilotOptions

    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("--max-tokens must be at least 1")
    if args.cancel_check is not None and args.cancel_check < 0:
        raise ConfigError("--cancel-check must be 0 (off) or a number of seconds")
    return PilotOptions(token_type=args.token_type, max_tokens=args.max_tokens,
                        idle_exit=args.idle_exit, walltime=args.walltime, lease=args.lease,
                        reap_grace=args.reap_grace, workdir=args.workdir,
                        keep_workdirs=args.keep_workdirs, batch=args.batch,
                        term_grace=args.term_grace, poll=args.poll, stats_file=args.stats,
                        cancel_check=args.cancel_check or None)


def cmd_pilot(ctx: Any) -> int:
    from ..pilot.pilot import Pilot, pilot_database

    opts = _options(ctx.args)
    db = pilot_database(ctx.settings)
    pilot = Pilot(db, opts)
    rc = pilot.run()
    s = pilot.stats
    print(f"lrt pilot {pilot.id}: {s.tokens} token(s) recorded, {s.fenced} given up, "
          f"exit: {pilot.exit_reason}", file=sys.stderr)
    return rc


def _pilot_argv(args: argparse.Namespace, stats: Optional[Path]) -> List[str]:
    argv = [sys.executable, "-m", "lrt.cli", "pilot", "--idle-exit", str(args.idle_exit),
            "--lease", str(args.lease), "--reap-grace", str(args.reap_grace),
            "--batch", str(args.batch), "--term-grace", str(args.term_grace), "--poll", str(args.poll),
            "--cancel-check", str(args.cancel_check)]
    if args.token_type:
        argv += ["--type", args.token_type]
    if args.max_tokens is not None:
        argv += ["--max-tokens", str(args.max_tokens)]
    if args.walltime is not None:
        argv += ["--walltime", str(args.walltime)]
    if args.workdir is not None:
        argv += ["--workdir", str(args.workdir)]
    if args.keep_workdirs:
        argv.append("--keep-workdirs")
    if stats is not None:
        argv += ["--stats", str(stats)]
    return argv


def cmd_run_local(ctx: Any) -> int:
    from ..pilot.local import run_local

    a = ctx.args
    if a.pilots < 1:
        raise ConfigError("--pilots must be at least 1")
    db = ctx.db
    from .. import design
    from ..couch import AuthError

    try:
        design.install(db)  # idempotent: one GET per design document when up to date
    except AuthError:
        pass  # not a database admin: the design documents must already be there
    if a.config:
        from ..tokens import TokenSet

        res = TokenSet.from_config(a.config).create(db)
        ctx.out(f"tokens from {a.config}: {res.created} created, {res.present} already there, "
                f"{res.failed} failed")
        if res.failed:
            raise LrtError(f"{res.failed} token(s) could not be created: "
                           + "; ".join(f"{k}: {v}" for k, v in list(res.errors.items())[:3]))
    summary = run_local(ctx.settings, a.pilots, lambda stats: _pilot_argv(a, stats))
    ctx.out(summary.text())
    return 0 if summary.ok else 1


def cmd_reap(ctx: Any) -> int:
    from ..protocol.client import TokenClient
    from ..protocol.conflicts import resolve_conflicts
    from ..protocol.reaping import reap_expired

    a = ctx.args
    client = TokenClient(ctx.db, pilot="lrt-reap")
    reaped = reap_expired(client, a.grace, dry_run=a.dry_run, limit=100000)
    for r in reaped:
        what = r.get("state") or f"not reaped ({r.get('reason')})"
        ctx.out(f"{r['id']}: lease of {r.get('pilot')} expired at {r['expires']:.0f} -> {what}")
    resolved = resolve_conflicts(ctx.db, dry_run=a.dry_run, limit=100000)
    for r in resolved:
        ctx.out(f"{r['id']}: conflict {'would be ' if a.dry_run else ''}resolved: kept {r['kept']} "
                f"({r['state']}), deleted {len(r['deleted'])} leaf/leaves")
    from ..deps.reset import has_dependencies

    released = []
    if not a.dry_run and has_dependencies(ctx.db):  # finish a release a crash interrupted
        from ..deps.release import sweep

        released = [(i, o) for i, o in sweep(ctx.db, limit=None) if o.value in ("released", "blocked")]
        for doc_id, o in released:
            ctx.out(f"{doc_id}: dependencies decided: {o.value}")
    ctx.out(f"{len(reaped)} expired lease(s), {len(resolved)} conflicted token(s)"
            + (f", {len(released)} waiting token(s) released or blocked" if released else "")
            + (" (dry run: nothing changed)" if a.dry_run else ""))
    return 0


def cmd_cancel(ctx: Any) -> int:
    from ..design import MONITOR_DDOC
    from ..protocol.client import TokenClient

    a = ctx.args
    if not a.ids and not a.token_type:
        raise ConfigError("give token ids or --type")
    if a.state and not a.token_type:
        raise ConfigError("--state needs --type")
    ids = list(a.ids)
    if a.token_type:
        states = a.state or ["todo", "waiting", "staging", "locked"]
        for st in states:
            for row in ctx.db.iter_view(MONITOR_DDOC, "tokens", startkey=[st, a.token_type],
                                        endkey=[st, a.token_type, {}]):
                ids.append(row["id"])
    client = TokenClient(ctx.db, pilot="lrt-cancel")
    counts = {"cancelled": 0, "requested": 0, "refused": 0}
    for doc_id in ids:
        ans = client.cancel(doc_id, by="lrt cancel")
        if ans.ok and ans.body.get("cancel_requested"):
            counts["requested"] += 1
            ctx.out(f"{doc_id}: running; its pilot will stop it (within its --cancel-check, 20 s by default)")
        elif ans.ok:
            counts["cancelled"] += 1
            ctx.out(f"{doc_id}: cancelled")
        else:
            counts["refused"] += 1
            st = ans.body.get("state")
            ctx.out(f"{doc_id}: not cancelled ({ans.reason}{', state ' + st if st else ''})")
    from ..deps.reset import after_cancel, has_dependencies

    if counts["cancelled"] and has_dependencies(ctx.db):  # their on: ok children are blocked
        after_cancel(ctx.db, ids)
    ctx.out(f"{counts['cancelled']} cancelled, {counts['requested']} running (stop requested), "
            f"{counts['refused']} not cancellable")
    return 0 if counts["refused"] == 0 or a.token_type else 1


def cmd_release(ctx: Any) -> int:
    from ..protocol.client import TokenClient

    client = TokenClient(ctx.db, pilot="lrt-release")
    asked = refused = 0
    for doc_id in ctx.args.ids:
        ans = client.requeue(doc_id, by="lrt release")
        if ans.ok:
            asked += 1
            ctx.out(f"{doc_id}: running; its pilot will stop it and put it back to todo")
        else:
            refused += 1
            st = ans.body.get("state")
            ctx.out(f"{doc_id}: not released ({ans.reason}{', state ' + st if st else ''})")
    ctx.out(f"{asked} release(s) requested, {refused} not running")
    return 0 if refused == 0 else 1


def _earlier_attempt(doc: Any) -> Optional[str]:
    """A note when the logs on a token are not from its current state's attempt
    (a reset or retried token keeps its last attempt's logs until a new one ends)."""
    state = doc.get("state")
    if state in ("done", "error", "failed", "cancelled"):
        return None
    hist = [h for h in doc.get("history") or [] if h.get("end") != "update"]
    last = hist[-1] if hist else {}
    ended = f", which ended {last.get('state')}" if last.get("state") else ""
    return (f"lrt: note: token {doc['_id']} is {state} now; these logs are from attempt "
            f"#{last.get('attempt', '?')}{ended}")


def cmd_logs(ctx: Any) -> int:
    from ..couch import NotFound

    a = ctx.args
    name = "stderr.log" if a.stderr else "stdout.log"
    other = "stdout.log" if a.stderr else "stderr.log"
    doc = ctx.db.get_or_none(a.id)
    if doc is None:
        raise LrtError(f"no token {a.id!r}")
    atts = doc.get("_attachments") or {}
    note = _earlier_attempt(doc) if (name in atts or (doc.get("log_tail") or {})) else None
    if note:
        print(note, file=sys.stderr)
    if name in atts:
        try:
            out = sys.stdout.buffer
            ctx.db.get_attachment(a.id, name, dest=out)
            out.flush()
            return 0
        except NotFound:
            pass
    tail = (doc.get("log_tail") or {}).get("stderr" if a.stderr else "stdout")
    if tail:
        sys.stdout.write(tail)
        sys.stdout.flush()
        return 0
    hint = ""
    if other in atts or (doc.get("log_tail") or {}).get(other.split(".")[0]):
        hint = f"; it has a {other}: lrt logs {'' if a.stderr else '--stderr '}{a.id}"
    print(f"lrt: token {a.id} has no {name} (state {doc.get('state')}){hint}", file=sys.stderr)
    return 1
