"""Why a token is not running: what holds it back, read from the database.

The read model behind ``lrt why ID`` and ``lrt why --type T`` (docs/why.md).  A
token that is not running is held by one or more :class:`Reason`\\ s: its state
(``waiting``, ``staging``, a terminal state), what the claim queue skips it for
(retry backoff, a conflicted document, an expected duration no pilot's walltime
fits), or the lack of pilots for its type.  A ``locked`` token is running: the
reason names its pilot and when the lease ends.

What it reads, and why it stays cheap at 10^6 tokens:

* one token (``ID``): the document (with ``conflicts=true``), the server's clock,
  the launch records with what the batch systems say now (one ``squeue`` for all
  launches), and the ``lrt/locked`` view (one row per running token, capped);
* a type (``--type``): the ``lrt/tokens`` reduce (counts per state), a capped
  sample of the type's claim queue (``lrt-claim/todo``, whose values carry
  ``not_before`` and ``expected_duration``), and the same launch/lease reads.
  Counts are exact per state; how ``todo`` tokens split between reasons comes
  from the sample (the first ``sample`` rows in claim order) and says so.

"Pilots of its type seen" means: a launch of this type (or of any type) with
pilots queued or running now, a live lease on a token of this type, or (for one
token) an attempt of its own that ended within :data:`RECENT` seconds.  A pilot
started by hand that holds no token is invisible; a launch whose batch system
cannot be asked from here counts as "maybe" and never as "no pilot".
"""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from ..couch import Database, NotFound
from ..design import CLAIM_DDOC, MONITOR_DDOC
from ..errors import LrtError

__all__ = ["Reason", "Hold", "Pilots", "TokenWhy", "TypeWhy", "explain", "summarize", "pilots_for", "RECENT"]

#: an attempt that ended this recently shows that pilots of the type are around (seconds)
RECENT = 900.0
#: launch records looked at
LAUNCHES = 50
#: running tokens read from the lrt/locked view at most
LOCKED_CAP = 5000
#: a launch whose batch system cannot be asked counts as "maybe pilots" for this long (seconds)
UNKNOWN_AGE = 7 * 86400.0


class Reason(str, Enum):
    """What holds a token back (or, for the last few, that nothing does)."""

    CONFLICTED = "conflicted"              #: conflicting revisions: kept out of the claim queue
    PENDING = "pending"                    #: submitted, not asked to run yet (UWS PHASE=RUN)
    WAITING = "waiting"                    #: dependencies not met (state ``waiting``)
    BLOCKED = "blocked"                    #: a dependency can never be met (``blocked_by``)
    STAGING = "staging"                    #: inputs being brought online from tape
    NO_PILOT = "no_pilot"                  #: todo, but no pilot of its type seen
    WALLTIME = "walltime"                  #: expected duration longer than the pilots' walltime
    BACKOFF = "backoff"                    #: retried; not claimable before ``not_before``
    QUEUED = "queued"                      #: claimable and pilots are there: waits its turn
    CANCEL_REQUESTED = "cancel_requested"  #: running, a cancel is on its way to the pilot
    CLAIMED = "claimed"                    #: running under a pilot's lease
    LEASE_EXPIRED = "lease_expired"        #: its pilot's lease ran out: will be reaped
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  #: ``failed``: max_attempts used up
    ERROR = "error"                        #: finished with an error that is not retried
    CANCELLED = "cancelled"                #: cancelled by a user
    DONE = "done"                          #: finished: nothing holds it

    def __str__(self) -> str:
        return self.value


#: order in which reasons are listed (the first one is the token's primary reason)
ORDER = list(Reason)


@dataclass
class Hold:
    """One reason with what a person needs: a sentence, a time, the command that helps."""

    reason: Reason
    message: str
    until: Optional[float] = None      #: server time when it ends by itself (backoff, lease)
    command: Optional[str] = None      #: what moves it on, shell-quoted

    def as_json(self) -> Dict[str, Any]:
        d = asdict(self)
        d["reason"] = self.reason.value
        return d


