"""The pilot loop: claim a token, run its payload under a lease, report, repeat.

Happy path per token: **one** ``_bulk_docs`` request that records the finish
of the token just run and claims the next one, plus a share of one ``todo``
view query (the candidate list, with the documents, is reused for many
claims).  The lease is renewed only when half of it has passed, so the
liveness write rate is per pilot and per lease period, not per token.

Safety rules (docs/pilot.md explains them):

* a token is run only under a lease won by a claim write that CouchDB accepted
  at the revision the pilot decided on (MVCC);
* a refused heartbeat/finish (another claim holds the token) kills the
  payload's process group and the pilot walks away without writing;
* if the pilot cannot renew before its own estimate of the lease's end, it
  kills the payload itself (self-fencing) -- another pilot may be about to
  reap and rerun the token;
* SIGTERM/SIGINT: the payload group gets SIGTERM (then SIGKILL), the partial
  logs are kept and the token goes back to ``todo`` at once, not counted;
* results are never dropped on a 409 or an outage: the finish is re-decided on
  the re-read token and repeated (a repeat is recognised by claim id) until it
  is recorded, the token turns out to belong to someone else, or
  ``finish_patience`` runs out;
* a token claimed together with a finish is released (not counted) if the
  pilot stops before running it;
* nothing slow stands between a won claim and its payload's start: housekeeping
  runs only while no claim is held, and the lease as stamped is checked (and
  renewed if half gone) right before the payload starts;
* a running payload's token is looked at every ``cancel_check`` seconds with a
  conditional read (empty 304 while unchanged), so a cancel or a release
  request reaches it in seconds whatever the lease.

One attempt is one pipeline, :meth:`Pilot._process_in`: **prepare** (command,
sandbox, inputs, a fresh lease) -> **run** (the payload, supervised) ->
**publish** (outputs, logs, then the finish or the release).  Each step that
ends the attempt says how as an :class:`Outcome`, and only publishing writes
it.  While anything runs under a held lease (the payload, a sandbox fetch,
staging, stage-out), one :class:`LeaseKeeper` decides when the lease is renewed
and when the token is looked at.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import errorcodes
from ..batch import job_info, walltime_end
from ..couch import CouchConnectionError, CouchError, Database, ServerError
from ..deps.release import after_finish, idle_sweep
from ..design import MONITOR_DDOC
from ..errors import LrtError
from ..protocol.client import Claimed, Finishing, PendingClaim, TokenClient
from ..protocol.conflicts import resolve_conflicts
from ..protocol.decisions import Refusal
from ..protocol.reaping import reap_expired
from ..protocol.stats import Stats
from ..protocol.window import Candidates
from .run import INLINE_MAX, Payload, capped_log, command_argv, describe_failure, payload_env, write_token_file
from .run import remove_workdir

log = logging.getLogger("lrt.pilot")

JSON = Dict[str, Any]

_TRANSIENT = (CouchConnectionError, ServerError)


class Look(str, Enum):
    """What a look at the held token's lease said (:meth:`Pilot._renew`, :meth:`Pilot._watch`)."""

    OK = "ok"             #: still ours
    CANCEL = "cancel"     #: still ours, and a cancel was requested
    RELEASE = "release"   #: still ours, and a release (stop and requeue, ``lrt release``) was requested
    FENCED = "fenced"     #: another claim holds the token
    DOWN = "down"         #: the server could not be asked

    def __str__(self) -> str:
        return self.value


class Ending(str, Enum):
    """How a payload run under a lease ended (:meth:`Pilot._supervise`)."""

    EXITED = "exited"          #: on its own
    TIMEOUT = "timeout"        #: killed: ran past the token's timeout
    CANCELLED = "cancelled"    #: killed: a cancel was requested
    LEASE_LOST = "lease_lost"  #: killed: the lease could not be renewed in time
    RELEASE = "release"        #: killed: the pilot is being stopped (signal, walltime)
    REQUEUE = "requeue"        #: killed: a release was requested (``lrt release``)
    FENCED = "fenced"          #: killed: another claim holds the token

    def __str__(self) -> str:
        return self.value


class Publish(str, Enum):
    """What is written for an attempt (:meth:`Pilot._publish`)."""

    DONE = "done"        #: outputs, logs, then the finish: done
    ERROR = "error"      #: the finish with an error code (cancelled for CANCELLED)
    RELEASE = "release"  #: the token goes back to todo, the attempt not counted
    NOTHING = "nothing"  #: fenced: the token is another claim's, nothing is written

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """How an attempt ended, whatever ended it: the payload, a failed preparation or
    the lease keeper."""

    publish: Publish
    code: Optional[str] = None        #: error code name (ERROR)
    message: Optional[str] = None     #: error message, release reason, or the warning when fenced
    exit_code: Optional[int] = None
    requeued: bool = False            #: a release that was asked for: this pilot does not claim it again

    @classmethod
    def error(cls, code: str, message: str, exit_code: Optional[int] = None) -> "Outcome":
        return cls(Publish.ERROR, code=code, message=message, exit_code=exit_code)

    @classmethod
    def release(cls, why: Optional[str] = None, requeued: bool = False) -> "Outcome":
        """Give the token back; ``why`` None: the pilot is being stopped (signal, walltime)."""
        return cls(Publish.RELEASE, message=why, requeued=requeued)

    @classmethod
    def fenced(cls, note: Optional[str] = None) -> "Outcome":
        return cls(Publish.NOTHING, message=note)


