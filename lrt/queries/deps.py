"""The dependency graph at the level of token sets, for the dashboard's overview.

One grouped read of ``lrt-deps/setgraph`` (key ``[child set, parent set]``,
``_count``): the whole graph in one small answer, whatever the number of
tokens.  Each set's progress comes from the overview's per-tokenset counts, so
the graph costs the database one request per refresh.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from ..couch import Database, NotFound
from ..deps.release import DEPS_DDOC


@dataclass(frozen=True)
class SetEdge:
    """Tokens of set ``child`` that wait for (tokens of) set ``parent``."""

    parent: str
    child: str
    dependencies: int  #: dependency entries of child tokens that name the parent set


def set_edges(db: Database) -> List[SetEdge]:
    """Every parent-set -> child-set edge, parents first (a database without the
    dependency views has none)."""
    try:
        rows = db.view(DEPS_DDOC, "setgraph", group=True).get("rows", [])
    except NotFound:
        return []
    edges = [SetEdge(str(r["key"][1]), str(r["key"][0]), int(r["value"]))
             for r in rows if len(r.get("key") or []) == 2 and r["key"][0] != r["key"][1]]
    depth: Dict[str, int] = {}

    def level(s: str, seen: frozenset = frozenset()) -> int:
        if s not in depth:
            ups = [e.parent for e in edges if e.child == s and e.parent not in seen]
            depth[s] = 1 + max((level(p, seen | {s}) for p in ups), default=-1)
        return depth[s]

    return sorted(edges, key=lambda e: (level(e.parent), e.parent, e.child))
