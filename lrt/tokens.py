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
import json
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import states
from .couch import Database, NotFound
from .errors import LrtError
from .protocol import quorum
from .queries.status import conflicted_count, status_counts  # noqa: F401  (here since the start)
from .states import State

if TYPE_CHECKING:  # the config parser (and the staging modules it needs) only where a config is read
    from .config import Item, TokenConfig

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
        "inputs": _inputs(item),
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
        doc["_attachments"] = _attachments(item)
    return doc


def _inputs(item: Item) -> List[Dict[str, Any]]:
    return [link.as_input() for link in item.chunk.links] if item.chunk else []


def _attachments(item: Item) -> Dict[str, Any]:
    """Inline attachment: the token and its link slice are one write, in the same batch."""
    data = base64.b64encode(item.chunk.srm_txt().encode()).decode()  # type: ignore[union-attr]
    return {"srm.txt": {"content_type": "text/plain", "data": data}}


class _Hole(str):
    """A placeholder in :class:`DocEncoder`'s template."""


class DocEncoder:
    """Token documents of one config as JSON bytes, without building each document.

    ``encode(item, now)`` equals ``json.dumps(new_token(cfg, item, now, share=True))``
    (compact separators) byte for byte: the document of a placeholder item is
    encoded once, split at its placeholders (id, the two timestamps, payload,
    inputs), and each token's JSON is the segments joined with its own encoded
    values.  Why: building the 35-key document and encoding all of it was most of
    the client's CPU in bulk creation (docs/benchmarks.md); what is constant over
    a config is now encoded once.  Configs with dependencies (their fields change
    the state and vary per token) are encoded document by document.
    """

    _HOLES = ("_id", "created", "updated", "payload", "inputs")

    def __init__(self, cfg: TokenConfig):
        self.cfg = cfg
        self._dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        self._segments: Optional[List[str]] = None
        self._order: List[str] = []
        if cfg.after is not None:
            return
        probe = new_token(cfg, _Probe(), 0.0, share=True)  # type: ignore[arg-type]  # a duck-typed Item
        holes = {k: _Hole(f"\x00lrt-hole-{k}\x00") for k in self._HOLES}
        probe.update(holes)
        text = self._dumps(probe)
        marks = {self._dumps(h): k for k, h in holes.items()}
        pieces = re.split("(" + "|".join(re.escape(m) for m in marks) + ")", text)
        order = [marks[x] for x in pieces[1::2]]
        if sorted(order) != sorted(self._HOLES) or not text.endswith("}"):
            return  # a placeholder lookalike in the config: encode documents one by one
        pieces[-1] = pieces[-1][:-1]  # the closing brace comes after the attachments
        self._segments = pieces[0::2]
        self._order = order

    def encode(self, item: Item, now: float) -> bytes:
        segs = self._segments
        if segs is None:
            return self._dumps(new_token(self.cfg, item, now, share=True)).encode()
        t = repr(float(now))
        values = {"_id": encode_basestring_ascii(item.id), "created": t, "updated": t,
                  "payload": self._dumps(item.payload),
                  "inputs": self._dumps(_inputs(item)) if item.chunk else "[]"}
        parts = [segs[0]]
        for k, seg in zip(self._order, segs[1:]):
            parts.append(values[k])
            parts.append(seg)
        if item.chunk is not None:
            parts.append(',"_attachments":' + self._dumps(_attachments(item)))
        parts.append("}")
        return "".join(parts).encode()


class _Probe:
    """The item :class:`DocEncoder` builds its template from."""

    id = ""
    index = 0
    values: Dict[str, Any] = {}
    payload: Dict[str, Any] = {}
    chunk = None


#: the fields a token config defines: what ``lrt create`` compares with a stored token
#: (and what ``--update`` rewrites); everything else is the token's life, never touched
DEFINITION = ("type", "tokenset", "priority", "max_attempts", "retry", "expected_duration", "timeout",
              "command", "sandbox", "payload", "inputs", "outputs", "needs_staging")
#: states in which ``create --update`` rewrites a token's definition (nobody works on it)
UPDATABLE: Tuple[State, ...] = (State.TODO, State.WAITING, State.STAGING)
#: how many differing ids a result names (counts are always complete)
MAX_IDS = 10


