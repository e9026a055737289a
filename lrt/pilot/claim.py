"""The pilot's side of the token protocol: claim, heartbeat, finish, release,
reap, cancel, and conflict resolution.

Every state change of a token the pilot makes goes through a server-side
``_update`` handler in ``_design/lrt-claim`` (``lrt/views/lrt-claim/updates``).
A handler reads the *current* document on the server and decides there, with
the server's clock, so a decision can never be based on a stale view row or a
stale ``_rev`` held by the pilot: one request per state change, and a race
between two pilots is decided by CouchDB's MVCC inside the server (the loser's
write answers 409 and it moves on).

Convention (all handlers): a write answers 201 (202 on a cluster whose write
quorum was not reached) with ``{"ok": true, ...}``; a refusal writes nothing
and answers 200 with ``{"ok": false, "reason": "..."}``; 409 means the
handler's write lost a race with another write to the same document.

Pilot path: standard library + :mod:`lrt.couch` only.
"""
from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..couch import CouchError, Database
from ..design import CLAIM_DDOC, MONITOR_DDOC

log = logging.getLogger("lrt.pilot")

JSON = Dict[str, Any]

#: order of preference when conflicting leaves of one token disagree
TERMINAL_RANK = {"done": 0, "error": 1, "failed": 2, "cancelled": 3}


@dataclass
class Answer:
    """What an update handler said."""

    ok: bool
    status: int
    body: JSON
    rev: Optional[str] = None

    @property
    def reason(self) -> Optional[str]:
        return None if self.ok else str(self.body.get("reason") or "conflict")


@dataclass
class Stats:
    """Counters a pilot reports (benchmarks read them from ``--stats``)."""

    claims: int = 0            #: claim requests sent
    claimed: int = 0           #: claims won
    lost: int = 0              #: claims lost to another pilot (409 or already locked)
    refused: int = 0           #: claims refused for other reasons (not_before, walltime, ...)
    view_queries: int = 0
    heartbeats: int = 0
    finish_retries: int = 0    #: finish/release calls repeated after a 409 or an outage
    reaped: int = 0
    resolved: int = 0
    tokens: int = 0            #: payloads run to an outcome that was recorded
    fenced: int = 0            #: tokens given up because another pilot held them
    handler_409: int = 0       #: handler writes that met a concurrent write (and were repeated)
    overheads: List[float] = field(default_factory=list)

    def as_dict(self) -> JSON:
        d = dict(self.__dict__)
        ov = sorted(self.overheads)
        d["overheads"] = len(ov)
        d["overhead_median"] = ov[len(ov) // 2] if ov else None
        return d


class TokenClient:
    """Update-handler calls for one pilot (or one admin command)."""

    def __init__(self, db: Database, pilot: str = "admin", host: Optional[str] = None,
                 batch_job: Optional[JSON] = None, lease_seconds: float = 600.0,
                 stats: Optional[Stats] = None):
        self.db = db
        self.pilot = pilot
        self.host = host
        self.batch_job = batch_job
        self.lease_seconds = float(lease_seconds)
        self.stats = stats or Stats()

    # -- plumbing --------------------------------------------------------------------
    def call(self, name: str, doc_id: str, body: JSON, *, repeat_409: int = 20) -> Answer:
        """Call handler ``name`` on ``doc_id``; on 409 call again (the handler re-reads).

        A 409 means the handler's write met a concurrent write (another pilot,
        a cancel, an admin edit).  Re-calling is always safe: the handler
        decides again on the fresh document.  After ``repeat_409`` losses the
        last 409 is returned as a refusal with reason ``conflict``.
        """
        status, payload, rev = 409, {}, None
        for i in range(repeat_409 + 1):
            status, payload, rev = self.db.update_handler(CLAIM_DDOC, name, doc_id, body=body,
                                                          ok=(409,))
            if status != 409:
                break
            self.stats.handler_409 += 1
            if i < repeat_409:
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** i)))
        if not isinstance(payload, dict):
            raise CouchError(f"update handler {name} answered non-JSON (HTTP {status})", status=status)
        if isinstance(payload.get("now"), (int, float)):
            self.db.server.note_server_time(float(payload["now"]))
        if status == 409:
            return Answer(False, status, {"ok": False, "reason": "conflict"}, None)
        return Answer(bool(payload.get("ok")) and status < 300, status, payload, rev)

    # -- claim -----------------------------------------------------------------------
    def claim(self, doc_id: str, *, token_type: Optional[str] = None,
              remaining: Optional[float] = None) -> "Optional[Claimed]":
        """Try to claim ``doc_id``; the claimed token, or None if somebody else has it.

        The claim id is made here; if the request is repeated (connection lost
        after the server wrote), the handler recognises the same claim id and
        answers success, so a lost answer never strands a token.
        """
        claim_id = uuid.uuid4().hex
        body: JSON = {"claim": claim_id, "pilot": self.pilot, "host": self.host,
                      "batch_job": self.batch_job, "lease_seconds": self.lease_seconds}
        if token_type:
            body["type"] = token_type
        if remaining is not None:
            body["remaining"] = float(remaining)
        self.stats.claims += 1
        ans = self.call("claim", doc_id, body, repeat_409=0)
        if not ans.ok:
            if ans.reason in ("conflict", "state", "leased", "missing"):
                self.stats.lost += 1
            else:
                self.stats.refused += 1
            log.debug("claim %s refused: %s", doc_id, ans.reason)
            return None
        doc = ans.body["doc"]
        if ans.rev:
            doc["_rev"] = ans.rev
        if ans.status == 202 and not self._claim_is_sole(doc_id, claim_id):
            # the write did not reach quorum and another live lock exists: yield
            log.warning("claim of %s was not confirmed (202 with a conflicting lock); yielding", doc_id)
            self.stats.lost += 1
            return None
        self.stats.claimed += 1
        return Claimed(doc, claim_id, time.monotonic(), ans.body.get("now"))

    def _claim_is_sole(self, doc_id: str, claim_id: str) -> bool:
        """After a 202: read back; run only if every conflicting leaf is resolved our way."""
        doc = self.db.get(doc_id, conflicts=True)
        if not doc.get("_conflicts"):
            return (doc.get("lease") or {}).get("claim") == claim_id
        resolve_conflicts(self.db, [doc_id])
        doc = self.db.get(doc_id, conflicts=True)
        return not doc.get("_conflicts") and (doc.get("lease") or {}).get("claim") == claim_id

    # -- while running ---------------------------------------------------------------
    def heartbeat(self, doc_id: str, claim_id: str) -> Answer:
        self.stats.heartbeats += 1
        return self.call("heartbeat", doc_id, {"claim": claim_id, "lease_seconds": self.lease_seconds})

    def finish(self, doc_id: str, claim_id: str, body: JSON) -> Answer:
        b = dict(body)
        b["claim"] = claim_id
        return self.call("finish", doc_id, b)

    def release(self, doc_id: str, claim_id: str, body: JSON) -> Answer:
        b = dict(body)
        b["claim"] = claim_id
        return self.call("release", doc_id, b)

    # -- admin-side operations also used by idle pilots ------------------------------
    def reap(self, doc_id: str, grace: float) -> Answer:
        return self.call("reap", doc_id, {"grace": float(grace)})

    def cancel(self, doc_id: str, by: Optional[str] = None) -> Answer:
        return self.call("cancel", doc_id, {"by": by or self.pilot})


