"""Conflicted tokens (CouchDB clusters): which leaf survives, and the resolver
that deletes the others (docs/pilot.md, "Conflicts on a cluster" in docs/design.md).

:func:`choose_leaf` is deterministic, so every resolver -- pilots in
housekeeping, ``lrt resolve``, a claimer whose quorum was uncertain -- keeps
the same leaf.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import states
from ..couch import Database
from ..design import MONITOR_DDOC

JSON = Dict[str, Any]

#: order of preference when conflicting leaves of one token disagree (str-valued states:
#: looked up with the stored ``state`` string)
TERMINAL_RANK: Dict[states.State, int] = {states.State.DONE: 0, states.State.ERROR: 1, states.State.FAILED: 2,
                                          states.State.CANCELLED: 3}


def choose_leaf(leaves: Sequence[JSON], winner_rev: Optional[str] = None) -> JSON:
    """The leaf that survives, deterministically (every resolver picks the same one).

    1. a terminal leaf (done > error > failed > cancelled; ties by rev),
    2. else a locked leaf with the earliest ``lease.claimed`` (tie: smallest claim id),
    3. else CouchDB's own winner (``winner_rev``), else the highest rev.
    """
    terminal = [d for d in leaves if d.get("state") in TERMINAL_RANK]
    if terminal:
        return sorted(terminal, key=lambda d: (TERMINAL_RANK[d["state"]], str(d.get("_rev"))))[0]
    locks = [d for d in leaves if d.get("state") == states.State.LOCKED.value and isinstance(d.get("lease"), dict)]
    if locks:
        return sorted(locks, key=lambda d: (d["lease"].get("claimed") or 0,
                                            str(d["lease"].get("claim") or "")))[0]
    for d in leaves:
        if winner_rev is not None and d.get("_rev") == winner_rev:
            return d
    return sorted(leaves, key=lambda d: _rev_key(str(d.get("_rev"))))[-1]


def _rev_key(rev: str) -> Tuple[int, str]:
    n, _, h = rev.partition("-")
    try:
        return (int(n), h)
    except ValueError:
        return (0, rev)


def _lease_live(doc: JSON, now: float) -> bool:
    lease = doc.get("lease")
    return (doc.get("state") == states.State.LOCKED.value and isinstance(lease, dict)
            and isinstance(lease.get("expires"), (int, float)) and lease["expires"] > now)


def resolve_conflicts(db: Database, ids: Optional[Sequence[str]] = None, *, limit: int = 200,
                      dry_run: bool = False) -> List[JSON]:
    """Resolve conflicted tokens: keep :func:`choose_leaf`, delete the other leaves.

    Leaves are read from every copy.  Deleting the others makes the kept leaf
    CouchDB's winner.  A token with no terminal leaf but a live lease on one of
    its leaves is left alone: a pilot may be running that leaf (a claim
    answered 201 is never checked), and a pilot whose claim lost removes its
    own leaf; such a token is resolved once it finishes or the lease expires.
    A leaf somebody else deleted meanwhile counts as deleted (idempotent).
    ``ids`` defaults to the ``lrt/conflicts`` view.  Returns one report per
    resolved document: {id, kept, state, deleted: [revs], failed: [revs]?}.
    """
    if ids is None:
        rows = db.view(MONITOR_DDOC, "conflicts", limit=limit).get("rows", [])
        ids = [r["id"] for r in rows]
    reports: List[JSON] = []
    now: Optional[float] = None
    for doc_id in ids:
        leaves = [d for d in db.leaves(doc_id, all_copies=True) if not d.get("_deleted")]
        if len(leaves) < 2:
            continue
        keep = choose_leaf(leaves)
        if keep.get("state") not in TERMINAL_RANK:
            now = db.server.now() if now is None else now
            if any(_lease_live(d, now) for d in leaves):
                continue
        report: JSON = {"id": doc_id, "kept": keep["_rev"], "state": keep.get("state"),
                        "deleted": [d["_rev"] for d in leaves if d["_rev"] != keep["_rev"]]}
        if not dry_run:
            for rev in report["deleted"]:  # one per request: _bulk_docs wants unique ids per batch
                res = db.bulk_docs([{"_id": doc_id, "_rev": rev, "_deleted": True}])
                if doc_id in res.errors:  # a conflict: that leaf is gone already
                    report.setdefault("failed", []).append(rev)
        reports.append(report)
    return reports
