"""Tape-aware dispatch: tokens wait in ``staging`` until all their inputs are online.

A pilot only claims ``todo`` tokens, so a token whose inputs sit on tape is
created in (or moved to) ``staging`` and the stager -- ``lrt stage run``, one
process on the admin side -- does, per pass:

1. list the ``staging`` tokens (view ``lrt/tokens``, key [state, type, id]),
2. request bring-online *in bulk* for every input not yet requested (pinned
   for ``pin`` seconds, so files stay on disk until the pilot reads them),
3. poll every outstanding request in bulk,
4. move each token whose inputs are all online to ``todo``; a token with a
   failed input goes to ``error`` with code 20 STAGING_FAILED and the per-file
   reasons in ``error.files`` ({url: reason}); the others stay, with progress
   and their request ids recorded in the token's ``staging`` field (so the next
   pass -- even in another process, ``--once`` from cron -- polls the same
   requests instead of asking again).

Writes go through ``_bulk_docs`` with each document's ``_rev``; a 409 means
someone else changed the token (a cancel, a reset): it is re-read and the
decision re-made from its new state.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .. import errorcodes, states
from ..couch import Database
from ..design import MONITOR_DDOC
from ..protocol import quorum
from .gfal import Gfal

log = logging.getLogger("lrt.staging")

STAGING_FAILED = errorcodes.get("STAGING_FAILED")
#: documents per _bulk_docs write
WRITE_BATCH = 500


def staging_tokens(db: Database, token_type: Optional[str] = None) -> Iterable[Dict[str, Any]]:
    """Every token in state ``staging`` (of one type), documents included, paged."""
    if token_type is None:
        start, end = ["staging"], ["staging", {}]
    else:
        start, end = ["staging", token_type], ["staging", token_type, {}]
    for row in db.iter_view(MONITOR_DDOC, "tokens", startkey=start, endkey=end, include_docs=True):
        doc = row.get("doc")
        if doc and doc.get("state") == "staging":
            yield doc


def input_urls(doc: Dict[str, Any]) -> List[str]:
    out = []
    for item in doc.get("inputs") or []:
        url = item.get("url") if isinstance(item, dict) else None
        if isinstance(url, str) and url:
            out.append(url)
    return out


class PassResult(dict):
    """Counts of one pass: tokens seen, moved to todo, to error, still staging; files requested."""


class Stager:
    """Moves ``staging`` tokens to ``todo`` (or ``error``) as their inputs come online."""

    def __init__(self, db: Database, gfal: Optional[Gfal] = None, *, token_type: Optional[str] = None,
                 pin: int = 86400, timeout: int = 7 * 86400, batch: int = 1000):
        self.db = db
        self.gfal = gfal if gfal is not None else Gfal(batch=batch)
        self.token_type = token_type
        self.pin = int(pin)
        self.timeout = int(timeout)
        #: url -> gfal2 request token, for requests made (or read from tokens) by this process
        self.requested: Dict[str, str] = {}

    # -- one pass -------------------------------------------------------------------------
    def run_once(self) -> PassResult:
        docs = list(staging_tokens(self.db, self.token_type))
        for doc in docs:  # requests recorded by an earlier pass (maybe another process)
            for batch in (doc.get("staging") or {}).get("requests") or []:
                for u in batch.get("urls") or []:
                    self.requested.setdefault(u, batch.get("token") or "")
        wanted: List[str] = []
        seen = set()
        for doc in docs:
            for u in input_urls(doc):
                if u not in seen:
                    seen.add(u)
                    wanted.append(u)

        new = [u for u in wanted if u not in self.requested]
        refused: Dict[str, str] = {}
        if new:
            req = self.gfal.bring_online(new, self.pin, self.timeout)
            refused.update(req.errors)
            for token, urls in req.batches:
                for u in urls:
                    self.requested[u] = token
        by_token: Dict[str, List[str]] = {}
        for u in wanted:
            if u in self.requested:
                by_token.setdefault(self.requested[u], []).append(u)
        polled = self.gfal.poll(by_token.items())
        online = set(polled.online)
        failed = dict(refused)
        failed.update(polled.failed)

        result = PassResult(tokens=len(docs), todo=0, error=0, staging=0, requested=len(new),
                            online_files=len(online), failed_files=len(failed))
        pending_docs = {d["_id"]: d for d in docs}
        for attempt in range(5):
            if not pending_docs:
                break
            writes = []
            for doc in pending_docs.values():
                change = self._decide(doc, online, failed)
                if change is not None:
                    writes.append(change)
                elif doc.get("state") == "staging":
                    result["staging"] += 1
            if not writes:
                break
            written: set = set()
            again: set = set()
            res: Dict[str, Dict[str, Any]] = {}
            for i in range(0, len(writes), WRITE_BATCH):
                out = self.db.bulk_docs(writes[i:i + WRITE_BATCH])
                res.update(out)
                # a write a cluster accepted on too few copies (202) is checked on every copy:
                # if a concurrent change (a user's cancel) is there too, ours is withdrawn
                ok, lost = quorum.sort_out(self.db, out)
                written.update(ok)
                again.update(lost)
            retry: Dict[str, Dict[str, Any]] = {}
            for doc in writes:
                if doc["_id"] in written:
                    if doc["state"] in ("todo", "error"):
                        result[doc["state"]] += 1
                        self._forget(doc)
                    else:
                        result["staging"] += 1
                elif doc["_id"] in again:
                    fresh = self.db.get_or_none(doc["_id"])
                    if fresh is not None and fresh.get("state") == "staging":
                        retry[doc["_id"]] = fresh  # re-decide on the new revision
                else:
                    log.warning("could not update token %s: %s", doc["_id"], res.get(doc["_id"], {}))
            pending_docs = retry
        return result

    def _forget(self, doc: Dict[str, Any]) -> None:
        for u in input_urls(doc):
            self.requested.pop(u, None)

    def _decide(self, doc: Dict[str, Any], online: set, failed: Dict[str, str]) -> Optional[Dict[str, Any]]:
        """The new version of ``doc`` (a copy) or None when nothing changes."""
        if doc.get("state") != "staging":
            return None
        urls = input_urls(doc)
        bad = {u: failed[u] for u in urls if u in failed}
        new = dict(doc)
        now = time.time()
        if bad:
            err = STAGING_FAILED.error(
                f"bring-online failed for {len(bad)} of {len(urls)} input(s); first: "
                f"{next(iter(bad))}: {next(iter(bad.values()))}")
            err["files"] = bad
            return states.apply(new, "error", now=now, reason="staging failed",
                                fields={"error": err})
        n_online = sum(1 for u in urls if u in online)
        if n_online == len(urls):
            return states.apply(new, "todo", now=now, reason="all inputs online",
                                fields={"staging": self._staging_field(urls, n_online, now)})
        field = self._staging_field(urls, n_online, now)
        old = doc.get("staging") or {}
        if (old.get("online") == field["online"] and old.get("requests") == field["requests"]):
            return None  # nothing new: no write
        new["staging"] = field
        new["updated"] = now
        return new

    def _staging_field(self, urls: List[str], n_online: int, now: float) -> Dict[str, Any]:
        groups: Dict[str, List[str]] = {}
        for u in urls:
            if u in self.requested:
                groups.setdefault(self.requested[u], []).append(u)
        return {"requests": [{"token": t, "urls": us} for t, us in sorted(groups.items())],
                "online": n_online, "total": len(urls), "checked": now}

    # -- loop -----------------------------------------------------------------------------
    def run(self, interval: float = 60.0, once: bool = False,
            report: Optional[Callable[[PassResult], None]] = None,
            stop: Optional[Callable[[], bool]] = None) -> PassResult:
        """Passes every ``interval`` seconds until no token is left staging (or ``once``)."""
        while True:
            res = self.run_once()
            if report is not None:
                report(res)
            if once or res["staging"] == 0 or (stop is not None and stop()):
                return res
            time.sleep(interval)


def mark_staging(db: Database, ids: Iterable[str], reason: str = "inputs must be staged") -> Tuple[List[str], List[str]]:
    """Move ``todo`` tokens to ``staging`` (e.g. their inputs turned out to be on tape).

    Returns (moved, skipped); tokens in other states are skipped, conflicts re-read.
    """
    moved: List[str] = []
    skipped: List[str] = []
    todo = list(ids)
    for _ in range(5):
        if not todo:
            break
        rows = db.all_docs(keys=todo, include_docs=True).get("rows", [])
        writes = []
        for row in rows:
            doc = row.get("doc")
            if not doc or doc.get("state") != "todo":
                skipped.append(row.get("key"))
                continue
            writes.append(states.apply(dict(doc), "staging", reason=reason))
        if not writes:
            break
        res = db.bulk_docs(writes)
        ok, todo = quorum.sort_out(db, res)  # 202s checked on every copy: lost ones re-read
        moved.extend(ok)
        skipped.extend(res.errors)
        skipped.extend(i for i in res.ok if i not in ok and i not in todo)  # left to the resolver
    return moved, skipped