@dataclass
class Pilots:
    """Pilots of one type as far as the database and the batch systems tell."""

    token_type: Optional[str]
    launches: List[Dict[str, Any]] = field(default_factory=list)   #: with pilots queued or running now
    unknown: List[Dict[str, Any]] = field(default_factory=list)    #: batch system not askable from here
    recent: List[Dict[str, Any]] = field(default_factory=list)     #: the type's latest launches, any state
    leases: int = 0                                                #: live leases on tokens of the type
    leases_sampled: bool = False                                   #: the locked view had more rows than read

    @property
    def seen(self) -> bool:
        return bool(self.launches or self.leases)

    def walltimes(self) -> List[Optional[float]]:
        """Walltimes of the launches that count: those with pilots now, else the latest ones."""
        src = self.launches or self.unknown or self.recent
        return [r.get("walltime") for r in src]

    def as_json(self) -> Dict[str, Any]:
        keep = ("launch_id", "system", "batch_id", "type", "queued", "running", "walltime")
        return {"type": self.token_type, "seen": self.seen, "leases": self.leases,
                "leases_sampled": self.leases_sampled,
                "launches": [{k: r.get(k) for k in keep} for r in self.launches],
                "unknown": [{k: r.get(k) for k in keep} for r in self.unknown]}


def _cmd(*words: str) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _type_args(token_type: Optional[str]) -> List[str]:
    return ["--type", token_type] if token_type else []


def pilots_for(db: Database, token_type: Optional[str], server_now: float) -> Pilots:
    """Launches and leases that show pilots for ``token_type`` (a launch without a type serves all)."""
    from ..launchers import launch_summary

    p = Pilots(token_type)
    for r in launch_summary(db, limit=LAUNCHES):
        if r.get("type") not in (None, token_type):
            continue
        if len(p.recent) < 5:
            p.recent.append(r)
        live = (r.get("queued") or 0) + (r.get("running") or 0)
        if live:
            p.launches.append(r)
        elif (r.get("queued") is None and r.get("running") is None
              and (r.get("failed") or 0) + (r.get("finished") or 0) < int(r.get("submitted") or 0)
              and server_now - float(r.get("time") or 0) < UNKNOWN_AGE):
            p.unknown.append(r)
    try:
        rows = db.view(MONITOR_DDOC, "locked", startkey=server_now, limit=LOCKED_CAP + 1).get("rows", [])
    except NotFound:
        raise LrtError(f"database {db.name} has no lrt views (`lrt create` installs them)") from None
    p.leases_sampled = len(rows) > LOCKED_CAP
    p.leases = sum(1 for r in rows[:LOCKED_CAP] if (r.get("value") or {}).get("type") == token_type
                   or token_type is None)
    return p


def _fits(dur: Optional[float], pilots: Pilots) -> bool:
    """Does a payload of ``dur`` seconds fit the walltime of the pilots that count?"""
    if not dur:
        return True
    walls = pilots.walltimes()
    if not walls:
        return True          # no launch known: nothing to compare with
    return any(w is None or w >= dur for w in walls)


def _no_pilot(token_type: Optional[str], pilots: Pilots) -> Optional[Hold]:
    if pilots.seen or pilots.unknown:
        return None
    t = token_type or "any"
    return Hold(Reason.NO_PILOT,
                f"no pilot for type {t} seen: no launch with pilots queued or running, no lease held on a "
                f"token of this type",
                command=_cmd("lrt", "launch", "slurm", "--pilots", "N", *_type_args(token_type))
                + "   (or: " + _cmd("lrt", "run-local", *_type_args(token_type)) + ")")


def _walltime_hold(dur: float, pilots: Pilots) -> Hold:
    walls = sorted(w for w in pilots.walltimes() if w is not None)
    return Hold(Reason.WALLTIME,
                f"expected duration {dur:.0f} s does not fit the pilots' walltime (at most {walls[-1]:.0f} s in "
                f"the launches that count); pilots skip it",
                command="launch pilots with a longer --time / --walltime")


def _ago(t: float, now: float) -> str:
    d = t - now
    return f"in {d:.0f} s" if d >= 0 else f"{-d:.0f} s ago"


@dataclass
class TokenWhy:
    """What holds one token back."""

    id: str
    type: Optional[str]
    state: Optional[str]
    server_time: float
    holds: List[Hold]
    pilots: Optional[Pilots] = None

    @property
    def primary(self) -> Reason:
        return self.holds[0].reason

    def as_json(self) -> Dict[str, Any]:
        return {"id": self.id, "type": self.type, "state": self.state, "server_time": self.server_time,
                "reason": self.primary.value, "reasons": [h.as_json() for h in self.holds],
                "pilots": self.pilots.as_json() if self.pilots else None}


