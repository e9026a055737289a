"""The two pilot-made transitions, claim (todo -> locked) and finish (locked ->
done | error | failed | cancelled | todo), as pure functions of the document.

The pilot holds the token at a revision, decides here, and writes the result
back with that ``_rev`` (:meth:`lrt.protocol.client.TokenClient.commit`): the
decision is always made on the document CouchDB will accept the write on.  No
I/O, no clock: ``now`` (the server clock estimate) is passed in, so the rules
are tested directly (tests/test_claim_decisions.py).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .. import states

JSON = Dict[str, Any]

#: default for tokens without ``max_attempts`` (the reap handler uses the same)
DEFAULT_MAX_ATTEMPTS = 3
#: default retry backoff in seconds (``retry.backoff``), doubled per attempt
DEFAULT_BACKOFF = 30.0


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
