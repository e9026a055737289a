"""Throughput: finished tokens per minute, and the ETA it implies.

The counts come from the ``lrt-rates/finished`` view (key ``[type or null, hour,
5-minute, minute]``, value ``[done, failed]``, ``_sum``).  CouchDB's grouped
reduce costs about a millisecond per group (row) whatever the tokens in it, so
a window of 180 one-minute buckets cost 360 groups (two outcomes) and 240 ms at
10^6 tokens.  Now the window is read in variable buckets, both outcomes in each
row: one query per bucket width over a contiguous key range,

* hours (``group_level=2``) for the part older than an hour,
* 5 minutes (``group_level=3``) for the hour before the last 15 minutes,
* single minutes (``group_level=4``) for the last 15 minutes and the current one,

about 29 groups in three requests whatever the window's length or the number of
tokens.  Buckets are cut at the range edges (a reduce over a key range counts
only the rows inside it), so the last 15 and the last 60 full minutes are whole
buckets: :meth:`Rates.per_minute` (the ETA) and :meth:`Rates.totals` are exact.
The plot shows each bucket's count divided by its width, i.e. per minute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..couch import Database, NotFound
from .tokens import need_views

#: the design document of the rate view (lrt/views/lrt-rates; see docs/design.md)
RATES_DDOC = "lrt-rates"
#: bucket width in minutes of each group_level of ``lrt-rates/finished``
WIDTH = {2: 60, 3: 5, 4: 1}
#: the recent minutes read one by one (the ETA's rate is over these)
MINUTE_TAIL = 15
#: the recent minutes read in buckets of at most 5 minutes (the "last hour" figures)
FINE_TAIL = 60

#: (group_level, first minute, end minute (exclusive))
Range = Tuple[int, int, int]


def plan(first: int, last: int, minute_tail: int = MINUTE_TAIL, fine_tail: int = FINE_TAIL) -> List[Range]:
    """The key ranges tiling minutes ``first..last`` (inclusive): hours before
    ``last - fine_tail``, 5 minutes before ``last - minute_tail``, then minutes.

    Empty ranges are left out, so a short window (``lrt status --watch``) is one
    query of minutes.
    """
    if last < first:
        raise ValueError(f"empty window: minutes {first}..{last}")
    if not 0 <= minute_tail <= fine_tail:
        raise ValueError("need 0 <= minute_tail <= fine_tail")
    fine, minutes = last - fine_tail, last - minute_tail
    edges = [(2, first, fine), (3, max(first, fine), minutes), (4, max(first, minutes), last + 1)]
    return [(level, lo, hi) for level, lo, hi in edges if lo < hi]


def buckets(level: int, lo: int, hi: int) -> List[Tuple[int, int]]:
    """(start, end) minutes of the buckets of ``level`` in ``[lo, hi)``, cut at both edges."""
    w = WIDTH[level]
    out: List[Tuple[int, int]] = []
    s = lo
    while s < hi:
        e = min(hi, (s // w + 1) * w)
        out.append((s, e))
        s = e
    return out


def key_range(type: Optional[str], lo: int, hi: int) -> Tuple[list, list]:
    """startkey and endkey (inclusive) of minutes ``[lo, hi)`` for one type (None: all types)."""
    last = hi - 1
    return [type, lo // 60, lo // 5, lo], [type, last // 60, last // 5, last]


def row_start(level: int, key: List[Any], lo: int) -> int:
    """The start minute of the bucket of a grouped row (cut at the range start ``lo``)."""
    return max(lo, int(key[level - 1]) * WIDTH[level])


@dataclass
class Rates:
    """Done and failed per bucket over a window ending at ``now`` (server clock).

    ``starts[i]`` is the first minute (Unix time // 60) of bucket i and
    ``widths[i]`` its length in minutes; the last bucket is the current
    (partial) minute.
    """

    starts: List[int] = field(default_factory=list)
    widths: List[int] = field(default_factory=list)
    done: List[int] = field(default_factory=list)
    failed: List[int] = field(default_factory=list)
    now: float = 0.0

    def _recent(self, last: int) -> Tuple[int, int, int]:
        """(done, failed, minutes) over the buckets inside the last ``last`` full minutes."""
        if not self.starts:
            return 0, 0, 0
        cur = self.starts[-1] + self.widths[-1] - 1  # the current minute, left out (partial)
        lo = cur - last
        d = f = covered = 0
        for i, s in enumerate(self.starts):
            if s >= lo and s + self.widths[i] <= cur:
                d += self.done[i]
                f += self.failed[i]
                covered += self.widths[i]
        return d, f, covered

    def totals(self, last: int = FINE_TAIL) -> Tuple[int, int]:
        """(done, failed) in the last ``last`` full minutes (whole buckets only)."""
        d, f, _ = self._recent(last)
        return d, f

    def per_minute(self, last: int = MINUTE_TAIL) -> float:
        """Tokens finished (done or failed) per minute over the last ``last`` full minutes."""
        d, f, covered = self._recent(last)
        return (d + f) / covered if covered else 0.0

    def eta(self, remaining: int, last: int = MINUTE_TAIL) -> Optional[float]:
        """Seconds until ``remaining`` tokens are finished at the recent rate (None: no rate)."""
        if remaining <= 0:
            return 0.0
        r = self.per_minute(last)
        return None if r <= 0 else remaining / r * 60.0

    def plot(self) -> Dict[str, List[Any]]:
        """uPlot data: bucket starts in seconds and rates per minute, plus the window's end
        (repeating the last value) so a stepped line draws each bucket over its width."""
        if not self.starts:
            return {"x": [], "done": [], "failed": []}
        x = [s * 60 for s in self.starts] + [(self.starts[-1] + self.widths[-1]) * 60]
        done = [round(n / w, 3) for n, w in zip(self.done, self.widths)]
        failed = [round(n / w, 3) for n, w in zip(self.failed, self.widths)]
        return {"x": x, "done": done + done[-1:], "failed": failed + failed[-1:]}

    def to_json(self) -> Dict[str, Any]:
        return {"starts": self.starts, "widths": self.widths, "done": self.done, "failed": self.failed,
                "now": self.now}


def finished_per_minute(db: Database, window_minutes: int = 180, type: Optional[str] = None,
                        now: Optional[float] = None) -> Rates:
    """Done and failed over the last ``window_minutes`` minutes (all types, or one), in the
    buckets of :func:`plan`: at most three queries whatever the window and the pool."""
    if window_minutes < 1:
        raise ValueError("window_minutes must be at least 1")
    t = db.server.now() if now is None else now
    last = int(t // 60)
    out = Rates(now=t)
    for level, lo, hi in plan(last - window_minutes + 1, last):
        bs = buckets(level, lo, hi)
        index = {s: len(out.starts) + i for i, (s, _) in enumerate(bs)}
        out.starts += [s for s, _ in bs]
        out.widths += [e - s for s, e in bs]
        out.done += [0] * len(bs)
        out.failed += [0] * len(bs)
        startkey, endkey = key_range(type, lo, hi)
        try:
            rows = db.view(RATES_DDOC, "finished", group_level=level, startkey=startkey,
                           endkey=endkey).get("rows", [])
        except NotFound:
            raise need_views(db) from None
        for r in rows:
            i = index.get(row_start(level, r["key"], lo))
            if i is None:  # pragma: no cover - a key outside the range: CouchDB never returns one
                continue
            v = r["value"]
            out.done[i] += int(v[0])
            out.failed[i] += int(v[1])
    return out


def remaining(states: Dict[str, int]) -> int:
    """Tokens not finished yet (waiting, staging, todo, locked)."""
    return sum(n for s, n in states.items() if s in ("waiting", "staging", "todo", "locked"))


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown"  # nothing finished in the window
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
