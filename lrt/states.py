"""The token state machine: every state, every allowed transition, in one place.

The server-side update handlers (``lrt/views/*/updates/*.js``) get the same
table: :mod:`lrt.design` substitutes ``__LRT_TRANSITIONS__`` in the JavaScript
with :func:`transitions_json`, so Python and CouchDB can never disagree.

::

    blocked <-- waiting --> todo <--> staging
                 |  ^
           claim |  | release / retry / reap / reset
                 v  |
               locked --> done | error | failed | cancelled
    done, error, failed, cancelled --reset--> todo

``pending`` (a submitted job not yet asked to run) moves to ``todo`` or
``staging`` on ``run``.  ``pending``, ``waiting`` (dependencies not yet met),
``blocked`` (a dependency that can never be met: lrt/deps) and ``staging``
(inputs on tape) are never claimed; ``failed`` is quarantine: ``max_attempts`` used up.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

from . import errorcodes
from .errors import TransitionError


class State(str, Enum):
    """A token's state.  The value is what is stored in the ``state`` field."""

    WAITING = "waiting"      #: blocked on other tokens (afterok chains); never claimed
    STAGING = "staging"      #: inputs being brought online from tape; never claimed
    TODO = "todo"            #: claimable (once ``not_before`` has passed)
    LOCKED = "locked"        #: held by one pilot under a lease
    DONE = "done"            #: finished successfully
    ERROR = "error"          #: failed and not to be retried automatically
    FAILED = "failed"        #: quarantined: ``max_attempts`` attempts failed
    CANCELLED = "cancelled"  #: cancelled by a user
    BLOCKED = "blocked"      #: a dependency can never be met (``blocked_by`` names it); never claimed
    PENDING = "pending"      #: submitted, not released to run yet (a UWS job before PHASE=RUN)

    def __str__(self) -> str:
        return self.value


#: states a pilot may claim from
CLAIMABLE: FrozenSet[State] = frozenset({State.TODO})
#: states with no further automatic change
TERMINAL: FrozenSet[State] = frozenset({State.DONE, State.ERROR, State.FAILED, State.CANCELLED})
#: states in which somebody (pilot or stager) is working on the token
ACTIVE: FrozenSet[State] = frozenset({State.LOCKED, State.STAGING})

#: allowed transitions: from -> {to: why}
TRANSITIONS: Dict[State, Dict[State, str]] = {
    State.WAITING: {
        State.TODO: "dependencies met",
        State.STAGING: "dependencies met, inputs on tape",
        State.CANCELLED: "cancel",
    },
    State.STAGING: {
        State.TODO: "all inputs online",
        State.ERROR: "staging failed",
        State.CANCELLED: "cancel",
    },
    State.TODO: {
        State.LOCKED: "claim",
        State.STAGING: "inputs must be staged",
        State.WAITING: "dependencies added",
        State.CANCELLED: "cancel",
    },
    State.LOCKED: {
        State.DONE: "payload succeeded",
        State.ERROR: "payload failed, not retried",
        State.FAILED: "max_attempts reached",
        State.TODO: "released, retried, reaped or reset",
        State.LOCKED: "lease renewed (heartbeat)",
        State.CANCELLED: "cancelled while running",
    },
    State.DONE: {State.TODO: "reset"},
    State.ERROR: {State.TODO: "reset"},
    State.FAILED: {State.TODO: "reset"},
    State.CANCELLED: {State.TODO: "reset"},
}

# -- dependencies between tokens (lrt/deps, docs/tokens.md) ---------------------------
# A token with ``after`` starts ``waiting``; lrt.deps releases it (waiting -> todo or
# staging, above) or blocks it when a parent ended in a way that can never satisfy
# it.  Resetting a parent sends its children back to ``waiting``; ``--cascade``
# resets descendants that already ran to ``waiting`` too.
TRANSITIONS[State.WAITING][State.BLOCKED] = "a parent can never satisfy a dependency"
TRANSITIONS[State.BLOCKED] = {
    State.WAITING: "a parent was reset",
    State.CANCELLED: "cancel",
}
for _s in (State.DONE, State.ERROR, State.FAILED, State.CANCELLED):
    TRANSITIONS[_s][State.WAITING] = "reset with its parents (--cascade)"
