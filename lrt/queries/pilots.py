"""Pilots: recent launches (what the batch system says) and live leases.

Leases come from ``lrt-web/leases`` (key ``[pilot, _id]``, the columns in the
value), paged by start key; heartbeat age is the server clock minus the
lease's ``renewed``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..couch import Database, NotFound
from .tokens import WEB_DDOC, need_views


#: the ids of launch records (``lrt.launchers`` writes them) start with this
LAUNCH_PREFIX = "launch:"


def pilot_summary(db: Database, type: Optional[str] = None) -> List[Dict[str, Any]]:
    """Recent pilot launches (``lrt launch``) with what the batch system says now."""
    # a database without launch records (pilots started by other means) is told by one
    # cheap request, without importing the launchers: `lrt status` starts faster
    if not db.all_docs(startkey=LAUNCH_PREFIX, endkey=LAUNCH_PREFIX + "\ufff0", limit=1).get("rows"):
        return []
    from ..launchers import launch_summary

    return [r for r in launch_summary(db) if type is None or r.get("type") in (None, type)]


def lease_counts(db: Database) -> Dict[str, int]:
    """``{pilot: number of tokens it holds}`` (one reduce query)."""
    try:
        rows = db.view(WEB_DDOC, "leases", group_level=1).get("rows", [])
    except NotFound:
        raise need_views(db) from None
    return {r["key"][0]: int(r["value"]) for r in rows}


def leases(db: Database, limit: int = 200, start: Optional[list] = None,
           now: Optional[float] = None) -> Dict[str, Any]:
    """A page of live leases in pilot order: ``{"rows", "next", "now"}``.

    ``next`` is the key the following page starts at (None on the last page).
    """
    t = db.server.now() if now is None else now
    params: Dict[str, Any] = {"reduce": False, "limit": limit + 1}
    if start is not None:
        params["startkey"] = start
    try:
        rows = db.view(WEB_DDOC, "leases", **params).get("rows", [])
    except NotFound:
        raise need_views(db) from None
    out = []
    for r in rows[:limit]:
        v = r.get("value") or {}
        renewed = v.get("renewed")
        out.append({"pilot": r["key"][0], "id": r["id"], "type": v.get("type"), "host": v.get("host"),
                    "claimed": v.get("claimed"), "renewed": renewed, "expires": v.get("expires"),
                    "heartbeat_age": None if not isinstance(renewed, (int, float)) else max(0.0, t - renewed),
                    "expired": isinstance(v.get("expires"), (int, float)) and v["expires"] < t,
                    "job": v.get("job"), "system": v.get("system")})
    return {"rows": out, "next": rows[limit]["key"] if len(rows) > limit else None, "now": t}
