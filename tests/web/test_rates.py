"""The rate plot's read model: the bucket arithmetic (pure), and the counts per bucket
read from the real server's ``lrt-rates/finished`` view against the tokens finished in
each bucket, counted here by brute force from the tokens written."""
from __future__ import annotations

import random
from typing import List, Optional, Tuple

import pytest

from lrt.queries import rates
from lrt.queries.rates import Rates, buckets, finished_per_minute, key_range, plan, row_start

from pilot_helpers import poll

# -- bucket arithmetic ---------------------------------------------------------------


def tiles(first: int, last: int) -> List[Tuple[int, int, int]]:
    """(level, start, end) of every bucket of the plan for minutes first..last."""
    return [(level, s, e) for level, lo, hi in plan(first, last) for s, e in buckets(level, lo, hi)]


@pytest.mark.parametrize("last", [29936158, 29936160, 29936164, 29936179, 29936180, 29936219])
@pytest.mark.parametrize("window", [1, 15, 16, 17, 60, 61, 75, 76, 180, 600])
def test_plan_tiles_the_window_in_whole_or_cut_buckets(last, window):
    first = last - window + 1
    ts = tiles(first, last)
    # contiguous, no gap and no overlap, exactly the window
    assert ts[0][1] == first and ts[-1][2] == last + 1
    assert all(a[2] == b[1] for a, b in zip(ts, ts[1:]))
    for level, s, e in ts:
        w = rates.WIDTH[level]
        assert 0 < e - s <= w
        assert s // w == (e - 1) // w  # inside one bucket of its level (cut at most at the edges)
        edges = {first, last - 60, last - 15, last + 1}  # where the ranges begin and end
        assert s in edges or s % w == 0  # a bucket is cut only at a range edge
        assert e in edges or e % w == 0
    # coarse to fine, and the newest minutes one by one
    levels = [level for level, _, _ in ts]
    assert levels == sorted(levels)
    assert [(s, e) for level, s, e in ts if s >= last - 15] == [(m, m + 1) for m in range(max(first, last - 15), last + 1)]
    # the minute and the 5-minute ranges begin exactly 15 and 60 minutes before the current one
    if window > 16:
        assert (4, last - 15) in {(level, s) for level, s, _ in ts}
    if window > 61:
        assert (3, last - 60) in {(level, s) for level, s, _ in ts}


def test_plan_of_the_dashboard_window_is_a_few_dozen_groups():
    for last in range(29936100, 29936220):
        n = len(tiles(last - 179, last))
        assert 27 <= n <= 30, (last, n)  # 180 before: one group per minute and outcome
        assert len(plan(last - 179, last)) == 3
    assert [level for level, _, _ in plan(100, 115)] == [4]  # lrt status --watch: minutes only


def test_plan_refuses_an_empty_window():
    with pytest.raises(ValueError):
        plan(10, 9)
    with pytest.raises(ValueError):
        plan(0, 100, minute_tail=61, fine_tail=60)


def test_buckets_are_cut_at_both_edges():
    assert buckets(2, 130, 250) == [(130, 180), (180, 240), (240, 250)]
    assert buckets(3, 7, 21) == [(7, 10), (10, 15), (15, 20), (20, 21)]
    assert buckets(4, 5, 8) == [(5, 6), (6, 7), (7, 8)]
    assert buckets(3, 10, 10) == []