# -- end of dependencies ----------------------------------------------------------------

# pending (lrt.tasks, UWS): a job waits for its owner's PHASE=RUN; never claimed
TRANSITIONS[State.PENDING] = {
    State.TODO: "run",
    State.STAGING: "run, inputs on tape",
    State.CANCELLED: "cancel",
}

#: number of past attempts kept on a token (oldest dropped first)
HISTORY_LIMIT = 20

#: the fields that say who holds a token: cleared when nobody does any more
HOLDER: Tuple[str, ...] = ("lease", "pilot", "host", "batch_job")
#: the fields of an attempt's result
RESULT: Tuple[str, ...] = ("exit_code", "error", "log_tail")

#: fields a transition into a state clears (so a reset token carries no stale result)
CLEARED_ON: Dict[State, Tuple[str, ...]] = {
    State.TODO: HOLDER + RESULT,
    State.LOCKED: RESULT,
}

#: defaults for tokens that do not say (configs, the pilot's finish and the reap handler)
DEFAULT_MAX_ATTEMPTS = 3
#: retry backoff in seconds (``retry.backoff``), doubled per attempt
DEFAULT_BACKOFF = 30
#: seconds a lease lasts when a heartbeat does not say
DEFAULT_LEASE_SECONDS = 600.0


@dataclass(frozen=True)
class Edge:
    """One kind of transition: what it does to a token besides its ``state``.

    The same spec is applied by the pilot's pure decisions
    (:mod:`lrt.protocol.decisions`: claim, finish) and by the update handlers
    (``lrt/views/lrt-claim``: reap, release, cancel), which get every edge as
    JSON through ``__LRT_EDGES__`` (:func:`edges_json`) and apply it with
    ``edge(name)`` of ``lib/prelude.js``: the fields an edge clears, its
    defaults and its error code are written down here only.
    """

    name: str
    src: Tuple[State, ...]
    dst: Tuple[State, ...]
    #: fields set to null
    clears: Tuple[str, ...] = ()
    #: fields deleted (requests that were answered, CouchDB's meta fields of a read)
    removes: Tuple[str, ...] = ()
    #: fields set to these values
    resets: Mapping[str, Any] = field(default_factory=dict)
    #: values used for token fields that are absent or null
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: the error code recorded on the token (an :mod:`lrt.errorcodes` name), if the edge sets one
    error: Optional[str] = None

    def apply_fields(self, doc: Dict[str, Any]) -> None:
        """Remove, clear and reset this edge's fields of ``doc`` in place (not ``state``)."""
        for key in self.removes:
            doc.pop(key, None)
        for key in self.clears:
            doc[key] = None
        doc.update(self.resets)

    def default(self, doc: Mapping[str, Any], key: str) -> Any:
        """``doc[key]``, or this edge's default when it is absent or null."""
        value = doc.get(key)
        return self.defaults[key] if value is None else value

    def as_json(self) -> Dict[str, Any]:
        err = errorcodes.get(self.error) if self.error else None
        return {"from": [s.value for s in self.src], "to": [s.value for s in self.dst],
                "clears": list(self.clears), "removes": list(self.removes), "resets": dict(self.resets),
                "defaults": dict(self.defaults),
                "error": {"code": err.code, "name": err.name, "class": err.cls} if err else None}


_ANSWERED = ("_revisions", "release_requested")
#: a pilot claims a todo token (lock_doc): the previous attempt's result and backoff go
CLAIM = Edge("claim", (State.TODO,), (State.LOCKED,), clears=RESULT + ("not_before",),
             removes=_ANSWERED, resets={"cancel_requested": False})
#: a pilot records the end of an attempt (finish_doc); who ran it stays on the token
FINISH = Edge("finish", (State.LOCKED,), (State.DONE, State.ERROR, State.FAILED, State.CANCELLED),
              clears=("lease",), removes=("_revisions", "_conflicts", "release_requested"),
              resets={"cancel_requested": False},
              defaults={"max_attempts": DEFAULT_MAX_ATTEMPTS, "backoff": DEFAULT_BACKOFF})
