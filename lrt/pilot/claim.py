"""The pilot's side of the token protocol: claim, heartbeat, finish, release,
reap, cancel, and conflict resolution.

Two kinds of writes, chosen per operation (docs/pilot.md, docs/design.md):

* **claim and finish** -- the two writes every token needs -- are made by the
  pilot as plain MVCC writes: the pilot holds the document at a revision,
  decides here (:func:`lock_doc`, :func:`finish_doc`, checked against
  :mod:`lrt.states`), and writes it back with that ``_rev``.  CouchDB accepts
  the write only if nobody changed the document since, so the decision is
  always made on the current document, never on a stale view row.  Because
  they are ordinary document writes, the finish of one token and the claim of
  the next travel in **one** ``_bulk_docs`` request (:meth:`TokenClient.commit`):
  one request per token on the happy path, where an update handler needs two.
* **heartbeat, release, reap, cancel** go through ``_update`` handlers in
  ``_design/lrt-claim`` (``lrt/views/lrt-claim/updates``): they run on the
  server's clock (lease renewal and expiry) or are called by someone who does
  not hold the document (reap, cancel).  Handler convention: a write answers
  201 (202 on a cluster whose write quorum was not reached) with
  ``{"ok": true, ...}``; a refusal writes nothing and answers 200 with
  ``{"ok": false, "reason": "..."}``; 409 means the write lost a race.

Clock: a claim stamps ``lease.claimed``/``expires`` with the pilot's estimate of
the *server's* clock (:meth:`lrt.couch.Server.note_server_time`, refined from
every handler answer -- an estimate that errs late by at most a round trip --,
else from ``Date`` headers); renewals and expiry are decided by handlers on the
server clock itself.

Pilot path: standard library + :mod:`lrt.couch` + :mod:`lrt.states` only.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import states
from ..couch import BulkResult, CouchError, Database, NotFound
from ..design import CLAIM_DDOC, MONITOR_DDOC, QUEUE_SHARDS, WINDOW_DDOC

log = logging.getLogger("lrt.pilot")

JSON = Dict[str, Any]

#: order of preference when conflicting leaves of one token disagree
TERMINAL_RANK = {"done": 0, "error": 1, "failed": 2, "cancelled": 3}

#: default for tokens without ``max_attempts`` (the reap handler uses the same)
DEFAULT_MAX_ATTEMPTS = 3
#: default retry backoff in seconds (``retry.backoff``), doubled per attempt
DEFAULT_BACKOFF = 30.0


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
class Stats:
    """Counters a pilot reports (benchmarks read them from ``--stats``)."""

    claims: int = 0            #: claim writes sent
    claimed: int = 0           #: claims won
    lost: int = 0              #: claims lost to another pilot (409 or already locked)
    refused: int = 0           #: candidates not claimed for other reasons (not_before, walltime, ...)
    combined: int = 0          #: claims sent in the same request as the previous token's finish
    view_queries: int = 0
    heartbeats: int = 0
    finish_retries: int = 0    #: finish/release calls repeated after a 409 or an outage
    reaped: int = 0
    resolved: int = 0
    tokens: int = 0            #: payloads run to an outcome that was recorded
    fenced: int = 0            #: tokens given up because another pilot held them
    handler_409: int = 0       #: writes that met a concurrent write (and were re-decided)
    confirms: int = 0          #: claims whose quorum was uncertain (202, resent), checked on every copy
    dropped: int = 0           #: own losing claim revisions deleted after such a check
    checks: int = 0            #: conditional reads of a running token (cancel/release requests)
    renewed_before_start: int = 0  #: leases found half gone right before a payload start
    overheads: List[float] = field(default_factory=list)

    def as_dict(self) -> JSON:
        d = dict(self.__dict__)
        ov = sorted(self.overheads)
        d["overheads"] = len(ov)
        d["overhead_median"] = ov[len(ov) // 2] if ov else None
        return d


# ---------------------------------------------------------------------------
# the two pilot-made transitions, as pure functions of the document


def lock_doc(doc: JSON, *, claim: str, now: float, lease_seconds: float, pilot: Optional[str] = None,
             host: Optional[str] = None, batch_job: Optional[JSON] = None,
             token_type: Optional[str] = None, remaining: Optional[float] = None) -> Optional[str]:
    """Claim ``doc`` in place (todo -> locked); the reason it cannot be claimed, or None.

    Checked on the document itself: a token, not conflicted, ``todo`` with no
    lease, no cancel request, the right type, past ``not_before`` (server
    clock ``now``) and, given the pilot's ``remaining`` walltime, an
    ``expected_duration`` that fits.  On refusal ``doc`` is left unchanged.
    """
    if doc.get("kind") != "token":
        return "not_token"
    if doc.get("_conflicts"):
        return "conflicted"
    if doc.get("state") != states.State.TODO.value or not states.allowed(doc.get("state"), states.State.LOCKED):
        return "state"
    if doc.get("lease"):
        return "leased"
    if doc.get("cancel_requested"):
        return "cancel_requested"
    if token_type and doc.get("type") != token_type:
        return "type"
    if (doc.get("not_before") or 0) > now:
        return "not_before"
    dur = doc.get("expected_duration")
    if remaining is not None and isinstance(dur, (int, float)) and dur and dur > remaining:
        return "walltime"
    doc.pop("_revisions", None)
    doc.pop("release_requested", None)
    doc["state"] = states.State.LOCKED.value
    doc["attempts"] = int(doc.get("attempts") or 0) + 1
    doc["lease"] = {"pilot": pilot, "claim": claim}
    stamp_claim(doc, now, lease_seconds)
    doc["pilot"] = pilot
    doc["host"] = host
    doc["batch_job"] = batch_job
    doc["exit_code"] = None
    doc["error"] = None
    doc["log_tail"] = None
    doc["cancel_requested"] = False
    doc["not_before"] = None  # the backoff is served: a finished token shows no stale one
    return None


def stamp_claim(doc: JSON, now: float, lease_seconds: float) -> None:
    """(Re-)stamp a prepared claim with the server-clock estimate ``now``.

    Done again each time the claim is sent (:meth:`TokenClient.commit`): a claim
    re-sent after an outage must not land with a lease that ran out while it
    waited.  The claim id stays, so a repeat is still recognised.
    """
    lease = dict(doc.get("lease") or {})
    lease.update({"claimed": now, "renewed": now, "expires": now + float(lease_seconds)})
    doc["lease"] = lease
    doc["timings"] = {"claimed": now}
    doc["updated"] = now


def history_entry(doc: JSON, end: str, dst: str, exit_code: Any, err: Optional[JSON], now: float) -> JSON:
    """The ``history`` entry for the attempt that just ended (same shape as the
    handlers' ``record()`` in ``lrt/views/lrt-claim/lib/prelude.js``)."""
    lease = doc.get("lease") or {}
    return {"end": end, "attempt": doc.get("attempts") or 0, "claim": lease.get("claim"),
            "pilot": lease.get("pilot") or doc.get("pilot"), "host": doc.get("host"),
            "batch_job": doc.get("batch_job"), "claimed": lease.get("claimed"),
            "expires": lease.get("expires"), "finished": now,
            "state": dst, "exit_code": exit_code,
            "error": {"code": err.get("code"), "name": err.get("name")} if err else None,
            "late_request": late_request(doc, dst) if end == "finish" else None}


def late_request(doc: JSON, dst: str) -> Optional[str]:
    """A request to the running payload (``cancel``, ``release``) that came too
    late to act on -- the payload had finished -- or None.  Kept in the history
    entry, so a cancel that met a finishing payload does not vanish."""
    if doc.get("cancel_requested") and dst != states.State.CANCELLED.value:
        return "cancel"
    if doc.get("release_requested"):
        return "release"
    return None


def finish_doc(doc: JSON, claim: str, body: JSON, now: float) -> Tuple[str, JSON]:
    """Record the end of an attempt on ``doc`` in place: ``("write", answer)``,
    ``("repeated", answer)`` (this finish was already recorded: write nothing)
    or ``("refused", answer)`` (fenced: the token is not ours any more).

    ``body``: ``outcome`` (done/error/cancelled), ``exit_code``, ``error``
    ({code, name, class, message}), ``retryable`` (the error code's default),
    ``timings``, ``log_tail``, ``output``, ``attachments`` ({name:
    {content_type, data (base64)}}).  An error becomes ``todo`` (retry after
    ``not_before = now + backoff * 2^(attempts-1)``), ``error`` (not retried:
    payload errors unless ``retry.payload_errors``) or ``failed``
    (``max_attempts`` used up); a failure after a cancel request becomes
    ``cancelled``.
    """
    hist = doc.get("history") or []
    last = hist[-1] if hist else None
    if (last and last.get("claim") == claim and last.get("end") == "finish"
            and doc.get("state") != states.State.LOCKED.value):
        return "repeated", {"ok": True, "repeated": True, "state": doc.get("state"), "now": now}
    lease = doc.get("lease") or {}
    if doc.get("state") != states.State.LOCKED.value or lease.get("claim") != claim:
        return "refused", {"ok": False, "reason": "fenced", "state": doc.get("state"), "now": now}
    err = body.get("error")
    outcome = body.get("outcome")
    if outcome == "done":
        dst = "done"
    elif outcome == "cancelled" or doc.get("cancel_requested"):
        dst = "cancelled"
    else:
        if err and err.get("class") == "payload":
            retry = bool((doc.get("retry") or {}).get("payload_errors"))
        else:
            retry = bool(body.get("retryable"))
        mx = doc.get("max_attempts")
        mx = DEFAULT_MAX_ATTEMPTS if mx is None else mx
        dst = "error" if not retry else ("failed" if (doc.get("attempts") or 0) >= mx else "todo")
    if not states.allowed(states.State.LOCKED, dst):
        return "refused", {"ok": False, "reason": "transition", "to": dst, "now": now}
    doc.pop("_revisions", None)
    doc.pop("_conflicts", None)
    t = dict(doc.get("timings") or {})
    for k, v in (body.get("timings") or {}).items():
        if k != "claimed":
            t[k] = v
    t.setdefault("finished", now)
    # claimed, started and finished are server-clock estimates made at different moments
    # (the estimate is refined by every handler answer): keep them in their real order
    floor = t.get("claimed")
    for k in ("started", "finished"):
        v = t.get(k)
        if isinstance(v, (int, float)) and isinstance(floor, (int, float)) and v < floor:
            t[k] = floor
        floor = t.get(k, floor)
    doc["timings"] = t
    doc["state"] = dst
    doc["exit_code"] = body.get("exit_code")
    doc["error"] = None if dst == "done" else err
    if "log_tail" in body:
        doc["log_tail"] = body["log_tail"]
    if body.get("output") is not None:
        doc["output"] = body["output"]
    if body.get("attachments"):
        atts = dict(doc.get("_attachments") or {})
        atts.update(body["attachments"])
        doc["_attachments"] = atts
    hist = list(hist)
    hist.append(history_entry(doc, "finish", dst, doc["exit_code"], err, now))
    doc["history"] = hist[-states.HISTORY_LIMIT:]
    doc["lease"] = None
    doc["cancel_requested"] = False
    doc.pop("release_requested", None)
    doc["updated"] = now
    if dst == "todo":
        retry_cfg = doc.get("retry") or {}
        backoff = retry_cfg.get("backoff")
        backoff = float(backoff) if isinstance(backoff, (int, float)) else DEFAULT_BACKOFF
        doc["not_before"] = now + backoff * 2 ** max(0, int(doc.get("attempts") or 1) - 1)
        for k in ("pilot", "host", "batch_job"):
            doc[k] = None
    return "write", {"ok": True, "state": dst, "now": now, "not_before": doc.get("not_before")}


# ---------------------------------------------------------------------------
# the client


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
        return self.doc["_id"]


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
                 batch_job: Optional[JSON] = None, lease_seconds: float = 600.0,
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
        status, payload, rev = 409, {}, None
        sent = time.time()
        for i in range(repeat_409 + 1):
            sent = time.time()
            status, payload, rev = self.db.update_handler(CLAIM_DDOC, name, doc_id, body=body,
                                                          ok=(404, 409))
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
                      remaining: Optional[float] = None) -> "PendingClaim | str":
        """A claim of ``doc`` (as read, with its ``_rev``), or the reason it cannot be claimed."""
        why: Optional[str] = "missing"
        locked: JSON = {}
        if doc:
            locked = dict(doc)  # lock_doc replaces top-level fields only: a shallow copy suffices
            why = lock_doc(locked, claim=uuid.uuid4().hex, now=self.now(), lease_seconds=self.lease_seconds,
                           pilot=self.pilot, host=self.host, batch_job=self.batch_job,
                           token_type=token_type, remaining=remaining)
        if why is not None:
            if why in ("missing", "state", "leased", "conflicted"):
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
            if kind != "write":
                out.finish = Answer(kind == "repeated", 200, fin_answer)
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

    def _finish_version(self, f: Finishing) -> Tuple[str, JSON, JSON]:
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
            if kind != "write":
                return Answer(kind == "repeated", 200, answer)
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
        if row.get("accepted"):
            return True
        return res.status == 202 and not any(x.get("accepted") for x in res.values())

    # -- the single-token forms (admin commands, tests) --------------------------------
    def claim(self, doc_id: str, *, token_type: Optional[str] = None,
              remaining: Optional[float] = None) -> "Optional[Claimed]":
        """Read ``doc_id`` and try to claim it; the claimed token, or None."""
        p = self.prepare_claim(self.db.get_or_none(doc_id, conflicts=True),
                               token_type=token_type, remaining=remaining)
        if isinstance(p, str):
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
                return mine[0] if len(mine) == 1 else None
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
        return self.doc["_id"]


