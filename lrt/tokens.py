"""Tokens in bulk: create them from a config, query them, reset/delete/update them.

Names follow GRID_LRT: :class:`Token` (one document), :class:`TokenSet` (the
tokens a config describes, created in bulk) and :class:`TokenList` (tokens
selected by state and type through the ``lrt/tokens`` view, changed in bulk).

Creation is idempotent: ids are deterministic (from the config's template),
a batch first asks which ids exist and writes only the others (while such
checks find anything; see :meth:`TokenSet.create`), and a 409 from an existing
token or a concurrent creator counts as "already present".  A token is never
written twice and an existing token is never modified by ``create``.

Bulk changes are optimistic: each token is changed client side with
:func:`lrt.states.apply` and written back with its ``_rev``; a token that
changed meanwhile (a pilot claimed it) answers 409 and is skipped and counted,
never overwritten.

This module is admin side (never imported by the pilot): it may use pyyaml,
but tqdm only lazily, in the CLI.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from . import states
from .config import Item, TokenConfig
from .couch import Database, NotFound
from .errors import LrtError
from .states import State

#: token document schema version (docs/tokens.md)
SCHEMA = 1
#: how many error messages a result keeps (counts are always complete)
MAX_ERRORS = 20

ProgressFn = Callable[[int, int], None]


class Token(dict):
    """A token document: a plain dict (what CouchDB stores) with a few helpers."""

    @property
    def id(self) -> str:
        return self["_id"]

    @property
    def rev(self) -> Optional[str]:
        return self.get("_rev")

    @property
    def state(self) -> State:
        return states.parse(self.get("state"))

    @property
    def type(self) -> str:
        return self.get("type", "")

    def transition(self, dst: Union[State, str], *, now: Optional[float] = None,
                   fields: Optional[Dict[str, Any]] = None, reason: Optional[str] = None) -> "Token":
        """Move to ``dst`` in place after checking the state machine (see :func:`lrt.states.apply`)."""
        states.apply(self, dst, now=now, fields=fields, reason=reason)
        return self

    def srm_links(self) -> List[str]:
        """The input URLs (the same as the ``srm.txt`` attachment, when there is one)."""
        return [i["url"] for i in self.get("inputs") or []]

    @classmethod
    def load(cls, db: Database, token_id: str) -> "Token":
        doc = db.get_or_none(token_id)
        if doc is None:
            raise TokenNotFound(f"no token {token_id!r} in database {db.name}")
        if doc.get("kind") != "token":
            raise TokenNotFound(f"{token_id!r} in database {db.name} is not an lrt token "
                                f"(kind={doc.get('kind')!r})")
        return cls(doc)


class TokenNotFound(LrtError):
    """No such token."""


def new_token(cfg: TokenConfig, item: Item, now: Optional[float] = None, share: bool = False) -> Token:
    """The complete schema-v1 document for one config item (docs/tokens.md).

    ``share=True`` lets documents share the config's (read-only) lists and
    mappings instead of copying them: for documents that are only serialised.
    """
    t = time.time() if now is None else now
    if share:
        retry, command, sandbox, outputs = cfg.retry, cfg.command, cfg.sandbox, cfg.outputs
    else:
        retry, command = dict(cfg.retry), list(cfg.command)
        sandbox = dict(cfg.sandbox) if cfg.sandbox else None
        outputs = dict(cfg.outputs) if cfg.outputs else None
    doc = Token({
        "_id": item.id,
        "kind": "token",
        "schema": SCHEMA,
        "type": cfg.type,
        "state": State.STAGING.value if cfg.needs_staging else State.TODO.value,
        "priority": cfg.priority,
        "created": t,
        "updated": t,
        "tokenset": cfg.tokenset,
        "attempts": 0,
        "max_attempts": cfg.max_attempts,
        "retry": retry,
        "not_before": None,
        "expected_duration": cfg.expected_duration,
        "timeout": cfg.timeout,
        "command": command,
        "sandbox": sandbox,
        "payload": item.payload,
        "inputs": [link.as_input() for link in item.chunk.links] if item.chunk else [],
        "outputs": outputs,
        "needs_staging": cfg.needs_staging,
        "lease": None,
        "pilot": None,
        "host": None,
        "batch_job": None,
        "exit_code": None,
        "error": None,
        "timings": {},
        "output": [],
        "log_tail": None,
        "history": [],
        "cancel_requested": False,
    })
    if cfg.after is not None:
        from .deps.create import dependency_fields

        doc.update(dependency_fields(cfg, item))
    if cfg.task is not None:
        doc["task"] = cfg.task.ref
    if item.chunk is not None:
        # inline attachment: the token and its link slice are one write, in the same batch
        data = base64.b64encode(item.chunk.srm_txt().encode()).decode()
        doc["_attachments"] = {"srm.txt": {"content_type": "text/plain", "data": data}}
    return doc


@dataclass
class CreateResult:
    """Outcome of :meth:`TokenSet.create`: counts, and the first few error messages."""

    created: int = 0
    present: int = 0
    failed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.created + self.present + self.failed

    def to_json(self) -> Dict[str, Any]:
        return {"created": self.created, "present": self.present, "failed": self.failed,
                "errors": dict(self.errors)}


def _batched(items: Iterable[Any], n: int) -> Iterator[List[Any]]:
    batch: List[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class TokenSet:
    """The tokens one config describes.  ``TokenSet.from_config(path).create(db)``."""

    def __init__(self, config: TokenConfig):
        self.config = config
        self._count: Optional[int] = None

    @classmethod
    def from_config(cls, path: Union[str, Path], files: Optional[Union[str, Path]] = None) -> "TokenSet":
        """Load and validate a config (and its file list); ``files`` overrides ``files.list``."""
        return cls(TokenConfig.load(path, files=files))

    @classmethod
    def from_text(cls, text: str, path: str = "<config>", base_dir: Union[str, Path, None] = None,
                  files: Optional[Union[str, Path]] = None) -> "TokenSet":
        return cls(TokenConfig.from_text(text, path=path, base_dir=base_dir, files=files))

    @property
    def name(self) -> str:
        return self.config.tokenset

    def validate(self) -> int:
        """Check every id (template placeholders, collisions); return the number of tokens.

        A streaming pass that writes nothing.  :meth:`create` calls it first, so a
        bad config never leaves half a token set behind.
        """
        if self._count is None:
            self._check_task()
            self._count = self.config.check_ids()
        return self._count

    def _check_task(self) -> None:
        """A config naming a task: every token's parameters against the task's types."""
        task = self.config.task
        if task is None:
            return
        from .errors import ConfigError
        from .tasks import ParameterError

        fixed = {"type", "tokenset", "index", "obsid", "sb_start", "sb_end", "missing", "chunk",
                 "first_line"}
        for item in self.config.items():
            params = {k: v for k, v in item.payload.items() if k not in fixed or k in task.parameters}
            try:
                task.check(params, partial=item.chunk is not None)
            except ParameterError as exc:
                raise ConfigError(f"token #{item.index} ({item.id}): {exc}",
                                  path=self.config.path) from None

    def __len__(self) -> int:
        return len(self.config)

    def __iter__(self) -> Iterator[Token]:
        """Every token document, generated one at a time (``created`` is stamped now)."""
        for item in self.config.items():
            yield new_token(self.config, item)

    def ids(self) -> Iterator[str]:
        return self.config.iter_ids()

    def create(self, db: Database, batch_size: int = 1000,
               progress: Optional[ProgressFn] = None) -> CreateResult:
        """Create the tokens that do not exist yet, ``batch_size`` per ``_bulk_docs``.

        ``progress(done, total)`` is called after each batch.  Memory is two
        batches (one being written, one being built) whatever the size of the set.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        total = self.validate()
        if self.config.after is not None:  # parents exist, no cycle: before the first write
            from .deps.create import check_dependencies, require_views

            require_views(db)
            check_dependencies(db, self.config)
        self._publish_sandbox(db)
        res = CreateResult()
        done = 0
        # Correctness never depends on the existence check: a _bulk_docs write
        # without _rev cannot overwrite an existing token, it answers 409, which
        # counts as "present".  The check only avoids re-sending tokens that exist
        # (a re-run, a resumed run), so it is made while it finds something and
        # skipped once a batch turns out to be all new, until a 409 says otherwise.
        # On a fresh set this saves one _all_docs request per batch.
        #
        # One worker thread does all HTTP (one request at a time, so the session
        # is never shared), while this thread builds the next batch: the client's
        # work overlaps the server's instead of adding to it.
        state = {"check": True}

        def write(docs: List[Token]) -> int:
            if state["check"]:
                have = db.existing_ids([d["_id"] for d in docs])
                if have:
                    res.present += len(have)
                    docs = [d for d in docs if d["_id"] not in have]
                else:
                    state["check"] = False
            if docs:
                out = db.bulk_docs(docs)
                res.created += len(out.ok)
                res.present += len(out.conflicts)  # it exists (a concurrent creator won)
                if out.conflicts:
                    state["check"] = True
                for doc_id, row in out.errors.items():
                    res.failed += 1
                    if len(res.errors) < MAX_ERRORS:
                        res.errors[doc_id] = f"{row.get('error')}: {row.get('reason')}"
            return len(docs)

        from concurrent.futures import ThreadPoolExecutor

        pending = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrt-create") as pool:
            for batch in _batched(self.config.items(), batch_size):
                now = time.time()
                docs = [new_token(self.config, it, now, share=True) for it in batch]
                if pending is not None:
                    done += pending[1]
                    pending[0].result()  # re-raises the worker's error here
                    if progress is not None:
                        progress(done, total)
                pending = (pool.submit(write, docs), len(docs))
            if pending is not None:
                pending[0].result()
                done += pending[1]
                if progress is not None:
                    progress(done, total)
        if self.config.after is not None:  # children whose parents ended already
            from .deps.create import release_created

            release_created(db, self.config)
        return res

    def _publish_sandbox(self, db: Optional[Database]) -> None:
        """A config naming its sandbox by folder: build it (reproducibly) and upload it
        once, then every token names it by sha256.  Without ``db`` only the hash is made."""
        sb = self.config.sandbox
        if not sb or "path" not in sb:
            return
        from .pilot.sandbox import build

        built = build(sb["path"], db)
        self.config.sandbox = {"sha256": built.sha256}

    def dry_run(self, db: Optional[Database] = None, batch_size: int = 1000) -> CreateResult:
        """What :meth:`create` would do: validate, and count existing ids if ``db`` exists."""
        self.validate()
        if self.config.after is not None:
            from .deps.create import check_dependencies, require_views

            if db is not None:
                require_views(db)
            check_dependencies(db, self.config)
        res = CreateResult()
        for batch in _batched(self.ids(), batch_size):
            have = db.existing_ids(batch) if db is not None else {}
            res.present += len(have)
            res.created += len(batch) - len(have)
        return res