def _unmet(db: Database, doc: Dict[str, Any]) -> str:
    """The sentence for a waiting token: the first dependency not met yet, with what it saw."""
    from ..deps.release import Verdict, decide

    try:
        d = decide(db, doc)
    except NotFound:  # the dependency views are not installed
        return "waiting for its dependencies (run `lrt views install` to see which)"
    if d.verdict is Verdict.MET or d.dep is None:
        return ("waiting for its dependencies, which are all met now: the next release or sweep "
                "(a pilot after a finish, an idle pilot, `lrt reap`) makes it todo")
    on = d.dep.get("on") or "ok"
    if d.dep.get("id"):
        what = f"parent {d.dep['id']} ({d.seen})"
    else:
        counts = ", ".join(f"{n} {s}" for s, n in sorted((d.seen or {}).items())) or "no tokens"
        what = f"token set {d.dep.get('tokenset')} ({counts})"
    return f"waiting for {what} to satisfy `on: {on}`; it becomes todo when every dependency is met"


def explain(db: Database, doc_id: str, pilots: Optional[Pilots] = None) -> TokenWhy:
    """What holds token ``doc_id`` back; raises :class:`LrtError` for a missing id or a non-token."""
    doc = db.get_or_none(doc_id, conflicts=True)
    if doc is None:
        raise LrtError(f"no token {doc_id!r} in database {db.name}")
    if doc.get("kind") != "token":
        raise LrtError(f"{doc_id!r} is not a token (kind {doc.get('kind')!r})")
    now = db.server.now()
    ttype, state = doc.get("type"), doc.get("state")
    holds: List[Hold] = []
    if doc.get("_conflicts"):
        holds.append(Hold(Reason.CONFLICTED,
                          f"{len(doc['_conflicts'])} conflicting revision(s): kept out of the claim queue until "
                          f"resolved", command=_cmd("lrt", "reap")))
    targs = _type_args(ttype)
    if state == "pending":
        holds.append(Hold(Reason.PENDING, "submitted but not asked to run yet (UWS PHASE=RUN; "
                                          "`lrt submit --hold`)"))
    elif state == "waiting":
        holds.append(Hold(Reason.WAITING, _unmet(db, doc)))
    elif state == "blocked":
        by = doc.get("blocked_by") or {}
        what = f"token {by['id']}" if by.get("id") else f"token set {by.get('tokenset')}"
        holds.append(Hold(Reason.BLOCKED,
                          f"{what} ended in a way that can never satisfy `on: {by.get('on') or 'ok'}`; "
                          "resetting that parent sends this token back to waiting",
                          command=_cmd("lrt", "show", str(by["id"])) if by.get("id") else None))
    elif state == "staging":
        n = len(doc.get("inputs") or [])
        holds.append(Hold(Reason.STAGING,
                          f"waiting for its {n} input file(s) to come online from tape; the staging loop moves "
                          f"it to todo", command=_cmd("lrt", "stage", "run", *targs)))
    elif state == "todo":
        if pilots is None:
            pilots = pilots_for(db, ttype, now)
        hist = doc.get("history") or []
        last_end = (hist[-1].get("finished") or 0) if hist else 0
        nb = doc.get("not_before") or 0
        dur = doc.get("expected_duration")
        if not (last_end and now - last_end < RECENT):
            h = _no_pilot(ttype, pilots)
            if h:
                holds.append(h)
        if dur and not _fits(dur, pilots):   # (_fits says yes to no duration)
            holds.append(_walltime_hold(float(dur), pilots))
        if nb > now:
            err = doc.get("error") or {}
            why = f" after attempt {doc.get('attempts') or 0}" + (f" ({err.get('name')})" if err.get("name") else "")
            holds.append(Hold(Reason.BACKOFF, f"retry backoff{why}: not claimable before {_utc(nb)} "
                                              f"({_ago(nb, now)})", until=nb))
        if not holds:
            seen = []
            if pilots.launches:
                seen.append(f"{len(pilots.launches)} launch(es) with pilots queued or running")
            if pilots.leases:
                seen.append(f"{pilots.leases} running token(s) of this type")
            if pilots.unknown and not pilots.seen:
                seen.append(f"{len(pilots.unknown)} launch(es) whose batch system cannot be asked from here")
            if not seen:
                seen.append(f"its last attempt ended at {_utc(last_end)}")
            holds.append(Hold(Reason.QUEUED, f"claimable now (priority {doc.get('priority') or 0}); "
                                             f"waits its turn ({', '.join(seen)})"))
    elif state == "locked":
        lease = doc.get("lease") or {}
        exp = float(lease.get("expires") or 0)
        if doc.get("cancel_requested"):
            holds.append(Hold(Reason.CANCEL_REQUESTED, "a cancel was requested; its pilot stops the payload and "
                                                       "records it cancelled"))
        job = doc.get("batch_job") or {}
        where = f" on {doc.get('host')}" if doc.get("host") else ""
        where += f" ({job.get('system')} job {job.get('id')})" if job.get("id") else ""
        if exp and exp < now:
            holds.append(Hold(Reason.LEASE_EXPIRED,
                              f"claimed by pilot {lease.get('pilot')}{where}, whose lease expired at {_utc(exp)} "
                              f"({_ago(exp, now)}, server clock): any pilot or `lrt reap` returns it once the reap "
                              f"grace has passed", until=exp, command=_cmd("lrt", "reap")))
        else:
            holds.append(Hold(Reason.CLAIMED, f"running: claimed by pilot {lease.get('pilot')}{where} at "
                                              f"{_utc(lease.get('claimed') or 0)}; lease ends at {_utc(exp)} "
                                              f"({_ago(exp, now)}) unless renewed", until=exp))
    elif state == "done":
        fin = (doc.get("timings") or {}).get("finished")
        holds.append(Hold(Reason.DONE, "finished" + (f" at {_utc(fin)}" if fin else "") + ": nothing holds it"))
    elif state == "error":
        holds.append(Hold(Reason.ERROR, f"finished with {_err(doc)}; not retried automatically",
                          command=_cmd("lrt", "reset", "--state", "error", *targs)))
    elif state == "failed":
        holds.append(Hold(Reason.ATTEMPTS_EXHAUSTED,
                          f"all {doc.get('attempts') or doc.get('max_attempts')} attempt(s) of "
                          f"{doc.get('max_attempts')} failed; last: {_err(doc)}",
                          command=_cmd("lrt", "reset", "--state", "failed", *targs)))
    elif state == "cancelled":
        holds.append(Hold(Reason.CANCELLED, f"cancelled ({_err(doc)})",
                          command=_cmd("lrt", "reset", "--state", "cancelled", *targs)))
    else:
        raise LrtError(f"token {doc_id!r} has an unknown state {state!r}")
    holds.sort(key=lambda h: ORDER.index(h.reason))
    return TokenWhy(doc_id, ttype, state, now, holds, pilots)