class Candidates:
    """A reusable window of claimable tokens (with their documents) from the ``todo`` view.

    The view's key is ``[type, -priority, shard, created, _id]`` (``shard``: a
    hash of the id, :data:`lrt.design.QUEUE_SHARDS` of them).  A refresh finds
    the highest priority group with one ``limit=1`` query, then reads
    ``batch`` rows of that group *starting at a random shard* (wrapping
    around), each with its document as the value (``lrt-window/todo``: no
    ``include_docs`` lookup per row): pilots started together read different
    stretches of the queue instead of all fighting for its first rows, and a
    small window is cheap to read (on the local server a row with its document
    costs about 0.2 ms of server CPU, so a 500-row window cost more than the
    claims it served).  Within the window the pilot starts at a random row and,
    after a lost claim, jumps to another; after ``stale_after`` lost claims in
    a row, or after ``max_age`` seconds, the window is read again.  Rows carry
    ``not_before`` and ``expected_duration``, so unclaimable rows are skipped
    without a write; if a whole priority group is unclaimable now (retry
    backoff, walltime), the next group is read too.  The first group found is
    remembered for ``max_age`` seconds: the next refreshes read its window
    directly, without the ``limit=1`` query (one request less per refresh), so a
    new higher-priority group is seen within ``max_age``, as a window is
    reused that long anyway; an empty window forgets it at once.
    """

    def __init__(self, db: Database, token_type: Optional[str], batch: int = 100,
                 max_age: float = 30.0, stale_after: int = 3, stats: Optional[Stats] = None,
                 max_groups: int = 8):
        self.db = db
        self.type = token_type
        self.batch = max(1, int(batch))
        self.max_age = max_age
        self.stale_after = stale_after
        self.max_groups = max_groups
        self.stats = stats or Stats()
        self.rows: List[JSON] = []
        self.fetched = 0.0
        self.lost_in_row = 0
        #: earliest not_before seen among rows we had to skip (server clock), or None
        self.next_ready: Optional[float] = None
        #: rows the last refresh returned
        self.last_count = 0
        #: ids never offered (tokens this pilot gave back on request)
        self.skip: set = set()
        #: (type, -priority) of the first group the last head query found, and when
        self._group: Optional[Tuple[Any, Any]] = None
        self._group_at = 0.0
        #: False once the database turned out to have no lrt-window design document
        self._window = True

    @staticmethod
    def _prio(row: JSON) -> Any:
        key = row.get("key")
        return key[1] if isinstance(key, list) and len(key) > 1 else 0

    @staticmethod
    def _claimable(row: JSON, server_now: float, remaining: Optional[float]) -> bool:
        val = row.get("value") or {}
        if (val.get("nb") or 0) > server_now:
            return False
        dur = val.get("dur") or 0
        return remaining is None or not dur or dur <= remaining

    def _rotate_first_group(self) -> None:
        """Start the highest-priority group of rows at a random row (order otherwise kept)."""
        if len(self.rows) < 2:
            return
        p0 = self._prio(self.rows[0])
        n = 1
        while n < len(self.rows) and self._prio(self.rows[n]) == p0:
            n += 1
        k = random.randrange(n)
        self.rows[:n] = self.rows[k:n] + self.rows[:k]

    def _query(self, **params: Any) -> List[JSON]:
        """Rows of the queue with ``doc``: from ``lrt-window/todo``, whose value is the document
        (no ``include_docs`` lookup per row), or, on a database without that design document,
        from ``lrt-claim/todo`` with ``include_docs``."""
        self.stats.view_queries += 1
        if self._window:
            try:
                rows = self.db.view(WINDOW_DDOC, "todo", reduce=False, **params).get("rows", [])
            except NotFound:  # installed by an older lrt: `lrt views install` adds it
                self._window = False
            else:
                for r in rows:
                    d = r["doc"] = r.get("value") or {}
                    r["value"] = {"nb": d.get("not_before") or 0, "dur": d.get("expected_duration") or 0}
                return rows
        return self.db.view(CLAIM_DDOC, "todo", reduce=False, include_docs=True, conflicts=True,
                            **params).get("rows", [])

    def refresh(self, server_now: Optional[float] = None, remaining: Optional[float] = None) -> None:
        lo: Optional[List[Any]] = [self.type] if self.type is not None else None
        hi: Optional[List[Any]] = [self.type, {}] if self.type is not None else None
        rows: List[JSON] = []
        for _ in range(self.max_groups):
            known = self._group if not rows and time.monotonic() - self._group_at < self.max_age else None
            if known is not None:
                t, p = known
            else:
                head = self._query(startkey=lo, endkey=hi, limit=1)  # the next priority group
                if not head:
                    break
                t, p = head[0]["key"][0], head[0]["key"][1]
                if not rows:
                    self._group, self._group_at = (t, p), time.monotonic()
            shard = random.randrange(QUEUE_SHARDS)
            got = self._query(startkey=[t, p, shard], endkey=[t, p, {}], limit=self.batch)
            if len(got) < self.batch and shard > 0:  # wrap around to the group's first shards
                got += self._query(startkey=[t, p], endkey=[t, p, shard], limit=self.batch - len(got))
            if known is not None and not got:  # the remembered group is used up: look again
                self._group = None
                continue
            rows += got
            if server_now is None or any(self._claimable(r, server_now, remaining) for r in got):
                break
            lo = [t, p, {}]  # nothing claimable in this group now: look at the next one
        self.rows = rows
        self._rotate_first_group()
        self.last_count = len(rows)
        self.fetched = time.monotonic()
        self.lost_in_row = 0

    def invalidate(self) -> None:
        self.rows = []

    def note(self, won: bool) -> None:
        """Report the outcome of a claim on the last popped row."""
        if won:
            self.lost_in_row = 0
            return
        self.lost_in_row += 1
        if self.lost_in_row >= self.stale_after:
            self.invalidate()
        else:
            self._rotate_first_group()  # another pilot works here: jump elsewhere

    def pop(self, server_now: float, remaining: Optional[float]) -> Optional[JSON]:
        """The next row worth a claim request; None when the list (after one refresh) has none."""
        if not self.rows or time.monotonic() - self.fetched > self.max_age:
            self.refresh(server_now, remaining)
            refreshed = True
        else:
            refreshed = False
        while True:
            self.next_ready = None
            skipped: List[JSON] = []
            while self.rows:
                row = self.rows.pop(0)
                if row.get("id") in self.skip:
                    continue
                nb = (row.get("value") or {}).get("nb") or 0
                if nb > server_now:  # kept for later: it becomes claimable at nb
                    self.next_ready = nb if self.next_ready is None else min(self.next_ready, nb)
                    skipped.append(row)
                    continue
                if not self._claimable(row, server_now, remaining):  # does not fit the walltime
                    continue
                self.rows = skipped + self.rows
                return row
            self.rows = skipped
            if refreshed:
                self.rows = []
                return None
            self.refresh(server_now, remaining)
            refreshed = True


