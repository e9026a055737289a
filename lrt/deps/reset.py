"""Resetting and cancelling parents, and what ``lrt show`` says about dependencies.

Rules (docs/tokens.md, "Dependencies"):

* resetting a parent sends its ``waiting``/``blocked``/``todo`` children back to
  ``waiting`` (they wait for the parent's new run), and so on down a chain of
  children that did not run;
* a child that already ran (or runs: staging, locked, done, error, failed,
  cancelled) makes the reset refuse, unless ``cascade`` (reset every descendant
  to ``waiting``, fresh attempts, history kept; a locked one is still refused)
  or ``keep_children`` (leave the children that ran as they are);
* cancelling a parent blocks its ``on: ok`` children (:func:`after_cancel`).

Admin side; never imported by the pilot.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .. import states
from ..couch import Database, NotFound
from ..errors import LrtError
from ..states import State
from .release import DEPS_DDOC, Outcome, release_children, release_ids

JSON = Dict[str, Any]

#: children in these states have not run since they were released: back to waiting
NOT_RAN = frozenset({"waiting", "blocked", "todo"})
#: how many tokens an error names
SHOWN = 5


def children_rows(db: Database, parents: Sequence[JSON]) -> List[JSON]:
    """Rows of the reverse index for ``parents``: {id (child), key, value {state, on}}."""
    keys: List[List[str]] = []
    seen: Set[Tuple[str, str]] = set()
    for p in parents:
        for kind, value in (("id", p["_id"]), ("set", p.get("tokenset"))):
            if value and (kind, value) not in seen:
                seen.add((kind, value))
                keys.append([kind, value])
    out: List[JSON] = []
    for i in range(0, len(keys), 500):
        try:
            out += db.view(DEPS_DDOC, "children", keys=keys[i:i + 500]).get("rows", [])
        except NotFound:
            return []
    return out


def descendants(db: Database, parents: Sequence[JSON]) -> Dict[str, JSON]:
    """Every token below ``parents`` (children, their children, ...), id -> document."""
    found: Dict[str, JSON] = {}
    frontier = list(parents)
    while frontier:
        ids = sorted({r["id"] for r in children_rows(db, frontier)} - set(found)
                     - {p["_id"] for p in parents})
        frontier = []
        for i in range(0, len(ids), 500):
            for r in db.all_docs(keys=ids[i:i + 500], include_docs=True).get("rows", []):
                if isinstance(r.get("doc"), dict):
                    found[r["id"]] = r["doc"]
                    frontier.append(r["doc"])
    return found


def _to_waiting(db: Database, docs: Sequence[JSON], now: float, fresh: bool) -> int:
    batch = []
    for doc in docs:
        if doc.get("state") == State.WAITING.value and not fresh:
            continue
        new = dict(doc)
        fields: JSON = {"blocked_by": None, "released": None, "not_before": None, "lease": None,
                        "pilot": None, "host": None, "batch_job": None, "exit_code": None,
                        "error": None, "cancel_requested": False}
        if fresh:
            fields["attempts"] = 0
            if new.get("from_parent"):  # inputs from the parents' old run: resolved again
                fields["inputs"] = [x for x in new.get("inputs") or [] if not x.get("from")]
        if new.get("state") != State.WAITING.value:
            states.apply(new, State.WAITING, now=now, reason="a parent was reset", fields=fields)
        else:
            new.update(fields)
        batch.append(new)
    n = 0
    for i in range(0, len(batch), 500):
        n += len(db.bulk_docs(batch[i:i + 500]).ok)
    return n


def check_reset(db: Database, parents: Sequence[JSON], cascade: bool, keep_children: bool) -> None:
    """Refuse (before anything is written) a reset that would orphan children that ran."""
    if cascade and keep_children:
        raise LrtError("--cascade and --keep-children exclude each other")
    rows = children_rows(db, parents)
    ran = sorted({r["id"] for r in rows if (r.get("value") or {}).get("state") not in NOT_RAN})
    if ran and not (cascade or keep_children):
        more = f" and {len(ran) - SHOWN} more" if len(ran) > SHOWN else ""
        raise LrtError(f"refusing to reset: {len(ran)} child token(s) already ran on the results "
                       f"of these tokens: {', '.join(ran[:SHOWN])}{more}. Pass --cascade to reset "
                       "them (and their descendants) too, or --keep-children to leave them as they are")
    if cascade:
        locked = sorted(i for i, d in descendants(db, parents).items() if d.get("state") == "locked")
        if locked:
            raise LrtError(f"refusing to --cascade: {len(locked)} descendant(s) are running: "
                           f"{', '.join(locked[:SHOWN])}; wait for them or cancel them first")


def after_reset(db: Database, parents: Sequence[JSON], cascade: bool) -> Dict[str, int]:
    """Children of reset ``parents`` back to ``waiting`` (descendants too with ``cascade``);
    parents that have dependencies themselves wait for theirs again."""
    now = time.time()
    out = {"children": 0, "parents_waiting": 0}
    again = [p["_id"] for p in parents if p.get("after")]
    if again:  # reset to todo by the bulk reset; they wait for their own parents
        cur = [r["doc"] for r in db.all_docs(keys=again, include_docs=True).get("rows", [])
               if isinstance(r.get("doc"), dict) and r["doc"].get("state") == "todo"]
        out["parents_waiting"] = _to_waiting(db, cur, now, fresh=False)
        release_ids(db, again)
    if cascade:
        docs = list(descendants(db, parents).values())
    else:  # children that did not run, and theirs (a blocked chain waits again as a whole)
        found: Dict[str, JSON] = {}
        frontier = list(parents)
        while frontier:
            rows = children_rows(db, frontier)
            ids = sorted({r["id"] for r in rows if (r.get("value") or {}).get("state") in NOT_RAN}
                         - set(found))
            frontier = []
            for i in range(0, len(ids), 500):
                for r in db.all_docs(keys=ids[i:i + 500], include_docs=True).get("rows", []):
                    d = r.get("doc")
                    if isinstance(d, dict) and d.get("state") in NOT_RAN:
                        found[d["_id"]] = d
                        frontier.append(d)
        docs = list(found.values())
    docs = [d for d in docs if d.get("state") in NOT_RAN or d.get("state") in states.TERMINAL]
    out["children"] = _to_waiting(db, docs, now, fresh=cascade)
    return out


def has_dependencies(db: Database) -> bool:
    """Whether any token of ``db`` has dependencies (no row sent)."""
    try:
        return int(db.view(DEPS_DDOC, "children", limit=0).get("total_rows") or 0) > 0
    except NotFound:
        return False


def reset(tokens: Any, *, dry_run: bool = False, force: bool = False, cascade: bool = False,
          keep_children: bool = False) -> Any:
    """:meth:`lrt.tokens.TokenList.reset` with the rules above; returns its outcome."""
    db = tokens.db
    if not has_dependencies(db):
        if cascade and keep_children:
            raise LrtError("--cascade and --keep-children exclude each other")
        return tokens.reset(dry_run=dry_run, force=force)
    if tokens.state is None:
        raise LrtError("reset needs a state (e.g. --state error)")
    parents = [dict(t) for t in tokens]
    check_reset(db, parents, cascade, keep_children)
    res = tokens.reset(dry_run=dry_run, force=force)
    if not dry_run:
        after_reset(db, parents, cascade)
    return res


def after_cancel(db: Database, ids: Sequence[str]) -> int:
    """Block the ``on: ok`` children of cancelled ``ids`` (and release ``on: any`` ones)."""
    n = 0
    rows = db.all_docs(keys=list(ids), include_docs=True).get("rows", []) if ids else []
    for r in rows:
        doc = r.get("doc")
        if isinstance(doc, dict) and doc.get("state") == "cancelled":
            n += sum(1 for _, o in release_children(db, doc) if o is Outcome.BLOCKED)
    return n


def dependency_lines(db: Database, doc: JSON) -> List[str]:
    """``lrt show``: the token's parents and children with their states."""
    out: List[str] = []
    deps = [d for d in doc.get("after") or [] if isinstance(d, dict)]
    ids = [d["id"] for d in deps if d.get("id")]
    parents: Dict[str, Optional[JSON]] = {}
    if ids:
        for r in db.all_docs(keys=ids, include_docs=True).get("rows", []):
            parents[r["key"]] = r.get("doc") if isinstance(r.get("doc"), dict) else None
    from .release import set_counts

    for d in deps:
        on = d.get("on") or "ok"
        if d.get("id"):
            p = parents.get(d["id"])
            out.append(f"  parent   {d['id']}  {p.get('state') if p else 'MISSING'}  (on {on})")
        elif d.get("tokenset"):
            try:
                counts = set_counts(db, d["tokenset"])
            except NotFound:
                counts = {}
            what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no tokens"
            out.append(f"  parent   set {d['tokenset']}: {what}  (on {on})")
    by = doc.get("blocked_by")
    if by:
        what = by.get("id") or f"set {by.get('tokenset')}"
        seen = by.get("state") or ", ".join(f"{n} {s}" for s, n in sorted((by.get("counts") or {}).items()))
        out.append(f"  blocked  by {what} ({seen}), which can never satisfy on: {by.get('on')}")
    rows = children_rows(db, [doc])
    for r in sorted(rows, key=lambda r: r["id"])[:50]:
        v = r.get("value") or {}
        via = "" if r["key"][0] == "id" else f" (waits for set {r['key'][1]})"
        out.append(f"  child    {r['id']}  {v.get('state')}  (on {v.get('on')}){via}")
    if len(rows) > 50:
        out.append(f"  child    ... {len(rows) - 50} more")
    return (["dependencies:"] + out) if out else []
