"""IVOA UWS 1.1 at ``/uws/{task}``: registered tasks as asynchronous jobs (docs/uws.md).

A job is a token made from a task (:mod:`lrt.tasks`); its phase comes from
the token's state (:mod:`lrt.web.uws.phases`).  Every request carries HTTP
basic credentials, checked against CouchDB's ``/_session`` for this request
and never kept: jobs belong to that CouchDB user, who lists and changes only
their own (a server admin, ``_admin``, sees all).  The writes themselves are
made with the service's database client, after the owner check.

``WAIT`` blocks on the database's change feed, filtered to the one document
(:meth:`lrt.couch.Database.wait_for_change`), never by re-reading the token.
Every POST answers 303 to the resource, as the Recommendation asks.
"""
from __future__ import annotations

import datetime as _dt
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...couch import AuthError, Conflict, CouchConnectionError, Database, NotFound
from ...errors import LrtError
from ...states import State, apply
from ...tasks import Task, TaskRegistry, make_token, publish_sandbox
from ...tasks.definition import ParameterError, TaskNotFound
from .phases import ACTIVE, FINISHED, Phase, doc_phase, phase_of

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
ET.register_namespace("uws", UWS_NS)
ET.register_namespace("xlink", XLINK_NS)
ET.register_namespace("xsi", XSI_NS)

#: the longest a WAIT blocks (seconds; WAIT=-1 means this)
MAX_WAIT = 60.0
#: UWS control parameters (case-insensitive); every other name is a task parameter
CONTROL = ("PHASE", "ACTION", "RUNID", "EXECUTIONDURATION", "DESTRUCTION", "WAIT")
XML = "application/xml"


class UwsError(LrtError):
    """A refused UWS request; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class User:
    name: str
    admin: bool


# -- time ------------------------------------------------------------------------------------
def iso(t: Optional[float]) -> Optional[str]:
    if t is None:
        return None
    d = _dt.datetime.fromtimestamp(float(t), tz=_dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """An ISO 8601 instant (``...Z``, an offset, or UTC if neither) as Unix seconds."""
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise UwsError(400, f"not an ISO 8601 date and time: {text!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


# -- the XML -----------------------------------------------------------------------------------
def _q(name: str) -> str:
    return f"{{{UWS_NS}}}{name}"


def _sub(parent: ET.Element, name: str, text: Any = None, nil: bool = False,
         **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, _q(name), attrs)
    if nil:
        el.set(f"{{{XSI_NS}}}nil", "true")
    elif text is not None:
        el.text = str(text)
    return el


def _xml(root: ET.Element) -> Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
    return Response(body, media_type=XML)


def start_end(doc: Mapping[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    """When the job's (last) attempt started and ended, if it did."""
    lease = doc.get("lease") or {}
    if doc.get("state") == State.LOCKED.value:
        return lease.get("claimed") or (doc.get("timings") or {}).get("started"), None
    t = doc.get("timings") or {}
    if t.get("started") is not None:
        return t.get("started"), t.get("finished")
    hist = doc.get("history") or []
    if hist and isinstance(hist[-1], dict):
        h = hist[-1]
        return h.get("started") or h.get("claimed"), h.get("ended") or h.get("finished")
    return None, None


