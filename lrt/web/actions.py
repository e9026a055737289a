"""Actions on a failure group: reset (back to ``todo`` with a fresh attempt
budget, as ``lrt reset``) or cancel (tokens waiting for a retry).

Only with ``lrt dashboard --allow-actions``; each is a POST carrying the CSRF
token of the page that showed the confirmation, and the CouchDB user and
password of the person confirming: the writes are made as that user, so the
database (``_security``, ``validate_doc_update``) decides who may change
tokens; the dashboard's own credentials only read.  The password is used for
this one request and never stored, logged or shown.

Writes are optimistic like every bulk change in lrt: each token is re-read,
checked to still be in the group and in a state the action applies to, and
written with its ``_rev``; a token that changed meanwhile answers 409 and is
counted as skipped, never overwritten.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..couch import Database
from ..errors import LrtError
from ..protocol import quorum
from ..queries.failures import group_tokens
from ..states import State, apply

#: action -> (states it applies to, target state)
ACTIONS = {
    "reset": ((State.ERROR.value, State.FAILED.value), State.TODO),
    "cancel": ((State.TODO.value,), State.CANCELLED),
}


class ActionRefused(LrtError):
    """An action that is not allowed (read-only dashboard, bad CSRF token, unknown action)."""

    exit_code = 2


@dataclass
class ActionResult:
    action: str
    matched: int = 0
    changed: int = 0
    skipped: int = 0  #: changed meanwhile (409, or no longer in the group)
    not_applicable: int = 0  #: in a state the action does not apply to
    failed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)


def check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ActionRefused(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")


def plan(rows: List[Dict[str, Any]], action: str) -> Dict[str, int]:
    """How many of a group's tokens (``group_tokens`` rows) the action would change, per state."""
    check_action(action)
    applies, _ = ACTIONS[action]
    out: Dict[str, int] = {}
    for r in rows:
        if r["state"] in applies:
            out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def run(db: Database, action: str, code: Any, prefix: Optional[str], type: Optional[str],
        user: str, page_size: int = 500) -> ActionResult:
    """Apply ``action`` to every token of the group, as the user ``db`` authenticates."""
    check_action(action)
    applies, dst = ACTIONS[action]
    res = ActionResult(action)
    now = time.time()
    batch: List[Dict[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        out = db.bulk_docs(batch)
        written, again = quorum.sort_out(db, out)  # 202s checked on every copy (lrt.protocol.quorum)
        res.changed += len(written)
        res.skipped += len(again)
        for doc_id, row in out.errors.items():
            res.failed += 1
            if len(res.errors) < 20:
                res.errors[doc_id] = f"{row.get('error')}: {row.get('reason')}"
        batch.clear()

    # the group's ids first (its rows leave the view as they are changed), then the
    # documents by id, one page at a time
    rows = [r for r in group_tokens(db, code, prefix, type)]
    res.matched = len(rows)
    todo = [r for r in rows if r["state"] in applies]
    res.not_applicable = len(rows) - len(todo)
    for i in range(0, len(todo), page_size):
        chunk = todo[i:i + page_size]
        got = db.all_docs(keys=[r["id"] for r in chunk], include_docs=True).get("rows", [])
        docs = {g["id"]: g.get("doc") for g in got if g.get("doc")}
        for r in chunk:
            doc = docs.get(r["id"])
            if (not doc or doc.get("state") != r["state"] or not doc.get("error")
                    or doc["error"].get("code") != code):
                res.skipped += 1
                continue
            fields: Dict[str, Any] = {}
            if dst == State.TODO:
                fields = {"not_before": None, "cancel_requested": False, "attempts": 0}
            apply(doc, dst, now=now, fields=fields, reason=f"{action} from the dashboard by {user}")
            batch.append(doc)
        flush()
    flush()
    return res