@dataclass
class Claimed:
    """A token this pilot holds."""

    doc: JSON
    claim: str
    renewed_mono: float          #: local monotonic time the last successful lease write was SENT
    server_now: Optional[float]  #: server clock at the claim

    @property
    def id(self) -> str:
        return self.doc["_id"]


class Candidates:
    """A reusable list of claimable token ids from the ``todo`` view.

    One view query serves many claims.  Pilots started together see the same
    rows, so each walks them from a *random starting point* (within each
    priority level, highest first) and, after a lost claim, jumps to another
    random point: pilots then consume separate stretches of the queue and
    collide only where stretches meet, instead of colliding more and more as
    a shared, independently shuffled list empties.  The list is re-fetched
    when it runs dry, goes stale (``stale_after`` lost claims in a row) or
    gets old.  Rows carry ``not_before`` and ``expected_duration`` so
    unclaimable rows are skipped without a request.
    """

    def __init__(self, db: Database, token_type: Optional[str], batch: int = 500,
                 max_age: float = 30.0, stale_after: int = 3, stats: Optional[Stats] = None):
        self.db = db
        self.type = token_type
        self.batch = max(1, int(batch))
        self.max_age = max_age
        self.stale_after = stale_after
        self.stats = stats or Stats()
        self.rows: List[JSON] = []
        self.fetched = 0.0
        self.lost_in_row = 0
        #: earliest not_before seen among rows we had to skip (server clock), or None
        self.next_ready: Optional[float] = None
        #: rows the last query returned
        self.last_count = 0

    @staticmethod
    def _prio(row: JSON) -> Any:
        key = row.get("key")
        return key[1] if isinstance(key, list) and len(key) > 1 else 0

    def _rotate_first_group(self) -> None:
        """Start the highest-priority group of rows at a random row (order otherwise kept)."""
        if len(self.rows) < 2:
            return
        p0 = self._prio(self.rows[0])
        n = 1
        while n < len(self.rows) and self._prio(self.rows[n]) == p0:
            n += 1
        k = random.randrange(n)
        self.rows[:n] = self.rows[k:n] + self.rows[:k]

    def refresh(self) -> None:
        params: JSON = {"limit": self.batch, "reduce": False}
        if self.type is not None:
            params["startkey"] = [self.type]
            params["endkey"] = [self.type, {}]
        rows = self.db.view(CLAIM_DDOC, "todo", **params).get("rows", [])
        self.stats.view_queries += 1
        rows.sort(key=self._prio)  # stable: keeps the view's order within a priority
        self.rows = rows
        self._rotate_first_group()
        self.last_count = len(rows)
        self.fetched = time.monotonic()
        self.lost_in_row = 0

    def invalidate(self) -> None:
        self.rows = []

    def note(self, won: bool) -> None:
        """Report the outcome of a claim on the last popped row."""
        if won:
            self.lost_in_row = 0
            return
        self.lost_in_row += 1
        if self.lost_in_row >= self.stale_after:
            self.invalidate()
        else:
            self._rotate_first_group()  # another pilot works here: jump elsewhere

    def pop(self, server_now: float, remaining: Optional[float]) -> Optional[JSON]:
        """The next row worth a claim request; None when the list (after one refresh) has none."""
        if not self.rows or time.monotonic() - self.fetched > self.max_age:
            self.refresh()
            refreshed = True
        else:
            refreshed = False
        while True:
            self.next_ready = None
            skipped: List[JSON] = []
            while self.rows:
                row = self.rows.pop(0)
                val = row.get("value") or {}
                nb = val.get("nb") or 0
                dur = val.get("dur") or 0
                if nb > server_now:
                    self.next_ready = nb if self.next_ready is None else min(self.next_ready, nb)
                    skipped.append(row)
                    continue
                if remaining is not None and dur and dur > remaining:
                    continue
                self.rows = skipped + self.rows
                return row
            self.rows = skipped
            if refreshed:
                self.rows = []
                return None
            self.refresh()
            refreshed = True


