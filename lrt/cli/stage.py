"""``lrt stage status|request|run|convert|lta``: tape staging from the admin side.

gfal2 is optional: every subcommand that needs it checks first and exits with
one line saying how to install it (``lrt.staging.gfal.require``); ``convert``
and ``lta`` work without it.  tqdm (progress bars) is imported lazily and only
here, never on the pilot path.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Dict, List

from ..errors import ConfigError, LrtError

if TYPE_CHECKING:
    from ..couch import Database


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stage", help="tape staging: file states, bring-online, the staging loop")
    ss = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def source(s: argparse.ArgumentParser) -> None:
        g = s.add_mutually_exclusive_group(required=True)
        g.add_argument("list", nargs="?", metavar="LIST", help="file list (one URL per line)")
        g.add_argument("--type", dest="token_type", help="the inputs of the tokens of this type")

    s = ss.add_parser("status", help="state of each file (ONLINE, NEARLINE, ...) and %% online")
    source(s)
    s.add_argument("--json", action="store_true", help="machine-readable, with per-file states")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_status)

    s = ss.add_parser("request", help="bulk asynchronous bring-online (pinned)")
    source(s)
    s.add_argument("--pin", type=int, default=86400, help="pin lifetime in seconds (default 1 day)")
    s.add_argument("--batch", type=int, default=1000, help="files per bulk request (default 1000)")
    s.add_argument("--wait", action="store_true", help="poll until every file is online or failed")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between polls with --wait")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_request)

    s = ss.add_parser("run", help="move staging tokens to todo as their inputs come online")
    s.add_argument("--type", dest="token_type", help="only tokens of this type")
    s.add_argument("--once", action="store_true", help="one pass, then exit (for cron)")
    s.add_argument("--interval", type=float, default=60.0, help="seconds between passes (default 60)")
    s.add_argument("--pin", type=int, default=86400, help="pin lifetime in seconds (default 1 day)")
    s.add_argument("--batch", type=int, default=1000, help="files per bulk request (default 1000)")
    s.set_defaults(func=cmd_run)

    s = ss.add_parser("convert", help="rewrite SURLs for another door (gsiftp, https, root, gfal, ...)")
    s.add_argument("list", metavar="LIST", help="file list of srm:// URLs")
    s.add_argument("--to", required=True, help="srm, gfal, gsiftp, https, root or download")
    s.add_argument("--sites", help="YAML file with more sites (see docs/staging.md)")
    s.set_defaults(func=cmd_convert)

    s = ss.add_parser("lta", help="the LOFAR LTA stager service (credentials: ~/.stagingrc)")
    ls = s.add_subparsers(dest="lta_action", metavar="CMD", required=True)
    x = ls.add_parser("stage", help="submit a staging request for a file list; prints its id")
    x.add_argument("list", metavar="LIST")
    x.set_defaults(func=cmd_lta)
    for name, helptext in (("status", "status of a request"), ("online", "SURLs already online"),
                           ("token", "the SRM request token"), ("reschedule", "reschedule a request"),
                           ("abort", "abort a request")):
        x = ls.add_parser(name, help=helptext)
        x.add_argument("id", type=int, metavar="ID")
        x.set_defaults(func=cmd_lta)
    x = ls.add_parser("progress", help="all your requests and their progress")
    x.set_defaults(func=cmd_lta)
    for x in ls.choices.values():
        x.add_argument("--url", dest="lta_url", help="stager endpoint (default: the LTA's)")
        x.add_argument("--json", action="store_true")


# ---------------------------------------------------------------------------------------


def _read_list(path: str) -> List[str]:
    from ..filelist import SrmList, SrmListError

    try:
        return SrmList.from_file(path).urls
    except SrmListError as exc:
        raise ConfigError(str(exc), path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file list: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise ConfigError("file list is not UTF-8 text", path=path) from None


def _urls(ctx: Any) -> List[str]:
    a = ctx.args
    if a.list:
        urls = _read_list(a.list)
    else:
        urls = _type_inputs(ctx.db, a.token_type)
    if not urls:
        raise LrtError("no files to look at" + (f" (no token of type {a.token_type!r} has inputs)"
                                                if not a.list else ""))
    return list(dict.fromkeys(urls))


def _type_inputs(db: "Database", token_type: str) -> List[str]:
    from ..design import MONITOR_DDOC
    from ..staging.dispatch import input_urls
    from ..states import State

    out: List[str] = []
    for st in State:
        for row in db.iter_view(MONITOR_DDOC, "tokens", startkey=[st.value, token_type],
                                endkey=[st.value, token_type, {}], include_docs=True):
            out.extend(input_urls(row.get("doc") or {}))
    return out


def _bar(total: int, desc: str, disable: bool) -> Any:
    """A tqdm bar on stderr when tqdm is installed and wanted; else a no-op."""
    if not disable:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="file", file=sys.stderr, disable=None)
        except ImportError:
            pass

    class _Null:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Null()


def cmd_status(ctx: Any) -> int:
    from ..staging import gfal as g

    g.require()
    urls = _urls(ctx)
    client = g.Gfal()
    bar = _bar(len(urls), "state", ctx.args.no_progress or ctx.args.json)
    try:
        states = client.states(urls, progress=bar.update)
    finally:
        bar.close()
    summary = g.summarize(states)
    summary["gfal2_calls"] = client.calls
    if ctx.args.json:
        summary["files"] = {u: {"state": s, "reason": r} for u, (s, r) in states.items()}
        ctx.out(json.dumps(summary, indent=1))
        return 0
    ctx.out(f"{summary['online']} of {summary['total']} file(s) online "
            f"({summary['percent_online']:.1f}%)")
    for state, n in summary["counts"].items():
        ctx.out(f"  {state:<20} {n}")
    errors = [(u, r) for u, (s, r) in states.items() if r]
    for u, r in errors[:10]:
        ctx.out(f"  ! {u}: {r}")
    if len(errors) > 10:
        ctx.out(f"  ... and {len(errors) - 10} more errors (--json lists all)")
    return 0


def cmd_request(ctx: Any) -> int:
    from ..staging import gfal as g

    g.require()
    a = ctx.args
    urls = _urls(ctx)
    client = g.Gfal(batch=a.batch)
    req = client.bring_online(urls, a.pin)
    out: Dict[str, Any] = {"files": len(urls), "pin": a.pin, "requests": req.to_json()["batches"],
                           "refused": req.errors}
    if a.wait and req.batches:
        bar = _bar(len(req.urls()), "online", a.no_progress or a.json)
        try:
            res = client.wait_online(req, interval=a.interval,
                                     progress=lambda r: bar.update(len(r.online) + len(r.failed)))
        finally:
            bar.close()
        out.update(online=len(res.online), failed=res.failed, pending=len(res.pending))
    out["gfal2_calls"] = client.calls
    if a.json:
        ctx.out(json.dumps(out, indent=1))
    else:
        ctx.out(f"requested bring-online of {len(urls) - len(req.errors)} file(s) in "
                f"{len(req.batches)} bulk request(s), pin {a.pin}s")
        for b in out["requests"]:
            ctx.out(f"  request {b['token']}: {len(b['urls'])} file(s)")
        for u, r in list(req.errors.items())[:20]:
            ctx.out(f"  refused {u}: {r}")
        if a.wait and req.batches:
            ctx.out(f"online: {out['online']}, failed: {len(out['failed'])}, still pending: {out['pending']}")
            for u, r in list(out["failed"].items())[:20]:
                ctx.out(f"  failed {u}: {r}")
    failed = bool(req.errors) or bool(out.get("failed"))
    return 1 if failed else 0


def cmd_run(ctx: Any) -> int:
    from ..staging import gfal as g
    from ..staging.dispatch import Stager

    g.require()
    a = ctx.args
    stager = Stager(ctx.db, g.Gfal(batch=a.batch), token_type=a.token_type, pin=a.pin)

    def report(r: Dict[str, Any]) -> None:
        ctx.out(f"staging pass: {r['tokens']} token(s): {r['todo']} -> todo, {r['error']} -> error, "
                f"{r['staging']} still staging; {r['requested']} file(s) requested, "
                f"{r['online_files']} online, {r['failed_files']} failed")

    stager.run(interval=a.interval, once=a.once, report=report)
    return 0


def cmd_convert(ctx: Any) -> int:
    from ..staging import sites

    reg = sites.Sites()
    if ctx.args.sites:
        sites.load_sites(ctx.args.sites, reg)
    urls = _read_list(ctx.args.list)
    for line in sites.convert_all(urls, ctx.args.to, reg):  # all validated before printing
        ctx.out(line)
    return 0


def cmd_lta(ctx: Any) -> int:
    from ..staging.lta import LtaStager

    a = ctx.args
    client = LtaStager.from_environment(url=a.lta_url)
    act = a.lta_action
    if act == "stage":
        result: Any = client.stage(_read_list(a.list))
    elif act == "status":
        result = client.status(a.id)
    elif act == "online":
        result = client.surls_online(a.id)
    elif act == "token":
        result = client.srm_token(a.id)
    elif act == "reschedule":
        result = client.reschedule(a.id)
    elif act == "abort":
        result = client.abort(a.id)
    else:
        result = client.progress()
    if a.json:
        ctx.out(json.dumps(result, indent=1, default=str))
    elif isinstance(result, list):
        for x in result:
            ctx.out(str(x))
    elif isinstance(result, dict):
        for k, v in sorted(result.items()):
            ctx.out(f"{k}: {v}")
    else:
        ctx.out(str(result))
    return 0
