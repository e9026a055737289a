"""Counts: ``lrt status --json`` (per type and state) and per tokenset.

Both are one reduce query each (``_count`` with ``group_level``), so their cost
does not grow with the number of tokens on Apache CouchDB (the embedded server
recomputes reductions on every query: see docs/dashboard.md).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..couch import Database, NotFound
from ..states import State
from .tokens import WEB_DDOC, need_views

_ORDER = [s.value for s in State]


def ordered(counts: Dict[str, int]) -> Dict[str, int]:
    """``{state: n}`` in state-machine order (unknown states last, by name)."""
    return {s: counts[s] for s in sorted(counts, key=lambda x: (_ORDER.index(x) if x in _ORDER else 99, x))}


def status_json(db: Database, type: Optional[str] = None) -> Dict[str, Any]:
    """The ``lrt status --json`` document (shape documented in docs/tokens.md)."""
    counts = status_counts(db, type)
    totals: Dict[str, int] = {}
    for by_state in counts.values():
        for s, k in by_state.items():
            totals[s] = totals.get(s, 0) + k
    out: Dict[str, Any] = {"db": db.name, "types": {t: ordered(counts[t]) for t in sorted(counts)},
                           "states": ordered(totals), "total": sum(totals.values())}
    conflicted = conflicted_count(db)
    if conflicted:  # only when some remain (see docs/tokens.md)
        out["conflicted"] = conflicted
    return out


def tokenset_counts(db: Database, type: Optional[str] = None) -> Dict[str, Dict[str, Dict[str, int]]]:
    """``{tokenset: {type: {state: n}}}`` from one reduce query (``group_level=4``)."""
    try:
        rows = db.view(WEB_DDOC, "list", group_level=4, startkey=["ts"], endkey=["ts", {}]).get("rows", [])
    except NotFound:
        raise need_views(db) from None
    out: Dict[str, Dict[str, Dict[str, int]]] = {}
    for r in rows:
        _, ts, state, ttype = r["key"][:4]
        if type is not None and ttype != type:
            continue
        by_state = out.setdefault(ts, {}).setdefault(ttype, {})
        by_state[state] = by_state.get(state, 0) + int(r["value"])
    return {ts: {t: ordered(v) for t, v in sorted(out[ts].items())} for ts in sorted(out)}


def status_counts(db: Database, type: Optional[str] = None) -> Dict[str, Dict[str, int]]:
    """Token counts per type and state (one reduce query, ``group_level=2``).

    Returns ``{type: {state: count}}``, only non-zero counts.
    """
    try:
        rows = db.view("lrt", "tokens", group_level=2).get("rows", [])
    except NotFound:
        raise need_views(db) from None
    out: Dict[str, Dict[str, int]] = {}
    for row in rows:
        key = row.get("key") or []
        if len(key) < 2:
            continue
        state, ttype = key[0], key[1]
        if type is not None and ttype != type:
            continue
        out.setdefault(ttype, {})[state] = out.get(ttype, {}).get(state, 0) + int(row["value"])
    return out


def conflicted_count(db: Database) -> int:
    """How many documents have conflicting revisions (possible on a CouchDB cluster).

    The ``total_rows`` of the ``lrt/conflicts`` view read with ``limit=0``: no
    row is sent.  Pilots resolve such tokens in their housekeeping, ``lrt reap``
    on demand; a count that stays above zero points at a problem.
    """
    try:
        return int(db.view("lrt", "conflicts", limit=0).get("total_rows") or 0)
    except NotFound:
        raise need_views(db) from None
