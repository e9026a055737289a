"""Tokens whose pilot vanished: find leases that expired (``lrt/locked`` view)
and reap them through the ``reap`` handler, which decides again on the
server's clock (run by idle pilots in housekeeping and by ``lrt reap``)."""
from __future__ import annotations

from typing import Any, Dict, List

from ..couch import Database
from ..design import MONITOR_DDOC
from .client import TokenClient

JSON = Dict[str, Any]


def expired_leases(db: Database, grace: float, limit: int = 500) -> List[JSON]:
    """Rows of the ``lrt/locked`` view whose lease ran out more than ``grace`` s ago.

    Uses the server clock (from the last response's ``Date``); the reap handler
    checks again on the server, so a skewed estimate here only costs a request.
    """
    # the Date header has one-second resolution (and truncates): look one second further
    now = db.server.now() + 1.0
    rows: List[Dict[str, Any]] = db.view(MONITOR_DDOC, "locked", endkey=now - grace, limit=limit).get("rows", [])
    return rows


def reap_expired(client: TokenClient, grace: float, *, dry_run: bool = False,
                 limit: int = 500) -> List[JSON]:
    """Reap every token whose lease expired ``grace`` seconds ago (server clock).

    Returns one report per candidate: {id, pilot, expires, state (new) or reason}.
    """
    out: List[JSON] = []
    for row in expired_leases(client.db, grace, limit=limit):
        rep: JSON = {"id": row["id"], "expires": row["key"],
                     "pilot": (row.get("value") or {}).get("pilot")}
        if dry_run:
            rep["state"] = "would reap"
        else:
            ans = client.reap(row["id"], grace)
            if ans.ok:
                rep["state"] = ans.body.get("state")
                client.stats.reaped += 1
            else:
                rep["reason"] = ans.reason
        out.append(rep)
    return out
