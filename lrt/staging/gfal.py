"""gfal2 for tape staging: bulk state queries, bulk bring-online, bulk polling.

gfal2 (CERN's grid file access library) speaks SRM, XRootD, WebDAV, GridFTP
and S3 through one API, which is why lrt uses it instead of a client per
protocol.  It is *optional*: it comes from the OS packages (python3-gfal2, see
scripts/testbed-gfal2.sh), is imported lazily here, and without it only staging
is unavailable -- :func:`require` turns the ImportError into one clear line.
Copies (stage-in, stage-out, sandbox reads) are not here: they go through
:mod:`lrt.transfer` (its gfal2 backend).

Bulk where gfal2 offers it: ``bring_online``, ``bring_online_poll`` and
``release`` take lists (one SRM request for many files).  gfal2 has no bulk
extended-attribute call, so a state query is one ``getxattr("user.status")``
per file.  Every call into gfal2 is counted (:attr:`Gfal.calls`) so the
benchmarks can show the saving.

States (gfal2's ``user.status``): ONLINE, NEARLINE, ONLINE_AND_NEARLINE, LOST,
UNAVAILABLE; lrt adds ERROR (the query itself failed, reason kept).
"""
from __future__ import annotations

import errno as _errno
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import LrtError
from ..transfer.gfal2 import reason as _reason

ONLINE_STATES = frozenset({"ONLINE", "ONLINE_AND_NEARLINE"})
FAILED_STATES = frozenset({"LOST", "UNAVAILABLE"})
#: default number of files per bulk request (SRM endpoints commonly accept 1000)
BATCH = 1000


class Gfal2Missing(LrtError):
    """gfal2's Python bindings are not installed; staging needs them."""

    exit_code = 5


def require() -> Any:
    """The gfal2 module, or :class:`Gfal2Missing` with what to do about it."""
    try:
        import gfal2  # noqa: F401  (lazy on purpose: optional, OS-packaged)
    except ImportError as exc:
        raise Gfal2Missing(
            f"staging needs gfal2's Python bindings, which are not importable ({exc}); install "
            "python3-gfal2 and its plugins (scripts/testbed-gfal2.sh VENV, see docs/staging.md)"
        ) from None
    return gfal2


def available() -> bool:
    try:
        require()
        return True
    except Gfal2Missing:
        return False


def endpoint(url: str) -> Tuple[str, str]:
    """(scheme, host:port): bulk gfal2 calls must stay within one storage endpoint."""
    p = urllib.parse.urlsplit(url)
    return p.scheme, p.netloc


@dataclass
class BringOnline:
    """An asynchronous bring-online request: gfal2 tokens per batch, per-file errors."""

    pin: int
    batches: List[Tuple[str, List[str]]] = field(default_factory=list)  #: (token, urls)
    errors: Dict[str, str] = field(default_factory=dict)  #: url -> reason (request refused)
    requested: float = field(default_factory=time.time)

    def urls(self) -> List[str]:
        return [u for _, us in self.batches for u in us]

    def to_json(self) -> Dict[str, Any]:
        return {"pin": self.pin, "requested": self.requested,
                "batches": [{"token": t, "urls": us} for t, us in self.batches]}


@dataclass
class PollResult:
    online: List[str] = field(default_factory=list)
    pending: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)


