"""``lrt create | status | list | show | reset | delete``: tokens from the admin's side.

Only ``lrt create`` creates anything (the database and lrt's design documents,
when missing); every other command reads or changes existing tokens and says
clearly when the database or the views are not there.  ``--json`` output
shapes are documented in docs/tokens.md and kept stable.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Any, Callable, Dict, List, Optional

from ..errors import LrtError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("create", help="create tokens from a YAML token config (idempotent)")
    p.add_argument("config", help="token config (YAML, see docs/configs.md)")
    p.add_argument("--files", metavar="LIST", help="file list to use instead of the config's files.list")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N",
                   help="tokens per _bulk_docs request (default 1000)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, count and compare; write nothing (not even the database)")
    p.add_argument("--update", action="store_true",
                   help="rewrite the definition (command, payload, ...) of existing tokens that differ "
                        "from the config, if they are todo, waiting or staging; history keeps a note")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="batches written at once (default: 4 on Apache CouchDB, 1 on the local server)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("status", help="token counts per type and state")
    p.add_argument("--type", help="only this token type")
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true",
                   help="a live table (counts, rates, ETA), redrawn until Ctrl-C")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="seconds between redraws with --watch (default 5)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", help="list tokens (id, state, type, attempts, error code, pilot)")
    p.add_argument("--state", help="only this state (default: all)")
    p.add_argument("--type", help="only this token type")
    p.add_argument("--limit", type=int, metavar="N", help="at most N tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one token: fields, attempts, attachments")
    p.add_argument("id", help="token id")
    p.add_argument("--json", action="store_true", help="the raw document")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("reset", help="move tokens of a state back to todo (fresh attempt budget; history kept)")
    p.add_argument("--state", required=True, help="state to reset: error, failed, done, cancelled, ...")
    p.add_argument("--type", help="only this token type")
    p.add_argument("--dry-run", action="store_true", help="count only")
    p.add_argument("--force", action="store_true", help="also reset locked tokens (their pilots lose them)")
    p.add_argument("--cascade", action="store_true",
                   help="also reset the children (and descendants) that already ran to waiting")
    p.add_argument("--keep-children", action="store_true",
                   help="leave children that already ran as they are")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser("delete", help="delete the tokens of a type (optionally of one state)")
    p.add_argument("--type", required=True, help="token type")
    p.add_argument("--state", help="only this state")
    p.add_argument("--yes", action="store_true", help="really delete (required)")
    p.add_argument("--dry-run", action="store_true", help="count only")
    p.add_argument("--force", action="store_true", help="also delete locked tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_delete)


class UsageError(LrtError):
    """A command used in a way that would do harm or nothing."""

    exit_code = 2


# ---------------------------------------------------------------------------
# create


def _progress_bar(total: int) -> "tuple[Optional[Callable[[int, int], None]], Callable[[], None]]":
    """A tqdm bar on a terminal; nothing otherwise (or when tqdm is not installed)."""
    if not sys.stderr.isatty():
        return None, lambda: None
    try:
        from tqdm import tqdm  # admin-side extra, imported only here
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total, unit="tok", file=sys.stderr, leave=False)
    last = [0]

    def update(done: int, _total: int) -> None:
        bar.update(done - last[0])
        last[0] = done

    return update, bar.close


def _differences(res, update: bool, dry_run: bool) -> List[str]:
    """What to say about existing tokens whose definition is not the config's."""
    if not res.differ:
        return []
    ids = ", ".join(res.differ_ids) + (", ..." if res.differ > len(res.differ_ids) else "")
    lines = [f"{res.differ} existing token(s) differ from the config in "
             f"{', '.join(res.differ_fields)}: {ids}"]
    kept = ", ".join(f"{n} {s}" for s, n in sorted(res.kept.items()))
    if update or dry_run:
        verb = "would be updated" if dry_run else "updated"
        msg = f"  {res.updated} {verb} (--update rewrites todo, waiting and staging tokens)"
        if kept:
            msg += (f"; not updated: {kept} (running or finished: `lrt reset --state STATE` first, "
                    "then create --update again)")
        lines.append(msg)
        if res.changed_meanwhile:
            lines.append(f"  {res.changed_meanwhile} changed meanwhile and were left alone: run again")
    else:
        lines.append("  they were left as they are; `lrt create --update CONFIG` rewrites those "
                     "that have not started")
    return lines