#: the finish of a failed attempt that is retried: back to todo after a backoff, nobody's
RETRY = Edge("retry", (State.LOCKED,), (State.TODO,), clears=HOLDER, removes=FINISH.removes,
             resets=FINISH.resets, defaults=FINISH.defaults)
#: an expired lease is reaped (handler reap.js): the attempt counts
REAP = Edge("reap", (State.LOCKED,), (State.TODO, State.FAILED, State.CANCELLED),
            clears=HOLDER + ("exit_code",), removes=_ANSWERED, resets={"cancel_requested": False},
            defaults={"max_attempts": DEFAULT_MAX_ATTEMPTS}, error="PILOT_LOST")
#: a pilot gives a running token back (handler release.js): the attempt does not count
RELEASE = Edge("release", (State.LOCKED,), (State.TODO, State.CANCELLED),
               clears=HOLDER + ("exit_code",), removes=_ANSWERED, error="PREEMPTED")
#: a lease is renewed (handler heartbeat.js)
RENEW = Edge("renew", (State.LOCKED,), (State.LOCKED,), removes=("_revisions",),
             defaults={"lease_seconds": DEFAULT_LEASE_SECONDS})
#: a token nobody runs is cancelled (handler cancel.js; a running one gets ``cancel_requested``)
CANCEL = Edge("cancel", tuple(s for s, to in TRANSITIONS.items() if State.CANCELLED in to
                              and s != State.LOCKED),
              (State.CANCELLED,), removes=("_revisions",), error="CANCELLED")
#: an admin reset (``lrt reset``, :func:`apply`): a fresh start, nothing of the old attempts
RESET = Edge("reset", tuple(sorted(TERMINAL, key=lambda s: s.value)), (State.TODO,),
             clears=CLEARED_ON[State.TODO])

#: every edge by name
EDGES: Dict[str, Edge] = {e.name: e for e in (CLAIM, FINISH, RETRY, REAP, RELEASE, RENEW, CANCEL, RESET)}


def parse(value: Any) -> State:
    """``value`` as a :class:`State`, with a clear error for an unknown name."""
    try:
        return State(str(value))
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise TransitionError(f"unknown state {value!r} (known: {names})") from None


def allowed(src: Any, dst: Any) -> bool:
    return parse(dst) in TRANSITIONS.get(parse(src), {})


def check(src: Any, dst: Any) -> None:
    """Raise :class:`TransitionError` unless ``src -> dst`` is allowed."""
    s, d = parse(src), parse(dst)
    if d not in TRANSITIONS[s]:
        ok = ", ".join(x.value for x in TRANSITIONS[s]) or "nothing"
        raise TransitionError(f"a {s.value} token cannot become {d.value} (from {s.value}: {ok})")


def apply(doc: Dict[str, Any], dst: Any, *, now: Optional[float] = None,
          fields: Optional[Mapping[str, Any]] = None, reason: Optional[str] = None) -> Dict[str, Any]:
    """Move ``doc`` to ``dst`` in place (client side), after checking the transition.

    Clears the fields listed in :data:`CLEARED_ON`, stamps ``updated`` and
    appends a ``transitions`` note.  Used by admin bulk operations (reset,
    cancel); pilots go through the server-side handlers, which apply the same
    table.
    """
    src = parse(doc.get("state"))
    d = parse(dst)
    check(src, d)
    t = time.time() if now is None else now
    for key in CLEARED_ON.get(d, ()):
        if key in doc:
            doc[key] = None
    doc["state"] = d.value
    doc["updated"] = t
    if reason:
        doc["last_transition"] = {"from": src.value, "to": d.value, "at": t, "why": reason}
    if fields:
        doc.update(fields)
    return doc


def edges_json() -> str:
    """Every :class:`Edge` as JSON, for the server-side handlers (``__LRT_EDGES__``)."""
    return json.dumps({name: e.as_json() for name, e in EDGES.items()}, sort_keys=True)


def transitions_json() -> str:
    """The transition table as JSON, for the server-side handlers."""
    return json.dumps({s.value: sorted(d.value for d in to) for s, to in TRANSITIONS.items()},
                      sort_keys=True)
