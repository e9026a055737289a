"""Token writes for one pilot (or one admin command): :class:`TokenClient`.

Claim and finish are MVCC writes decided by :mod:`lrt.protocol.decisions` and
sent together in one ``_bulk_docs`` request (:meth:`TokenClient.commit`);
heartbeat, release, reap, cancel and requeue call the ``_update`` handlers of
``_design/lrt-claim`` (see :mod:`lrt.protocol` for the handler convention).
The client also keeps the estimate of the server's clock that claims are
stamped with.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import states
from ..couch import BulkResult, CouchError, Database
from ..design import CLAIM_DDOC
from . import quorum
from .conflicts import choose_leaf
from .decisions import FinishKind, Refusal, finish_doc, lock_doc, stamp_claim
from .stats import Stats

log = logging.getLogger("lrt.protocol")

JSON = Dict[str, Any]


@dataclass
class Answer:
    """What a write said: a handler's answer, or the outcome of a finish."""

    ok: bool
    status: int
    body: JSON
    rev: Optional[str] = None

    @property
    def reason(self) -> Optional[str]:
        return None if self.ok else str(self.body.get("reason") or "conflict")


@dataclass
class PendingClaim:
    """A claim prepared on a candidate document: written by :meth:`TokenClient.commit`.

    The claim id is fixed when prepared, so a commit that is sent again (its
    answer was lost) is recognised: the token carries this claim already.
    """

    doc: JSON          #: the locked version to write (carries the candidate's _rev)
    claim: str
    sent: bool = False
    won: "Optional[Claimed]" = None
    #: lease.claimed stamp (server clock) -> local monotonic time it was made, per send
    stamps: Dict[float, float] = field(default_factory=dict)

    def stamped_mono(self, claimed: Any) -> float:
        """Local monotonic time of the send whose stamp is ``claimed`` (the one
        that landed); the earliest send if unknown -- never later than the server's."""
        if isinstance(claimed, (int, float)) and claimed in self.stamps:
            return self.stamps[claimed]
        return min(self.stamps.values()) if self.stamps else time.monotonic()

    @property
    def id(self) -> str:
        return str(self.doc["_id"])


@dataclass
class Finishing:
    """The end of an attempt to record: the held document, the claim, the outcome."""

    doc: JSON          #: the pilot's copy of the token (refreshed in place after a 409)
    claim: str
    body: JSON


@dataclass
class Commit:
    """What one :meth:`TokenClient.commit` achieved."""

    finish: Optional[Answer] = None
    claimed: "Optional[Claimed]" = None

    @property
    def ok(self) -> bool:
        return self.finish is None or self.finish.ok

    @property
    def reason(self) -> Optional[str]:
        return None if self.finish is None else self.finish.reason