# ---------------------------------------------------------------------------
# conflicts (CouchDB clusters) and reaping


def choose_leaf(leaves: Sequence[JSON], winner_rev: Optional[str] = None) -> JSON:
    """The leaf that survives, deterministically (every resolver picks the same one).

    1. a terminal leaf (done > error > failed > cancelled; ties by rev),
    2. else a locked leaf with the earliest ``lease.claimed`` (tie: smallest claim id),
    3. else CouchDB's own winner (``winner_rev``), else the highest rev.
    """
    terminal = [d for d in leaves if d.get("state") in TERMINAL_RANK]
    if terminal:
        return sorted(terminal, key=lambda d: (TERMINAL_RANK[d["state"]], str(d.get("_rev"))))[0]
    locks = [d for d in leaves if d.get("state") == "locked" and isinstance(d.get("lease"), dict)]
    if locks:
        return sorted(locks, key=lambda d: (d["lease"].get("claimed") or 0,
                                            str(d["lease"].get("claim") or "")))[0]
    for d in leaves:
        if winner_rev is not None and d.get("_rev") == winner_rev:
            return d
    return sorted(leaves, key=lambda d: _rev_key(str(d.get("_rev"))))[-1]


def _rev_key(rev: str) -> tuple:
    n, _, h = rev.partition("-")
    try:
        return (int(n), h)
    except ValueError:
        return (0, rev)


