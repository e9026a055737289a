"""UWS 1.1 execution phases from token states: the one mapping (table in docs/uws.md).

Kept free of web imports so the CLI, provenance and docs tests can use it.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, Dict, Mapping, Optional

from ...states import State


class Phase(str, Enum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    ABORTED = "ABORTED"
    UNKNOWN = "UNKNOWN"
    HELD = "HELD"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"

    def __str__(self) -> str:
        return self.value


#: token state -> UWS phase.  ``blocked`` (a dependency failed: the token cannot start
#: by itself, a person must act) is HELD; it is listed by value so this table works
#: whether or not the dependencies' states are in lrt.states yet.
STATE_PHASE: Dict[str, Phase] = {
    State.PENDING.value: Phase.PENDING,
    State.WAITING.value: Phase.QUEUED,
    State.STAGING.value: Phase.QUEUED,
    State.TODO.value: Phase.QUEUED,
    State.LOCKED.value: Phase.EXECUTING,
    State.DONE.value: Phase.COMPLETED,
    State.ERROR.value: Phase.ERROR,
    State.FAILED.value: Phase.ERROR,
    State.CANCELLED.value: Phase.ABORTED,
    "blocked": Phase.HELD,
}

#: phases in which WAIT blocks (UWS 1.1 section 2.2.3.1)
ACTIVE = frozenset({Phase.PENDING, Phase.QUEUED, Phase.EXECUTING})
#: phases after which nothing runs any more
FINISHED = frozenset({Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED})


def phase_of(state: Optional[str], destruction: Optional[float] = None,
             now: Optional[float] = None) -> Phase:
    """The phase of a token in ``state``; a finished job past its destruction time is ARCHIVED."""
    p = STATE_PHASE.get(str(state), Phase.UNKNOWN)
    if (p in FINISHED and destruction is not None and now is not None and destruction <= now):
        return Phase.ARCHIVED
    return p


def doc_phase(doc: Mapping[str, Any], now: Optional[float] = None) -> Phase:
    return phase_of(doc.get("state"), doc.get("destruction"), now)
