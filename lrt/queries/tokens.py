"""Token lists: the (state, type) key ranges over the token views, and pages of
rows with their columns (attempts, pilot, host, duration, error code).

Rows come from ``_design/lrt-web/_view/list``, whose value carries the columns,
so a list never reads documents (no ``include_docs``).  Paging is by start key
(keys end in the ``_id``, so they are unique): a page costs one query of
``limit + 1`` rows whatever its position, never ``skip``.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..couch import Database, NotFound
from ..errors import LrtError
from ..states import State, parse

#: the design document of the dashboard's views (lrt/views/lrt-web): apart from
#: ``lrt`` so adding or changing them never rebuilds the indexes of ``lrt status``
WEB_DDOC = "lrt-web"

KeyRange = Tuple[list, list]


def need_views(db: Database) -> LrtError:
    """The error for a missing view: no database, or views not installed."""
    if not db.exists():
        return LrtError(f"database {db.name} does not exist on {db.server.url} "
                        "(create tokens with `lrt create CONFIG` first)")
    return LrtError(f"lrt's views are not installed (or are outdated) in database {db.name}: "
                    "run `lrt views install`")


def state_type_ranges(state: Optional[str] = None, type: Optional[str] = None,
                      prefix: Tuple[Any, ...] = ()) -> List[KeyRange]:
    """(startkey, endkey) pairs covering ``prefix + [state, type, ...]`` keys.

    The key order is state then type, so a type without a state is one range per
    state (in state-machine order); ``prefix`` selects a key space of the
    ``lrt-web/list`` view (``("s",)``, ``("ts", tokenset)``, ``("e", code)``) and
    is empty for ``lrt/tokens``.
    """
    sts = [parse(state).value] if state is not None else [s.value for s in State]
    p = list(prefix)
    if state is None and type is None:
        return [(p, p + [{}])]
    out: List[KeyRange] = []
    for s in sts:
        if type is None:
            out.append((p + [s], p + [s, {}]))
        else:
            out.append((p + [s, type], p + [s, type, {}]))
    return out


@dataclass
class TokenFilter:
    """What the Tokens page and ``lrt list`` select on (all optional)."""

    state: Optional[str] = None
    type: Optional[str] = None
    tokenset: Optional[str] = None
    code: Optional[int] = None

    def __post_init__(self) -> None:
        if self.state is not None:
            self.state = parse(self.state).value  # a clear error for an unknown state

    def ranges(self) -> List[KeyRange]:
        if self.tokenset is not None:
            return state_type_ranges(self.state, self.type, ("ts", self.tokenset))
        if self.code is not None:
            return state_type_ranges(self.state, self.type, ("e", self.code))
        return state_type_ranges(self.state, self.type, ("s",))

    def accepts(self, row: Dict[str, Any]) -> bool:
        """The filters the key range cannot express (error code within a tokenset)."""
        v = row.get("value") or {}
        return self.tokenset is None or self.code is None or v.get("e") == self.code


def row_of(view_row: Dict[str, Any]) -> Dict[str, Any]:
    """One ``lrt-web/list`` view row as a flat dict."""
    k, v = view_row["key"], view_row.get("value") or {}
    # ["s", state, type, id] / ["ts", set, state, type, id] / ["e", code, state, type, id]
    state, ttype = (k[1], k[2]) if k[0] == "s" else (k[2], k[3])
    return {"id": view_row["id"], "state": state, "type": ttype, "attempts": v.get("a"),
            "pilot": v.get("p"), "host": v.get("h"), "duration": v.get("d"), "error": v.get("e"),
            "tokenset": v.get("t"), "updated": v.get("u"), "staging": v.get("st")}


def encode_cursor(range_index: int, key: list) -> str:
    raw = json.dumps([range_index, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Tuple[int, list]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        i, key = json.loads(raw)
        if not isinstance(i, int) or not isinstance(key, list):
            raise ValueError
        return i, key
    except (ValueError, TypeError):
        raise LrtError("not a valid page cursor (start again from the first page)") from None


@dataclass
class Page:
    rows: List[Dict[str, Any]] = field(default_factory=list)
    #: where the next page starts (None: this is the last page)
    next: Optional[str] = None


def page(db: Database, flt: TokenFilter, limit: int = 100, cursor: Optional[str] = None,
         max_queries: int = 20) -> Page:
    """One page of rows (at most ``limit``) in key order, starting at ``cursor``.

    Each query asks for ``limit + 1`` rows from the current start key; the extra
    row is the next page's start.  A page may need one query per key range
    (type without state) and is cut at ``max_queries`` queries.
    """
    ranges = flt.ranges()
    ri, start = (0, None) if not cursor else decode_cursor(cursor)
    out = Page()
    queries = 0
    while ri < len(ranges) and queries < max_queries:
        lo, hi = ranges[ri]
        want = limit - len(out.rows)
        try:
            rows = db.view(WEB_DDOC, "list", reduce=False, startkey=start if start is not None else lo,
                           endkey=hi, limit=want + 1).get("rows", [])
        except NotFound:
            raise need_views(db) from None
        queries += 1
        for r in rows[:want]:
            if flt.accepts(r):
                out.rows.append(row_of(r))
        if len(rows) > want:
            nxt = rows[want]["key"]
            if len(out.rows) >= limit:
                out.next = encode_cursor(ri, nxt)
                return out
            start = nxt  # rows were filtered out: keep reading this range
            continue
        ri, start = ri + 1, None
    if ri < len(ranges):
        out.next = encode_cursor(ri, start if start is not None else ranges[ri][0])
    return out


def iter_rows(db: Database, flt: TokenFilter, limit: Optional[int] = None,
              page_size: int = 1000) -> Iterator[Dict[str, Any]]:
    """Every selected row (at most ``limit``), page by page."""
    seen = 0
    cursor: Optional[str] = None
    while True:
        n = page_size if limit is None else min(page_size, limit - seen)
        if n <= 0:
            return
        p = page(db, flt, n, cursor)
        for r in p.rows:
            yield r
            seen += 1
        if p.next is None:
            return
        cursor = p.next