@dataclass
class Prepared:
    """An attempt ready to start: the command and the sandbox it runs in."""

    argv: List[str]
    sandbox_dir: Optional[Path]


#: the look at the lease that stops a payload with each ending
_ENDING_LOOK = {Ending.CANCELLED: Look.CANCEL, Ending.REQUEUE: Look.RELEASE, Ending.FENCED: Look.FENCED,
                Ending.LEASE_LOST: Look.DOWN}


class LeaseKeeper:
    """The one place that decides, while something runs under a held lease (the
    payload, a sandbox fetch, staging), when the lease is renewed and when the
    token is looked at: renewed once half of the lease has passed (retried at
    most once a second while that fails), looked at every ``cancel_check``
    seconds (a conditional read) in between."""

    def __init__(self, pilot: "Pilot", c: Claimed):
        self.pilot = pilot
        self.c = c
        self.renew_every = pilot.o.lease / 2.0
        self.check_every = pilot.o.cancel_check or 0.0
        self.last_try = 0.0
        self.last_look = time.monotonic()

    def tick(self) -> Optional[Look]:
        """Renew or look if due; what that said (None: nothing was due)."""
        now = time.monotonic()
        renewed = self.c.renewed_mono
        if now - renewed >= self.renew_every and now - self.last_try >= min(1.0, self.renew_every / 4):
            self.last_try = self.last_look = now
            return self.pilot._renew(self.c)
        if self.check_every > 0 and now - max(self.last_look, renewed) >= self.check_every:
            self.last_look = now
            return self.pilot._watch(self.c)
        return None

    def lost(self, look: Optional[Look]) -> bool:
        """True when the server cannot be reached and the lease is about to run out:
        stop now (self-fencing), another pilot may be about to reap the token."""
        return (look is Look.DOWN
                and time.monotonic() - self.c.renewed_mono > self.pilot.o.lease - self.pilot._lease_safety())


@dataclass
class PilotOptions:
    """How one pilot behaves (``lrt pilot`` flags map onto these)."""

    token_type: Optional[str] = None
    max_tokens: Optional[int] = None
    #: exit after this many seconds without claimable work
    idle_exit: float = 60.0
    #: seconds this pilot may run (``--walltime``); the batch job's end is also honoured
    walltime: Optional[float] = None
    #: stop claiming / release a running token this long before the walltime ends
    walltime_margin: Optional[float] = None
    lease: float = 600.0
    #: how long past expiry (server clock) a lease is reaped by idle pilots
    reap_grace: float = 30.0
    workdir: Optional[Path] = None
    keep_workdirs: bool = False
    #: rows fetched per ``todo`` view query
    batch: int = 100
    #: seconds between SIGTERM and SIGKILL when stopping a payload
    term_grace: float = 5.0
    #: seconds to keep trying to record a result while the server is unreachable
    finish_patience: Optional[float] = None
    #: seconds of server outage after which an idle pilot gives up
    server_patience: float = 900.0
    #: idle poll interval (seconds, jittered)
    poll: float = 5.0
    stats_file: Optional[Path] = None
    pilot_id: Optional[str] = None
    #: reap/resolve at most once per this many seconds (default: the lease)
    housekeeping_interval: Optional[float] = None
    #: seconds between looks at a running token for a cancel or release request
    #: (a conditional read; None or 0: only at lease renewals, every lease/2)
    cancel_check: Optional[float] = 20.0


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "token"


def _job_info() -> Optional[JSON]:
    """The batch job this pilot runs in (lrt.batch), or None; never fatal."""
    try:
        return job_info()
    except Exception:  # noqa: BLE001 - never die for lack of this fact
        log.debug("no batch job information", exc_info=True)
        return None


def _batch_end() -> Optional[float]:
    """When the batch job's walltime ends (lrt.batch), or None; never fatal."""
    try:
        return walltime_end()
    except Exception:  # noqa: BLE001
        log.debug("no batch walltime end", exc_info=True)
        return None


