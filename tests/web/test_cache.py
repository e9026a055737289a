"""The dashboard's shared query cache: one computation per key and TTL, however many
callers (real threads; the dashboard tests exercise it against the server)."""
from __future__ import annotations

import threading

import pytest

from lrt.web.cache import QueryCache


def test_single_flight_and_ttl():
    now = [0.0]
    c = QueryCache(ttl=5, clock=lambda: now[0])
    gate, calls = threading.Event(), []

    def compute():
        calls.append(1)
        gate.wait(10)
        return len(calls)

    out = []
    threads = [threading.Thread(target=lambda: out.append(c.get("k", compute))) for _ in range(20)]
    for t in threads:
        t.start()
    while not calls:  # the first caller is computing; the others must wait for it
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert out == [1] * 20 and len(calls) == 1
    assert c.get("k", compute) == 1 and len(calls) == 1  # fresh: served from the cache
    now[0] = 5.1
    assert c.get("k", compute) == 2  # stale: computed again
    assert c.get("other", compute) == 3  # another query, another key


def test_errors_are_shared_not_cached():
    c = QueryCache(ttl=5)
    n = []

    def boom():
        n.append(1)
        raise RuntimeError("server down")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            c.get("k", boom)
    assert len(n) == 2
    assert c.get("k", lambda: "ok") == "ok"


def test_bounded():
    c = QueryCache(ttl=60, max_entries=3)
    for i in range(10):
        c.get(i, lambda: i)
    assert len(c._entries) == 3
