"""Throughput: finished tokens per minute, and the ETA it implies.

Two reduce queries (done, failed) over the ``lrt-web/finished`` view (key
``[outcome, type or null, minute]``, ``_count``, ``group_level=3``) for a
window of minutes: one row per minute, over a contiguous key range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..couch import Database, NotFound
from .tokens import WEB_DDOC, need_views

#: the outcomes the view counts (done; failed = states error and failed)
OUTCOMES = ("done", "failed")


@dataclass
class Rates:
    """Per-minute counts over a window ending at ``now`` (server clock)."""

    minutes: List[int] = field(default_factory=list)  #: minute numbers (Unix time // 60)
    done: List[int] = field(default_factory=list)
    failed: List[int] = field(default_factory=list)
    now: float = 0.0

    def per_minute(self, last: int = 15) -> float:
        """Tokens finished (done or failed) per minute over the last ``last`` full minutes."""
        if not self.minutes:
            return 0.0
        n = min(last, len(self.minutes) - 1)
        if n <= 0:
            return 0.0
        lo = len(self.minutes) - 1 - n  # the current (partial) minute is left out
        tot = sum(self.done[lo:-1]) + sum(self.failed[lo:-1])
        return tot / n

    def eta(self, remaining: int, last: int = 15) -> Optional[float]:
        """Seconds until ``remaining`` tokens are finished at the recent rate (None: no rate)."""
        if remaining <= 0:
            return 0.0
        r = self.per_minute(last)
        return None if r <= 0 else remaining / r * 60.0

    def to_json(self) -> Dict[str, Any]:
        return {"minutes": self.minutes, "done": self.done, "failed": self.failed, "now": self.now}


def finished_per_minute(db: Database, window_minutes: int = 180, type: Optional[str] = None,
                        now: Optional[float] = None) -> Rates:
    """Done and failed per minute for the last ``window_minutes`` minutes (all types, or one)."""
    t = db.server.now() if now is None else now
    last = int(t // 60)
    first = last - window_minutes + 1
    out = Rates(minutes=list(range(first, last + 1)), now=t)
    for outcome in OUTCOMES:
        counts = [0] * window_minutes
        try:
            rows = db.view(WEB_DDOC, "finished", group_level=3, startkey=[outcome, type, first],
                           endkey=[outcome, type, last]).get("rows", [])
        except NotFound:
            raise need_views(db) from None
        for r in rows:
            i = int(r["key"][2]) - first
            if 0 <= i < window_minutes:
                counts[i] += int(r["value"])
        setattr(out, outcome, counts)
    return out


def remaining(states: Dict[str, int]) -> int:
    """Tokens not finished yet (waiting, staging, todo, locked)."""
    return sum(n for s, n in states.items() if s in ("waiting", "staging", "todo", "locked"))


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown (nothing finished recently)"
    if seconds <= 0:
        return "done"
    s = int(math.ceil(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s"
