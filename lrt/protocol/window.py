"""The claim queue as a pilot sees it: :class:`Candidates`, a reusable window of
claimable rows (with their documents) read from ``_design/lrt-window/_view/todo``
(``lrt-claim/todo`` with ``include_docs`` on a database set up by an older lrt)."""
from __future__ import annotations

import random
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from ..couch import Database, NotFound
from ..design import CLAIM_DDOC, QUEUE_SHARDS, WINDOW_DDOC
from .stats import Stats

JSON = Dict[str, Any]


class Candidates:
    """A reusable window of claimable tokens (with their documents) from the ``todo`` view.

    The view's key is ``[type, -priority, shard, created, _id]`` (``shard``: a
    hash of the id, :data:`lrt.design.QUEUE_SHARDS` of them).  A refresh finds
    the highest priority group with one ``limit=1`` query, then reads
    ``batch`` rows of that group *starting at a random shard* (wrapping
    around), each with its document as the value (``lrt-window/todo``: no
    ``include_docs`` lookup per row): pilots started together read different
    stretches of the queue instead of all fighting for its first rows, and a
    small window is cheap to read (on the local server a row with its document
    costs about 0.2 ms of server CPU, so a 500-row window cost more than the
    claims it served).  Within the window the pilot starts at a random row and,
    after a lost claim, jumps to another; after ``stale_after`` lost claims in
    a row, or after ``max_age`` seconds, the window is read again.  Rows carry
    ``not_before`` and ``expected_duration``, so unclaimable rows are skipped
    without a write; if a whole priority group is unclaimable now (retry
    backoff, walltime), the next group is read too.  The first group found is
    remembered for ``max_age`` seconds: the next refreshes read its window
    directly, without the ``limit=1`` query (one request less per refresh), so a
    new higher-priority group is seen within ``max_age``, as a window is
    reused that long anyway; an empty window forgets it at once.
    """

    def __init__(self, db: Database, token_type: Optional[str], batch: int = 100,
                 max_age: float = 30.0, stale_after: int = 3, stats: Optional[Stats] = None,
                 max_groups: int = 8):
        self.db = db
        self.type = token_type
        self.batch = max(1, int(batch))
        self.max_age = max_age
        self.stale_after = stale_after
        self.max_groups = max_groups
        self.stats = stats or Stats()
        self.rows: List[JSON] = []
        self.fetched = 0.0
        self.lost_in_row = 0
        #: earliest not_before seen among rows we had to skip (server clock), or None
        self.next_ready: Optional[float] = None
        #: rows the last refresh returned
        self.last_count = 0
        #: ids never offered (tokens this pilot gave back on request)
        self.skip: Set[str] = set()
        #: (type, -priority) of the first group the last head query found, and when
        self._group: Optional[Tuple[Any, Any]] = None
        self._group_at = 0.0
        #: False once the database turned out to have no lrt-window design document
        self._window = True

    @staticmethod
    def _prio(row: JSON) -> Any:
        key = row.get("key")
        return key[1] if isinstance(key, list) and len(key) > 1 else 0

    @staticmethod
    def _claimable(row: JSON, server_now: float, remaining: Optional[float]) -> bool:
        val = row.get("value") or {}
        if (val.get("nb") or 0) > server_now:
            return False
        dur = val.get("dur") or 0
        return remaining is None or not dur or dur <= remaining

    def _rotate_first_group(self) -> None:
        """Start the highest-priority group of rows at a random row (order otherwise kept)."""
        if len(self.rows) < 2:
            return
        p0 = self._prio(self.rows[0])
        n = 1
        while n < len(self.rows) and self._prio(self.rows[n]) == p0:
            n += 1
        k = random.randrange(n)
        self.rows[:n] = self.rows[k:n] + self.rows[:k]

    def _query(self, **params: Any) -> List[JSON]:
        """Rows of the queue with ``doc``: from ``lrt-window/todo``, whose value is the document
        (no ``include_docs`` lookup per row), or, on a database without that design document,
        from ``lrt-claim/todo`` with ``include_docs``."""
        self.stats.view_queries += 1
        rows: List[JSON]
        if self._window:
            try:
                rows = self.db.view(WINDOW_DDOC, "todo", reduce=False, **params).get("rows", [])
            except NotFound:  # installed by an older lrt: `lrt views install` adds it
                self._window = False
            else:
                for r in rows:
                    d = r["doc"] = r.get("value") or {}
                    r["value"] = {"nb": d.get("not_before") or 0, "dur": d.get("expected_duration") or 0}
                return rows
        rows = self.db.view(CLAIM_DDOC, "todo", reduce=False, include_docs=True, conflicts=True,
                            **params).get("rows", [])
        return rows

    def refresh(self, server_now: Optional[float] = None, remaining: Optional[float] = None) -> None:
        lo: Optional[List[Any]] = [self.type] if self.type is not None else None
        hi: Optional[List[Any]] = [self.type, {}] if self.type is not None else None
        rows: List[JSON] = []
        for _ in range(self.max_groups):
            known = self._group if not rows and time.monotonic() - self._group_at < self.max_age else None
            if known is not None:
                t, p = known
            else:
                head = self._query(startkey=lo, endkey=hi, limit=1)  # the next priority group
                if not head:
                    break
                t, p = head[0]["key"][0], head[0]["key"][1]
                if not rows:
                    self._group, self._group_at = (t, p), time.monotonic()
            shard = random.randrange(QUEUE_SHARDS)
            got = self._query(startkey=[t, p, shard], endkey=[t, p, {}], limit=self.batch)
            if len(got) < self.batch and shard > 0:  # wrap around to the group's first shards
                got += self._query(startkey=[t, p], endkey=[t, p, shard], limit=self.batch - len(got))
            if known is not None and not got:  # the remembered group is used up: look again
                self._group = None
                continue
            rows += got
            if server_now is None or any(self._claimable(r, server_now, remaining) for r in got):
                break
            lo = [t, p, {}]  # nothing claimable in this group now: look at the next one
        self.rows = rows
        self._rotate_first_group()
        self.last_count = len(rows)
        self.fetched = time.monotonic()
        self.lost_in_row = 0

    def invalidate(self) -> None:
        self.rows = []

    def note(self, won: bool) -> None:
        """Report the outcome of a claim on the last popped row."""
        if won:
            self.lost_in_row = 0
            return
        self.lost_in_row += 1
        if self.lost_in_row >= self.stale_after:
            self.invalidate()
        else:
            self._rotate_first_group()  # another pilot works here: jump elsewhere

    def pop(self, server_now: float, remaining: Optional[float]) -> Optional[JSON]:
        """The next row worth a claim request; None when the list (after one refresh) has none."""
        if not self.rows or time.monotonic() - self.fetched > self.max_age:
            self.refresh(server_now, remaining)
            refreshed = True
        else:
            refreshed = False
        while True:
            self.next_ready = None
            skipped: List[JSON] = []
            while self.rows:
                row = self.rows.pop(0)
                if row.get("id") in self.skip:
                    continue
                nb = (row.get("value") or {}).get("nb") or 0
                if nb > server_now:  # kept for later: it becomes claimable at nb
                    self.next_ready = nb if self.next_ready is None else min(self.next_ready, nb)
                    skipped.append(row)
                    continue
                if not self._claimable(row, server_now, remaining):  # does not fit the walltime
                    continue
                self.rows = skipped + self.rows
                return row
            self.rows = skipped
            if refreshed:
                self.rows = []
                return None
            self.refresh(server_now, remaining)
            refreshed = True
