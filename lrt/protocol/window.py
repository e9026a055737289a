"""The claim queue as a pilot sees it: :class:`Candidates`, a reusable window of
claimable rows (with their documents) read from ``_design/lrt-window/_view/todo``
(``lrt-claim/todo`` with ``include_docs`` on a database set up by an older lrt)."""
from __future__ import annotations

import random
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from ..couch import CouchError, Database, NotFound
from ..design import CLAIM_DDOC, QUEUE_SHARDS, WINDOW_DDOC
from .stats import Stats

JSON = Dict[str, Any]


class Candidates:
    """A reusable window of claimable tokens (with their documents) from the ``todo`` view.

    The view's key is ``[type, -priority, shard, created, _id]`` (``shard``: a
    hash of the id, :data:`lrt.design.QUEUE_SHARDS` of them).  A refresh finds
    the highest priority group with one ``limit=1`` query, then reads
    ``batch`` rows of that group *starting at a random shard*, each with its
    document as the value (``lrt-window/todo``: no ``include_docs`` lookup per
    row): pilots started together read different stretches of the queue
    instead of all fighting for its first rows, and a small window is cheap to
    read (a row with its document costs about 0.2 ms of server CPU, so a
    500-row window cost more than the claims it served).  On CouchDB both
    queries go in one request (the ``queries`` endpoint), guessing the group
    (the last one found, else the pilot's type at the default priority);
    a server without it (pouchdb-server) gets them one by one.  A window that
    comes back short is used as it is; only an empty one wraps around to the
    group's first shards.

    Within the window the pilot starts at a random row and walks on.  Pilots
    walk their stretches in the same direction, so a lost claim almost always
    means this pilot has run into another one's stretch, where every row
    ahead is taken too: after ``stale_after`` (1) lost claims in a row, or after
    ``max_age`` seconds, the window is read again, from a new random shard.
    (With 3, as before, 32 pilots on 2,000 tokens lost 0.2 claims per claim:
    docs/benchmarks.md.)  Rows carry ``not_before`` and
    ``expected_duration``, so unclaimable rows are skipped without a write;
    if a whole priority group is unclaimable now (retry backoff, walltime),
    the next group is read too.  The first group found is remembered for
    ``max_age`` seconds: the next refreshes read its window directly, without
    the ``limit=1`` query, so a new higher-priority group is seen within
    ``max_age``, as a window is reused that long anyway; an empty window
    forgets it at once.  (Where the head query comes free with the window,
    every refresh makes it.)
    """

    def __init__(self, db: Database, token_type: Optional[str], batch: int = 100,
                 max_age: float = 30.0, stale_after: int = 1, stats: Optional[Stats] = None,
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
        #: False once the server turned out not to take several view queries in one request
        self._multi = True

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
                    self._value_is_doc(r)
                return rows
        rows = self.db.view(CLAIM_DDOC, "todo", reduce=False, include_docs=True, conflicts=True,
                            **params).get("rows", [])
        return rows

    #: statuses that say "no multi-query endpoint here" (the plain queries are used instead)
    _NO_MULTI = (400, 404, 405, 415, 501)

    def _window_query(self, t: Any, p: Any, shard: int) -> JSON:
        """View parameters (JSON values) of the window of group ``(t, p)`` from ``shard``."""
        return {"startkey": [t, p, shard], "endkey": [t, p, {}], "limit": self.batch}

    def _head_and_window(self, lo: Optional[List[Any]], hi: Optional[List[Any]],
                         guess: Tuple[Any, Any], shard: int) -> Optional[Tuple[List[JSON], List[JSON]]]:
        """The head query and the window of the group ``guess`` in one request (CouchDB's
        ``queries`` endpoint): a pilot's first read, and every read after ``max_age``, costs
        one request instead of two when the top group is the one guessed (as it is unless
        priorities change).  None, once and for all, on a server without the endpoint."""
        head: JSON = {"limit": 1, "reduce": False}
        if lo is not None:
            head.update(startkey=lo, endkey=hi)
        win = dict(self._window_query(guess[0], guess[1], shard), reduce=False)
        try:
            results = self.db.view_queries(WINDOW_DDOC, "todo", [head, win])
        except CouchError as exc:
            # pouchdb-server answers 400; a missing lrt-window (404) is told apart by the
            # plain query that follows
            if exc.status not in self._NO_MULTI:
                raise
            self._multi = False
            return None
        self.stats.view_queries += 1
        out = []
        for res in results:
            rows = res.get("rows", []) if isinstance(res, dict) else []
            for r in rows:
                self._value_is_doc(r)
            out.append(rows)
        return out[0], out[1]

    @staticmethod
    def _value_is_doc(r: JSON) -> None:
        d = r["doc"] = r.get("value") or {}
        r["value"] = {"nb": d.get("not_before") or 0, "dur": d.get("expected_duration") or 0}

    def _guess(self) -> Optional[Tuple[Any, Any]]:
        """The group the head query will most likely find: the last one found, else the
        pilot's type at the default priority."""
        if self._group is not None:
            return self._group
        return (self.type, 0) if self.type is not None else None

    def refresh(self, server_now: Optional[float] = None, remaining: Optional[float] = None) -> None:
        lo: Optional[List[Any]] = [self.type] if self.type is not None else None
        hi: Optional[List[Any]] = [self.type, {}] if self.type is not None else None
        rows: List[JSON] = []
        for _ in range(self.max_groups):
            shard = random.randrange(QUEUE_SHARDS)
            first = not rows
            known = self._group if first and time.monotonic() - self._group_at < self.max_age else None
            got: Optional[List[JSON]] = None
            guess = self._guess() if first and self._window and self._multi else None
            both = self._head_and_window(lo, hi, guess, shard) if guess is not None else None
            if both is not None:  # a fresh head query came with the window: no need to trust `known`
                known = None
                if not both[0]:
                    break
                t, p = both[0][0]["key"][0], both[0][0]["key"][1]
                if (t, p) == guess:
                    got = both[1]
                self._group, self._group_at = (t, p), time.monotonic()
            elif known is not None:
                t, p = known
            else:
                head = self._query(startkey=lo, endkey=hi, limit=1)  # the next priority group
                if not head:
                    break
                t, p = head[0]["key"][0], head[0]["key"][1]
                if first:
                    self._group, self._group_at = (t, p), time.monotonic()
            if got is None:
                got = self._query(**self._window_query(t, p, shard))
            if not got and shard > 0:
                # nothing from this shard on: wrap around to the group's first shards.  Only
                # then: a short window is still worth claiming from (one request less)
                got = self._query(startkey=[t, p], endkey=[t, p, shard], limit=self.batch)
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
