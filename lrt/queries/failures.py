"""Failures grouped by error code and by message prefix (``lrt errors`` and the
Failures page).

One reduce query over ``lrt-web/errors`` (key ``[code, prefix, type, state]``,
``_stats`` of the error time) gives every group with its count and first/last
seen; the name and class of each code come from :mod:`lrt.errorcodes`.  Sample
tokens of a group are one more query of a few rows (``reduce=false``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from .. import errorcodes
from ..couch import Database, NotFound
from .tokens import WEB_DDOC, need_views


@dataclass
class Group:
    """One (code, message prefix) group; ``states`` counts its tokens per state."""

    code: Optional[int]
    prefix: str
    count: int = 0
    first: Optional[float] = None
    last: Optional[float] = None
    states: Dict[str, int] = field(default_factory=dict)
    types: Dict[str, int] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "prefix": self.prefix, "count": self.count, "first": self.first,
                "last": self.last, "states": dict(self.states), "types": dict(self.types)}


@dataclass
class CodeGroup:
    """Every group of one error code."""

    code: Optional[int]
    name: Optional[str]
    cls: Optional[str]
    meaning: Optional[str]
    count: int = 0
    first: Optional[float] = None
    last: Optional[float] = None
    groups: List[Group] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "name": self.name, "class": self.cls, "meaning": self.meaning,
                "count": self.count, "first": self.first, "last": self.last,
                "groups": [g.to_json() for g in self.groups]}


def _merge(a: Optional[float], b: Optional[float], fn: Any) -> Optional[float]:
    return b if a is None else (a if b is None else fn(a, b))


def error_groups(db: Database, type: Optional[str] = None) -> List[CodeGroup]:
    """Every error code with its message-prefix groups, largest first."""
    try:
        rows = db.view(WEB_DDOC, "errors", group_level=4).get("rows", [])
    except NotFound:
        raise need_views(db) from None
    codes: Dict[Any, CodeGroup] = {}
    groups: Dict[Any, Group] = {}
    for r in rows:
        code, prefix, ttype, state = r["key"][:4]
        if type is not None and ttype != type:
            continue
        v = r["value"]
        n, lo, hi = int(v["count"]), v.get("min"), v.get("max")
        lo = lo or None  # 0: the token had no time
        cg = codes.get(code)
        if cg is None:
            known = errorcodes.BY_CODE.get(code) if isinstance(code, int) else None
            cg = codes[code] = CodeGroup(code, known.name if known else None, known.cls if known else None,
                                         known.meaning if known else None)
        g = groups.get((code, prefix))
        if g is None:
            g = groups[(code, prefix)] = Group(code, prefix)
            cg.groups.append(g)
        for obj in (g, cg):
            obj.count += n
            obj.first = _merge(obj.first, lo, min)
            obj.last = _merge(obj.last, hi, max)
        g.states[state] = g.states.get(state, 0) + n
        g.types[ttype] = g.types.get(ttype, 0) + n
    out = sorted(codes.values(), key=lambda c: (-c.count, str(c.code)))
    for c in out:
        c.groups.sort(key=lambda g: (-g.count, g.prefix))
    return out


def group_range(code: Any, prefix: Optional[str] = None) -> Dict[str, Any]:
    """View parameters selecting one code (or one code and prefix) in ``lrt-web/errors``."""
    k = [code] if prefix is None else [code, prefix]
    return {"startkey": k, "endkey": k + [{}]}


def group_tokens(db: Database, code: Any, prefix: Optional[str] = None, type: Optional[str] = None,
                 limit: Optional[int] = None, page_size: int = 1000) -> Iterator[Dict[str, Any]]:
    """Tokens of a group as ``{"id", "type", "state", "time"}`` (no documents read)."""
    seen = 0
    try:
        for r in db.iter_view(WEB_DDOC, "errors", page_size=page_size, **group_range(code, prefix)):
            _, _, ttype, state = r["key"][:4]
            if type is not None and ttype != type:
                continue
            yield {"id": r["id"], "type": ttype, "state": state, "time": r.get("value")}
            seen += 1
            if limit is not None and seen >= limit:
                return
    except NotFound:
        raise need_views(db) from None


def errors_json(db: Database, type: Optional[str] = None, samples: int = 3) -> Dict[str, Any]:
    """The ``lrt errors --json`` document: codes, their groups and a few sample token ids."""
    out = []
    for c in error_groups(db, type):
        cj = c.to_json()
        for gj in cj["groups"]:
            gj["sample"] = [t["id"] for t in group_tokens(db, c.code, gj["prefix"], type, limit=samples)]
        out.append(cj)
    return {"db": db.name, "type": type, "total": sum(c["count"] for c in out), "codes": out}