def cmd_create(ctx) -> int:
    a = ctx.args
    if a.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if a.concurrency is not None and a.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    total: List[Optional[int]] = [None, None]  # tokens in the set; 1 once writing began
    try:
        return _create(ctx, total)
    except KeyboardInterrupt as exc:  # before the first batch (config, database, design)
        if total[1] is not None:
            raise  # later: create reported what it wrote, or it is over already
        from ..tokens import CreateInterrupted, CreateResult

        raise CreateInterrupted(CreateResult(), 0, total[0], getattr(exc, "signum", None)) from None


def _create(ctx, total: List[Optional[int]]) -> int:
    from ..tokens import TokenSet

    a = ctx.args
    ts = TokenSet.from_config(a.config, files=a.files)
    n = total[0] = ts.validate()  # before anything touches the server
    db = ctx.db
    if a.dry_run:
        exists = db.exists()
        res = ts.dry_run(db if exists else None, batch_size=a.batch_size)
        if a.json:
            ctx.out(json.dumps({"db": db.name, "tokenset": ts.name, "dry_run": True, "tokens": n,
                                **res.to_json()}, sort_keys=True))
        else:
            where = "" if exists else f" (database {db.name} does not exist yet)"
            ctx.out(f"{n} tokens valid in {ts.name}: would create {res.would_create}, "
                    f"{res.present} already present{where}")
            for line in _differences(res, a.update, True):
                ctx.out(line)
        return 0
    from .. import design

    design.ensure(db)
    progress, close = _progress_bar(n)
    total[1] = 1
    try:
        res = ts.create(db, batch_size=a.batch_size, progress=progress, concurrency=a.concurrency,
                        update=a.update)
    finally:
        close()
    if a.json:
        ctx.out(json.dumps({"db": db.name, "tokenset": ts.name, "dry_run": False, "tokens": n,
                            **res.to_json()}, sort_keys=True))
    else:
        ctx.out(f"{res.created} created, {res.present} already present"
                + (f", {res.failed} failed" if res.failed else "") + f" (tokenset {ts.name}, db {db.name})")
        for line in _differences(res, a.update, False):
            ctx.out(line)
        for doc_id, why in res.errors.items():
            ctx.out(f"  failed: {doc_id}: {why}")
    return 1 if res.failed else 0


# ---------------------------------------------------------------------------
# status / list / show


def format_status(st: Dict[str, Any], type: Optional[str] = None) -> str:
    note = ""
    if st.get("conflicted"):
        note = (f"\n{st['conflicted']} document(s) with conflicting revisions: pilots resolve them, "
                "or run `lrt reap`")
    if not st["total"]:
        return f"no tokens{' of type ' + type if type else ''} in database {st['db']}" + note
    cols = list(st["states"])
    header = ["type"] + cols + ["total"]
    rows: List[List[str]] = []
    for t, by_state in st["types"].items():
        rows.append([t] + [str(by_state.get(c, 0)) for c in cols] + [str(sum(by_state.values()))])
    rows.append(["total"] + [str(st["states"][c]) for c in cols] + [str(st["total"])])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(widths[0]) if i == 0 else v.rjust(widths[i]) for i, v in enumerate(r))
    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows[:-1]]
    lines += [fmt(["-" * w for w in widths]), fmt(rows[-1])]
    return "\n".join(lines) + note


