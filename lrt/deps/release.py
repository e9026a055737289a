"""Releasing and blocking waiting tokens: the pilot's side of dependencies.

A child with ``after`` is created ``waiting`` and never claimed.  It becomes
claimable by its *own* write to ``todo`` (``staging`` if it needs staging), made
here; the claim path never looks at dependencies.  Who writes it:

* the pilot that recorded a parent's finish, right after the finish write
  (:func:`after_finish`): one read of the reverse index ``lrt-deps/children``
  by the parent's id and set; a per-token child is decided at once, a set-level
  child only when the set's reduce count (``lrt-deps/sets``) says the set is
  complete (or can never satisfy it), so the 244 finishes of a set do not write
  one hot child 244 times;
* ``lrt create``, for children whose parents had finished already;
* idle pilots and ``lrt reap`` (:func:`sweep`), which complete a release that a
  crash interrupted and sweep waiting tokens whose parents all ended.

Every step is idempotent: the child is re-read and decided on its current
revision, written with its ``_rev``; a 409 means somebody else wrote it: re-read
and decide again (it is usually not ``waiting`` any more: nothing to do).

Why this is safe with two parents finishing at once: each pilot reads the other
parents *after* its own finish write, so the later of two finishes always sees
both (on a single node; on a cluster a view read can lag a write, which the
sweep covers).

Pilot path: standard library, :mod:`lrt.couch`, :mod:`lrt.states` only.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .. import states
from ..couch import CouchError, Database, NotFound
from ..states import State
from .spec import On

log = logging.getLogger("lrt.deps")

JSON = Dict[str, Any]

#: the design document of the dependency views (lrt/views/lrt-deps)
DEPS_DDOC = "lrt-deps"
#: tests only: a pilot SIGKILLs itself right after a finish write, before releasing
#: the children -- the crash window the sweep must cover (tests/test_deps.py)
TEST_EXIT_ENV = "LRT_TEST_EXIT_AFTER_FINISH"

ENDED = frozenset({"done", "error", "failed", "cancelled"})
FAILED = frozenset({"error", "failed"})


class Verdict(str, Enum):
    MET = "met"      #: satisfied
    NEVER = "never"  #: can never be satisfied (until a parent is reset): block the child
    WAIT = "wait"    #: not yet


class Outcome(str, Enum):
    """What :func:`release_one` did to a child."""

    RELEASED = "released"    #: waiting -> todo/staging
    BLOCKED = "blocked"      #: waiting -> blocked
    WAITING = "waiting"      #: left waiting: a dependency is not met yet
    UNCHANGED = "unchanged"  #: not waiting (any more), or gone: nothing to do


def verdict(on: On, state: Optional[str]) -> Verdict:
    """One parent in ``state`` (None: it does not exist) against ``on``.

    A ``blocked`` or missing parent never ends by itself: it blocks every ``on``.
    """
    if state is None or state == "blocked":
        return Verdict.NEVER
    if on is On.OK:
        return Verdict.MET if state == "done" else Verdict.NEVER if state in ENDED else Verdict.WAIT
    if on is On.NOTOK:
        return (Verdict.MET if state in FAILED else
                Verdict.NEVER if state in ENDED else Verdict.WAIT)
    return Verdict.MET if state in ENDED else Verdict.WAIT


def set_verdict(on: On, counts: Dict[str, int]) -> Verdict:
    """A whole set, from its counts per state: ``ok`` needs every token done (any
    error, failed, cancelled or blocked token blocks); ``any`` needs every token
    ended; ``notok`` needs every token ended and at least one failed."""
    total = sum(counts.values())
    if total == 0 or counts.get("blocked"):
        return Verdict.NEVER
    ended = sum(n for s, n in counts.items() if s in ENDED)
    failed = sum(n for s, n in counts.items() if s in FAILED)
    if on is On.OK:
        if ended - counts.get("done", 0) > 0:
            return Verdict.NEVER
        return Verdict.MET if counts.get("done", 0) == total else Verdict.WAIT
    if ended < total:
        return Verdict.WAIT
    if on is On.ANY:
        return Verdict.MET
    return Verdict.MET if failed else Verdict.NEVER


def _on(dep: JSON) -> On:
    try:
        return On(str(dep.get("on") or "ok"))
    except ValueError:
        return On.OK


@dataclass
class Decision:
    verdict: Verdict
    #: the dependency that blocks (NEVER) or is not met yet (WAIT)
    dep: Optional[JSON] = None
    #: that parent's state, or the set's counts
    seen: Any = None


@dataclass
class Cache:
    """Parent documents and set counts read during one pass (a sweep, a release)."""

    parents: Dict[str, Optional[JSON]] = field(default_factory=dict)
    sets: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def load_parents(self, db: Database, ids: Iterable[str]) -> None:
        want = sorted({i for i in ids if i not in self.parents})
        for i in range(0, len(want), 500):
            rows = db.all_docs(keys=want[i:i + 500], include_docs=True).get("rows", [])
            for r in rows:
                doc = r.get("doc")
                self.parents[r["key"]] = doc if isinstance(doc, dict) and doc.get("kind") == "token" else None

    def set_counts(self, db: Database, tokenset: str) -> Dict[str, int]:
        if tokenset not in self.sets:
            self.sets[tokenset] = set_counts(db, tokenset)
        return self.sets[tokenset]


def set_counts(db: Database, tokenset: str) -> Dict[str, int]:
    """``{state: n}`` of one token set: one reduce read of ``lrt-deps/sets``."""
    rows = db.view(DEPS_DDOC, "sets", group_level=2, startkey=[tokenset],
                   endkey=[tokenset, {}]).get("rows", [])
    return {r["key"][1]: int(r["value"]) for r in rows if len(r.get("key") or []) == 2}


def decide(db: Database, child: JSON, cache: Optional[Cache] = None) -> Decision:
    """Whether every dependency of ``child`` is met, one can never be, or not yet."""
    cache = cache or Cache()
    deps = [d for d in child.get("after") or [] if isinstance(d, dict)]
    cache.load_parents(db, [d["id"] for d in deps if d.get("id")])
    waiting: Optional[Decision] = None
    for d in deps:
        if d.get("id"):
            p = cache.parents.get(d["id"])
            st = p.get("state") if p else None
            v = verdict(_on(d), st)
            seen: Any = st or "missing"
        elif d.get("tokenset"):
            seen = cache.set_counts(db, d["tokenset"])
            v = set_verdict(_on(d), seen)
        else:
            continue
        if v is Verdict.NEVER:
            return Decision(Verdict.NEVER, d, seen)
        if v is Verdict.WAIT and waiting is None:
            waiting = Decision(Verdict.WAIT, d, seen)
    return waiting or Decision(Verdict.MET)


def _matches(url: str, name: str) -> bool:
    base = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return fnmatch.fnmatchcase(base, name) or base.split(".", 1)[0] == name


def parent_inputs(db: Database, child: JSON, cache: Optional[Cache] = None) -> List[JSON]:
    """The inputs ``from_parent`` names: outputs of the child's done parents (in
    dependency order; a set's tokens in id order) -- ``output`` takes every output,
    another name the outputs whose file name matches it (``solutions`` matches
    ``solutions.h5``; globs like ``*.h5`` work too)."""
    name = child.get("from_parent")
    if not name:
        return []
    cache = cache or Cache()
    parents: List[JSON] = []
    for d in child.get("after") or []:
        if d.get("id"):
            cache.load_parents(db, [d["id"]])
            p = cache.parents.get(d["id"])
            if p:
                parents.append(p)
        elif d.get("tokenset"):
            for row in db.iter_view(DEPS_DDOC, "sets", startkey=[d["tokenset"], "done"],
                                    endkey=[d["tokenset"], "done"], include_docs=True):
                if row.get("doc"):
                    parents.append(row["doc"])
    out: List[JSON] = []
    seen = set()
    for p in parents:
        if p.get("state") != "done":
            continue
        for o in p.get("output") or []:
            url = o.get("url") if isinstance(o, dict) else None
            if not url or url in seen or (name != "output" and not _matches(url, name)):
                continue
            seen.add(url)
            item: JSON = {"url": url, "from": p["_id"]}
            if o.get("checksum"):
                item["checksum"] = o["checksum"]
            out.append(item)
    return out


def release_one(db: Database, child_id: str, doc: Optional[JSON] = None,
                cache: Optional[Cache] = None, tries: int = 20, depth: int = 0) -> Outcome:
    """Decide ``child_id`` on its current revision and write the result (idempotent).

    ``doc`` is a copy read just now (saves a read); after a 409 the child is
    re-read and decided again.  A conflicted child (cluster) is resolved first.
    """
    from ..protocol.conflicts import resolve_conflicts

    resolved = False
    for i in range(tries):
        if doc is None:
            doc = db.get_or_none(child_id, conflicts=True)
        if doc is not None and doc.get("_conflicts") and not resolved:
            resolved = True
            # e.g. two nodes of a cluster took a release each: resolve first (a live lease
            # is left alone by the resolver), so the claim view, which skips conflicted
            # documents, offers the child at once
            resolve_conflicts(db, [child_id])
            doc, cache = None, None
            continue
        if doc is None or doc.get("kind") != "token" or doc.get("state") != State.WAITING.value:
            return Outcome.UNCHANGED
        dec = decide(db, doc, cache)
        if dec.verdict is Verdict.WAIT:
            return Outcome.WAITING
        new = dict(doc)
        new.pop("_conflicts", None)
        now = time.time()
        if dec.verdict is Verdict.MET:
            extra = parent_inputs(db, doc, cache)
            fields: JSON = {"blocked_by": None, "released": now}
            if extra:
                have = {x.get("url") for x in new.get("inputs") or []}
                fields["inputs"] = list(new.get("inputs") or []) + [x for x in extra if x["url"] not in have]
            dst = State.STAGING if doc.get("needs_staging") else State.TODO
            states.apply(new, dst, now=now, reason="dependencies met", fields=fields)
            outcome = Outcome.RELEASED
        else:
            d = dec.dep or {}
            by: JSON = {"on": str(_on(d))}
            if d.get("id"):
                by.update(id=d["id"], state=dec.seen)
            else:
                by.update(tokenset=d.get("tokenset"), counts=dec.seen)
            states.apply(new, State.BLOCKED, now=now, reason="a dependency can never be met",
                         fields={"blocked_by": by})
            outcome = Outcome.BLOCKED
        res = db.bulk_docs([new])
        if child_id in res.ok:
            log.info("token %s %s (%s)", child_id, outcome.value,
                     "dependencies met" if outcome is Outcome.RELEASED else f"blocked by {by}")
            if outcome is Outcome.BLOCKED and depth < 50:
                # its own waiting children can never run either: block them now, not at a sweep
                new["_rev"] = res[child_id]["rev"]
                release_children(db, new, depth + 1)
            return outcome
        if child_id not in res.conflicts:
            row = res[child_id]
            raise CouchError(f"could not write {child_id}: {row.get('error')}: {row.get('reason')}")
        doc, cache = None, None  # somebody else wrote it: decide again on the new revision
        time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** i)))
    return Outcome.WAITING


def release_children(db: Database, parent: JSON, depth: int = 0) -> List[Tuple[str, Outcome]]:
    """Release or block the waiting children of ``parent`` (just finished, or just
    blocked: then its children are blocked down the chain).

    One read of the reverse index; a set-level child only when the set's count
    decides it.
    """
    pid, ts = parent["_id"], parent.get("tokenset")
    keys: List[List[str]] = [["id", pid]] + ([["set", ts]] if ts else [])
    # with the documents: a child is decided on the revision read here (a 409 re-reads it)
    rows = db.view(DEPS_DDOC, "children", keys=keys, include_docs=True, conflicts=True).get("rows", [])
    waiting = [r for r in rows if (r.get("value") or {}).get("state") == State.WAITING.value]
    by_id = sorted({r["id"] for r in waiting if r["key"][0] == "id"})
    by_set = sorted({r["id"] for r in waiting if r["key"][0] == "set"} - set(by_id))
    cache = Cache()
    cache.parents[pid] = parent  # just written by the caller: its current version
    docs = {r["id"]: r["doc"] for r in waiting if isinstance(r.get("doc"), dict)}
    out = [(kid, release_one(db, kid, doc=docs.get(kid), cache=cache, depth=depth)) for kid in by_id]
    if by_set and ts:
        counts = cache.set_counts(db, ts)
        ons = {_on(r.get("value") or {}) for r in waiting if r["key"][0] == "set"}
        if any(set_verdict(on, counts) is not Verdict.WAIT for on in ons):
            out += [(kid, release_one(db, kid, doc=docs.get(kid), cache=cache, depth=depth))
                    for kid in by_set]
    return out


def release_ids(db: Database, ids: Sequence[str]) -> List[Tuple[str, Outcome]]:
    """Decide the given tokens (waiting ones only), sharing reads: ``lrt create``, sweeps."""
    out: List[Tuple[str, Outcome]] = []
    for i in range(0, len(ids), 200):
        batch = list(ids[i:i + 200])
        rows = db.all_docs(keys=batch, include_docs=True, conflicts=True).get("rows", [])
        docs = [r["doc"] for r in rows if isinstance(r.get("doc"), dict)
                and r["doc"].get("state") == State.WAITING.value]
        cache = Cache()
        cache.load_parents(db, [d["id"] for doc in docs for d in doc.get("after") or []
                                if isinstance(d, dict) and d.get("id")])
        for doc in docs:
            out.append((doc["_id"], release_one(db, doc["_id"], doc=doc, cache=cache)))
    return out


def sweep(db: Database, limit: Optional[int] = 200) -> List[Tuple[str, Outcome]]:
    """Decide up to ``limit`` waiting tokens, starting at a random shard of
    ``lrt-deps/waiting`` (so that pilots spread over them); every one if ``limit``
    is None (``lrt reap``)."""
    if limit is None:
        return release_ids(db, [r["id"] for r in db.iter_view(DEPS_DDOC, "waiting")])
    start = random.randrange(64)
    rows = db.view(DEPS_DDOC, "waiting", startkey=[start], limit=limit).get("rows", [])
    if len(rows) < limit and start:
        rows += db.view(DEPS_DDOC, "waiting", endkey=[start], inclusive_end=False,
                        limit=limit - len(rows)).get("rows", [])
    return release_ids(db, [r["id"] for r in rows])


# -- the pilot's hooks --------------------------------------------------------------------------

#: per database object: (monotonic time of the check, whether any token has dependencies)
_ANY_DEPS: Dict[int, Tuple[float, bool]] = {}


def _may_have_children(db: Database) -> bool:
    """Whether any token of the database has dependencies (``total_rows`` of the
    reverse index, no rows sent), re-checked every 10 s while there are none and
    every 60 s once there are: a pool without dependencies pays one small read per
    10 s, not one per finish.  A child created inside that window is released by
    ``lrt create`` itself (its parents finished) or by a sweep."""
    now = time.monotonic()
    when, yes = _ANY_DEPS.get(id(db), (-1e9, False))
    if now - when < (60.0 if yes else 10.0):
        return yes
    try:
        yes = int(db.view(DEPS_DDOC, "children", limit=0).get("total_rows") or 0) > 0
    except NotFound:  # a database from before lrt-deps: `lrt views install` adds it
        yes = False
    _ANY_DEPS[id(db)] = (now, yes)
    return yes


def after_finish(db: Database, parent: JSON) -> None:
    """The pilot's hook right after a recorded finish: release ``parent``'s children.

    Never raises: a failure here only delays the children until a sweep.
    """
    if os.environ.get(TEST_EXIT_ENV):
        os.kill(os.getpid(), signal.SIGKILL)  # tests only (TEST_EXIT_ENV): die before the release
    if parent.get("state") not in ENDED:
        return  # back to todo for a retry: its children go on waiting
    try:
        if _may_have_children(db):
            release_children(db, parent)
    except Exception as exc:  # noqa: BLE001 - the sweep completes it
        log.warning("releasing the children of %s failed (%s); idle pilots and lrt reap will "
                    "complete it", parent.get("_id"), exc)


def idle_sweep(db: Database, idle: bool) -> bool:
    """The pilot's hook in idle housekeeping: a sweep; True if a token became claimable."""
    if not idle:
        return False
    try:
        if not _may_have_children(db):
            return False
        return any(o is Outcome.RELEASED for _, o in sweep(db, limit=100))
    except Exception as exc:  # noqa: BLE001 - only housekeeping
        log.warning("dependency sweep failed: %s", exc)
        return False