def _err(doc: Dict[str, Any]) -> str:
    e = doc.get("error") or {}
    if not e:
        return f"exit code {doc.get('exit_code')}" if doc.get("exit_code") is not None else "no error recorded"
    msg = str(e.get("message") or "").strip().splitlines()
    return f"{e.get('name')} ({e.get('code')})" + (f": {msg[0][:200]}" if msg else "")


def _utc(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(float(t), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------------------
# a whole type

_STATE_REASON = {"pending": Reason.PENDING, "waiting": Reason.WAITING, "blocked": Reason.BLOCKED, "staging": Reason.STAGING, "done": Reason.DONE,
                 "error": Reason.ERROR, "failed": Reason.ATTEMPTS_EXHAUSTED, "cancelled": Reason.CANCELLED}


@dataclass
class TypeWhy:
    """Counts per primary reason for the tokens of one type."""

    token_type: str
    server_time: float
    states: Dict[str, int]
    reasons: Dict[str, int]
    sampled: Dict[str, Dict[str, int]]         #: {"todo": {"read", "of"}, "locked": ..., "conflicts": ...}
    holds: List[Hold]                          #: one example hold per reason, with its command
    pilots: Pilots
    backoff_until: Optional[float] = None      #: the latest not_before in the sample

    @property
    def total(self) -> int:
        return sum(self.states.values())

    def as_json(self) -> Dict[str, Any]:
        return {"type": self.token_type, "server_time": self.server_time, "total": self.total,
                "states": self.states, "reasons": self.reasons, "sampled": self.sampled,
                "backoff_until": self.backoff_until, "hints": [h.as_json() for h in self.holds],
                "pilots": self.pilots.as_json()}


def summarize(db: Database, token_type: str, sample: int = 1000) -> TypeWhy:
    """Counts per reason for type ``token_type``, from reduces and capped samples (never a full scan).

    Per-state reasons (waiting, staging, done, error, failed, cancelled) are
    exact from the ``lrt/tokens`` reduce.  ``todo`` tokens are split into
    no_pilot / walltime / backoff / queued from the first ``sample`` rows of the
    claim queue (in claim order); those beyond the sample are counted in
    ``sampled["todo"]["not_sampled"]``, not under a reason -- except when no
    pilot is seen, which holds them all.  ``locked`` tokens are split into claimed / lease_expired from
    the ``lrt/locked`` view (capped at :data:`LOCKED_CAP` rows).  Conflicted
    tokens are counted from the first ``sample`` rows of ``lrt/conflicts``, on
    top of their state's reason.
    """
    from ..tokens import status_counts

    if sample < 1:
        raise LrtError("--sample must be at least 1")
    now = db.server.now()
    states = status_counts(db, token_type).get(token_type, {})
    pilots = pilots_for(db, token_type, now)
    reasons: Dict[str, int] = {}
    sampled: Dict[str, Dict[str, int]] = {}
    hints: Dict[Reason, Hold] = {}
    targs = _type_args(token_type)

    def add(reason: Reason, n: int) -> None:
        if n:
            reasons[reason.value] = reasons.get(reason.value, 0) + n

    for st, reason in _STATE_REASON.items():
        add(reason, states.get(st, 0))
    if states.get("staging"):
        hints[Reason.STAGING] = Hold(Reason.STAGING, "inputs on tape; the staging loop moves tokens to todo",
                                     command=_cmd("lrt", "stage", "run", *targs))
    for st in ("error", "failed", "cancelled"):
        if states.get(st):
            r = _STATE_REASON[st]
            hints[r] = Hold(r, f"{states[st]} token(s) {st}", command=_cmd("lrt", "reset", "--state", st, *targs))

    latest_nb: Optional[float] = None
    todo = states.get("todo", 0)
    if todo:
        rows = db.view(CLAIM_DDOC, "todo", startkey=[token_type], endkey=[token_type, {}], reduce=False,
                       limit=sample).get("rows", [])
        sampled["todo"] = {"read": len(rows), "of": todo}
        no_pilot = _no_pilot(token_type, pilots)
        counts: Dict[Reason, int] = {}
        for row in rows:
            v = row.get("value") or {}
            nb, dur = v.get("nb") or 0, v.get("dur") or 0
            if no_pilot:
                r = Reason.NO_PILOT
            elif not _fits(dur, pilots):
                r = Reason.WALLTIME
                hints.setdefault(r, _walltime_hold(float(dur), pilots))
            elif nb > now:
                r = Reason.BACKOFF
            else:
                r = Reason.QUEUED
            if nb > now:
                latest_nb = max(latest_nb or 0, nb)
            counts[r] = counts.get(r, 0) + 1
        if no_pilot:
            hints[Reason.NO_PILOT] = no_pilot
        rest = todo - len(rows)   # beyond the sample (or conflicted: not in the claim queue)
        if no_pilot:
            counts = {Reason.NO_PILOT: todo}   # holds for every todo token of the type
        elif rest > 0:
            sampled["todo"]["not_sampled"] = rest
        for r, n in counts.items():
            add(r, n)
    locked = states.get("locked", 0)
    if locked:
        rows = db.view(MONITOR_DDOC, "locked", limit=LOCKED_CAP).get("rows", [])
        sampled["locked"] = {"read": len(rows), "of": locked}
        mine = [r for r in rows if (r.get("value") or {}).get("type") == token_type]
        expired = sum(1 for r in mine if (r.get("key") or 0) < now)
        add(Reason.LEASE_EXPIRED, expired)
        add(Reason.CLAIMED, locked - expired)
        if expired:
            hints[Reason.LEASE_EXPIRED] = Hold(Reason.LEASE_EXPIRED, f"{expired} lease(s) expired",
                                               command=_cmd("lrt", "reap"))
    rows = db.view(MONITOR_DDOC, "conflicts", limit=sample, include_docs=True).get("rows", [])
    if rows:
        n = sum(1 for r in rows if (r.get("doc") or {}).get("type") == token_type)
        sampled["conflicts"] = {"read": len(rows), "of": len(rows)}
        add(Reason.CONFLICTED, n)
        if n:
            hints[Reason.CONFLICTED] = Hold(Reason.CONFLICTED, f"{n} conflicted token(s)", command=_cmd("lrt", "reap"))
    order = {r.value: i for i, r in enumerate(ORDER)}
    reasons = dict(sorted(reasons.items(), key=lambda kv: order[kv[0]]))
    return TypeWhy(token_type, now, states, reasons, sampled, sorted(hints.values(), key=lambda h: ORDER.index(h.reason)),
                   pilots, latest_nb)
