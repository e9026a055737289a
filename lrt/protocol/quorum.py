"""Writes a cluster accepted on fewer copies than its write quorum (HTTP 202).

On a CouchDB cluster a document write is answered 201 once ``w`` copies
(a majority of ``n`` by default) have it, and 202 -- the row marked
``"accepted": true`` in a ``_bulk_docs`` answer -- when fewer did (`Document
API, 202 Accepted <https://docs.couchdb.org/en/stable/api/document/common.html>`_;
`Cluster theory, quorum <https://docs.couchdb.org/en/stable/cluster/theory.html>`_).
The other copies may meanwhile have accepted a *different* write from the same
revision -- another pilot's claim, a user's cancel, another creator's first
revision -- and once the copies synchronise the document has two live leaves:
a conflict, whose winner CouchDB picks by revision hash, not by meaning.

:func:`settle` decides such writes the same way for every writer (creation,
staging, admin changes): the leaves are read from every copy
(:meth:`lrt.couch.Database.leaves` with ``all_copies``); a revision that is
the only live leaf holds.  With siblings, a revision that is not CouchDB's
winner (:func:`lrt.couch.winning_leaf`) is deleted at once: it *lost*, and the
writer reads the document again and decides again, as after a 409.  The
winner waits up to ``wait`` seconds for the others to remove themselves (when
every writer got a 202, each checks) and holds if they did; a sibling that
stays was answered 201 (its writer does not check), so the winner is deleted
too.  So no conflict is left behind, and a document never loses every leaf.
The claim (:meth:`lrt.protocol.client.TokenClient.commit`) uses the stricter
rules 2 and 3 of docs/design.md ("Conflicts on a cluster"): any sibling that
is not a lock is a loss.

Pilot path: standard library + :mod:`lrt.couch` only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..couch import BulkResult, Database, winning_leaf

JSON = Dict[str, Any]

#: how long a write that is CouchDB's winner among its document's leaves, but was accepted
#: by fewer copies than the quorum, waits for the other writers to remove theirs (seconds)
CONFIRM_WAIT = 10.0


class Settled(str, Enum):
    """What became of a write whose quorum was uncertain."""

    HELD = "held"        #: the only live leaf: the write stands
    LOST = "lost"        #: another leaf stays; this write's leaf was deleted (decide again)
    GONE = "gone"        #: this write's leaf was removed by someone else (a resolver)
    FAILED = "failed"    #: this write's leaf could not be deleted: the conflict stays for the resolver

    def __str__(self) -> str:
        return self.value


@dataclass
class Settlement:
    """One document's :class:`Settled` outcome."""

    outcome: Settled
    #: the sibling that stays (LOST, GONE); None if none does
    other: Optional[JSON] = None
    #: {"error", "reason"} (FAILED)
    error: Optional[JSON] = None


def settle(db: Database, revs: Mapping[str, str], wait: Optional[float] = None) -> Dict[str, Settlement]:
    """Decide the writes in ``revs`` (id -> revision this writer wrote), each answered 202.

    One ``_bulk_docs`` per round deletes the losing revisions of all of them.
    """
    wait = CONFIRM_WAIT if wait is None else wait
    deadline = time.monotonic() + wait
    out: Dict[str, Settlement] = {}
    pending = dict(revs)
    delay = 0.05
    while pending:
        drop: Dict[str, Optional[JSON]] = {}
        for doc_id, rev in list(pending.items()):
            leaves = [d for d in db.leaves(doc_id, all_copies=True) if not d.get("_deleted")]
            others = [d for d in leaves if d.get("_rev") != rev]
            if len(others) == len(leaves):  # ours is gone (a resolver kept a sibling)
                out[doc_id] = Settlement(Settled.GONE, winning_leaf(others))
            elif not others:
                out[doc_id] = Settlement(Settled.HELD)
            elif winning_leaf(leaves) in others or time.monotonic() >= deadline:
                drop[doc_id] = winning_leaf(others) or others[0]
            else:
                continue
            del pending[doc_id]
        if drop:
            res = db.bulk_docs([{"_id": i, "_rev": revs[i], "_deleted": True} for i in drop])
            for doc_id, sibling in drop.items():
                if doc_id in res.errors:  # the conflicted document stays for the resolver
                    row = res[doc_id]
                    out[doc_id] = Settlement(Settled.FAILED, sibling, {
                        "error": row.get("error"),
                        "reason": f"could not remove a losing revision: {row.get('reason')}"})
                else:  # deleted (or a 409: a resolver deleted it already)
                    out[doc_id] = Settlement(Settled.LOST, sibling)
        if pending:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(1.0, delay * 2)
    return out


def sort_out(db: Database, res: BulkResult, wait: Optional[float] = None) -> Tuple[List[str], List[str]]:
    """The rows of a ``_bulk_docs`` answer that stand, and those to decide again.

    Returns ``(written, again)``: ``written`` -- answered ok and, if the quorum
    was uncertain, settled as :attr:`Settled.HELD`; ``again`` -- answered 409,
    or settled as lost or gone (the writer re-reads them, as after a 409).  Rows
    whose losing leaf could not be deleted are in neither (the resolver handles
    the conflict); :attr:`BulkResult.errors` lists the other failures.
    """
    unconfirmed = res.unconfirmed
    settled = settle(db, {i: res[i]["rev"] for i in unconfirmed}, wait) if unconfirmed else {}
    written = [i for i in res.ok if i not in settled or settled[i].outcome is Settled.HELD]
    again = list(res.conflicts) + [i for i, s in settled.items() if s.outcome in (Settled.LOST, Settled.GONE)]
    return written, again