def _lease_live(doc: JSON, now: float) -> bool:
    lease = doc.get("lease")
    return (doc.get("state") == states.State.LOCKED.value and isinstance(lease, dict)
            and isinstance(lease.get("expires"), (int, float)) and lease["expires"] > now)


def resolve_conflicts(db: Database, ids: Optional[Sequence[str]] = None, *, limit: int = 200,
                      dry_run: bool = False) -> List[JSON]:
    """Resolve conflicted tokens: keep :func:`choose_leaf`, delete the other leaves.

    Leaves are read from every copy.  Deleting the others makes the kept leaf
    CouchDB's winner.  A token with no terminal leaf but a live lease on one of
    its leaves is left alone: a pilot may be running that leaf (a claim
    answered 201 is never checked), and a pilot whose claim lost removes its
    own leaf; such a token is resolved once it finishes or the lease expires.
    A leaf somebody else deleted meanwhile counts as deleted (idempotent).
    ``ids`` defaults to the ``lrt/conflicts`` view.  Returns one report per
    resolved document: {id, kept, state, deleted: [revs], failed: [revs]?}.
    """
    if ids is None:
        rows = db.view(MONITOR_DDOC, "conflicts", limit=limit).get("rows", [])
        ids = [r["id"] for r in rows]
    reports: List[JSON] = []
    now: Optional[float] = None
    for doc_id in ids:
        leaves = [d for d in db.leaves(doc_id, all_copies=True) if not d.get("_deleted")]
        if len(leaves) < 2:
            continue
        keep = choose_leaf(leaves)
        if keep.get("state") not in TERMINAL_RANK:
            now = db.server.now() if now is None else now
            if any(_lease_live(d, now) for d in leaves):
                continue
        report: JSON = {"id": doc_id, "kept": keep["_rev"], "state": keep.get("state"),
                        "deleted": [d["_rev"] for d in leaves if d["_rev"] != keep["_rev"]]}
        if not dry_run:
            for rev in report["deleted"]:  # one per request: _bulk_docs wants unique ids per batch
                res = db.bulk_docs([{"_id": doc_id, "_rev": rev, "_deleted": True}])
                if doc_id in res.errors:  # a conflict: that leaf is gone already
                    report.setdefault("failed", []).append(rev)
        reports.append(report)
    return reports


