"""Registered tasks: typed parameters, one token per submission (docs/tasks.md).

``lrt.tasks.submit(db, "dp3_calibrate", solint=4, msin=[...])`` checks every
value against the task's definition (:mod:`lrt.tasks.definition`) and writes
one token, or raises :class:`ParameterError` naming the parameter having
written nothing.  The token is an ordinary lrt token (``lrt status/show/logs/
cancel`` work on it) that also records its task (name, version, sha256 of the
definition file), its owner and the parameter values as given.
"""
from __future__ import annotations

import os
import secrets
import time
import urllib.parse
from typing import Any, Dict, List, Mapping, Optional, Union

from ..couch import Database
from ..states import State
from .definition import (OutputSpec, Parameter, ParameterError, Task, TaskNotFound, TaskRegistry,
                         load_task, parse_duration, tasks_dir)

__all__ = ["Task", "Parameter", "OutputSpec", "ParameterError", "TaskNotFound", "TaskRegistry",
           "load_task", "tasks_dir", "parse_duration", "submit", "make_token", "get_task"]

#: seconds a job is kept before UWS may destroy it, unless set at submission (docs/uws.md)
DEFAULT_DESTRUCTION = 30 * 86400.0


def get_task(name: str, folder: Union[str, "os.PathLike[str]", None] = None) -> Task:
    return TaskRegistry(folder).get(name)


def _file_name(url: str) -> str:
    return urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def new_job_id(task: Task) -> str:
    return f"{task.name}-{secrets.token_hex(6)}"


def output_dest(task: Task, job_id: str, dest: Optional[str] = None) -> Optional[str]:
    """Where the job's outputs go: ``dest`` or the task's ``outputs.dest``, placeholders filled."""
    d = dest or task.dest
    if not d:
        return None
    return d.replace("{task}", task.name).replace("{job}", job_id).replace("{version}", task.version)


def make_token(task: Task, params: Mapping[str, Any], *, text: bool = False,
               owner: Optional[str] = None, run: bool = True, dest: Optional[str] = None,
               job_id: Optional[str] = None, sandbox_sha256: Optional[str] = None,
               extra_inputs: Optional[List[str]] = None, now: Optional[float] = None,
               execution_duration: Optional[float] = None,
               destruction: Optional[float] = None) -> Dict[str, Any]:
    """The token document for one submission (validated; nothing written).

    ``run=False`` makes a ``pending`` token (a UWS job before ``PHASE=RUN``).
    File parameters become the token's ``inputs`` (staged into the work dir by
    base name; the payload sees the file names); ``params`` as given are kept
    in ``task_params`` for UWS and provenance.
    """
    from ..config import Item, TokenConfig
    from ..tokens import new_token

    values = task.check(params, text=text)
    jid = job_id or new_job_id(task)
    payload: Dict[str, Any] = {}
    inputs: List[Dict[str, Any]] = []
    staged = False
    for name, value in values.items():
        p = task.parameters[name]
        if p.type == "file":
            urls = value if isinstance(value, list) else [value]
            inputs += [{"url": u, "checksum": None} for u in urls]
            payload[name] = [_file_name(u) for u in urls] if p.multiple else _file_name(value)
            staged = staged or p.staging == "tape"
        else:
            payload[name] = value
    for u in extra_inputs or []:
        inputs.append({"url": u, "checksum": None})
    where = output_dest(task, jid, dest)
    outputs = None
    if task.outputs and where:
        outputs = {"dest": where, "globs": sorted({o.glob for o in task.outputs.values()})}
    timeout = task.timeout if execution_duration is None else (execution_duration or None)
    cfg = TokenConfig(path=str(task.path), tokenset=task.name, type=task.name, id_template=jid,
                      priority=task.priority, max_attempts=task.max_attempts,
                      retry={"backoff": task.backoff, "payload_errors": task.payload_errors},
                      timeout=timeout, expected_duration=task.expected_duration,
                      command=list(task.command),
                      sandbox={"sha256": sandbox_sha256} if sandbox_sha256 else None,
                      outputs=outputs, needs_staging=staged, payload=payload)
    t = time.time() if now is None else now
    doc = new_token(cfg, Item(id=jid, index=0, values={}, payload=payload), now=t)
    doc["inputs"] = inputs
    doc["task"] = task.ref
    doc["task_params"] = {k: v for k, v in values.items()}
    doc["owner"] = owner
    doc["destruction"] = t + DEFAULT_DESTRUCTION if destruction is None else destruction
    if not run:
        doc["state"] = State.PENDING.value
    return doc


#: (server, database, folder) -> (fingerprint of the folder, sha256 of its sandbox)
_SANDBOXES: Dict[Any, Any] = {}


def _fingerprint(folder: "os.PathLike[str]") -> Any:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f), follow_symlinks=False)
            out.append((os.path.join(root, f), st.st_size, st.st_mtime_ns, st.st_mode))
    return tuple(out)


def publish_sandbox(db: Database, task: Task) -> Optional[str]:
    """Build the task's sandbox reproducibly and upload it once; its sha256 (None without one).

    A service submitting many jobs builds it again only when a file in the folder
    changed (size, mtime or mode), not per job.
    """
    if task.sandbox is None:
        return None
    from ..pilot.sandbox import build

    key = (db.server.url, db.name, str(task.sandbox))
    fp = _fingerprint(task.sandbox)
    hit = _SANDBOXES.get(key)
    if hit is not None and hit[0] == fp:
        return hit[1]
    sha = build(task.sandbox, db).sha256
    _SANDBOXES[key] = (fp, sha)
    return sha


def local_checksums(doc: Dict[str, Any]) -> None:
    """Give ``file://`` inputs that are readable here their adler32.

    The pilot then verifies each copy (stage-in) and provenance names the input
    by checksum.  Only for submissions from the user's own machine (CLI, Python):
    a service must not read files its users name on its own host.
    """
    from pathlib import Path

    from ..staging.pilot import adler32_file

    for item in doc.get("inputs") or []:
        url = item.get("url") or ""
        if item.get("checksum") or not url.startswith("file:"):
            continue
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        if path.is_file():
            item["checksum"] = "adler32:" + adler32_file(path)


def submit_task(db: Database, task: Task, params: Mapping[str, Any], *, text: bool = False,
                owner: Optional[str] = None, run: bool = True, dest: Optional[str] = None,
                execution_duration: Optional[float] = None,
                destruction: Optional[float] = None, checksum_local: bool = True) -> str:
    """Validate, publish the sandbox, write one token; return its id.

    ``checksum_local``: local ``file://`` inputs get their adler32 (:func:`local_checksums`).
    """
    make_token(task, params, text=text, owner=owner, run=run, dest=dest)  # validate first
    sha = publish_sandbox(db, task)
    doc = make_token(task, params, text=text, owner=owner, run=run, dest=dest, sandbox_sha256=sha,
                     execution_duration=execution_duration, destruction=destruction)
    if checksum_local:
        local_checksums(doc)
    db.put(doc)
    return doc["_id"]


def submit(db: Database, name: str, **params: Any) -> str:
    """Submit task ``name`` (from ``$LRT_TASKS`` or ``./tasks``) with ``params``; the token id.

    >>> submit(db, "echo_params", count=3, label="first")   # doctest: +SKIP
    'echo_params-3f9a0c1d2e4b'

    A bad value raises :class:`ParameterError` naming the parameter; nothing is written.
    """
    return submit_task(db, get_task(name), params)