def test_key_range_and_row_start():
    lo, hi = 29936040, 29936100  # minutes [lo, hi)
    assert key_range(None, lo, hi) == ([None, lo // 60, lo // 5, lo], [None, (hi - 1) // 60, (hi - 1) // 5, hi - 1])
    assert key_range("a", lo, hi)[0][0] == "a"
    # a grouped row's key is the prefix of group_level elements; its bucket begins at the
    # bucket's start, or at the range start if the range cuts the bucket
    m = 29936047
    assert row_start(2, [None, m // 60], lo) == max(lo, m // 60 * 60)
    assert row_start(3, [None, m // 60, m // 5], lo) == m // 5 * 5
    assert row_start(4, [None, m // 60, m // 5, m], lo) == m
    assert row_start(2, [None, (lo - 1) // 60 + 0], lo + 7) == lo + 7


def test_rates_over_variable_buckets():
    # 60-min bucket, two 5-min buckets, then minutes 70..75 (75: the current, partial one)
    r = Rates(starts=[0, 60, 65] + list(range(70, 76)), widths=[60, 5, 5] + [1] * 6,
              done=[600, 50, 25, 3, 3, 3, 3, 3, 99], failed=[60, 5, 0, 1, 1, 1, 1, 1, 99])
    assert r.totals(5) == (15, 5)  # minutes 70..74, the current minute left out
    assert r.per_minute(5) == pytest.approx(20 / 5)
    assert r.totals(10) == (40, 5)  # 65..74: the 5-min bucket 65..69 is inside
    assert r.totals(12) == (40, 5)  # 63..74: the bucket 60..64 is not wholly inside
    assert r.per_minute(12) == pytest.approx(45 / 10)  # over the minutes covered
    assert r.totals(1000) == (690, 70)
    assert r.eta(90, 5) == pytest.approx(90 / 4 * 60)
    assert r.eta(0) == 0.0
    assert Rates().per_minute() == 0.0 and Rates().eta(5) is None
    p = r.plot()
    assert p["x"][:3] == [0, 3600, 3900] and p["x"][-1] == 76 * 60  # the end of the last bucket
    assert p["done"][:3] == [10.0, 10.0, 5.0]  # per minute: count / width
    assert len(p["x"]) == len(p["done"]) == len(p["failed"]) == len(r.starts) + 1


# -- against the server --------------------------------------------------------------

WINDOW = 180


def _token(i: int, state: str, t: float, type: Optional[str]) -> dict:
    doc = {"_id": f"r{i:05d}", "kind": "token", "schema": 1, "state": state, "updated": t,
           "timings": {"finished": t}}
    if type is not None:
        doc["type"] = type
    return doc


def test_counts_per_bucket_equal_the_tokens_finished_in_it(db, server):
    now = server.now()
    last = int(now // 60)
    first = last - WINDOW + 1
    rnd = random.Random(11)
    docs, fins = [], []
    for i in range(1500):
        # finish times spread over the window and 30 minutes either side of it, many in
        # the last quarter hour, some on bucket edges
        if i % 5 == 0:
            m = last - rnd.choice([0, 1, 14, 15, 16, 59, 60, 61, 179, 180])
            t = m * 60 + rnd.choice([0.0, 59.999])
        elif i % 3 == 0:
            t = now - rnd.random() * 16 * 60
        else:
            t = (first - 30) * 60 + rnd.random() * (WINDOW + 60) * 60
        state = rnd.choice(["done", "done", "done", "error", "failed", "cancelled"])
        type = rnd.choice(["a", "b", None])
        docs.append(_token(i, state, t, type))
        fins.append((state, type, int(t // 60)))
    for k in range(0, len(docs), 500):
        assert not db.bulk_docs(docs[k:k + 500]).errors
    # (on a cluster a view may be read from a copy the writes have not all reached yet)
    in_window = sum(1 for st, _, m in fins if first <= m <= last and st != "cancelled")
    poll(lambda: (lambda r: sum(r.done) + sum(r.failed) == in_window)(finished_per_minute(db, WINDOW, now=now)),
         timeout=60, what="every finished token in the rates view")
    t0 = server.requests_sent
    r = finished_per_minute(db, WINDOW, now=now)
    assert server.requests_sent - t0 == 3  # hours, 5-minutes, minutes
    assert r.starts[0] == first and r.starts[-1] == last and r.widths[-1] == 1
    assert sum(r.widths) == WINDOW
    for ttype in (None, "a", "b"):
        rt = r if ttype is None else finished_per_minute(db, WINDOW, type=ttype, now=now)
        assert rt.starts == r.starts and rt.widths == r.widths
        for i, (s, w) in enumerate(zip(rt.starts, rt.widths)):
            want_done = sum(1 for st, ty, m in fins if st == "done" and s <= m < s + w
                            and (ttype is None or ty == ttype))
            want_failed = sum(1 for st, ty, m in fins if st in ("error", "failed") and s <= m < s + w
                              and (ttype is None or ty == ttype))
            assert (rt.done[i], rt.failed[i]) == (want_done, want_failed), (ttype, s, w)
    in_last = [st for st, _, m in fins if last - 15 <= m < last and st != "cancelled"]
    assert r.totals(15) == (in_last.count("done"), len(in_last) - in_last.count("done"))
    assert r.per_minute(15) == pytest.approx(len(in_last) / 15)
    hour = [st for st, _, m in fins if last - 60 <= m < last and st != "cancelled"]
    assert r.totals(60) == (hour.count("done"), len(hour) - hour.count("done"))
    assert sum(r.done) + sum(r.failed) == sum(1 for st, _, m in fins if first <= m <= last and st != "cancelled")
    # a short window (lrt status --watch) is one query of minutes
    t0 = server.requests_sent
    short = finished_per_minute(db, 16, now=now)
    assert server.requests_sent - t0 == 1
    assert short.widths == [1] * 16 and short.starts == list(range(last - 15, last + 1))
    assert short.done == r.done[-16:] and short.failed == r.failed[-16:]


def test_without_the_view_the_error_says_what_to_do(empty_db):
    empty_db.put({"_id": "x"})
    from lrt.errors import LrtError

    with pytest.raises(LrtError, match="lrt views install"):
        finished_per_minute(empty_db, 180)