class Pilot:
    """One pilot process's loop (see the module docstring)."""

    def __init__(self, db: Database, opts: Optional[PilotOptions] = None):
        self.db = db
        self.o = opts or PilotOptions()
        self.host = socket.gethostname()
        self.id = self.o.pilot_id or f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = Stats()
        self.batch_job = _job_info()
        self.client = TokenClient(db, self.id, self.host, self.batch_job, self.o.lease, self.stats)
        self.cands = Candidates(db, self.o.token_type, batch=self.o.batch, stats=self.stats)
        self.t0 = time.time()
        ends = [e for e in (_batch_end(), (self.t0 + self.o.walltime) if self.o.walltime else None)
                if e is not None]
        self.end: Optional[float] = min(ends) if ends else None
        if self.o.walltime_margin is not None:
            self.margin = float(self.o.walltime_margin)
        elif self.end is not None:
            self.margin = min(60.0, 0.05 * max(0.0, self.end - self.t0))
        else:
            self.margin = 0.0
        self.stop_signal: Optional[int] = None
        self.exit_reason = ""
        self._own_workdir = self.o.workdir is None
        self.workdir = Path(self.o.workdir) if self.o.workdir else Path(tempfile.mkdtemp(prefix="lrt-pilot-"))
        self._next_housekeeping = time.monotonic() + random.uniform(0, self._hk_interval())
        self._last_payload_end: Optional[float] = None
        self._prev_end: Optional[float] = None
        #: the next token, claimed in the same request as the last finish
        self._prefetched: Optional[Claimed] = None
        self.finish_patience = (self.o.finish_patience if self.o.finish_patience is not None
                                else max(600.0, 2 * self.o.lease))
        #: tokens this pilot gave back on request (lrt release): not claimed again by it
        self._requeued = self.cands.skip
        self._idle_noted = False

    # -- helpers ---------------------------------------------------------------------
    def _hk_interval(self) -> float:
        return self.o.housekeeping_interval or max(1.0, min(self.o.lease, 600.0))

    def _hk_due(self) -> bool:
        return time.monotonic() >= self._next_housekeeping

    def remaining(self) -> Optional[float]:
        """Seconds of walltime left for new work (None: unlimited)."""
        if self.end is None:
            return None
        return self.end - time.time() - self.margin

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early on a stop signal."""
        end = time.monotonic() + max(0.0, seconds)
        while self.stop_signal is None:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    def _server_now(self) -> float:
        off = self.db.server.clock_offset
        return time.time() + (off or 0.0)

    # -- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Work until no work is left (idle_exit), max_tokens, walltime or a signal."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self._prefetched is not None:  # claimed with the last finish, never started
                c, self._prefetched = self._prefetched, None
                try:
                    self._release(c, None)
                except Exception:  # noqa: BLE001 - the lease will expire and be reaped
                    log.exception("could not release %s", c.id)
            self._write_stats()
            if self._own_workdir and not self.o.keep_workdirs:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _loop(self) -> int:
        idle_since: Optional[float] = None
        down_since: Optional[float] = None
        backoff = 0.5
        log.info("pilot %s starting (type=%s, lease=%ss)", self.id, self.o.token_type, self.o.lease)
        try:
            self.client.sync_clock()
        except (_TRANSIENT + (CouchError,)) as exc:  # the claim loop copes with an absent server
            log.debug("could not read the server clock yet: %s", exc)
        while True:
            if self.stop_signal is not None:
                self.exit_reason = f"signal {signal.Signals(self.stop_signal).name}"
                return 128 + self.stop_signal
            if self.o.max_tokens is not None and self.stats.tokens >= self.o.max_tokens:
                self.exit_reason = "max-tokens"
                return 0
            remaining = self.remaining()
            if remaining is not None and remaining <= 0:
                self.exit_reason = "walltime"
                return 0
            try:
                claimed = self._claim_next(remaining)
                down_since, backoff = None, 0.5
            except _TRANSIENT as exc:
                now = time.monotonic()
                down_since = down_since or now
                idle_since = None
                self._last_payload_end = None
                if now - down_since > self.o.server_patience:
                    self.exit_reason = f"server unreachable for {self.o.server_patience:.0f}s"
                    log.error("%s: %s", self.exit_reason, exc)
                    return 5
                log.warning("cannot claim (%s); retrying in %.1fs", exc, backoff)
                self._sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, 15.0)
                continue
            if claimed is not None:
                idle_since = None
                try:
                    self._process(claimed)
                except Exception as exc:  # noqa: BLE001 - never strand a claimed token
                    log.exception("unexpected error while handling %s", claimed.id)
                    try:
                        self._fail(claimed, "PILOT_ERROR", f"{type(exc).__name__}: {exc}")
                    except Exception:  # noqa: BLE001 - the lease will expire and be reaped
                        log.exception("could not record the failure of %s", claimed.id)
                try:
                    self._housekeeping(idle=False)
                except _TRANSIENT:
                    pass
                continue
            # no claimable work right now
            self._last_payload_end = None
            now = time.monotonic()
            idle_since = idle_since if idle_since is not None else now
            if not self._idle_noted and (self.stats.tokens == 0 or now - idle_since >= self.IDLE_NOTE_AFTER):
                self._idle_noted = True
                self._note_other_states()
            try:
                if self._housekeeping(idle=True):
                    continue  # something came back to todo: try again at once
            except _TRANSIENT:
                pass
            idle_for = now - idle_since
            if idle_for >= self.o.idle_exit:
                self.exit_reason = "idle"
                return 0
            left = self.o.idle_exit - idle_for
            # polls are jittered so that pilots spread out; the last one, though, is made
            # at the idle exit (a jittered share of what is left made several looks instead)
            pause = left if left <= self.o.poll else random.uniform(0.5, 1.0) * self.o.poll
            nr = self.cands.next_ready
            if nr is not None:
                pause = min(pause, max(0.0, nr - self._server_now()))
            self._sleep(pause + 0.05)

    def _claim_next(self, remaining: Optional[float]) -> Optional[Claimed]:
        if self._prefetched is not None:
            c, self._prefetched = self._prefetched, None
            return c
        for _ in range(50):
            p = self._candidate(remaining)
            if p is None:
                return None
            if isinstance(p, Refusal):
                continue
            won = self.client.commit(pending=p).claimed
            self.cands.note(won is not None)
            if won is not None:
                return won
        return None

    def _candidate(self, remaining: Optional[float]) -> "PendingClaim | Refusal | None":
        """A claim prepared on the next candidate; a reason string if that one was
        not claimable; None when there are no candidates."""
        row = self.cands.pop(self._server_now(), remaining)
        if row is None:
            return None
        p = self.client.prepare_claim(row.get("doc"), token_type=self.o.token_type, remaining=remaining)
        if isinstance(p, Refusal) and p.lost:  # (a refused row is only skipped)
            self.cands.note(False)
        return p

    def _next_with_finish(self) -> Optional[PendingClaim]:
        """The claim to send along with a finish, if this pilot will go on working."""
        if self.stop_signal is not None or self._prefetched is not None:
            return None
        if self._hk_due():
            # housekeeping (up to 100 reaps) runs next: finish alone, so that no claim
            # waits through it (its lease would run out meanwhile); claim afterwards
            return None
        if self.o.max_tokens is not None and self.stats.tokens + 1 >= self.o.max_tokens:
            return None
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return None
        for _ in range(5):
            try:
                p = self._candidate(remaining)
            except CouchError as exc:  # no candidate now: finish alone, claim later
                log.debug("no candidate to claim with the finish: %s", exc)
                return None
            if not isinstance(p, Refusal):
                return p
        return None

    def _housekeeping(self, idle: bool) -> bool:
        """Reap expired leases and resolve conflicts, at most once per interval.

        Returns True if a token was returned to the queue.  Never while a claim
        is held (``_prefetched``): that claim's lease would run on meanwhile;
        housekeeping then waits for the next finish, which claims nothing when
        housekeeping is due.
        """
        now = time.monotonic()
        if now < self._next_housekeeping or self._prefetched is not None:
            return False
        self._next_housekeeping = now + self._hk_interval() * random.uniform(0.8, 1.2)
        back = False
        try:
            for rep in reap_expired(self.client, self.o.reap_grace, limit=100):
                if rep.get("state") == "todo":
                    back = True
                    log.warning("reaped %s (lease of %s expired)", rep["id"], rep.get("pilot"))
            for rep in resolve_conflicts(self.db, limit=50):
                self.stats.resolved += 1
                back = True
                log.warning("resolved conflicted token %s: kept %s (%s)", rep["id"], rep["kept"], rep["state"])
            back = idle_sweep(self.db, idle) or back  # waiting tokens a crash left unreleased (lrt/deps)
        except _TRANSIENT:
            raise
        except CouchError as exc:  # e.g. monitoring ddoc missing: not fatal for a pilot
            log.warning("housekeeping failed: %s", exc)
        if back:
            self.cands.invalidate()
        return back

    #: seconds a pilot that has run tokens waits for more before it says where its tokens are
    #: (one status-view query; a pilot that found nothing to run from the start says it at once,
    #: while one that ran its share of a pool that has drained usually exits before)
    IDLE_NOTE_AFTER = 10.0

    def _note_other_states(self) -> None:
        """Say once, when no work is claimable, where this pilot's tokens are instead
        (one reduce query of the ``lrt/tokens`` status view): waiting, staging,
        backing off, running elsewhere, ... -- so an idle pilot is not a mystery.

        In a thread of its own: bringing that index up to date can take the
        server a while (it is not one the pilots keep fresh), and the pilot
        must go on reaping and claiming meanwhile.
        """
        threading.Thread(target=self._note_other_states_now, name="lrt-idle-note", daemon=True).start()

    def _note_other_states_now(self) -> None:
        try:
            rows = self.db.view(MONITOR_DDOC, "tokens", group_level=2).get("rows", [])
        except Exception as exc:  # noqa: BLE001 - only a note
            log.debug("could not read the status view: %s", exc)
            return
        counts: Dict[str, int] = {}
        for r in rows:
            key = r.get("key") or []
            if len(key) < 2 or (self.o.token_type is not None and key[1] != self.o.token_type):
                continue
            counts[str(key[0])] = counts.get(str(key[0]), 0) + int(r.get("value") or 0)
        waiting = {k: v for k, v in counts.items() if k not in ("done", "cancelled") and v}
        if not waiting:
            return
        hints = {"waiting": "waiting for other tokens", "staging": "waiting for their inputs to be staged",
                 "todo": "backing off after a failure, or longer than this pilot's walltime left",
                 "locked": "running under other pilots", "error": "failed, not retried",
                 "failed": "attempts used up"}
        what = ", ".join(f"{n} {st} ({hints.get(st, st)})" for st, n in sorted(waiting.items()))
        kind = f"type {self.o.token_type}" if self.o.token_type else "any type"
        log.warning("no claimable token of %s now; its tokens: %s", kind, what)

    # -- one token: prepare -> run -> publish -------------------------------------------
    def _process(self, c: Claimed) -> None:
        wd = self.workdir / f"{_safe_name(c.id)}-{c.claim[:8]}"
        # overhead samples only between two consecutive payloads (set again after this one ran)
        self._prev_end, self._last_payload_end = self._last_payload_end, None
        try:
            wd.mkdir(parents=True, exist_ok=False)
            self._process_in(c, wd)
        finally:
            if not self.o.keep_workdirs:
                remove_workdir(wd)

    def _process_in(self, c: Claimed, wd: Path) -> None:
        """One attempt: :meth:`_prepare` it (command, sandbox, inputs, a fresh lease),
        :meth:`_run` the payload under the lease, :meth:`_publish` the outcome
        (outputs, logs, then the finish or the release).  Whatever stops the
        attempt early is an :class:`Outcome` too, published the same way."""
        prepared = self._prepare(c, wd)
        if isinstance(prepared, Outcome):
            self._publish(c, prepared, wd)
            return
        outcome, p, ended = self._run(c, wd, prepared)
        self._publish(c, outcome, wd, p)
        if ended is not None:
            self._last_payload_end = ended

    def _fail(self, c: Claimed, code_name: str, message: str, payload: Optional[Payload] = None,
              exit_code: Optional[int] = None) -> None:
        code = errorcodes.get(code_name)
        body: JSON = {"outcome": "cancelled" if code_name == "CANCELLED" else "error",
                      "error": code.error(message), "retryable": code.retry, "exit_code": exit_code}
        self._report(c, body, payload)

    def _prepare(self, c: Claimed, wd: Path) -> "Prepared | Outcome":
        """The command, the sandbox and the inputs of ``c`` (fetched and staged under the
        lease), the token file, and a lease fresh enough to start the payload."""
        doc = c.doc
        try:
            argv = command_argv(doc)
        except ValueError as exc:
            return Outcome.error("BAD_TOKEN", str(exc))
        sandbox_dir: Optional[Path] = None
        if doc.get("sandbox"):
            from . import sandbox as sbmod  # only for tokens with a sandbox

            try:
                named = sbmod.token_sandbox(doc)
                assert named is not None  # the token has a sandbox field
                sha, url = named
                cache = Path(os.environ.get("LRT_SANDBOX_CACHE") or sbmod.default_cache_dir())
                got = self._under_lease(c, lambda: sbmod.fetch_sandbox(self.db, sha, cache, url))
                if isinstance(got, Outcome):
                    return got
                sandbox_dir = got
                argv = sbmod.resolve_command(argv, got)
            except LrtError as exc:
                code = getattr(exc, "code", errorcodes.get("SANDBOX_DOWNLOAD").code)
                return Outcome.error(errorcodes.get(int(code)).name, str(exc))
        if doc.get("inputs"):
            from ..staging.pilot import stage_in  # only for tokens with inputs

            try:
                got = self._under_lease(c, lambda: stage_in(doc, wd))
            except LrtError as exc:
                return Outcome.error(self._code_name(exc, "STAGE_IN_FAILED"), str(exc))
            if isinstance(got, Outcome):
                return got
        write_token_file(doc, wd)
        stale = self._lease_fresh(c)
        if stale is not None:
            return stale
        return Prepared(argv, sandbox_dir)

    def _run(self, c: Claimed, wd: Path,
             prep: "Prepared") -> "Tuple[Outcome, Optional[Payload], Optional[float]]":
        """Start the payload and supervise it under the lease: the outcome, the payload
        (None if it could not start) and when it ended (monotonic)."""
        env = payload_env(c.doc, self.id, wd, sandbox=prep.sandbox_dir, claim=c.claim,
                          lease_expires=self._server_now() + self._lease_left(c),
                          clock_offset=self.db.server.clock_offset or 0.0)
        try:
            p = Payload(prep.argv, wd, env)
        except OSError as exc:
            return (Outcome.error("COMMAND_NOT_FOUND", f"cannot execute {prep.argv[0]!r}: {exc.strerror or exc}"),
                    None, None)
        if self._prev_end is not None:
            self.stats.overheads.append(time.monotonic() - self._prev_end)
        how = self._supervise(c, p)
        ended = time.monotonic()  # overhead is measured from here to the next payload's start
        if how is Ending.EXITED and p.exit_code != 0 and self._stopped_with(p):
            how = Ending.RELEASE
        return self._ending_outcome(c, how, p), p, ended

    def _ending_outcome(self, c: Claimed, how: Ending, p: Payload) -> "Outcome":
        """What to record for a payload that ended ``how``."""
        if how is Ending.EXITED:
            if p.exit_code == 0:
                return Outcome(Publish.DONE, exit_code=0)
            if p.signal_number is not None:
                return Outcome.error("PAYLOAD_SIGNALED", describe_failure(p))
            return Outcome.error("PAYLOAD_FAILED", describe_failure(p), p.exit_code)
        if how is Ending.TIMEOUT:
            return Outcome.error("PAYLOAD_TIMEOUT", f"payload ran past its timeout of {c.doc.get('timeout')}s "
                                 "and was killed (SIGTERM, then SIGKILL)", p.exit_code)
        if how is Ending.RELEASE:
            return Outcome.release()
        out = self._stopped_by(c, _ENDING_LOOK[how], "running")
        out.exit_code = p.exit_code
        return out

    #: what an attempt stopped by the lease keeper records, by phase: error or release
    #: messages ({by}: who asked for the release), and the warning logged when fenced
    _STOPPED: Dict[str, Dict[Look, Optional[str]]] = {
        "preparing": {Look.CANCEL: "cancelled by a user while preparing",
                      Look.RELEASE: "release requested by {by} while preparing",
                      Look.DOWN: "could not renew the lease in time while preparing",
                      Look.FENCED: None},
        "starting": {Look.CANCEL: "cancelled by a user before its payload started",
                     Look.RELEASE: "release requested by {by} before the payload started",
                     Look.FENCED: "lease of {id} ran out before its payload started and the token was taken "
                                  "back; not started"},
        "running": {Look.CANCEL: "cancelled by a user while running; payload stopped",
                    Look.RELEASE: "release requested by {by}; payload stopped",
                    Look.DOWN: "could not renew the lease in time; payload stopped",
                    Look.FENCED: "token {id} is held by another claim now; payload stopped, token left alone"},
    }

    def _stopped_by(self, c: Claimed, look: Look, phase: str) -> "Outcome":
        """The outcome of an attempt the lease keeper stopped in ``phase``: fenced,
        cancelled, release requested, or (``DOWN``) lease lost."""
        text = self._STOPPED[phase][look]
        if look is Look.FENCED:
            return Outcome.fenced(text.format(id=c.id) if text else None)
        assert text is not None
        if look is Look.CANCEL:
            return Outcome.error("CANCELLED", text)
        if look is Look.RELEASE:
            return Outcome.release(text.format(by=self._requested_by(c)), requeued=True)
        return Outcome.error("LEASE_LOST", text)

    def _publish(self, c: Claimed, o: "Outcome", wd: Path, p: Optional[Payload] = None) -> None:
        """Record ``o``: upload the outputs of a success (under the lease), then the finish
        with the logs; or give the token back; or, fenced, write nothing."""
        if o.publish is Publish.DONE:
            body: JSON = {"outcome": "done", "exit_code": 0}
            if c.doc.get("outputs"):
                from ..staging.pilot import stage_out

                try:
                    got = self._under_lease(
                        c, lambda: stage_out(c.doc, wd, c.claim, lambda: self._still_holding(c)))
                except LrtError as exc:
                    return self._fail(c, self._code_name(exc, "STAGE_OUT_FAILED"), str(exc), p, 0)
                if isinstance(got, Outcome):
                    return self._publish(c, got, wd)
                if got is not None:
                    body["output"] = got
            self._report(c, body, p)
        elif o.publish is Publish.ERROR:
            assert o.code is not None
            self._fail(c, o.code, o.message or "", p, o.exit_code)
        elif o.publish is Publish.RELEASE:
            if o.requeued:
                self._requeued.add(c.id)
            self._release(c, p, o.message)
        else:
            self.stats.fenced += 1
            if o.message:
                log.warning("%s", o.message)

    #: how a payload looks when it was stopped together with its pilot (signal or shell's 128+N)
    _STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL)

    def _stopped_with(self, p: Payload, wait: float = 2.0) -> bool:
        """Did the payload fail because the whole job is being stopped?

        A batch system stopping a job (scancel, time limit) signals every process
        of the job at once, so the payload can die of SIGTERM a moment before the
        pilot's own handler runs.  Such a failure is not the payload's fault: if
        the pilot's stop signal arrives within ``wait`` seconds, the token is
        released (not counted) instead of recorded as PAYLOAD_SIGNALED.
        """
        if self.stop_signal is not None:
            return True
        sig = p.signal_number
        code = p.exit_code
        if sig not in self._STOP_SIGNALS and not (code is not None and code - 128 in self._STOP_SIGNALS):
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.stop_signal is not None:
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _code_name(exc: Exception, default: str) -> str:
        code = getattr(exc, "code", None)
        try:
            return errorcodes.get(int(code)).name  # type: ignore[arg-type]
        except (TypeError, ValueError, KeyError):
            return default

    # -- leases ------------------------------------------------------------------------
    def _renew(self, c: Claimed) -> Look:
        """Heartbeat: 'ok', 'cancel', 'release' (stop and requeue was asked), 'fenced'
        or 'down' (server unreachable)."""
        sent = time.monotonic()
        try:
            ans = self.client.heartbeat(c.id, c.claim)
        except _TRANSIENT as exc:
            log.warning("heartbeat for %s failed: %s", c.id, exc)
            return Look.DOWN
        if not ans.ok:
            return Look.FENCED if ans.reason != "conflict" else Look.DOWN
        c.renewed_mono = sent
        if ans.rev:
            if _rev_gen(ans.rev) == _rev_gen(c.doc.get("_rev")) + 1:
                # the heartbeat wrote on top of the held copy: keep it at the token's
                # revision (the finish writes it back)
                c.doc["_rev"] = ans.rev
                lease = c.doc.get("lease")
                if isinstance(lease, dict) and isinstance(ans.body.get("expires"), (int, float)):
                    lease["expires"] = ans.body["expires"]
                    lease["renewed"] = ans.body.get("now", lease.get("renewed"))
            else:  # somebody else wrote the token since it was read: hold the current one
                self._reload(c, tries=1)
        if ans.body.get("cancel_requested"):
            c.doc["cancel_requested"] = True
            return Look.CANCEL
        if ans.body.get("release_requested"):
            return Look.RELEASE
        return Look.OK

    def _watch(self, c: Claimed) -> Look:
        """Look at the running token (a conditional read: an empty 304 while it is
        unchanged); if it changed -- a cancel or release request, an edit, another
        claim -- renew through the heartbeat, which answers with authority.
        Returns like :meth:`_renew`."""
        self.stats.checks += 1
        try:
            cur = self.db.get_if_changed(c.id, str(c.doc.get("_rev")))
        except _TRANSIENT:
            return Look.DOWN
        except CouchError as exc:
            log.warning("could not look at %s: %s", c.id, exc)
            return Look.OK
        if cur is None:
            return Look.OK
        if not cur.get("_deleted"):
            c.doc.clear()
            c.doc.update(cur)
        return self._renew(c)

    @staticmethod
    def _requested_by(c: Claimed) -> str:
        req = c.doc.get("release_requested")
        return str(req.get("by") or "a user") if isinstance(req, dict) else "a user"

    def _lease_left(self, c: Claimed) -> float:
        """Seconds left on the lease: the smaller of the local estimate (from when the
        last lease write was sent) and the held lease's expiry against the
        server-clock estimate."""
        left = c.renewed_mono + self.o.lease - time.monotonic()
        exp = (c.doc.get("lease") or {}).get("expires")
        if isinstance(exp, (int, float)):
            left = min(left, exp - self._server_now())
        return left

    def _lease_fresh(self, c: Claimed) -> "Optional[Outcome]":
        """Right before the payload starts: is the lease as stamped still good?

        Normally the claim is milliseconds old.  If half of the lease is gone
        (a claim re-sent through an outage, a slow sandbox fetch, a pilot that
        was stopped), renew it first; give the token up if it is not ours any
        more, or if it cannot be renewed and is about to run out.  None if the
        payload may start, else how the attempt ends.
        """
        if self._lease_left(c) >= self.o.lease / 2.0:
            return None
        self.stats.renewed_before_start += 1
        r = self._renew(c)
        if r is Look.OK:
            return None
        if r is not Look.DOWN:
            return self._stopped_by(c, r, "starting")
        if self._lease_left(c) > self._lease_safety():
            return None  # server unreachable, lease still good: the lease keeper keeps trying
        log.warning("lease of %s is about to run out and cannot be renewed: not started", c.id)
        return Outcome.release("lease could not be renewed before the payload started")

    def _lease_safety(self) -> float:
        return min(5.0, 0.1 * self.o.lease)

    def _still_holding(self, c: Claimed) -> bool:
        return self._renew(c) in (Look.OK, Look.CANCEL)

    def _supervise(self, c: Claimed, p: Payload) -> Ending:
        """Wait for the payload while the lease keeper keeps the lease; how it ended."""
        timeout = c.doc.get("timeout")
        deadline = time.monotonic() + float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None
        keeper = LeaseKeeper(self, c)
        while not p.wait(0.25):
            now = time.monotonic()
            if self.stop_signal is not None:
                p.kill(f"signal {self.stop_signal}", self.o.term_grace)
                return Ending.RELEASE
            rem = self.remaining()
            if rem is not None and rem <= -self.margin / 2:
                p.kill("walltime", self.o.term_grace)
                return Ending.RELEASE
            if deadline is not None and now >= deadline:
                p.kill("timeout", self.o.term_grace)
                return Ending.TIMEOUT
            r = keeper.tick()
            if r is Look.FENCED:
                p.kill("fenced", 0.5)
                return Ending.FENCED
            if r is Look.CANCEL:
                p.kill("cancelled", self.o.term_grace)
                return Ending.CANCELLED
            if r is Look.RELEASE:
                p.kill("release requested", self.o.term_grace)
                return Ending.REQUEUE
            if keeper.lost(r):
                p.kill("lease lost", 0.5)
                return Ending.LEASE_LOST
        # finished on its own; a pilot that slept (SIGSTOP) past its lease must not report
        # before checking it still holds the token -- finish is fenced by claim anyway.
        return Ending.EXITED

    def _under_lease(self, c: Claimed, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sandbox fetch, staging) in a thread while the lease keeper keeps the lease.

        Returns fn's result, or the :class:`Outcome` of the attempt if the token
        was fenced, cancelled, asked back or its lease lost meanwhile, or the
        pilot is being stopped (``fn`` is left to finish in its daemon thread).
        Exceptions from ``fn`` propagate.
        """
        box: Dict[str, Any] = {}

        def target() -> None:
            try:
                box["r"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["e"] = exc

        t = threading.Thread(target=target, daemon=True)
        t.start()
        keeper = LeaseKeeper(self, c)
        while True:
            t.join(0.25)
            if not t.is_alive():
                break
            if self.stop_signal is not None:
                return Outcome.release()
            r = keeper.tick()
            if r in (Look.FENCED, Look.CANCEL, Look.RELEASE) or keeper.lost(r):
                assert r is not None
                return self._stopped_by(c, r, "preparing")
        if "e" in box:
            raise box["e"]
        return box.get("r")

    # -- reporting ---------------------------------------------------------------------
    def _logs(self, c: Claimed, p: Optional[Payload], body: JSON) -> bool:
        """Put logs into ``body`` (tail + inline attachments) or upload large ones first.

        Returns False if the token turned out to be someone else's.
        """
        if p is None:
            return True
        body["log_tail"] = p.log_tail()
        body["timings"] = p.timings(self.db.server.clock_offset or 0.0)
        inline, large = _inline_logs(p)
        for path in large:
            if not self._upload_log(c, capped_log(path), path.name):
                return False
        if inline:
            body["attachments"] = inline
        return True

    def _upload_log(self, c: Claimed, path: Path, name: str) -> bool:
        for _ in range(20):
            try:
                with open(path, "rb") as fh:
                    self.db.put_attachment(c.id, c.doc["_rev"], name, fh, "text/plain; charset=utf-8")
                # the finish writes the whole document back: hold it with the new attachment
                self._reload(c)
                return True
            except CouchError as exc:
                if getattr(exc, "status", None) == 409 or isinstance(exc, _TRANSIENT):
                    if not self._reload(c, tries=1):
                        continue
                    if c.doc.get("state") != "locked" or (c.doc.get("lease") or {}).get("claim") != c.claim:
                        return False
                    continue
                log.warning("could not attach %s to %s: %s", name, c.id, exc)
                return True
        return True

    def _reload(self, c: Claimed, tries: int = 20) -> bool:
        """Re-read the held token in place (after a write that was not the finish);
        False if the server could not be reached ``tries`` times (1 s apart)."""
        for _ in range(tries):
            try:
                cur = self.db.get(c.id)
            except _TRANSIENT:
                time.sleep(1.0)
                continue
            c.doc.clear()
            c.doc.update(cur)
            return True
        return False

    def _report(self, c: Claimed, body: JSON, p: Optional[Payload]) -> None:
        """Record an outcome, insisting through 409s and outages; claim the next
        token in the same request when the pilot goes on."""
        if not self._logs(c, p, body):
            self.stats.fenced += 1
            return
        fin = Finishing(c.doc, c.claim, body)
        nxt = self._next_with_finish()
        res = self._insist(lambda: self.client.commit(fin, nxt), c.id, "finish")
        if nxt is not None:
            got = res.claimed if res is not None else None
            self.cands.note(got is not None)
            self._prefetched = got
        if res is None:
            return
        ans = res.finish
        if ans is not None and ans.ok:
            self.stats.tokens += 1
            log.info("token %s -> %s", c.id, ans.body.get("state"))
            after_finish(self.db, c.doc)  # release its children (lrt/deps), never raises
        else:
            self.stats.fenced += 1
            log.warning("finish of %s refused (%s): another pilot holds it; result not recorded",
                        c.id, res.reason)

    def _release(self, c: Claimed, p: Optional[Payload], why: Optional[str] = None) -> None:
        """Give the token back to ``todo``, not counted (stop signal, walltime, or
        ``why``: a release request, a lease that could not be renewed)."""
        if why is None:
            why = ("signal " + signal.Signals(self.stop_signal).name) if self.stop_signal else "walltime"
            why = f"pilot {self.id} stopped ({why})"
        body: JSON = {"message": f"{why}; token released"}
        if p is not None:
            body["log_tail"] = p.log_tail()
            inline, _ = _inline_logs(p)  # we are being stopped: large logs are not uploaded
            if inline:
                body["attachments"] = inline
        patience = min(self.finish_patience, 30.0)  # we are being stopped: do not linger
        ans = self._insist(lambda: self.client.release(c.id, c.claim, body), c.id, "release", patience)
        if ans is not None and ans.ok:
            log.warning("token %s released (%s)", c.id, ans.body.get("state"))

    def _insist(self, call: Callable[[], Any], doc_id: str, what: str,
                patience: Optional[float] = None) -> Any:
        deadline = time.monotonic() + (self.finish_patience if patience is None else patience)
        delay = 0.5
        while True:
            try:
                ans = call()
            except _TRANSIENT as exc:
                self.stats.finish_retries += 1
                if time.monotonic() > deadline:
                    log.error("%s of %s not recorded: server unreachable (%s)", what, doc_id, exc)
                    return None
                log.warning("%s of %s: %s; retrying in %.1fs", what, doc_id, exc, delay)
                time.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 10.0)
                continue
            if not ans.ok and ans.reason == "conflict":  # 409 twenty times in a row: keep going
                self.stats.finish_retries += 1
                if time.monotonic() > deadline:
                    return ans
                continue
            return ans

    # -- stats -----------------------------------------------------------------------------
    def _write_stats(self) -> None:
        if not self.o.stats_file:
            return
        data = self.stats.as_dict()
        data.update({"pilot": self.id, "requests": self.db.server.requests_sent,
                     "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                     "elapsed": time.time() - self.t0, "exit_reason": self.exit_reason,
                     "overhead_samples": self.stats.overheads[:2000]})
        path = Path(self.o.stats_file)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def _inline_logs(p: Payload) -> Tuple[JSON, List[Path]]:
    """The payload's non-empty logs: those up to ``INLINE_MAX`` bytes as inline
    attachments ({name: {content_type, data (base64)}}), and the paths of the
    larger ones (uploaded on their own, capped); a log that cannot be read is left out."""
    inline: JSON = {}
    large: List[Path] = []
    for path in (p.stdout_path, p.stderr_path):
        try:
            size = path.stat().st_size
            if 0 < size <= INLINE_MAX:
                inline[path.name] = {"content_type": "text/plain; charset=utf-8",
                                     "data": base64.b64encode(path.read_bytes()).decode("ascii")}
            elif size > INLINE_MAX:
                large.append(path)
        except OSError:
            continue
    return inline, large


def _rev_gen(rev: Any) -> int:
    """The generation number of a revision ``N-hash`` (-1 if not one)."""
    try:
        return int(str(rev).split("-", 1)[0])
    except ValueError:
        return -1


def pilot_database(settings: Any) -> Database:
    """The database a pilot talks to: fewer, shorter HTTP retries than admin commands.

    The pilot has its own retry loops (claim, finish, heartbeat) that watch the
    lease; the HTTP layer must not block one request for minutes.
    """
    return settings.database(timeout=(5.0, 60.0), retries=3, max_backoff=4.0, cookie_auth=True)
