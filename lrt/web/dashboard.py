"""The dashboard's pages: Overview, Failures, Tokens, Token, Pilots, and the
failure-group actions.

Every page is a bookmarkable GET whose query string carries its filters.  A
page refreshes itself with htmx: every ``refresh`` seconds it asks its own URL
again with ``HX-Request: true`` and gets only its live fragment back.  Every
read goes through the shared :class:`~lrt.web.cache.QueryCache`, keyed by the
query, so a refresh costs a constant number of CouchDB requests per TTL
whatever the number of open tabs; counts come from reduce views only, lists
from view rows whose value holds the columns (no ``include_docs``, no
``skip``, no ``_all_docs``).
"""
from __future__ import annotations

import datetime as _dt
import json
import urllib.parse
from typing import Any, Dict, List, Optional

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import errorcodes
from ..couch import AuthError, NotFound
from ..errors import LrtError
from ..queries import deps, failures, pilots, rates, status, tokens
from ..states import State
from . import actions
from .app import WebContext, error_page

#: minutes of history in the Overview plot
PLOT_MINUTES = 180
#: tokens per page of the Tokens list
PAGE_SIZE = 100
MAX_PAGE = 500
#: colours of the states (bars, badges); CSS classes s-<state> in lrt.css
STATE_ORDER = [s.value for s in State]


def _opt(request: Request, name: str) -> Optional[str]:
    v = request.query_params.get(name)
    return v if v not in (None, "") else None


def _code(value: Optional[str]) -> Any:
    """An error code from the query string: a number, or ``none`` for tokens without one."""
    if value is None:
        return None
    if value == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise LrtError(f"not an error code: {value!r}") from None