def format_pilots(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return ""
    n = lambda v: "?" if v is None else str(v)
    lines = ["", "pilots (recent launches)",
             "system    batch id      type          submitted  queued  running  finished  failed"]
    for r in rows:
        lines.append(f"{str(r.get('system')):<9} {str(r.get('batch_id') or '-'):<13} "
                     f"{str(r.get('type') or 'any'):<13} {r.get('submitted', 0):>9}  "
                     f"{n(r.get('queued')):>6}  {n(r.get('running')):>7}  {n(r.get('finished')):>8}  "
                     f"{n(r.get('failed')):>6}  {r.get('flag') or ''}".rstrip())
    return "\n".join(lines)


def cmd_status(ctx) -> int:
    if ctx.args.watch:
        return _watch(ctx)
    from ..queries.pilots import pilot_summary
    from ..queries.status import status_json

    st = status_json(ctx.db, ctx.args.type)
    st["pilots"] = pilot_summary(ctx.db, ctx.args.type)
    if ctx.args.json:
        ctx.out(json.dumps(st, sort_keys=False))
    else:
        ctx.out(format_status(st, ctx.args.type) + format_pilots(st["pilots"]))
    return 0


def format_rates(st: Dict[str, Any], rates: Any) -> str:
    """One line: finished per minute (done / failed), and the ETA at the recent rate."""
    from ..queries.rates import format_eta, remaining

    left = remaining(st["states"])
    done, failed = rates.totals(15)
    return (f"last 15 min: {done} done, {failed} failed, "
            f"{rates.per_minute(15):.1f}/min; {left} to go, ETA {format_eta(rates.eta(left, 15))}")


def _watch(ctx) -> int:
    """``lrt status --watch``: redraw until Ctrl-C (which ends it with exit code 0)."""
    import time

    from ..queries.rates import finished_per_minute
    from ..queries.status import status_json

    a = ctx.args
    if a.interval <= 0:
        raise UsageError("--interval must be positive")
    if a.json:
        raise UsageError("--watch draws a table; use --json without --watch for one snapshot")
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            st = status_json(ctx.db, a.type)
            rates = finished_per_minute(ctx.db, 16, a.type)
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S UTC")
            ctx.out(f"{clear}lrt status --watch  db {st['db']}  {stamp}  (every {a.interval:g}s, Ctrl-C ends)\n"
                    + format_status(st, a.type) + "\n" + format_rates(st, rates))
            time.sleep(a.interval)
    except KeyboardInterrupt:
        ctx.out("")
        return 0


def cmd_list(ctx) -> int:
    from ..queries.tokens import TokenFilter, iter_rows

    a = ctx.args
    rows = iter_rows(ctx.db, TokenFilter(state=a.state, type=a.type), limit=a.limit)
    if a.json:
        ctx.out(json.dumps([{"id": r["id"], "state": r["state"], "type": r["type"], "attempts": r["attempts"],
                             "error": r["error"], "pilot": r["pilot"]} for r in rows]))
        return 0
    header = ["id", "state", "type", "attempts", "error", "pilot"]
    cell = lambda r: [r["id"], r["state"], r["type"], str(r["attempts"] or 0),
                      "-" if r["error"] is None else str(r["error"]), r["pilot"] or "-"]
    first: List[List[str]] = []
    for r in rows:  # column widths from the first 1000 rows; the rest stream
        first.append(cell(r))
        if len(first) >= 1000:
            break
    widths = [max([len(h)] + [len(c[i]) for c in first]) for i, h in enumerate(header)]
    fmt = lambda c: "  ".join(v.rjust(widths[i]) if i == 3 else v.ljust(widths[i])
                              for i, v in enumerate(c)).rstrip()
    ctx.out(fmt(header))
    for c in first:
        ctx.out(fmt(c))
    for r in rows:
        ctx.out(fmt(cell(r)))
    return 0


def _ts(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _job(job: Any) -> str:
    if not isinstance(job, dict):
        return "-"
    return f"{job.get('system', '?')} {job.get('id', '?')}"


def format_timings(t: Dict[str, Any]) -> str:
    """Claimed/started/finished as times of day (server clock), durations in seconds."""
    parts = []
    for k, v in t.items():
        if k in ("claimed", "started", "finished") and isinstance(v, (int, float)):
            parts.append(f"{k} {_dt.datetime.fromtimestamp(v, _dt.timezone.utc).strftime('%H:%M:%S.%f')[:-3]}")
        elif k in ("wall", "cpu") and isinstance(v, (int, float)):
            parts.append(f"{k} {v:.3f}s")
        elif k == "max_rss_kb" and isinstance(v, (int, float)):
            parts.append(f"max RSS {v / 1024:.1f} MiB")
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def format_token(doc: Dict[str, Any]) -> str:
    """A readable summary of one token (``lrt show``)."""
    out: List[str] = []
    add = out.append
    add(f"token     {doc['_id']}  (rev {doc.get('_rev', '-')})")
    add(f"type      {doc.get('type')}   tokenset {doc.get('tokenset')}")
    add(f"state     {doc.get('state')}   priority {doc.get('priority', 0)}   "
        f"attempts {doc.get('attempts', 0)}/{doc.get('max_attempts', '-')}")
    add(f"created   {_ts(doc.get('created'))}   updated {_ts(doc.get('updated'))}")
    if doc.get("not_before"):
        add(f"not before {_ts(doc['not_before'])}")
    add(f"command   {json.dumps(doc.get('command'))}")
    if doc.get("payload"):
        add("payload   " + ", ".join(f"{k}={json.dumps(v)}" for k, v in doc["payload"].items()))
    inputs = doc.get("inputs") or []
    if inputs:
        add(f"inputs    {len(inputs)} file(s)")
        for i in inputs[:5]:
            add(f"          {i.get('url')}" + (f"  {i['checksum']}" if i.get("checksum") else ""))
        if len(inputs) > 5:
            add(f"          ... {len(inputs) - 5} more")
    if doc.get("outputs"):
        add(f"outputs   {doc['outputs'].get('dest')}  {doc['outputs'].get('globs')}")
    lease = doc.get("lease")
    if lease:
        add(f"lease     pilot {lease.get('pilot')} expires {_ts(lease.get('expires'))}")
    if doc.get("host") or doc.get("pilot"):
        add(f"pilot     {doc.get('pilot')} on {doc.get('host')}  batch job {_job(doc.get('batch_job'))}")
    if doc.get("exit_code") is not None:
        add(f"exit code {doc['exit_code']}")
    err = doc.get("error")
    if err:
        add(f"error     {err.get('code')} {err.get('name')} ({err.get('class')}): {err.get('message')}")
    if doc.get("timings"):
        add("timings   " + format_timings(doc["timings"]))
    hist = doc.get("history") or []
    if hist:
        add("attempts:")
        for h in hist:
            if h.get("end") == "update":  # `lrt create --update`, not an attempt
                add(f"  {_ts(h.get('at'))}  definition updated ({', '.join(h.get('fields') or [])}) "
                    f"while {h.get('state')}, by {h.get('by')}")
                continue
            e = h.get("error") or {}
            add(f"  #{h.get('attempt')}  {h.get('end') or '-'} -> {h.get('state')}  "
                f"exit {h.get('exit_code')}  {e.get('name') or '-'}  pilot {h.get('pilot')} on "
                f"{h.get('host')}  job {_job(h.get('batch_job'))}  claimed {_ts(h.get('claimed'))}  "
                f"finished {_ts(h.get('finished'))}"
                + (f"  ({h['late_request']} requested too late to stop it)" if h.get("late_request") else ""))
    atts = doc.get("_attachments") or {}
    if atts:
        add("attachments: " + ", ".join(f"{k} ({v.get('length', '?')} bytes)" for k, v in atts.items()))
    tail = doc.get("log_tail") or {}
    for stream in ("stdout", "stderr"):
        if tail.get(stream):
            add(f"{stream} (tail):")
            out.extend("  " + line for line in str(tail[stream]).splitlines()[-10:])
    return "\n".join(out)


def cmd_show(ctx) -> int:
    from ..tokens import Token

    from ..deps.reset import dependency_lines

    doc = Token.load(ctx.db, ctx.args.id)
    if ctx.args.json:
        ctx.out(json.dumps(doc, indent=2, sort_keys=True))
    else:
        ctx.out("\n".join([format_token(doc)] + dependency_lines(ctx.db, doc)))
    return 0


# ---------------------------------------------------------------------------
# reset / delete


def _report(ctx, verb: str, res, dry_run: bool) -> int:
    """``verb`` is the infinitive ("reset", "delete")."""
    if ctx.args.json:
        ctx.out(json.dumps({"dry_run": dry_run, **res.to_json()}, sort_keys=True))
    else:
        what = f"would be {verb}" if dry_run else verb
        msg = f"{res.matched} matched, {res.changed} {what}"
        if res.conflicts:
            msg += f", {res.conflicts} skipped (changed meanwhile)"
        if res.failed:
            msg += f", {res.failed} failed"
        ctx.out(msg)
        for doc_id, why in res.errors.items():
            ctx.out(f"  failed: {doc_id}: {why}")
    return 1 if res.failed else 0


def cmd_reset(ctx) -> int:
    from ..tokens import TokenList

    a = ctx.args
    from ..deps.reset import reset

    res = reset(TokenList(ctx.db, a.state, a.type), dry_run=a.dry_run, force=a.force,
                cascade=a.cascade, keep_children=a.keep_children)
    return _report(ctx, "reset", res, a.dry_run)


def cmd_delete(ctx) -> int:
    from ..tokens import TokenList

    a = ctx.args
    if not a.yes and not a.dry_run:
        raise UsageError(f"deleting tokens cannot be undone: add --yes to delete the tokens of type "
                         f"{a.type}{' in state ' + a.state if a.state else ''} (or --dry-run to count)")
    res = TokenList(ctx.db, a.state, a.type).delete(dry_run=a.dry_run, force=a.force)
    return _report(ctx, "deleted", res, a.dry_run)