class Gfal:
    """One gfal2 context, with call counting and the bulk operations lrt needs."""

    def __init__(self, ctx: Any = None, batch: int = BATCH):
        self.gfal2 = require()
        self.ctx = ctx if ctx is not None else self.gfal2.creat_context()
        self.batch = max(1, int(batch))
        #: number of calls made into gfal2 (each bulk call counts once)
        self.calls = 0

    def _groups(self, urls: Iterable[str]) -> List[List[str]]:
        """Batches of at most ``batch`` URLs, each within one endpoint, order kept."""
        by_ep: "OrderedDict[Tuple[str, str], List[str]]" = OrderedDict()
        for u in urls:
            by_ep.setdefault(endpoint(u), []).append(u)
        out = []
        for us in by_ep.values():
            for i in range(0, len(us), self.batch):
                out.append(us[i:i + self.batch])
        return out

    # -- state -------------------------------------------------------------------------
    def state(self, url: str) -> Tuple[str, Optional[str]]:
        """(state, reason): the file's ``user.status``, or ("ERROR", why)."""
        self.calls += 1
        try:
            return str(self.ctx.getxattr(url, "user.status")).strip() or "UNKNOWN", None
        except self.gfal2.GError as exc:
            return "ERROR", _reason(exc)

    def states(self, urls: Sequence[str],
               progress: Optional[Callable[[int], None]] = None) -> Dict[str, Tuple[str, Optional[str]]]:
        """State of every URL (duplicates queried once); ``progress(n)`` after each."""
        out: Dict[str, Tuple[str, Optional[str]]] = {}
        for u in urls:
            if u not in out:
                out[u] = self.state(u)
            if progress is not None:
                progress(1)
        return out

    # -- bring online ------------------------------------------------------------------
    def bring_online(self, urls: Sequence[str], pin: int = 3600, timeout: int = 86400) -> BringOnline:
        """Request asynchronous recall of ``urls`` in bulk; per-file refusals kept."""
        req = BringOnline(pin=int(pin))
        unique = list(OrderedDict.fromkeys(urls))
        for group in self._groups(unique):
            self.calls += 1
            try:
                errs, token = self.ctx.bring_online(group, int(pin), int(timeout), True)
            except self.gfal2.GError as exc:
                for u in group:
                    req.errors[u] = _reason(exc)
                continue
            ok = []
            for u, err in zip(group, errs or [None] * len(group)):
                if err is None:
                    ok.append(u)
                else:
                    req.errors[u] = _reason(err)
            if ok:
                req.batches.append((token or "", ok))
        return req

    def poll(self, batches: Iterable[Tuple[str, Sequence[str]]]) -> PollResult:
        """Poll request batches in bulk: which files are online, pending, failed."""
        res = PollResult()
        for token, urls in batches:
            urls = list(urls)
            for i in range(0, len(urls), self.batch):
                group = urls[i:i + self.batch]
                self.calls += 1
                try:
                    answers = self.ctx.bring_online_poll(group, token)
                except self.gfal2.GError as exc:
                    if exc.code == _errno.EAGAIN:
                        res.pending.extend(group)
                    else:
                        for u in group:
                            res.failed[u] = _reason(exc)
                    continue
                if not isinstance(answers, (list, tuple)):
                    answers = [None] * len(group)
                for u, a in zip(group, answers):
                    if a is None:
                        res.online.append(u)
                    elif getattr(a, "code", None) == _errno.EAGAIN:
                        res.pending.append(u)
                    else:
                        res.failed[u] = _reason(a)
        return res

    def release(self, batches: Iterable[Tuple[str, Sequence[str]]]) -> Dict[str, str]:
        """Release pins (bulk); returns per-file errors (best effort)."""
        errors: Dict[str, str] = {}
        for token, urls in batches:
            urls = list(urls)
            self.calls += 1
            try:
                answers = self.ctx.release(urls, token)
            except self.gfal2.GError as exc:
                errors.update({u: _reason(exc) for u in urls})
                continue
            for u, a in zip(urls, answers or []):
                if a is not None and a != 0 and not isinstance(a, int):
                    errors[u] = _reason(a)
        return errors

    def wait_online(self, req: BringOnline, interval: float = 5.0, timeout: float = 86400,
                    progress: Optional[Callable[[PollResult], None]] = None) -> PollResult:
        """Poll ``req`` until nothing is pending (or ``timeout``); request refusals count as failed."""
        deadline = time.monotonic() + timeout
        pending = list(req.batches)
        final = PollResult(failed=dict(req.errors))
        while pending:
            token_of = {u: t for t, us in pending for u in us}
            r = self.poll(pending)
            final.online.extend(r.online)
            final.failed.update(r.failed)
            if progress is not None:
                progress(r)
            left: Dict[str, List[str]] = {}
            for u in r.pending:
                left.setdefault(token_of[u], []).append(u)
            pending = list(left.items())
            if not pending:
                break
            if time.monotonic() >= deadline:
                final.pending = [u for _, us in pending for u in us]
                break
            time.sleep(interval)
        return final


def summarize(states: Dict[str, Tuple[str, Optional[str]]]) -> Dict[str, Any]:
    """Counts per state and the percentage online (what `lrt stage status` prints)."""
    counts: Dict[str, int] = {}
    for st, _ in states.values():
        counts[st] = counts.get(st, 0) + 1
    total = len(states)
    online = sum(n for s, n in counts.items() if s in ONLINE_STATES)
    return {"total": total, "online": online,
            "percent_online": round(100.0 * online / total, 2) if total else 100.0,
            "counts": dict(sorted(counts.items()))}
