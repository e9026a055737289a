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
from enum import Enum
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

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

#: fields a transition into a state clears (so a reset token carries no stale result)
CLEARED_ON: Dict[State, Tuple[str, ...]] = {
    State.TODO: ("lease", "exit_code", "error", "pilot", "host", "batch_job", "log_tail"),
    State.LOCKED: ("exit_code", "error", "log_tail"),
}


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


def transitions_json() -> str:
    """The transition table as JSON, for the server-side handlers."""
    return json.dumps({s.value: sorted(d.value for d in to) for s, to in TRANSITIONS.items()},
                      sort_keys=True)