# ---------------------------------------------------------------------------
# conflicts (CouchDB clusters) and reaping


def _leaves(db: Database, doc_id: str) -> List[JSON]:
    res = db.get(doc_id, open_revs="all")  # JSON list (the session sends Accept: application/json)
    return [r["ok"] for r in res if isinstance(r, dict) and "ok" in r and not r["ok"].get("_deleted")]


def choose_leaf(leaves: Sequence[JSON], winner_rev: Optional[str] = None) -> JSON:
    """The leaf that survives, deterministically (every resolver picks the same one).

    1. a terminal leaf (done > error > failed > cancelled; ties by rev),
    2. else a locked leaf with the earliest ``lease.claimed`` (tie: smallest claim id),
    3. else CouchDB's own winner (``winner_rev``), else the highest rev.
    """
    terminal = [d for d in leaves if d.get("state") in TERMINAL_RANK]
    if terminal:
        return sorted(terminal, key=lambda d: (TERMINAL_RANK[d["state"]], str(d.get("_rev"))))[0]
    locks = [d for d in leaves if d.get("state") == "locked" and isinstance(d.get("lease"), dict)]
    if locks:
        return sorted(locks, key=lambda d: (d["lease"].get("claimed") or 0,
                                            str(d["lease"].get("claim") or "")))[0]
    for d in leaves:
        if winner_rev is not None and d.get("_rev") == winner_rev:
            return d
    return sorted(leaves, key=lambda d: _rev_key(str(d.get("_rev"))))[-1]


def _rev_key(rev: str) -> tuple:
    n, _, h = rev.partition("-")
    try:
        return (int(n), h)
    except ValueError:
        return (0, rev)


def resolve_conflicts(db: Database, ids: Optional[Sequence[str]] = None, *, limit: int = 200,
                      dry_run: bool = False) -> List[JSON]:
    """Resolve conflicted tokens: keep :func:`choose_leaf`, delete the other leaves.

    If the kept leaf is not CouchDB's current winner, deleting the others
    makes it the winner.  ``ids`` defaults to the ``lrt/conflicts`` view.
    Returns one report per document: {id, kept, deleted: [revs]}.
    """
    if ids is None:
        rows = db.view(MONITOR_DDOC, "conflicts", limit=limit).get("rows", [])
        ids = [r["id"] for r in rows]
    reports: List[JSON] = []
    for doc_id in ids:
        try:
            current = db.get(doc_id, conflicts=True)
        except CouchError:
            continue
        if not current.get("_conflicts"):
            continue
        leaves = _leaves(db, doc_id)
        if len(leaves) < 2:
            continue
        keep = choose_leaf(leaves, current.get("_rev"))
        delete = [{"_id": doc_id, "_rev": d["_rev"], "_deleted": True}
                  for d in leaves if d["_rev"] != keep["_rev"]]
        report = {"id": doc_id, "kept": keep["_rev"], "state": keep.get("state"),
                  "deleted": [d["_rev"] for d in delete]}
        if not dry_run:
            for d in delete:  # one per request: _bulk_docs wants unique ids per batch
                res = db.bulk_docs([d])
                if doc_id in res.errors or doc_id in res.conflicts:
                    report.setdefault("failed", []).append(d["_rev"])
        reports.append(report)
    return reports


def expired_leases(db: Database, grace: float, limit: int = 500) -> List[JSON]:
    """Rows of the ``lrt/locked`` view whose lease ran out more than ``grace`` s ago.

    Uses the server clock (from the last response's ``Date``); the reap handler
    checks again on the server, so a skewed estimate here only costs a request.
    """
    if db.server.clock_offset is None:
        # prime the server-clock estimate with a database request: Server.now() would send
        # HEAD /, which makes pouchdb-server rewrite its config file world-readable
        db.exists()
    # the Date header has one-second resolution (and truncates): look one second further
    now = db.server.now() + 1.0
    return db.view(MONITOR_DDOC, "locked", endkey=now - grace, limit=limit).get("rows", [])


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