def result_refs(doc: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The job's published outputs as UWS results: id (file name), URL, size."""
    out, seen = [], set()
    for o in doc.get("output") or []:
        url = o.get("url") if isinstance(o, dict) else None
        if not url:
            continue
        rid = url.rstrip("/").rsplit("/", 1)[-1] or url
        n, base = 2, rid
        while rid in seen:
            rid, n = f"{base}.{n}", n + 1
        seen.add(rid)
        out.append({"id": rid, "url": url, "size": o.get("size"), "checksum": o.get("checksum")})
    return out


def parameters_el(parent: Optional[ET.Element], doc: Mapping[str, Any],
                  task: Optional[Task]) -> ET.Element:
    el = ET.Element(_q("parameters")) if parent is None else _sub(parent, "parameters")
    for name, value in (doc.get("task_params") or {}).items():
        p = task.parameters.get(name) if task else None
        by_ref = p is not None and p.type == "file"
        values = value if isinstance(value, list) else [value]
        for v in values:
            text = ("true" if v else "false") if isinstance(v, bool) else str(v)
            attrs = {"id": name}
            if by_ref:
                attrs["byReference"] = "true"
            _sub(el, "parameter", text, **attrs)
    return el


def results_el(parent: Optional[ET.Element], doc: Mapping[str, Any]) -> ET.Element:
    el = ET.Element(_q("results")) if parent is None else _sub(parent, "results")
    for r in result_refs(doc):
        attrs = {"id": r["id"], f"{{{XLINK_NS}}}href": r["url"], f"{{{XLINK_NS}}}type": "simple"}
        if isinstance(r.get("size"), int):
            attrs["size"] = str(r["size"])
        _sub(el, "result", **attrs)
    return el


def job_el(doc: Mapping[str, Any], task: Optional[Task], now: float,
           quote: Optional[float]) -> ET.Element:
    root = ET.Element(_q("job"), {"version": "1.1"})
    _sub(root, "jobId", doc["_id"])
    if doc.get("run_id"):
        _sub(root, "runId", doc["run_id"])
    owner = doc.get("owner")
    _sub(root, "ownerId", owner, nil=owner is None)
    phase = doc_phase(doc, now)
    _sub(root, "phase", phase.value)
    _sub(root, "quote", iso(quote), nil=quote is None)
    _sub(root, "creationTime", iso(doc.get("created")))
    start, end = start_end(doc)
    _sub(root, "startTime", iso(start), nil=start is None)
    _sub(root, "endTime", iso(end), nil=end is None or phase not in FINISHED)
    _sub(root, "executionDuration", int(doc.get("timeout") or 0))
    dest = doc.get("destruction")
    _sub(root, "destruction", iso(dest), nil=dest is None)
    parameters_el(root, doc, task)
    results_el(root, doc)
    err = doc.get("error")
    if phase == Phase.ERROR and isinstance(err, dict):
        # a system error (node, network, storage) may go away on a retry; a payload's may not
        es = _sub(root, "errorSummary", type="transient" if err.get("class") == "system"
                  else "fatal", hasDetail="true")
        _sub(es, "message", f"{err.get('name') or 'ERROR'} ({err.get('code')}): "
                            f"{err.get('message') or ''}")
    info = _sub(root, "jobInfo")
    lrt_el = ET.SubElement(info, "lrt", {"state": str(doc.get("state")),
                                         "attempts": str(doc.get("attempts") or 0)})
    tref = doc.get("task") or {}
    lrt_el.set("task", str(tref.get("name")))
    lrt_el.set("version", str(tref.get("version")))
    if doc.get("exit_code") is not None:
        lrt_el.set("exit_code", str(doc["exit_code"]))
    return root


# -- the service ----------------------------------------------------------------------------------
class UwsService:
    """What the routes share: the task registry, the user check and the job operations."""

    def __init__(self, web: Any, tasks: TaskRegistry, max_wait: float = MAX_WAIT,
                 check_user: Optional[Callable[[str, str], User]] = None):
        self.web = web
        self.tasks = tasks
        self.max_wait = max_wait
        self._check_user = check_user or self._session_user

    @property
    def db(self) -> Database:
        return self.web.db

    # -- users: basic credentials checked against /_session, for this request only --------------
    def _session_user(self, name: str, password: str) -> User:
        ctx = self.db.server.check_credentials(name, password)
        if ctx.get("name") != name:
            raise UwsError(401, "authentication failed")
        return User(name=name, admin="_admin" in (ctx.get("roles") or []))

    def user(self, request: Request) -> User:
        """The request's user: found by :class:`~lrt.web.uws.auth.BasicAuth` (``lrt serve``),
        else checked here (an app without that middleware)."""
        from .auth import SCOPE_KEY, parse_basic

        known = request.scope.get(SCOPE_KEY)
        if isinstance(known, User):
            return known
        cred = parse_basic(request.headers.get("authorization", ""))
        if cred is None:
            raise UwsError(401, "authentication required (HTTP basic, your CouchDB user)")
        try:
            return self._check_user(*cred)
        except AuthError:
            raise UwsError(401, "authentication failed") from None

    # -- jobs ----------------------------------------------------------------------------------
    def task(self, name: str) -> Task:
        try:
            return self.tasks.get(name)
        except TaskNotFound as exc:
            raise UwsError(404, str(exc)) from None

    def load(self, task: Task, job: str, user: User) -> Dict[str, Any]:
        doc = self.db.get_or_none(job)
        if (doc is None or doc.get("kind") != "token" or doc.get("type") != task.name
                or not doc.get("task")):
            raise UwsError(404, f"no job {job!r} in /uws/{task.name}")
        if not user.admin and doc.get("owner") != user.name:
            raise UwsError(403, f"job {job!r} belongs to another user")
        return doc

    def modify(self, task: Task, job: str, user: User,
               change: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """Re-read, change, write with ``_rev``; a 409 (a pilot moved the token) re-decides."""
        for _ in range(10):
            doc = self.load(task, job, user)
            new = change(doc)
            if new is None:
                return doc
            try:
                self.db.put(new)
                return new
            except Conflict:
                continue
        raise UwsError(503, f"job {job!r} keeps changing; try again")

    def quote(self, doc: Mapping[str, Any], now: float) -> Optional[float]:
        """When the job is expected to finish: its expected duration after the jobs queued
        before it (counted as if one pilot served the task), or its end when finished."""
        exp = doc.get("expected_duration")
        phase = doc_phase(doc, now)
        start, end = start_end(doc)
        if phase in FINISHED:
            return end
        if not exp:
            return None
        if phase == Phase.EXECUTING and start:
            return max(now, start + exp)
        rows = self.db.view("lrt", "tokens", startkey=[State.TODO.value, doc.get("type")],
                            endkey=[State.TODO.value, doc.get("type"), {}], reduce=True,
                            group_level=0).get("rows") or []
        ahead = int(rows[0]["value"]) if rows else 0
        return now + exp * (ahead + 1)

    def job_list(self, task: Task, user: User, phases: List[str], after: Optional[float],
                 last: Optional[int]) -> List[Dict[str, Any]]:
        if user.admin:
            start, end = ["a", task.name, after or 0], ["a", task.name, {}]
        else:
            start, end = ["o", task.name, user.name, after or 0], ["o", task.name, user.name, {}]
        now = time.time()
        want = {p.upper() for p in phases}
        rows = []
        for row in self.db.iter_view("lrt-uws", "jobs", startkey=start, endkey=end):
            v = row["value"]
            # creation times are shown to the millisecond: compare at that precision
            if after is not None and not int((v.get("c") or 0) * 1000) > int(round(after * 1000)):
                continue
            ph = phase_of(v.get("s"), v.get("x"), now)
            if want:
                if ph.value not in want:
                    continue
            elif ph == Phase.ARCHIVED:
                continue
            rows.append({"id": row["id"], "phase": ph, "created": v.get("c"), "owner": v.get("o"),
                         "run_id": v.get("r")})
        if last is not None:
            rows = sorted(rows, key=lambda r: (r["created"] or 0, r["id"]), reverse=True)[:last]
        return rows

    def create(self, task: Task, user: User, form: Dict[str, Any]) -> str:
        ctl = {k: v for k, v in form.items() if k in CONTROL}
        params = {k: v for k, v in form.items() if k not in CONTROL}
        phase = _one(ctl.get("PHASE"))
        if phase not in (None, "RUN"):
            raise UwsError(400, f"PHASE={phase} on creation: only RUN is allowed")
        ed = _one(ctl.get("EXECUTIONDURATION"))
        dest = _one(ctl.get("DESTRUCTION"))
        kw: Dict[str, Any] = dict(text=True, owner=user.name, run=phase == "RUN",
                                  execution_duration=_duration(ed) if ed is not None else None,
                                  destruction=parse_iso(dest) if dest else None)
        try:
            make_token(task, params, **kw)  # every value checked before any write
        except ParameterError as exc:
            raise UwsError(400, str(exc)) from None
        sha = publish_sandbox(self.db, task)
        doc = make_token(task, params, sandbox_sha256=sha, **kw)
        run_id = _one(ctl.get("RUNID"))
        if run_id:
            doc["run_id"] = run_id[:200]
        self.db.put(doc)
        return doc["_id"]

    def run(self, task: Task, job: str, user: User) -> None:
        def change(doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            ph = doc_phase(doc, time.time())
            if ph == Phase.PENDING:
                dst = State.STAGING if doc.get("needs_staging") else State.TODO
                return apply(doc, dst, reason="run (UWS PHASE=RUN)")
            if ph in FINISHED:
                raise UwsError(400, f"job {job} is {ph.value}: it cannot run again")
            return None  # queued or executing: already running

        self.modify(task, job, user, change)

    def abort(self, task: Task, job: str, user: User) -> None:
        doc = self.load(task, job, user)
        if doc_phase(doc, time.time()) in FINISHED:
            return
        self.db.update_handler("lrt-claim", "cancel", job, body={"by": f"{user.name} (UWS)"},
                               ok=(409,))

    def delete(self, task: Task, job: str, user: User) -> None:
        """Remove the job; a running one is aborted first and removed once its pilot let go."""
        for _ in range(10):
            doc = self.load(task, job, user)
            if doc.get("state") == State.LOCKED.value:
                seq = self.db.update_seq()
                self.abort(task, job, user)
                deadline = time.monotonic() + 30.0
                while doc.get("state") == State.LOCKED.value and time.monotonic() < deadline:
                    new = self.db.wait_for_change([job], seq, deadline - time.monotonic())
                    if new is None:
                        break
                    seq = new
                    doc = self.load(task, job, user)
                if doc.get("state") == State.LOCKED.value:
                    return  # cancel requested; the pilot records it ABORTED, delete again then
            try:
                self.db.delete_doc(job, doc["_rev"])
                return
            except Conflict:
                continue
            except NotFound:
                return

    def set_duration(self, task: Task, job: str, user: User, value: Any) -> None:
        seconds = _duration(value)

        def change(doc: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            if doc_phase(doc, time.time()) not in (Phase.PENDING, Phase.QUEUED):
                raise UwsError(400, "executionduration can change only before the job executes")
            doc["timeout"] = float(seconds) if seconds else None
            doc["updated"] = time.time()
            return doc

        self.modify(task, job, user, change)

    def set_destruction(self, task: Task, job: str, user: User, value: Any) -> None:
        t = parse_iso(str(value))

        def change(doc: Dict[str, Any]) -> Dict[str, Any]:
            if doc.get("state") == State.LOCKED.value:
                # the pilot owns a locked token; a write now would race its handler calls
                raise UwsError(400, "destruction can change while the job is not executing")
            doc["destruction"] = t
            return doc

        self.modify(task, job, user, change)

    def set_parameters(self, task: Task, job: str, user: User, params: Dict[str, Any]) -> None:
        def change(doc: Dict[str, Any]) -> Dict[str, Any]:
            if doc.get("state") != State.PENDING.value:
                raise UwsError(400, "parameters can change only while the job is PENDING")
            merged = dict(doc.get("task_params") or {})
            merged.update(params)
            try:
                new = make_token(task, merged, text=True, owner=doc.get("owner"), run=False,
                                 job_id=doc["_id"], now=doc.get("created"),
                                 sandbox_sha256=(doc.get("sandbox") or {}).get("sha256"),
                                 destruction=doc.get("destruction"))
            except ParameterError as exc:
                raise UwsError(400, str(exc)) from None
            for k in ("payload", "inputs", "task_params", "needs_staging"):
                doc[k] = new[k]
            doc["updated"] = time.time()
            return doc

        self.modify(task, job, user, change)

    def wait(self, task: Task, job: str, user: User, wait: float,
             phase: Optional[str]) -> Dict[str, Any]:
        """The job, after blocking while it stays in its (active) phase, at most ``wait`` s."""
        seq = self.db.update_seq()  # before the read: no change can fall in between
        doc = self.load(task, job, user)
        first = doc_phase(doc, time.time())
        if wait <= 0 or first not in ACTIVE or (phase and phase.upper() != first.value):
            return doc
        deadline = time.monotonic() + min(wait, self.max_wait)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return doc
            new = self.db.wait_for_change([job], seq, left)
            if new is None:
                return doc
            seq = new
            doc = self.load(task, job, user)
            if doc_phase(doc, time.time()) != first:
                return doc


def _one(v: Any) -> Optional[str]:
    if isinstance(v, list):
        return v[-1] if v else None
    return v


def _duration(v: Any) -> int:
    try:
        n = int(str(_one(v)).strip())
    except ValueError:
        raise UwsError(400, f"EXECUTIONDURATION must be a whole number of seconds, not {v!r}") from None
    if n < 0:
        raise UwsError(400, "EXECUTIONDURATION must be >= 0 (0: unlimited)")
    return n


async def read_form(request: Request, task: Optional[Task] = None) -> Dict[str, Any]:
    """Query and form parameters, UWS control names upper-cased and task parameter names
    matched case-insensitively; a repeated name gives a list."""
    pairs: List[Tuple[str, str]] = list(request.query_params.multi_items())
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST":
        if ctype == "multipart/form-data":
            try:
                form = await request.form()
            except (AssertionError, ImportError):  # Starlette without python-multipart
                raise UwsError(415, "multipart forms need python-multipart on the server; "
                                    "send application/x-www-form-urlencoded") from None
            pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        else:
            body = (await request.body()).decode("utf-8", "replace")
            pairs += urllib.parse.parse_qsl(body, keep_blank_values=True)
    names = {n.lower(): n for n in (task.parameters if task else {})}
    out: Dict[str, Any] = {}
    for k, v in pairs:
        key = k.upper() if k.upper() in CONTROL else names.get(k.lower(), k)
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [v]
        else:
            out[key] = v
    return out


# -- routes --------------------------------------------------------------------------------------
def make_routes(tasks: TaskRegistry, max_wait: float = MAX_WAIT,
                check_user: Optional[Callable[[str, str], User]] = None
                ) -> Callable[[Any], List[BaseRoute]]:
    """The route list for :func:`lrt.web.app.create_app` serving ``tasks`` under ``/uws``."""

    def routes(web: Any) -> List[BaseRoute]:
        svc = UwsService(web, tasks, max_wait=max_wait, check_user=check_user)
        web.uws = svc

        def guarded(fn: Callable[..., Any]) -> Callable[[Request], Any]:
            async def endpoint(request: Request) -> Response:
                try:
                    user = await run_in_threadpool(svc.user, request)
                    return await fn(request, user)
                except UwsError as exc:
                    headers = {"WWW-Authenticate": 'Basic realm="lrt UWS"'} if exc.status == 401 else None
                    return PlainTextResponse(str(exc) + "\n", status_code=exc.status, headers=headers)
                except AuthError:
                    return PlainTextResponse("the service's database access was refused\n", 503)
                except CouchConnectionError:
                    return PlainTextResponse("the database is unreachable\n", 503)
            return endpoint

        def ids(request: Request) -> Tuple[Task, str]:
            task = svc.task(request.path_params["task"])
            return task, request.path_params.get("job", "")

        def job_url(request: Request, task: Task, job: str = "") -> str:
            base = str(request.base_url).rstrip("/") + f"/uws/{urllib.parse.quote(task.name)}"
            return base + (f"/{urllib.parse.quote(job, safe='')}" if job else "")

        def see_other(url: str) -> Response:
            return RedirectResponse(url, status_code=303)

        async def jobs(request: Request, user: User) -> Response:
            task, _ = ids(request)
            if request.method == "POST":
                form = await read_form(request, task)
                jid = await run_in_threadpool(svc.create, task, user, form)
                return see_other(job_url(request, task, jid))
            phases = [p.upper() for p in request.query_params.getlist("PHASE")]
            bad = [p for p in phases if p not in Phase.__members__]
            if bad:
                raise UwsError(400, f"unknown PHASE {bad[0]!r}")
            after = request.query_params.get("AFTER")
            last = request.query_params.get("LAST")
            try:
                n_last = int(last) if last is not None else None
            except ValueError:
                raise UwsError(400, f"LAST must be a positive integer, not {last!r}") from None
            if n_last is not None and n_last < 1:
                raise UwsError(400, "LAST must be a positive integer")
            rows = await run_in_threadpool(svc.job_list, task, user, phases,
                                           parse_iso(after) if after else None, n_last)
            root = ET.Element(_q("jobs"), {"version": "1.1"})
            for r in rows:
                link: Dict[str, Any] = {f"{{{XLINK_NS}}}href": job_url(request, task, r["id"]),
                                        f"{{{XLINK_NS}}}type": "simple"}
                ref = _sub(root, "jobref", id=r["id"], **link)
                _sub(ref, "phase", r["phase"].value)
                if r["run_id"]:
                    _sub(ref, "runId", r["run_id"])
                _sub(ref, "ownerId", r["owner"], nil=r["owner"] is None)
                _sub(ref, "creationTime", iso(r["created"]))
            return _xml(root)

        async def job(request: Request, user: User) -> Response:
            task, jid = ids(request)
            if request.method == "DELETE":
                await run_in_threadpool(svc.delete, task, jid, user)
                return see_other(job_url(request, task))
            if request.method == "POST":
                form = await read_form(request, task)
                action = _one(form.pop("ACTION", None))
                if action is not None:
                    if action.upper() != "DELETE":
                        raise UwsError(400, f"ACTION={action}: only DELETE is known")
                    await run_in_threadpool(svc.delete, task, jid, user)
                    return see_other(job_url(request, task))
                phase = _one(form.pop("PHASE", None))
                params = {k: v for k, v in form.items() if k not in CONTROL}
                if params:
                    await run_in_threadpool(svc.set_parameters, task, jid, user, params)
                if "EXECUTIONDURATION" in form:
                    await run_in_threadpool(svc.set_duration, task, jid, user, form["EXECUTIONDURATION"])
                if "DESTRUCTION" in form:
                    await run_in_threadpool(svc.set_destruction, task, jid, user, _one(form["DESTRUCTION"]))
                if phase is not None:
                    await run_phase(task, jid, user, phase)
                return see_other(job_url(request, task, jid))
            wait_s = request.query_params.get("WAIT")
            wait = 0.0
            if wait_s is not None:
                try:
                    wait = float(wait_s)
                except ValueError:
                    raise UwsError(400, f"WAIT must be a number of seconds, not {wait_s!r}") from None
                wait = svc.max_wait if wait < 0 else wait
            doc = await run_in_threadpool(svc.wait, task, jid, user, wait,
                                          request.query_params.get("PHASE"))
            now = time.time()
            q = await run_in_threadpool(svc.quote, doc, now)
            return _xml(job_el(doc, task, now, q))

        async def run_phase(task: Task, jid: str, user: User, phase: str) -> None:
            p = phase.upper()
            if p == "RUN":
                await run_in_threadpool(svc.run, task, jid, user)
            elif p == "ABORT":
                await run_in_threadpool(svc.abort, task, jid, user)
            else:
                raise UwsError(400, f"PHASE={phase}: only RUN and ABORT are known")

        async def phase_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            if request.method == "POST":
                form = await read_form(request)
                p = _one(form.get("PHASE"))
                if p is None:
                    raise UwsError(400, "PHASE=RUN or PHASE=ABORT expected")
                await run_phase(task, jid, user, p)
                return see_other(job_url(request, task, jid))
            doc = await run_in_threadpool(svc.load, task, jid, user)
            return PlainTextResponse(doc_phase(doc, time.time()).value)

        async def duration_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            if request.method == "POST":
                form = await read_form(request)
                if "EXECUTIONDURATION" not in form:
                    raise UwsError(400, "EXECUTIONDURATION=seconds expected")
                await run_in_threadpool(svc.set_duration, task, jid, user, form["EXECUTIONDURATION"])
                return see_other(job_url(request, task, jid))
            doc = await run_in_threadpool(svc.load, task, jid, user)
            return PlainTextResponse(str(int(doc.get("timeout") or 0)))

        async def destruction_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            if request.method == "POST":
                form = await read_form(request)
                if not _one(form.get("DESTRUCTION")):
                    raise UwsError(400, "DESTRUCTION=ISO 8601 date and time expected")
                await run_in_threadpool(svc.set_destruction, task, jid, user, _one(form["DESTRUCTION"]))
                return see_other(job_url(request, task, jid))
            doc = await run_in_threadpool(svc.load, task, jid, user)
            return PlainTextResponse(iso(doc.get("destruction")) or "")

        async def quote_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            doc = await run_in_threadpool(svc.load, task, jid, user)
            q = await run_in_threadpool(svc.quote, doc, time.time())
            return PlainTextResponse(iso(q) or "")

        async def error_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            doc = await run_in_threadpool(svc.load, task, jid, user)
            err = doc.get("error")
            if doc_phase(doc, time.time()) != Phase.ERROR or not isinstance(err, dict):
                raise UwsError(404, f"job {jid} has no error")
            text = f"{err.get('name')} (code {err.get('code')}, {err.get('class')}): {err.get('message')}\n"
            tail = doc.get("log_tail")
            if isinstance(tail, dict):
                for name, t in tail.items():
                    if t:
                        text += f"\n--- {name} (last lines) ---\n{t}\n"
            return PlainTextResponse(text)

        async def results_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            doc = await run_in_threadpool(svc.load, task, jid, user)
            return _xml(results_el(None, doc))

        async def parameters_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            if request.method == "POST":
                form = await read_form(request, task)
                params = {k: v for k, v in form.items() if k not in CONTROL}
                await run_in_threadpool(svc.set_parameters, task, jid, user, params)
                return see_other(job_url(request, task, jid))
            doc = await run_in_threadpool(svc.load, task, jid, user)
            return _xml(parameters_el(None, doc, task))

        async def owner_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            doc = await run_in_threadpool(svc.load, task, jid, user)
            return PlainTextResponse(str(doc.get("owner") or ""))

        async def provenance_ep(request: Request, user: User) -> Response:
            task, jid = ids(request)
            doc = await run_in_threadpool(svc.load, task, jid, user)
            fmt = request.query_params.get("format", "json")
            try:
                import prov  # noqa: F401 - the prov extra
            except ImportError as exc:
                raise UwsError(501, f"provenance needs the prov extra: pip install 'lrt[prov]' "
                                    f"({exc.name} missing)") from None
            from ...provenance import FORMATS, serialize, token_document
            if fmt not in FORMATS:
                raise UwsError(400, f"format must be one of {', '.join(FORMATS)}")
            if doc_phase(doc, time.time()) not in FINISHED:
                raise UwsError(409, f"job {jid} has not finished: no provenance yet")
            body = await run_in_threadpool(lambda: serialize(token_document(doc, svc.db), fmt))
            return Response(body, media_type=FORMATS[fmt])

        j = "/uws/{task}/{job}"
        return [
            Route("/uws/{task}", guarded(jobs), methods=["GET", "POST"]),
            Route(j, guarded(job), methods=["GET", "POST", "DELETE"]),
            Route(j + "/phase", guarded(phase_ep), methods=["GET", "POST"]),
            Route(j + "/executionduration", guarded(duration_ep), methods=["GET", "POST"]),
            Route(j + "/destruction", guarded(destruction_ep), methods=["GET", "POST"]),
            Route(j + "/quote", guarded(quote_ep), methods=["GET"]),
            Route(j + "/error", guarded(error_ep), methods=["GET"]),
            Route(j + "/results", guarded(results_ep), methods=["GET"]),
            Route(j + "/parameters", guarded(parameters_ep), methods=["GET", "POST"]),
            Route(j + "/owner", guarded(owner_ep), methods=["GET"]),
            Route(j + "/provenance", guarded(provenance_ep), methods=["GET"]),
        ]

    return routes