# ---------------------------------------------------------------------------
# queries


def _need_views(db: Database, exc: NotFound) -> LrtError:
    if not db.exists():
        return LrtError(f"database {db.name} does not exist on {db.server.url} "
                        "(create tokens with `lrt create CONFIG` first)")
    return LrtError(f"lrt's views are not installed in database {db.name}: run `lrt views install`")


def status_counts(db: Database, type: Optional[str] = None) -> Dict[str, Dict[str, int]]:
    """Token counts per type and state (one reduce query, ``group_level=2``).

    Returns ``{type: {state: count}}``, only non-zero counts.
    """
    try:
        rows = db.view("lrt", "tokens", group_level=2).get("rows", [])
    except NotFound as exc:
        raise _need_views(db, exc) from None
    out: Dict[str, Dict[str, int]] = {}
    for row in rows:
        key = row.get("key") or []
        if len(key) < 2:
            continue
        state, ttype = key[0], key[1]
        if type is not None and ttype != type:
            continue
        out.setdefault(ttype, {})[state] = out.get(ttype, {}).get(state, 0) + int(row["value"])
    return out


def conflicted_count(db: Database) -> int:
    """How many documents have conflicting revisions (possible on a CouchDB cluster).

    The ``total_rows`` of the ``lrt/conflicts`` view read with ``limit=0``: no
    row is sent.  Pilots resolve such tokens in their housekeeping, ``lrt reap``
    on demand; a count that stays above zero points at a problem.
    """
    try:
        return int(db.view("lrt", "conflicts", limit=0).get("total_rows") or 0)
    except NotFound as exc:
        raise _need_views(db, exc) from None