def definition_diff(stored: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """The :data:`DEFINITION` fields in which two token documents differ."""
    return [k for k in DEFINITION if stored.get(k) != new.get(k)]


@dataclass
class CreateResult:
    """Outcome of :meth:`TokenSet.create`: counts, and the first few ids and error messages.

    ``differ`` counts existing tokens whose stored definition is not the
    config's (``differ_fields`` names the fields, ``differ_ids`` the first
    ids); with ``update`` the ones nobody works on are rewritten (``updated``)
    and the others are counted per state in ``kept``.
    """

    created: int = 0
    present: int = 0
    failed: int = 0
    errors: Dict[str, str] = field(default_factory=dict)
    differ: int = 0
    differ_ids: List[str] = field(default_factory=list)
    differ_fields: List[str] = field(default_factory=list)
    updated: int = 0
    kept: Dict[str, int] = field(default_factory=dict)
    #: written by another process while we updated (left as it is; a re-run compares again)
    changed_meanwhile: int = 0
    #: dry run only: tokens that would be created
    would_create: int = 0
    #: new tokens whose write fewer copies than the quorum accepted (a cluster's 202),
    #: checked on every copy; those whose revision lost to another creator's count as
    #: present and their revision was removed (``withdrawn``; docs/design.md)
    checked: int = 0
    withdrawn: int = 0

    @property
    def total(self) -> int:
        return self.created + self.present + self.failed

    def note_differ(self, doc_id: str, fields: Sequence[str]) -> None:
        self.differ += 1
        if len(self.differ_ids) < MAX_IDS:
            self.differ_ids.append(doc_id)
        for f in fields:
            if f not in self.differ_fields:
                self.differ_fields.append(f)

    def to_json(self) -> Dict[str, Any]:
        return {"created": self.created, "present": self.present, "failed": self.failed,
                "errors": dict(self.errors), "differ": self.differ, "differ_ids": list(self.differ_ids),
                "differ_fields": list(self.differ_fields), "updated": self.updated,
                "kept": dict(self.kept), "changed_meanwhile": self.changed_meanwhile,
                "would_create": self.would_create, "checked": self.checked, "withdrawn": self.withdrawn}


class CreateInterrupted(LrtError):
    """``create`` was interrupted (Ctrl-C, SIGTERM): what was written, and that a re-run completes it.

    ``result`` counts what is known to be written; ``in_flight`` tokens were
    being written when the interrupt came and may or may not be.  A re-run
    of the same config writes exactly the missing ones (creation is idempotent).
    """

    exit_code = 130

    def __init__(self, result: CreateResult, in_flight: int, total: Optional[int],
                 signum: Optional[int] = None):
        self.result, self.in_flight, self.total, self.signum = result, in_flight, total, signum
        if signum is not None:
            self.exit_code = 128 + signum
        done = result.created + result.present
        msg = f"interrupted: {result.created} token(s) created"
        if result.present:
            msg += f", {result.present} already present"
        msg += f" ({done}" + (f" of {total}" if total is not None else "") + " done"
        if in_flight:
            msg += f"; {in_flight} more were being written and may be there"
        msg += "). Run the same command again to create the rest: it skips what exists"
        super().__init__(msg)


def _batched(items: Iterable[Any], n: int) -> Iterator[List[Any]]:
    batch: List[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def default_concurrency(db: Database) -> int:
    """Batches :meth:`TokenSet.create` writes at once on ``db``'s server.

    1 on the embedded pouchdb-server: one Node.js process, where more streams
    only contend (measured 0.76x with 2, 0.64x with 4).  4 on Apache CouchDB,
    which parses one request while it writes another (measured on a loaded
    2-core machine: 1.48x the rate of one stream in the quietest run, less or
    nothing when the machine's cores were busy).  Figures: docs/benchmarks.md.
    One ``GET /``, only asked when the caller does not say.
    """
    try:
        vendor = str((db.server.info().get("vendor") or {}).get("name", ""))
    except LrtError:
        return 1
    return 1 if "pouchdb" in vendor.lower() else 4


def _stored_docs(db: Database, ids: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The existing (not deleted) documents among ``ids``."""
    rows = db.all_docs(keys=list(ids), include_docs=True).get("rows", [])
    return {r["id"]: r["doc"] for r in rows
            if r.get("doc") and "error" not in r and not (r.get("value") or {}).get("deleted")}


def _redefine(old: Dict[str, Any], new: Dict[str, Any], fields: Sequence[str], now: float) -> Dict[str, Any]:
    """``old`` with the definition ``new`` gives (MVCC: written with ``old``'s ``_rev``).

    The token's life (state, attempts, history, logs) is kept; a history entry
    says what changed.  A new file-list slice replaces ``srm.txt``; the other
    attachments stay (stubs).
    """
    doc = dict(old)
    for k in fields:
        doc[k] = new.get(k)
    doc["updated"] = now
    hist = list(doc.get("history") or [])
    hist.append({"end": "update", "at": now, "state": doc.get("state"), "fields": list(fields),
                 "by": "lrt create --update"})
    doc["history"] = hist[-states.HISTORY_LIMIT:]
    atts = dict(doc.get("_attachments") or {})
    if "srm.txt" in (new.get("_attachments") or {}):
        atts["srm.txt"] = new["_attachments"]["srm.txt"]
    elif "inputs" in fields:
        atts.pop("srm.txt", None)
    if atts:
        doc["_attachments"] = atts
    else:
        doc.pop("_attachments", None)
    return doc


def _compare(db: Database, stored: Dict[str, Dict[str, Any]], mine: Mapping[str, Dict[str, Any]],
             res: CreateResult, lock: threading.Lock, update: bool) -> None:
    """Count (and with ``update`` rewrite) the existing tokens whose definition differs."""
    now = time.time()
    rewrite: List[Dict[str, Any]] = []
    updatable = {s.value for s in UPDATABLE}
    for doc_id, old in stored.items():
        new = mine[doc_id]
        fields = definition_diff(old, new)
        if not fields:
            continue
        with lock:
            res.note_differ(doc_id, fields)
        if not update:
            continue
        state = str(old.get("state"))
        if state not in updatable or (state == State.STAGING.value and "inputs" in fields):
            with lock:
                res.kept[state] = res.kept.get(state, 0) + 1
            continue
        rewrite.append(_redefine(old, new, fields, now))
    if not rewrite:
        return
    out = db.bulk_docs(rewrite)
    with lock:
        res.updated += len(out.ok)
        res.changed_meanwhile += len(out.conflicts)
        for doc_id, row in out.errors.items():
            res.failed += 1
            if len(res.errors) < MAX_ERRORS:
                res.errors[doc_id] = f"update: {row.get('error')}: {row.get('reason')}"


#: how long a creator whose first revision of a token is CouchDB's winner among the
#: token's leaves, but was accepted by fewer copies than the write quorum, waits for
#: the other creators to remove their leaves (seconds; docs/design.md)
CONFIRM_WAIT = quorum.CONFIRM_WAIT


class _Batch:
    """One batch of :meth:`TokenSet.create`: its items, their encoded documents, the time
    stamped into them."""

    __slots__ = ("items", "encoded", "now", "ids")

    def __init__(self, items: List[Item], encoded: List[bytes], now: float):
        self.items, self.encoded, self.now = items, encoded, now
        self.ids = [it.id for it in items]

    def __len__(self) -> int:
        return len(self.items)


class _Writers:
    """``n`` daemon threads writing batches, each through its own connection pool.

    Daemon threads and bounded waits, not a ThreadPoolExecutor: its shutdown
    waits for every running request without a limit, which is how one Ctrl-C
    could hang ``lrt create`` for minutes.  :meth:`stop` gives the writers a
    moment to finish (so the count is known) and then leaves them.
    """

    def __init__(self, db: Database, n: int, write: Callable[[Database, _Batch], None]):
        self._todo: "queue.Queue[_Batch]" = queue.Queue(maxsize=1)
        self._done: "queue.Queue[Tuple[int, Optional[BaseException]]]" = queue.Queue()
        self._write = write
        self._errors: List[BaseException] = []
        self._closed = False
        self.busy = 0  #: tokens handed out whose write has not been reported back
        self._dbs = [db] + [Database(db.server.clone(), db.name) for _ in range(n - 1)]
        self._threads = [threading.Thread(target=self._run, args=(d,), daemon=True,
                                          name=f"lrt-create-{i}") for i, d in enumerate(self._dbs)]
        for t in self._threads:
            t.start()

    def _run(self, db: Database) -> None:
        while not self._closed:
            try:
                docs = self._todo.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._write(db, docs)
            except BaseException as exc:  # re-raised by the feeding thread
                self._errors.append(exc)
                self._done.put((len(docs), exc))
            else:
                self._done.put((len(docs), None))

    def _report(self, n: int, exc: Optional[BaseException]) -> int:
        self.busy -= n
        if exc is not None:
            self.busy += n  # not known to be written
            raise exc
        return n

    def put(self, docs: _Batch) -> None:
        """Hand a batch to the next free writer (waiting in short, interruptible steps)."""
        while True:
            if self._errors:
                raise self._errors[0]
            self.busy += len(docs)
            try:
                self._todo.put(docs, timeout=0.2)
                return
            except BaseException:  # Full, or an interrupt while waiting: not handed out
                self.busy -= len(docs)
                if not isinstance(sys.exc_info()[1], queue.Full):
                    raise

    def finished(self) -> Iterator[int]:
        """Sizes of the batches written since the last call (raises a writer's error)."""
        while True:
            try:
                n, exc = self._done.get_nowait()
            except queue.Empty:
                return
            yield self._report(n, exc)

    def drain(self) -> Iterator[int]:
        """Wait for every batch handed out."""
        while self.busy:
            try:
                n, exc = self._done.get(timeout=0.2)
            except queue.Empty:
                continue
            yield self._report(n, exc)

    def stop(self, wait: float) -> int:
        """Hand out nothing more, wait up to ``wait`` s; the tokens whose write is not known."""
        try:
            docs = self._todo.get_nowait()  # handed out, not started: never written
            self.busy = max(0, self.busy - len(docs or ()))
        except queue.Empty:
            pass
        deadline = time.monotonic() + wait
        unknown = 0
        while self.busy > unknown and time.monotonic() < deadline:
            try:
                n, exc = self._done.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.busy -= n
            if exc is not None:
                unknown += n
                self.busy += n
        return self.busy

    def close(self) -> None:
        """Let idle writers end; the others end with their request (they are daemons)."""
        self._closed = True
        for d in self._dbs[1:]:
            self._dbs[0].server.requests_sent += d.server.requests_sent  # benchmarks read it
            d.server.close()


class TokenSet:
    """The tokens one config describes.  ``TokenSet.from_config(path).create(db)``."""

    def __init__(self, config: TokenConfig):
        self.config = config
        self._count: Optional[int] = None

    @classmethod
    def from_config(cls, path: Union[str, Path], files: Optional[Union[str, Path]] = None) -> "TokenSet":
        """Load and validate a config (and its file list); ``files`` overrides ``files.list``."""
        from .config import TokenConfig

        return cls(TokenConfig.load(path, files=files))

    @classmethod
    def from_text(cls, text: str, path: str = "<config>", base_dir: Union[str, Path, None] = None,
                  files: Optional[Union[str, Path]] = None) -> "TokenSet":
        from .config import TokenConfig

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

    def create(self, db: Database, batch_size: int = 1000, progress: Optional[ProgressFn] = None,
               concurrency: Optional[int] = None, update: bool = False,
               stop_wait: float = 1.0) -> CreateResult:
        """Create the tokens that do not exist yet, ``batch_size`` per ``_bulk_docs``.

        ``concurrency`` batches are written at once, each by a thread with its own
        connection pool (default: :func:`default_concurrency`, chosen per server), while
        this thread builds the next batch; memory is about ``concurrency + 2``
        batches whatever the size of the set.  ``progress(done, total)`` is called
        after each batch.

        Existing tokens are never overwritten; those whose stored definition
        differs from the config are counted (:class:`CreateResult`), and with
        ``update`` rewritten when nobody works on them (:data:`UPDATABLE`).

        An interrupt (KeyboardInterrupt, which the CLI also makes of SIGTERM)
        stops feeding batches, waits up to ``stop_wait`` seconds for the ones in
        flight and raises :class:`CreateInterrupted` with the honest count.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if concurrency is None:
            concurrency = default_concurrency(db)
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        total = self.validate()
        if self.config.after is not None:  # parents exist, no cycle: before the first write
            from .deps.create import check_dependencies, require_views

            require_views(db)
            check_dependencies(db, self.config)
        self._publish_sandbox(db)
        res = CreateResult()
        # Correctness never depends on the existence check: a _bulk_docs write
        # without _rev cannot overwrite an existing token, it answers 409, which
        # counts as "present" (and is then compared).  The check only avoids
        # re-sending tokens that exist (a re-run, a resumed run), so it is made
        # while it finds something and skipped once a batch turns out to be all
        # new, until a 409 says otherwise.  On a fresh set this saves one
        # _all_docs request per batch.
        check = [True]
        lock = threading.Lock()  # guards res and check between the writers

        cfg = self.config

        def write(wdb: Database, batch: _Batch) -> None:
            ids = batch.ids
            stored: Dict[str, Dict[str, Any]] = {}
            if check[0]:
                stored = _stored_docs(wdb, ids)
                if not stored:
                    check[0] = False
            keep = [i for i, doc_id in enumerate(ids) if doc_id not in stored]
            out = None
            if keep:
                out = wdb.bulk_docs_encoded([ids[i] for i in keep], [batch.encoded[i] for i in keep])
            if out is not None and out.conflicts:
                # it exists (another creator, or the check was skipped): compare it too
                stored.update(_stored_docs(wdb, out.conflicts))
            # written by fewer copies than the quorum: another creator's may have won
            # (lrt.protocol.quorum: the only live leaf is created; a losing revision is deleted)
            settled = quorum.settle(wdb, {i: out[i]["rev"] for i in out.unconfirmed}, CONFIRM_WAIT) \
                if out is not None and out.unconfirmed else {}
            errors = dict(out.errors) if out is not None else {}
            for doc_id, st in settled.items():
                if st.outcome is quorum.Settled.HELD:  # created: nothing to compare
                    continue
                if st.other is not None and st.outcome is not quorum.Settled.FAILED:
                    stored[doc_id] = st.other  # the sibling that stays (withdrawn, present): like a 409
                elif st.outcome is quorum.Settled.GONE:
                    errors[doc_id] = {"error": "lost", "reason": "the revision written was removed; run again"}
                else:
                    errors[doc_id] = st.error or {}
            # the documents to compare with (built only for the tokens that exist)
            mine = {batch.items[i].id: new_token(cfg, batch.items[i], batch.now, share=True)
                    for i, doc_id in enumerate(ids) if doc_id in stored}
            with lock:
                if out is not None:
                    res.created += len(out.ok) - len(settled) + sum(
                        1 for st in settled.values() if st.outcome is quorum.Settled.HELD)
                    res.checked += len(settled)
                    res.withdrawn += sum(1 for st in settled.values() if st.outcome is quorum.Settled.LOST)
                    for doc_id, row in errors.items():
                        res.failed += 1
                        if len(res.errors) < MAX_ERRORS:
                            res.errors[doc_id] = f"{row.get('error')}: {row.get('reason')}"
                    if out.conflicts:
                        check[0] = True
                res.present += len(stored)
            if stored:
                _compare(wdb, stored, mine, res, lock, update)

        pool = _Writers(db, concurrency, write)
        encoder = DocEncoder(self.config)
        done = 0
        try:
            try:
                for items in _batched(self.config.items(), batch_size):
                    now = time.time()
                    pool.put(_Batch(items, [encoder.encode(it, now) for it in items], now))
                    # (put blocks while `concurrency` batches are in flight)
                    for n in pool.finished():
                        done += n
                        if progress is not None:
                            progress(done, total)
                for n in pool.drain():
                    done += n
                    if progress is not None:
                        progress(done, total)
            except KeyboardInterrupt as exc:
                try:
                    in_flight = pool.stop(stop_wait)
                except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, count them unknown
                    in_flight = pool.busy
                raise CreateInterrupted(res, in_flight, total, getattr(exc, "signum", None)) from None
        finally:
            pool.close()
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
        """What :meth:`create` would do, writing nothing: validate, and with ``db``
        count the existing tokens and compare their definitions.

        ``would_create`` counts what is missing; ``created`` stays 0.
        """
        self.validate()
        if self.config.after is not None:
            from .deps.create import check_dependencies, require_views

            if db is not None:
                require_views(db)
            check_dependencies(db, self.config)
        self._publish_sandbox(None)  # the sandbox's hash, so the comparison is like create's
        res = CreateResult()
        updatable = {s.value for s in UPDATABLE}
        for batch in _batched(self.config.items(), batch_size):
            if db is None:
                res.would_create += len(batch)
                continue
            now = time.time()
            mine = {it.id: new_token(self.config, it, now, share=True) for it in batch}
            stored = _stored_docs(db, list(mine))
            res.present += len(stored)
            res.would_create += len(mine) - len(stored)
            for doc_id, old in stored.items():
                fields = definition_diff(old, mine[doc_id])
                if not fields:
                    continue
                res.note_differ(doc_id, fields)
                state = str(old.get("state"))
                if state in updatable and not (state == State.STAGING.value and "inputs" in fields):
                    res.updated += 1  # would be, with update
                else:
                    res.kept[state] = res.kept.get(state, 0) + 1
        return res


# ---------------------------------------------------------------------------
# queries


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
        out: List[Tuple[list, list]] = []
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
            except NotFound:
                from .queries.tokens import need_views

                raise need_views(self.db) from None

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
            # a change a cluster accepted on too few copies (202) is checked on every copy:
            # beside a concurrent change (a pilot's claim) it is withdrawn, as after a 409
            written, again = quorum.sort_out(self.db, res)
            out.changed += len(written)
            out.conflicts += len(again)
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
