"""The two pilot-made transitions, claim (todo -> locked) and finish (locked ->
done | error | failed | cancelled | todo), as pure functions of the document.

The pilot holds the token at a revision, decides here, and writes the result
back with that ``_rev`` (:meth:`lrt.protocol.client.TokenClient.commit`): the
decision is always made on the document CouchDB will accept the write on.  No
I/O, no clock: ``now`` (the server clock estimate) is passed in, so the rules
are tested directly (tests/test_claim_decisions.py).
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Dict, Optional, Tuple

from .. import states

JSON = Dict[str, Any]


class Refusal(str, Enum):
    """Why a document was not claimed (:func:`lock_doc`); the value is what logs show."""

    MISSING = "missing"                    #: no such document (deleted meanwhile)
    NOT_TOKEN = "not_token"
    CONFLICTED = "conflicted"              #: conflicting revisions: resolved first
    STATE = "state"                        #: not todo any more
    LEASED = "leased"                      #: somebody holds a lease on it
    CANCEL_REQUESTED = "cancel_requested"
    TYPE = "type"                          #: not of the pilot's token type
    NOT_BEFORE = "not_before"              #: retry backoff not served yet
    WALLTIME = "walltime"                  #: expected_duration longer than the walltime left

    def __str__(self) -> str:
        return self.value

    @property
    def lost(self) -> bool:
        """True if somebody else has the token (or had it): a claim lost, not refused."""
        return self in (Refusal.MISSING, Refusal.STATE, Refusal.LEASED, Refusal.CONFLICTED)


class FinishKind(str, Enum):
    """What :func:`finish_doc` decided."""

    WRITE = "write"          #: write the finished document
    REPEATED = "repeated"    #: this finish was recorded already: write nothing
    REFUSED = "refused"      #: fenced (the token is not ours any more), or a transition not allowed

    def __str__(self) -> str:
        return self.value


def lock_doc(doc: JSON, *, claim: str, now: float, lease_seconds: float, pilot: Optional[str] = None,
             host: Optional[str] = None, batch_job: Optional[JSON] = None,
             token_type: Optional[str] = None, remaining: Optional[float] = None) -> Optional[Refusal]:
    """Claim ``doc`` in place (todo -> locked); the reason it cannot be claimed, or None.

    Checked on the document itself: a token, not conflicted, ``todo`` with no
    lease, no cancel request, the right type, past ``not_before`` (server
    clock ``now``) and, given the pilot's ``remaining`` walltime, an
    ``expected_duration`` that fits.  On refusal ``doc`` is left unchanged.
    The fields the claim clears are :data:`lrt.states.CLAIM`'s.
    """
    if doc.get("kind") != "token":
        return Refusal.NOT_TOKEN
    if doc.get("_conflicts"):
        return Refusal.CONFLICTED
    if doc.get("state") != states.State.TODO.value or not states.allowed(doc.get("state"), states.State.LOCKED):
        return Refusal.STATE
    if doc.get("lease"):
        return Refusal.LEASED
    if doc.get("cancel_requested"):
        return Refusal.CANCEL_REQUESTED
    if token_type and doc.get("type") != token_type:
        return Refusal.TYPE
    if (doc.get("not_before") or 0) > now:
        return Refusal.NOT_BEFORE
    dur = doc.get("expected_duration")
    if remaining is not None and isinstance(dur, (int, float)) and dur and dur > remaining:
        return Refusal.WALLTIME
    # the previous attempt's result and backoff go; a served request is gone
    states.CLAIM.apply_fields(doc)
    doc["state"] = states.State.LOCKED.value
    doc["attempts"] = int(doc.get("attempts") or 0) + 1
    doc["lease"] = {"pilot": pilot, "claim": claim}
    stamp_claim(doc, now, lease_seconds)
    doc["pilot"] = pilot
    doc["host"] = host
    doc["batch_job"] = batch_job
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


def finish_doc(doc: JSON, claim: str, body: JSON, now: float) -> Tuple[FinishKind, JSON]:
    """Record the end of an attempt on ``doc`` in place: ``(WRITE, answer)``,
    ``(REPEATED, answer)`` (this finish was already recorded: write nothing)
    or ``(REFUSED, answer)`` (fenced: the token is not ours any more).

    ``body``: ``outcome`` (done/error/cancelled), ``exit_code``, ``error``
    ({code, name, class, message}), ``retryable`` (the error code's default),
    ``timings``, ``log_tail``, ``output``, ``attachments`` ({name:
    {content_type, data (base64)}}).  An error becomes ``todo`` (retry after
    ``not_before = now + backoff * 2^(attempts-1)``), ``error`` (not retried:
    payload errors unless ``retry.payload_errors``) or ``failed``
    (``max_attempts`` used up); a failure after a cancel request becomes
    ``cancelled``.  Fields cleared and defaults: :data:`lrt.states.FINISH`
    (:data:`~lrt.states.RETRY` for a retried attempt).
    """
    hist = doc.get("history") or []
    last = hist[-1] if hist else None
    if (last and last.get("claim") == claim and last.get("end") == "finish"
            and doc.get("state") != states.State.LOCKED.value):
        return FinishKind.REPEATED, {"ok": True, "repeated": True, "state": doc.get("state"), "now": now}
    lease = doc.get("lease") or {}
    if doc.get("state") != states.State.LOCKED.value or lease.get("claim") != claim:
        return FinishKind.REFUSED, {"ok": False, "reason": "fenced", "state": doc.get("state"), "now": now}
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
        mx = states.FINISH.default(doc, "max_attempts")
        dst = "error" if not retry else ("failed" if (doc.get("attempts") or 0) >= mx else "todo")
    if not states.allowed(states.State.LOCKED, dst):
        return FinishKind.REFUSED, {"ok": False, "reason": "transition", "to": dst, "now": now}
    edge = states.RETRY if dst == "todo" else states.FINISH
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
    edge.apply_fields(doc)  # after the history entry, which reads the lease and the requests
    doc["updated"] = now
    if dst == "todo":
        backoff = (doc.get("retry") or {}).get("backoff")
        backoff = float(backoff) if isinstance(backoff, (int, float)) else float(edge.defaults["backoff"])
        doc["not_before"] = now + backoff * 2 ** max(0, int(doc.get("attempts") or 1) - 1)
    return FinishKind.WRITE, {"ok": True, "state": dst, "now": now, "not_before": doc.get("not_before")}
