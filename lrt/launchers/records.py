"""Launch records: each submission as a ``kind: "launch"`` document, and what became of its pilots.

``lrt status`` and ``lrt launch list`` read them (:func:`launch_summary`) and
ask each record's launcher (:meth:`~lrt.launchers.base.Launcher.observe`) how
many pilots are queued or running and how the ended ones ended; what was
learnt is kept in the record, so it survives the batch system forgetting the jobs.
"""
from __future__ import annotations

import datetime
import getpass
import secrets
import shlex
import socket
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from ..errors import LrtError
from .base import BACKENDS, Observed, launcher
from .command import pilot_walltime
from .templates import sha256_text

if TYPE_CHECKING:
    from ..couch import Database



def new_launch_id(system: str) -> str:
    """Sortable, unique: ``<system>-20261121T202400Z-<6 hex>``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{system}-{stamp}-{secrets.token_hex(3)}"


def launch_dir(launch_id: str, base: Optional[str] = None) -> Path:
    """Folder for a launch's rendered files and job logs (created 0700).

    ``base`` (``--dir``) else ``$LRT_HOME/launches``.  Jobs write their logs
    here, so on a cluster it must be on the shared filesystem.
    """
    if base:
        root = Path(base).expanduser().resolve()
    else:
        from ..server import lrt_home

        root = lrt_home() / "launches"
    d = root / launch_id
    d.mkdir(parents=True, exist_ok=False, mode=0o700)
    return d


from ..queries.pilots import LAUNCH_PREFIX as RECORD_PREFIX  # noqa: E402  (read there too)


def record_launch(db: "Database", launch_id: str, system: str, batch_id: Optional[str], count: int,
                  token_type: Optional[str], template_text: str, **extra: Any) -> Dict[str, Any]:
    """Store the launch document ``launch:<launch_id>`` and return it.

    Fields: kind "launch", system, batch_id, count, time, template_sha256, type,
    db, host, user, plus what the launcher adds (options, dir, pids, after...).
    """
    doc: Dict[str, Any] = {
        "_id": RECORD_PREFIX + launch_id, "kind": "launch", "schema": 1, "launch_id": launch_id,
        "system": system, "batch_id": batch_id, "count": int(count), "time": time.time(),
        "template_sha256": sha256_text(template_text), "type": token_type, "db": db.name,
        "host": socket.gethostname(), "user": getpass.getuser(),
    }
    doc.update(extra)
    doc["_rev"] = db.put(doc)
    return doc


def launch_records(db: "Database", limit: Optional[int] = 50, system: Optional[str] = None,
                   token_type: Optional[str] = None) -> List[Dict[str, Any]]:
    """Launch documents, newest first (ids sort by time within a system)."""
    res = db.all_docs(startkey=RECORD_PREFIX, endkey=RECORD_PREFIX + "\ufff0", include_docs=True)
    docs = [r["doc"] for r in res.get("rows", []) if r.get("doc") and r["doc"].get("kind") == "launch"]
    if system:
        docs = [d for d in docs if d.get("system") == system]
    if token_type is not None:
        docs = [d for d in docs if d.get("type") == token_type]
    docs.sort(key=lambda d: d.get("time") or 0, reverse=True)
    return docs[:limit] if limit else docs


class PilotEnd(str, Enum):
    """How one pilot of a launch ended, as ``lrt launch list`` and ``lrt status`` count it."""

    FINISHED = "finished"  #: exit status 0 (Slurm COMPLETED)
    FAILED = "failed"      #: non-zero exit, killed, timed out, node failure, lost

    def __str__(self) -> str:
        return self.value


def ended_entry(end: PilotEnd, state: Optional[str], exit_code: Optional[int],
                signal_no: Optional[int] = None) -> Dict[str, Any]:
    """One ended pilot as stored in a launch record's ``ended`` map."""
    e: Dict[str, Any] = {"end": end.value, "state": state, "exit": exit_code}
    if signal_no:
        e["signal"] = signal_no
    return e


#: how often ``sacct`` is asked again about pilots it did not know (seconds)
ACCOUNTING_EVERY = 3600.0


def launch_flag(row: Mapping[str, Any]) -> str:
    """``"ALL FAILED"``, ``"N FAILED"`` or ``""`` for a :func:`launch_summary` row."""
    failed = int(row.get("failed") or 0)
    if not failed:
        return ""
    if failed >= int(row.get("submitted") or 0):
        return "ALL FAILED"
    return f"{failed} FAILED"