def fmt_time(t: Any) -> str:
    if not isinstance(t, (int, float)) or not t:
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def fmt_age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h {s % 3600 // 60}m"


def fmt_dur(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds:.1f}s" if seconds < 600 else fmt_age(seconds)


def bar(counts: Dict[str, int]) -> List[Dict[str, Any]]:
    """Segments of a progress bar (SVG rect x/width in per mille) in state order."""
    total = sum(counts.values()) or 1
    out: List[Dict[str, Any]] = []
    x: float = 0
    for s in STATE_ORDER + sorted(set(counts) - set(STATE_ORDER)):
        n = counts.get(s, 0)
        if not n:
            continue
        w = n * 1000 / total
        out.append({"state": s, "n": n, "x": round(x, 1), "w": round(w, 1)})
        x += w
    return out


def routes(web: WebContext) -> List[BaseRoute]:
    tpl = web.templates
    tpl.filters.update(time=fmt_time, age=fmt_age, dur=fmt_dur, bar=bar)
    tpl.globals.update(codes=errorcodes.BY_CODE, states=STATE_ORDER)

    def page(request: Request, name: str, **ctx: Any) -> Response:
        live = request.headers.get("HX-Request") == "true"
        return web.render(request, f"{name}_live.html" if live else f"{name}.html", page=name, **ctx)

    def db_now() -> float:
        return web.cached(("now",), lambda: web.db.server.now())

    def status_of(ttype: Optional[str]) -> Dict[str, Any]:
        return web.cached(("status", ttype), lambda: status.status_json(web.db, ttype))

    def tokensets(ttype: Optional[str]) -> Dict[str, Any]:
        return web.cached(("tokensets", ttype), lambda: status.tokenset_counts(web.db, ttype))

    def launches(ttype: Optional[str]) -> List[Dict[str, Any]]:
        return web.cached(("launches", ttype), lambda: pilots.pilot_summary(web.db, ttype))

    def groups(ttype: Optional[str]) -> List[failures.CodeGroup]:
        return web.cached(("errors", ttype), lambda: failures.error_groups(web.db, ttype))

    def doc(doc_id: str) -> Dict[str, Any]:
        from ..tokens import Token

        return web.cached(("doc", doc_id), lambda: dict(Token.load(web.db, doc_id)))

    # -- pages ----------------------------------------------------------------------
    def overview(request: Request) -> Response:
        ttype = _opt(request, "type")
        st, ts, r, staging, lc, la, edges = web.gather(
            lambda: status_of(ttype), lambda: tokensets(ttype),
            lambda: web.cached(("rates", ttype), lambda: rates.finished_per_minute(web.db, PLOT_MINUTES, ttype)),
            lambda: web.cached(("staging", ttype), lambda: tokens.page(
                web.db, tokens.TokenFilter(state="staging", type=ttype), 10)),
            lambda: web.cached(("lease_counts",), lambda: pilots.lease_counts(web.db)),
            lambda: launches(ttype),
            lambda: web.cached(("setgraph",), lambda: deps.set_edges(web.db)))
        left = rates.remaining(st["states"])
        set_states: Dict[str, Dict[str, int]] = {}
        for name, by_type in ts.items():
            merged = set_states.setdefault(name, {})
            for by in by_type.values():
                for s, n in by.items():
                    merged[s] = merged.get(s, 0) + n
        done_last, failed_last = r.totals(60)
        return page(request, "overview", type=ttype, st=st, tokensets=ts, rates=r,
                    remaining=left, eta=rates.format_eta(r.eta(left)), per_minute=r.per_minute(),
                    staging=staging, launches=la, lease_counts=lc, plot=r.plot(), edges=edges,
                    set_states=set_states, plot_hours=PLOT_MINUTES // 60,
                    done_last=done_last, failed_last=failed_last)

    def failures_page(request: Request) -> Response:
        ttype = _opt(request, "type")
        gs = groups(ttype)
        sel: Optional[Dict[str, Any]] = None
        if "code" in request.query_params:
            code = _code(_opt(request, "code"))
            prefix = request.query_params.get("prefix")
            for c in gs:
                if c.code == code:
                    if prefix is None:
                        sel = {"code": c, "group": None}
                    else:
                        g = next((g for g in c.groups if g.prefix == prefix), None)
                        if g is not None:
                            sel = {"code": c, "group": g}
                    break
            if sel is None:
                sel = {"code": None, "group": None, "gone": True}
            else:
                key = ("samples", code, prefix, ttype)
                sel["samples"] = web.cached(key, lambda: list(failures.group_tokens(
                    web.db, code, prefix, ttype, limit=20)))
                sel["doc"] = doc(sel["samples"][0]["id"]) if sel["samples"] else None
                sel["code_value"] = "none" if code is None else code
                sel["prefix"] = prefix
        return page(request, "failures", type=ttype, groups=gs, sel=sel,
                    total=sum(c.count for c in gs))

    def tokens_page(request: Request) -> Response:
        q = request.query_params
        try:
            limit = min(MAX_PAGE, max(1, int(q.get("limit") or PAGE_SIZE)))
        except ValueError:
            raise LrtError("limit must be a number") from None
        flt = tokens.TokenFilter(state=_opt(request, "state"), type=_opt(request, "type"),
                                 tokenset=_opt(request, "tokenset"),
                                 code=_code(_opt(request, "code")) if _opt(request, "code") else None)
        cursor = _opt(request, "cursor")
        key = ("tokens", flt.state, flt.type, flt.tokenset, flt.code, cursor, limit)
        pg, st, ts, gs = web.gather(lambda: web.cached(key, lambda: tokens.page(web.db, flt, limit, cursor)),
                                    lambda: status_of(None), lambda: tokensets(None), lambda: groups(None))
        base = {k: v for k, v in (("state", flt.state), ("type", flt.type), ("tokenset", flt.tokenset),
                                  ("code", None if flt.code is None else str(flt.code)),
                                  ("limit", str(limit) if limit != PAGE_SIZE else None)) if v is not None}
        return page(request, "tokens", flt=flt, pg=pg, base=base, cursor=cursor,
                    types=sorted(st["types"]), tokensets=sorted(ts), error_codes=[c.code for c in gs])

    def token_page(request: Request) -> Response:
        doc_id = _opt(request, "id")
        if doc_id is None:
            return error_page(web, request, 400, "which token? (/token?id=...)")
        try:
            d = doc(doc_id)
        except LrtError as exc:
            return error_page(web, request, 404, str(exc))
        fields = {k: v for k, v in sorted(d.items())
                  if k not in ("history", "inputs", "log_tail", "_attachments", "output")}
        now = db_now()
        lease = d.get("lease") or {}
        return page(request, "token", d=d, fields=fields, now=now, dumps=_dumps,
                    heartbeat_age=(now - lease["renewed"]) if isinstance(lease.get("renewed"), (int, float))
                    else None, timeline=_timeline(d))

    def attachment(request: Request) -> Response:
        doc_id, name = _opt(request, "id"), _opt(request, "name")
        if doc_id is None or name is None:
            return error_page(web, request, 400, "which attachment? (?id=...&name=...)")
        try:
            ctype, length, chunks = web.db.open_attachment(doc_id, name)
        except NotFound:
            return error_page(web, request, 404, f"no attachment {name!r} on token {doc_id!r}")
        base = ctype.split(";")[0].strip().lower()
        textual = base.startswith("text/") or base in ("application/json", "application/x-yaml")
        headers = {"Content-Security-Policy": "sandbox; default-src 'none'"}
        if length is not None:
            headers["Content-Length"] = str(length)
        if textual:  # shown as text, never as HTML, whatever the token says
            media = "text/plain; charset=utf-8"
        else:
            media = "application/octet-stream"
            safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:100] or "attachment"
            headers["Content-Disposition"] = f'attachment; filename="{safe}"'
        return StreamingResponse(chunks, media_type=media, headers=headers)

    def pilots_page(request: Request) -> Response:
        cursor = _opt(request, "cursor")
        start = tokens.decode_cursor(cursor)[1] if cursor else None
        lc, lp, la = web.gather(lambda: web.cached(("lease_counts",), lambda: pilots.lease_counts(web.db)),
                                lambda: web.cached(("leases", cursor), lambda: pilots.leases(web.db, 200, start)),
                                lambda: launches(None))
        nxt = tokens.encode_cursor(0, lp["next"]) if lp["next"] is not None else None
        return page(request, "pilots", lease_counts=lc, leases=lp, next=nxt, cursor=cursor, launches=la)

    def status_api(request: Request) -> Response:
        """``lrt status --json`` (without pilots) over HTTP, from the same cache."""
        return JSONResponse(status_of(_opt(request, "type")))

    # -- actions --------------------------------------------------------------------
    def _group_args(src: Any) -> Dict[str, Any]:
        action = src.get("action") or ""
        actions.check_action(action)
        if not src.get("code"):
            raise actions.ActionRefused("an action needs an error code group")
        return {"action": action, "code": _code(src.get("code")), "prefix": src.get("prefix"),
                "type": src.get("type") or None}

    def confirm(request: Request) -> Response:
        if not web.allow_actions:
            return error_page(web, request, 403, "this dashboard is read-only "
                              "(start it with `lrt dashboard --allow-actions` to reset or cancel tokens)")
        g = _group_args(request.query_params)
        rows = list(failures.group_tokens(web.db, g["code"], g["prefix"], g["type"]))
        return web.render(request, "confirm.html", page="failures", g=g, rows=len(rows),
                          plan=actions.plan(rows, g["action"]), message=None)

    async def run_action(request: Request) -> Response:
        if not web.allow_actions:
            return error_page(web, request, 403, "this dashboard is read-only: actions are refused "
                              "(start it with --allow-actions)")
        origin = request.headers.get("origin")
        if origin and origin != "null" and origin != f"{request.url.scheme}://{request.url.netloc}":
            return error_page(web, request, 403, "cross-origin request refused")
        form = await _form(request)
        if not web.csrf_ok(request, str(form.get("csrf") or "")):
            return error_page(web, request, 403, "missing or wrong CSRF token: reload the page and confirm again")
        g = _group_args(form)
        user, password = str(form.get("user") or ""), str(form.get("password") or "")
        make_user_db = web.make_user_db
        if not user or not password or make_user_db is None:
            return error_page(web, request, 403, "confirm with your CouchDB user and password")

        def act() -> Any:
            udb = make_user_db(user, password)
            try:
                who = (udb.server.session_info().get("userCtx") or {}).get("name")
                if who != user:
                    raise AuthError(f"CouchDB did not authenticate user {user!r}", status=401)
                return actions.run(udb, g["action"], g["code"], g["prefix"], g["type"], user)
            finally:
                udb.server.close()

        try:
            res = await run_in_threadpool(act)
        except AuthError as exc:
            return error_page(web, request, 403, f"not authorised: {exc}")
        finally:
            password = ""
        web.cache.clear()
        return web.render(request, "done.html", page="failures", g=g, res=res)

    return [
        Route("/", overview, name="overview"),
        Route("/failures", failures_page, name="failures"),
        Route("/tokens", tokens_page, name="tokens"),
        Route("/token", token_page, name="token"),
        Route("/token/attachment", attachment, name="attachment"),
        Route("/pilots", pilots_page, name="pilots"),
        Route("/api/status", status_api, name="status_api"),
        Route("/actions/confirm", confirm, methods=["GET"], name="confirm"),
        Route("/actions/run", run_action, methods=["POST"], name="run_action"),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
    ]