class TokenClient:
    """Token writes for one pilot (or one admin command)."""

    def __init__(self, db: Database, pilot: str = "admin", host: Optional[str] = None,
                 batch_job: Optional[JSON] = None, lease_seconds: float = states.DEFAULT_LEASE_SECONDS,
                 stats: Optional[Stats] = None):
        self.db = db
        self.pilot = pilot
        self.host = host
        self.batch_job = batch_job
        self.lease_seconds = float(lease_seconds)
        self.stats = stats or Stats()
        self._synced = -1e9  # monotonic time of the last sync_clock()

    # -- plumbing --------------------------------------------------------------------
    def now(self) -> float:
        """The server's clock, as estimated from its answers."""
        srv = self.db.server
        if not srv.clock_is_fine and time.monotonic() - self._synced > 60.0:
            self.sync_clock()
        return time.time() + (srv.clock_offset or 0.0)

    def sync_clock(self) -> None:
        """Learn the server clock to the millisecond: a handler call that writes nothing
        (a heartbeat for a document that does not exist answers the server's ``now``)."""
        self._synced = time.monotonic()
        self.call("heartbeat", "lrt-clock-probe", {"claim": "clock"}, repeat_409=0)

    def call(self, name: str, doc_id: str, body: JSON, *, repeat_409: int = 20) -> Answer:
        """Call handler ``name`` on ``doc_id``; on 409 call again (the handler re-reads).

        A 409 means the handler's write met a concurrent write (another pilot,
        a cancel, an admin edit).  Re-calling is always safe: the handler
        decides again on the fresh document.  After ``repeat_409`` losses the
        last 409 is returned as a refusal with reason ``conflict``.
        """
        status, rev = 409, None
        payload: Dict[str, Any] = {}
        sent = time.time()
        for i in range(repeat_409 + 1):
            sent = time.time()
            status, payload, rev = self.db.update_handler(CLAIM_DDOC, name, doc_id, body=body,
                                                          ok=(404, 409))
            if status == 202 and rev:
                # accepted by fewer copies than the quorum: a concurrent write from the same
                # revision (the holder's heartbeat, a reap) may stand on the others
                settled = quorum.settle(self.db, {doc_id: rev})[doc_id]
                if settled.outcome is quorum.Settled.FAILED:  # the conflict stays for the resolver
                    log.warning("%s of %s: %s", name, doc_id, (settled.error or {}).get("reason"))
                    return Answer(False, 409, {"ok": False, "reason": "conflict"}, None)
                if settled.outcome is not quorum.Settled.HELD:
                    status = 409  # withdrawn: decide again on the document as it now is
            if status != 409:
                break
            self.stats.handler_409 += 1
            if i < repeat_409:
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** i)))
        if not isinstance(payload, dict):
            raise CouchError(f"update handler {name} answered non-JSON (HTTP {status})", status=status)
        if isinstance(payload.get("now"), (int, float)):
            # the estimate errs late, never early: see Server.note_server_time
            self.db.server.note_server_time(float(payload["now"]), sent=sent)
        if status == 409:
            return Answer(False, status, {"ok": False, "reason": "conflict"}, None)
        return Answer(bool(payload.get("ok")) and status < 300, status, payload, rev)

    # -- claim and finish: MVCC writes, combined ------------------------------------
    def prepare_claim(self, doc: Optional[JSON], *, token_type: Optional[str] = None,
                      remaining: Optional[float] = None) -> "PendingClaim | Refusal":
        """A claim of ``doc`` (as read, with its ``_rev``), or the reason it cannot be claimed."""
        why: Optional[Refusal] = Refusal.MISSING
        locked: JSON = {}
        if doc:
            locked = dict(doc)  # lock_doc replaces top-level fields only: a shallow copy suffices
            why = lock_doc(locked, claim=uuid.uuid4().hex, now=self.now(), lease_seconds=self.lease_seconds,
                           pilot=self.pilot, host=self.host, batch_job=self.batch_job,
                           token_type=token_type, remaining=remaining)
        if why is not None:
            if why.lost:
                self.stats.lost += 1  # somebody else has it (or had it)
            else:
                self.stats.refused += 1
            return why
        return PendingClaim(locked, locked["lease"]["claim"])

    def commit(self, finishing: Optional[Finishing] = None,
               pending: Optional[PendingClaim] = None) -> Commit:
        """Record ``finishing`` and/or write ``pending`` -- in one ``_bulk_docs`` request.

        The finish is never dropped: if its write meets a concurrent write
        (409), the token is re-read and, if still held under this claim, the
        finish is decided again on the fresh document and re-sent.  The claim
        is won only if CouchDB accepted it at the candidate's revision (or, if
        this request had to be sent again, the token carries its claim id).
        """
        out = Commit()
        docs: List[JSON] = []
        fin_doc: Optional[JSON] = None
        fin_answer: JSON = {}
        if finishing is not None:
            kind, fin_doc, fin_answer = self._finish_version(finishing)
            if kind is not FinishKind.WRITE:
                out.finish = Answer(kind is FinishKind.REPEATED, 200, fin_answer)
                fin_doc = None
            else:
                docs.append(fin_doc)
        if pending is not None and pending.won is not None:
            out.claimed, pending = pending.won, None  # won by an earlier send of this commit
        if pending is not None:
            docs.append(pending.doc)
            self.stats.claims += 1
            if fin_doc is not None:
                self.stats.combined += 1
        if not docs:
            return out
        replays = self.db.server.replays
        was_sent = pending is not None and pending.sent
        if pending is not None:
            # stamp the lease now, at sending: a claim re-sent through an outage must not
            # land already expired (same claim id, so a repeat is still recognised)
            now = self.now()
            stamp_claim(pending.doc, now, self.lease_seconds)
            pending.stamps[now] = time.monotonic()
            pending.sent = True  # from now on a 409 may be our own earlier write
        res = self.db.bulk_docs(docs)
        resent = was_sent or self.db.server.replays != replays
        if fin_doc is not None:
            assert finishing is not None  # a finish document is made only from a Finishing
            out.finish = self._finish_written(finishing, fin_doc, fin_answer, res)
            if out.finish is None:  # 409: the token changed since the pilot read it
                out.finish = self._finish_again(finishing)
        if pending is not None:
            won = self._claim_result(pending, res, resent)
            if won is not None:
                # the pilot's lease clock starts when the landed stamp was made (the write
                # was sent), not at the reply: it never ends later than the server's
                won.renewed_mono = pending.stamped_mono((won.doc.get("lease") or {}).get("claimed"))
            out.claimed = pending.won = won
        return out

    def _finish_version(self, f: Finishing) -> Tuple[FinishKind, JSON, JSON]:
        # finish_doc replaces top-level fields only (new timings/history/_attachments
        # containers), so a shallow copy keeps the held document as it was until the
        # write is accepted
        doc = dict(f.doc)
        kind, answer = finish_doc(doc, f.claim, f.body, self.now())
        return kind, doc, answer

    def _finish_written(self, f: Finishing, doc: JSON, answer: JSON, res: BulkResult) -> Optional[Answer]:
        """What the write of ``doc`` (the finished version of ``f.doc``) achieved;
        None on a 409.  On success the held document becomes the written one."""
        doc_id = doc["_id"]
        if doc_id in res.ok:
            doc["_rev"] = res[doc_id]["rev"]
            f.doc.clear()
            f.doc.update(doc)
            return Answer(True, res.status, answer, doc["_rev"])
        if doc_id in res.conflicts:
            self.stats.handler_409 += 1
            return None
        r = res[doc_id]
        return Answer(False, res.status, {"ok": False, "reason": r.get("error") or "error",
                                          "message": r.get("reason")})

    def _finish_again(self, f: Finishing, tries: int = 20) -> Answer:
        for i in range(tries):
            cur = self.db.get_or_none(f.doc["_id"])
            if cur is None:
                return Answer(False, 404, {"ok": False, "reason": "missing"})
            f.doc.clear()
            f.doc.update(cur)
            kind, doc, answer = self._finish_version(f)
            if kind is not FinishKind.WRITE:
                return Answer(kind is FinishKind.REPEATED, 200, answer)
            ans = self._finish_written(f, doc, answer, self.db.bulk_docs([doc]))
            if ans is not None:
                return ans
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** i)))
        return Answer(False, 409, {"ok": False, "reason": "conflict"})

    def _claim_result(self, p: PendingClaim, res: BulkResult, again: bool) -> "Optional[Claimed]":
        r = res.get(p.id) or {}
        doc: Optional[JSON] = None
        if p.id in res.ok:
            p.doc["_rev"] = r["rev"]
            doc = dict(p.doc)
            if self._uncertain(res, r):
                # accepted by fewer copies than the write quorum: another claim from the same
                # revision may have been accepted by the others (docs/design.md)
                doc = self._claim_is_sole(p)
                if doc is None:
                    log.warning("claim of %s was not confirmed on every copy (202); yielding", p.id)
        elif p.id in res.conflicts and again:
            # this request was sent more than once: the first send may have won, at a quorum
            # nobody told us
            doc = self._claim_is_sole(p)
        if doc is None:
            self.stats.lost += 1
            log.debug("claim of %s lost (%s)", p.id, r.get("error"))
            return None
        self.stats.claimed += 1
        doc.pop("_conflicts", None)
        return Claimed(doc, p.claim, time.monotonic(), (doc.get("lease") or {}).get("claimed"))

    @staticmethod
    def _uncertain(res: BulkResult, row: JSON) -> bool:
        """True if the write of ``row`` did not reach its quorum: CouchDB marks such a
        document ``"accepted": true`` in a 202 answer; a 202 that marks none is taken
        to concern every document."""
        return row.get("id") in res.unconfirmed

    # -- the single-token forms (admin commands, tests) --------------------------------
    def claim(self, doc_id: str, *, token_type: Optional[str] = None,
              remaining: Optional[float] = None) -> "Optional[Claimed]":
        """Read ``doc_id`` and try to claim it; the claimed token, or None."""
        p = self.prepare_claim(self.db.get_or_none(doc_id, conflicts=True),
                               token_type=token_type, remaining=remaining)
        if isinstance(p, Refusal):
            log.debug("claim %s refused: %s", doc_id, p)
            return None
        return self.commit(pending=p).claimed

    def finish(self, doc_id: str, claim_id: str, body: JSON, doc: Optional[JSON] = None) -> Answer:
        """Record the end of the attempt ``claim_id`` of ``doc_id`` (``doc``: the held copy)."""
        if doc is None:
            doc = self.db.get_or_none(doc_id)
            if doc is None:
                return Answer(False, 404, {"ok": False, "reason": "missing"})
        ans = self.commit(Finishing(doc, claim_id, body)).finish
        assert ans is not None
        return ans

    #: how long a claim whose quorum was uncertain, and that :func:`choose_leaf` keeps, waits
    #: for sibling claims to remove themselves before it removes itself (seconds)
    confirm_wait = 10.0

    def _claim_is_sole(self, p: PendingClaim) -> Optional[JSON]:
        """After a claim whose quorum is uncertain: the token to run, or None (yield).

        The leaves are read from every copy (:meth:`Database.leaves` with
        ``all_copies``).  The claim runs only if its leaf is the only live one.
        Any other live leaf comes from a write that other copies accepted --
        possibly a claim answered 201, whose pilot runs it without any check --
        so it is a loss: the pilot deletes its own leaf (no conflict is left
        behind) and yields.  One exception keeps a token from vanishing when
        every claimer yields (claims split 1-1-1 over three copies): if every
        sibling is a lock too, the leaf that :func:`choose_leaf` keeps is not
        deleted at once: its pilot polls for up to :attr:`confirm_wait` seconds,
        runs the token if the siblings have removed themselves, and otherwise
        deletes its own leaf too (the siblings that stayed are live: their
        pilots run them).
        """
        self.stats.confirms += 1
        deadline = time.monotonic() + self.confirm_wait
        delay = 0.05
        while True:
            leaves = [d for d in self.db.leaves(p.id, all_copies=True) if not d.get("_deleted")]
            mine = [d for d in leaves if (d.get("lease") or {}).get("claim") == p.claim]
            if not mine:
                return None  # our revision is gone (a resolver kept a terminal sibling)
            if len(mine) == len(leaves):
                if len(mine) > 1:
                    # every live leaf is this claim: sent again, the repeat was accepted by a copy
                    # the first send had not reached yet.  Nobody else holds the token: keep the
                    # first send's leaf (its stamp started the lease) and delete the others
                    keep = min(mine, key=lambda d: ((d.get("lease") or {}).get("claimed") or 0, str(d.get("_rev"))))
                    self._drop(p.id, [d["_rev"] for d in mine if d is not keep])
                    return keep
                return mine[0]
            others = [d for d in leaves if d not in mine]
            siblings_may_yield = all(d.get("state") == states.State.LOCKED.value for d in others)
            if (not siblings_may_yield or choose_leaf(leaves) not in mine
                    or time.monotonic() >= deadline):
                self._drop(p.id, [d["_rev"] for d in mine])
                return None
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def _drop(self, doc_id: str, revs: Sequence[str]) -> None:
        """Delete this pilot's own losing leaves of ``doc_id``; a leaf already deleted
        (by a resolver) is fine; a failure is left to the resolver."""
        for rev in revs:
            try:
                res = self.db.bulk_docs([{"_id": doc_id, "_rev": rev, "_deleted": True}])
            except CouchError as exc:
                log.warning("could not delete losing claim %s of %s: %s", rev, doc_id, exc)
                continue
            if doc_id in res.ok:
                self.stats.dropped += 1
            elif doc_id in res.errors:
                log.warning("could not delete losing claim %s of %s: %s", rev, doc_id, res[doc_id])

    # -- while running ---------------------------------------------------------------
    def heartbeat(self, doc_id: str, claim_id: str) -> Answer:
        self.stats.heartbeats += 1
        return self.call("heartbeat", doc_id, {"claim": claim_id, "lease_seconds": self.lease_seconds})

    def release(self, doc_id: str, claim_id: str, body: JSON) -> Answer:
        b = dict(body)
        b["claim"] = claim_id
        return self.call("release", doc_id, b)

    # -- admin-side operations also used by idle pilots ------------------------------
    def reap(self, doc_id: str, grace: float) -> Answer:
        return self.call("reap", doc_id, {"grace": float(grace)})

    def cancel(self, doc_id: str, by: Optional[str] = None) -> Answer:
        return self.call("cancel", doc_id, {"by": by or self.pilot})

    def requeue(self, doc_id: str, by: Optional[str] = None) -> Answer:
        """Ask the pilot of a running token to stop it and give it back (not counted)."""
        return self.call("requeue", doc_id, {"by": by or self.pilot})


@dataclass
class Claimed:
    """A token this pilot holds."""

    doc: JSON
    claim: str
    renewed_mono: float          #: local monotonic time the last successful lease write was SENT
    server_now: Optional[float]  #: server clock at the claim

    @property
    def id(self) -> str:
        return str(self.doc["_id"])