def _save_ended(db: "Database", doc: Dict[str, Any], ended: Dict[str, Any], **more: Any) -> None:
    """Keep what we learnt about ended pilots in the launch record (best effort).

    Batch systems forget finished jobs (Slurm after ``MinJobAge``, accounting
    after its purge); the record keeps them.  A conflict or a read-only
    account only means the next look asks the batch system again.
    """
    new = dict(doc)
    new["ended"] = ended
    new.update(more)
    try:
        new["_rev"] = db.put(new)
    except LrtError:
        return
    doc.clear()
    doc.update(new)


def record_walltime(d: Mapping[str, Any]) -> Optional[float]:
    """A launch record's pilot walltime in seconds (None: unknown or unlimited)."""
    if d.get("walltime") is not None:
        return float(d["walltime"])
    opts = d.get("options") or {}
    try:
        argv = shlex.split(opts.get("pilot_args") or "")
    except ValueError:
        argv = []
    return pilot_walltime(opts.get("time"), argv)


def launch_summary(db: "Database", limit: int = 20) -> List[Dict[str, Any]]:
    """Per recent launch: what was submitted, what runs now and how the ended pilots ended.

    One dict per launch, newest first: ``{"launch_id", "system", "batch_id",
    "type", "time", "submitted", "queued", "running", "finished", "failed",
    "exit_codes", "flag", "walltime", "host"}``.  ``queued`` and ``running`` come from
    ``squeue`` (Slurm), ``condor_q`` or ``/proc`` (local pilots on this host);
    they are None when the batch system cannot be asked from here.
    ``finished``/``failed`` count ended pilots: Slurm states and exit codes
    from ``squeue --states=all`` (recently ended jobs) and ``sacct`` (older
    ones, where accounting is on); local pilots' exit status from the files
    their wrapper writes.  What was learnt is kept in the launch record
    (``ended``), so it survives the batch system forgetting the jobs.
    ``exit_codes`` maps each non-zero exit code (or ``"SIG<n>"``/state) to a
    count; ``flag`` is :func:`launch_flag`.  One ``squeue`` for all launches,
    and one ``sacct`` per launch only while some of its pilots are unaccounted
    (at most every :data:`ACCOUNTING_EVERY` seconds when accounting does not
    know them either).
    """
    docs = launch_records(db, limit=limit)

    def complete(d: Dict[str, Any]) -> bool:
        return len(d.get("ended") or {}) >= int(d.get("count") or 0)

    observed: Dict[str, Observed] = {}
    for name in BACKENDS:   # one question per batch system for all its open launches
        open_ = [d for d in docs if d.get("system") == name and not complete(d)]
        if open_:
            observed.update(launcher(name).observe(open_))
    out: List[Dict[str, Any]] = []
    for d in docs:
        system = d.get("system")
        ended: Dict[str, Any] = dict(d.get("ended") or {})
        o = Observed(0, 0) if complete(d) else observed.get(d["_id"], Observed())
        queued, running, seen, accounted = o.queued, o.running, o.ended, o.accounted
        fresh = {k: v for k, v in seen.items() if k not in ended}
        if fresh or accounted:
            ended.update(fresh)
            _save_ended(db, d, ended, **({"accounted": accounted} if accounted else {}))
        codes: Dict[str, int] = {}
        for e in ended.values():
            if e.get("end") == PilotEnd.FAILED.value:
                key = (f"SIG{e['signal']}" if e.get("signal") else
                       str(e["exit"]) if e.get("exit") not in (None, 0) else str(e.get("state") or "?"))
                codes[key] = codes.get(key, 0) + 1
        row = {"launch_id": d.get("launch_id"), "system": system, "batch_id": d.get("batch_id"),
               "type": d.get("type"), "time": d.get("time"), "submitted": d.get("count", 0),
               "queued": queued, "running": running,
               "finished": sum(1 for e in ended.values() if e.get("end") == PilotEnd.FINISHED.value),
               "failed": sum(1 for e in ended.values() if e.get("end") == PilotEnd.FAILED.value),
               "exit_codes": codes, "walltime": record_walltime(d), "host": d.get("host")}
        row["flag"] = launch_flag(row)
        out.append(row)
    return out