async def _form(request: Request, max_bytes: int = 65536) -> Dict[str, str]:
    """An urlencoded form body (the only kind the pages send), at most ``max_bytes``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise actions.ActionRefused("expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise actions.ActionRefused("form too large")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace"),
                                                        keep_blank_values=True).items()}


def _dumps(v: Any) -> str:
    return json.dumps(v, indent=1, sort_keys=True, default=str)


def _timeline(d: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The token's life as dated events: created, each attempt's claim and end, the
    last transition (reset, cancel) and the current lease, oldest first."""
    ev: List[Dict[str, Any]] = []
    if d.get("created"):
        ev.append({"t": d["created"], "what": "created", "state": None, "detail": f"tokenset {d.get('tokenset')}"})
    for h in d.get("history") or []:
        if h.get("claimed"):
            ev.append({"t": h["claimed"], "what": f"claimed (attempt {h.get('attempt')})", "state": "locked",
                       "detail": f"pilot {h.get('pilot')} on {h.get('host')}"})
        err = h.get("error") or {}
        ev.append({"t": h.get("finished"), "what": f"{h.get('end')} -> {h.get('state')}", "state": h.get("state"),
                   "detail": f"exit {h.get('exit_code')}" + (f", {err.get('code')} {err.get('name')}" if err else "")})
    lt = d.get("last_transition")
    if isinstance(lt, dict) and lt.get("at"):
        ev.append({"t": lt["at"], "what": f"{lt.get('why')}: {lt.get('from')} -> {lt.get('to')}",
                   "state": lt.get("to"), "detail": ""})
    lease = d.get("lease")
    if isinstance(lease, dict) and lease.get("claimed"):
        ev.append({"t": lease["claimed"], "what": f"claimed (attempt {d.get('attempts')}), running",
                   "state": "locked", "detail": f"pilot {lease.get('pilot')}, lease renewed "
                                                f"{fmt_time(lease.get('renewed'))}"})
    ev.sort(key=lambda e: e["t"] if isinstance(e["t"], (int, float)) else 0)
    return ev
