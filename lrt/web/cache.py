"""One server-side cache of query results, shared by every viewer.

Each read model is cached under a key naming the query (``("status", type)``)
for ``ttl`` seconds.  Single flight: while one thread computes a key, every
other thread asking for it waits for that result instead of sending its own
query, so N open browser tabs cost the database what one costs.  Errors are
handed to the waiting callers and not cached.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional


class _Entry:
    __slots__ = ("value", "error", "at", "done")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: Optional[BaseException] = None
        self.at = 0.0
        self.done = threading.Event()


class QueryCache:
    """A TTL cache with single-flight computation, at most ``max_entries`` keys (LRU)."""

    def __init__(self, ttl: float = 5.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Hashable, _Entry]" = OrderedDict()
        #: computations run (each is one or more database requests)
        self.computed = 0
        #: answers served from the cache or from another caller's computation
        self.shared = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            e = self._entries.get(key)
            if e is not None and e.done.is_set() and e.error is None and self.clock() - e.at < self.ttl:
                self._entries.move_to_end(key)
                self.shared += 1
                return e.value
            if e is not None and not e.done.is_set():
                owner = False
                self.shared += 1
            else:
                e = _Entry()
                self._entries[key] = e
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                owner = True
                self.computed += 1
        if not owner:
            e.done.wait()
            if e.error is not None:
                raise e.error
            return e.value
        try:
            e.value = compute()
            e.at = self.clock()
        except BaseException as exc:
            e.error = exc
            with self._lock:
                if self._entries.get(key) is e:
                    del self._entries[key]
            raise
        finally:
            e.done.set()
        return e.value

    def clear(self) -> None:
        """Forget every result (after an action changed tokens)."""
        with self._lock:
            self._entries = OrderedDict((k, e) for k, e in self._entries.items() if not e.done.is_set())