def expired_leases(db: Database, grace: float, limit: int = 500) -> List[JSON]:
    """Rows of the ``lrt/locked`` view whose lease ran out more than ``grace`` s ago.

    Uses the server clock (from the last response's ``Date``); the reap handler
    checks again on the server, so a skewed estimate here only costs a request.
    """
    # the Date header has one-second resolution (and truncates): look one second further
    now = db.server.now() + 1.0
    return db.view(MONITOR_DDOC, "locked", endkey=now - grace, limit=limit).get("rows", [])


def reap_expired(client: TokenClient, grace: float, *, dry_run: bool = False,
                 limit: int = 500) -> List[JSON]:
    """Reap every token whose lease expired ``grace`` seconds ago (server clock).

    Returns one report per candidate: {id, pilot, expires, state (new) or reason}.
    """
    out: List[JSON] = []
    for row in expired_leases(client.db, grace, limit=limit):
        rep: JSON = {"id": row["id"], "expires": row["key"],
                     "pilot": (row.get("value") or {}).get("pilot")}
        if dry_run:
            rep["state"] = "would reap"
        else:
            ans = client.reap(row["id"], grace)
            if ans.ok:
                rep["state"] = ans.body.get("state")
                client.stats.reaped += 1
            else:
                rep["reason"] = ans.reason
        out.append(rep)
    return out
