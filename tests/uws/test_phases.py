"""The phase table of docs/uws.md is the code's mapping, and every token state has a phase."""
from __future__ import annotations

import re

from lrt.states import State
from lrt.web.uws.phases import ACTIVE, STATE_PHASE, Phase, phase_of

from pilot_helpers import ROOT


def documented():
    text = (ROOT / "docs" / "uws.md").read_text()
    table = text[text.index("| token state | UWS phase |"):].split("\n\n")[0]
    out = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not cells[0].startswith("`"):  # "a finished job past ...", "anything else"
            continue
        for state in re.findall(r"`([a-z]+)`", cells[0]):
            out[state] = cells[1]
    return out


def test_docs_table_is_the_mapping():
    assert documented() == {s: p.value for s, p in STATE_PHASE.items()}


def test_every_state_has_a_phase():
    assert all(s.value in STATE_PHASE for s in State)
    assert phase_of("no-such-state") == Phase.UNKNOWN


def test_archived_only_when_finished_and_past_destruction():
    assert phase_of("done", destruction=10.0, now=20.0) == Phase.ARCHIVED
    assert phase_of("done", destruction=30.0, now=20.0) == Phase.COMPLETED
    assert phase_of("todo", destruction=10.0, now=20.0) == Phase.QUEUED  # never archived while active
    assert {Phase.PENDING, Phase.QUEUED, Phase.EXECUTING} == set(ACTIVE)
