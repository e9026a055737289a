"""Pilots under faults (bench/faults.py at a small size): killed and stopped pilots, a killed server.

Real pilot processes, real SIGKILL/SIGSTOP/SIGCONT, a private local server
SIGKILLed mid-run and restarted on the same port and data directory (the
suite's shared server is left alone).  The payloads keep a journal (one
O_APPEND line per start and end); the checks are bench/faults.py's
``analyse``: every token done exactly once, its recorded result the one its
finishing claim's payload journalled, and no payload started on a lease the
server already treated as expired.
"""
from __future__ import annotations

import json
import sys

import pytest

from pilot_helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import faults  # noqa: E402


@pytest.mark.slow
def test_faults_every_token_once_and_no_start_on_an_expired_lease(tmp_path):
    # the server stays down longer than a lease: claims sent before the outage and re-sent
    # after it must be stamped again, or they land already expired
    cfg = faults.Faults(tokens=300, pilots=8, lease=5.0, reap_grace=1.0, duration=(0.1, 0.6),
                        kill_every=(2.0, 4.0), stop_every=(6.0, 10.0), server_kills=1,
                        server_down=7.0, timeout=300.0)
    rep = faults.run(cfg, tmp_path)
    print(json.dumps({k: v for k, v in rep.items() if k != "late_start_examples"}))
    assert rep["problems"] == []
    assert rep["done"] == rep["tokens"] == 300
    assert rep["pilots_killed"] >= 3 and rep["pilots_stopped"] >= 1 and len(rep["server_outages_s"]) == 1
    assert rep["pilot_tracebacks"] == 0 and rep["unexpected_pilot_exits"] == []
    # a pilot SIGSTOPped between its last look at the lease and the exec of its payload cannot
    # be kept from starting it (its finish is fenced); no other pilot may start on an expired lease
    late = {k: v for k, v in rep["late_starts_by_cause"].items() if k != "stopped"}
    assert late == {}, rep["late_start_examples"]