@dataclass
class BulkOutcome:
    """Outcome of a bulk change: ``matched`` selected, ``changed`` written,
    ``conflicts`` changed meanwhile (skipped, not overwritten), ``failed`` refused."""

    matched: int = 0
    changed: int = 0
    conflicts: int = 0
    failed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {"matched": self.matched, "changed": self.changed, "conflicts": self.conflicts,
                "failed": self.failed, "errors": dict(self.errors)}


class TokenList:
    """Tokens selected by state and/or type through the ``lrt/tokens`` view.

    Iterating pages through the view by key (never ``skip``); bulk changes
    write one ``_bulk_docs`` per page.
    """

    def __init__(self, db: Database, state: Optional[Union[State, str]] = None,
                 type: Optional[str] = None, page_size: int = 1000):
        self.db = db
        self.state = states.parse(state) if state is not None else None
        self.type = type
        self.page_size = page_size

    def _ranges(self) -> List[Tuple[list, list]]:
        sts = [self.state] if self.state is not None else list(State)
        out = []
        for s in sts:
            if self.type is None:
                out.append(([s.value], [s.value, {}]))
            else:
                out.append(([s.value, self.type], [s.value, self.type, {}]))
        return out

    def rows(self, include_docs: bool = False, limit: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """View rows ``{"id", "key": [state, type, id], ("doc")}`` in state, type, id order."""
        seen = 0
        for start, end in self._ranges():
            if limit is not None and seen >= limit:
                return
            try:
                for row in self.db.iter_view("lrt", "tokens", page_size=self.page_size,
                                             startkey=start, endkey=end, include_docs=include_docs,
                                             limit=None if limit is None else limit - seen):
                    yield row
                    seen += 1
            except NotFound as exc:
                raise _need_views(self.db, exc) from None

    def ids(self, limit: Optional[int] = None) -> Iterator[str]:
        for row in self.rows(limit=limit):
            yield row["id"]

    def __iter__(self) -> Iterator[Token]:
        for row in self.rows(include_docs=True):
            if row.get("doc"):
                yield Token(row["doc"])

    def count(self) -> int:
        counts = status_counts(self.db, self.type)
        return sum(n for by_state in counts.values() for s, n in by_state.items()
                   if self.state is None or s == self.state.value)

    # -- bulk changes -----------------------------------------------------------------
    def _bulk(self, change: Callable[[Token], Optional[Dict[str, Any]]], dry_run: bool) -> BulkOutcome:
        """Apply ``change`` (returns the doc to write, or None to skip) page by page."""
        out = BulkOutcome()
        batch: List[Dict[str, Any]] = []

        def flush() -> None:
            if not batch:
                return
            res = self.db.bulk_docs(batch)
            out.changed += len(res.ok)
            out.conflicts += len(res.conflicts)
            for doc_id, row in res.errors.items():
                out.failed += 1
                if len(out.errors) < MAX_ERRORS:
                    out.errors[doc_id] = f"{row.get('error')}: {row.get('reason')}"
            batch.clear()

        for row in self.rows(include_docs=True):
            doc = row.get("doc")
            out.matched += 1
            if not doc or doc.get("state") != row["key"][0]:
                out.conflicts += 1  # changed between the index and the read: leave it
                continue
            new = change(Token(doc))
            if new is None:
                continue
            if dry_run:
                out.changed += 1
                continue
            batch.append(new)
            if len(batch) >= self.page_size:
                flush()
        flush()
        return out

    def _refuse_locked(self, what: str, force: bool) -> None:
        if force or (self.state is not None and self.state != State.LOCKED):
            return
        n = TokenList(self.db, State.LOCKED, self.type).count()
        if n:
            raise LrtError(f"refusing to {what} {n} locked token(s){' of type ' + self.type if self.type else ''}: "
                           "a pilot holds each of them under a lease and would lose its work. "
                           "Wait for them to finish, or pass --force")

    def reset(self, dry_run: bool = False, force: bool = False,
              now: Optional[float] = None) -> BulkOutcome:
        """Move the selected tokens back to ``todo`` with a fresh attempt budget.

        Lease, error and exit code are cleared and ``attempts`` starts again at 0:
        a reset is a person deciding the token deserves ``max_attempts`` more
        tries (a ``failed`` token that kept its count would fail on its first
        error).  The attempt ``history`` is kept, so nothing about the earlier
        attempts is lost.
        """
        if self.state is None:
            raise LrtError("reset needs a state (e.g. --state error)")
        states.check(self.state, State.TODO)
        self._refuse_locked("reset", force)
        t = time.time() if now is None else now

        def change(tok: Token) -> Dict[str, Any]:
            tok.transition(State.TODO, now=t, reason="reset",
                           fields={"not_before": None, "cancel_requested": False, "attempts": 0})
            return tok

        return self._bulk(change, dry_run)

    def delete(self, dry_run: bool = False, force: bool = False) -> BulkOutcome:
        """Delete the selected tokens (``_deleted`` tombstones, one bulk write per page)."""
        self._refuse_locked("delete", force)
        return self._bulk(lambda tok: {"_id": tok.id, "_rev": tok.rev, "_deleted": True}, dry_run)

    def update(self, fields: Dict[str, Any], dry_run: bool = False) -> BulkOutcome:
        """Set ``fields`` (e.g. ``{"priority": 5}``) on the selected tokens; never ``state``."""
        forbidden = {"_id", "_rev", "state", "kind", "lease", "schema"} & set(fields)
        if forbidden:
            raise LrtError(f"update cannot set {', '.join(sorted(forbidden))}; "
                           "state changes go through reset/cancel")
        t = time.time()

        def change(tok: Token) -> Dict[str, Any]:
            tok.update(fields)
            tok["updated"] = t
            return tok

        return self._bulk(change, dry_run)
