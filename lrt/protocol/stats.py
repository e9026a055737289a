"""The counters a pilot (or an admin command) reports: benchmarks read them from
``lrt pilot --stats``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

JSON = Dict[str, Any]


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
