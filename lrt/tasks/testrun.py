"""``lrt task test NAME``: a task's test case, end to end, through a real pilot.

The run happens on a scratch database (created on the same server, deleted
afterwards) with the task's own sandbox; outputs go to a scratch folder that
is removed afterwards, never to the task's ``outputs.dest``.  The pilot runs in
this process (the same :class:`~lrt.pilot.pilot.Pilot` a worker node runs), so
no credential is handed to another process.
"""
from __future__ import annotations

import fnmatch
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..couch import Server
from . import Task, submit_task


@dataclass
class TaskTestReport:
    task: str
    token: Optional[Dict[str, Any]] = None
    problems: List[str] = field(default_factory=list)
    outputs: Dict[str, int] = field(default_factory=dict)
    wall: Optional[float] = None

    @property
    def ok(self) -> bool:
        return not self.problems


def case_parameters(task: Task) -> Dict[str, Any]:
    """The test case's parameters; ``test.inputs`` fill the task's first file parameter."""
    t = task.test or {}
    params = dict(t.get("parameters") or {})
    inputs = list(t.get("inputs") or [])
    if inputs:
        for name, p in task.parameters.items():
            if p.type == "file" and name not in params:
                params[name] = inputs if p.multiple else inputs[0]
                break
    return params


def count_outputs(task: Task, token: Dict[str, Any]) -> Dict[str, int]:
    """Per declared output, how many of the token's published files match its glob."""
    names = [str(o.get("url", "")).rsplit("/", 1)[-1] for o in token.get("output") or []]
    return {o.name: sum(1 for n in names if fnmatch.fnmatchcase(n, o.glob))
            for o in task.outputs.values()}


def check_expect(task: Task, token: Dict[str, Any], wall: Optional[float]) -> List[str]:
    """What in ``token`` differs from the test case's ``expect`` (empty: all as expected)."""
    exp = (task.test or {}).get("expect") or {}
    problems = []
    want = exp.get("exit_code", 0)
    if token.get("exit_code") != want:
        err = (token.get("error") or {}).get("message")
        problems.append(f"exit code {token.get('exit_code')!r}, expected {want} "
                        f"(state {token.get('state')}{': ' + err if err else ''})")
    if want == 0 and token.get("state") != "done":
        problems.append(f"token ended {token.get('state')}, expected done")
    counts = count_outputs(task, token)
    for name, spec in (exp.get("outputs") or {}).items():
        n = counts.get(name, 0)
        lo, hi = spec.get("min_count"), spec.get("max_count")
        if lo is not None and n < lo:
            problems.append(f"output {name}: {n} file(s), expected at least {lo}")
        if hi is not None and n > hi:
            problems.append(f"output {name}: {n} file(s), expected at most {hi}")
    for o in task.outputs.values():
        if o.required and counts.get(o.name, 0) == 0 and token.get("state") == "done":
            problems.append(f"required output {o.name} ({o.glob}) missing")
    max_wall = exp.get("max_wall")
    if max_wall is not None and wall is not None and wall > max_wall:
        problems.append(f"ran {wall:.1f} s, more than max_wall {max_wall:g} s")
    return problems


def run_test(server: Server, task: Task, *, keep: bool = False,
             pilot_options: Optional[Dict[str, Any]] = None) -> TaskTestReport:
    """Run ``task``'s test case on a scratch database of ``server``; a :class:`TaskTestReport`."""
    from .. import design
    from ..pilot.pilot import Pilot, PilotOptions

    if task.test is None:
        from ..errors import LrtError

        raise LrtError(f"task {task.name} has no test case (a 'test:' section)")
    rep = TaskTestReport(task.name)
    db = server.database(f"lrt_tasktest_{task.name.lower().replace('.', '_')}_{secrets.token_hex(4)}")
    out = Path(tempfile.mkdtemp(prefix=f"lrt-test-{task.name}-"))
    max_wall = task.test["expect"].get("max_wall") or 600.0
    try:
        db.create()
        design.install(db)
        tid = submit_task(db, task, case_parameters(task), dest=out.resolve().as_uri(),
                          execution_duration=min(max_wall, task.timeout or max_wall))
        opts: Dict[str, Any] = dict(token_type=task.name, max_tokens=1, idle_exit=max_wall + 30, poll=0.5,
                    lease=max(60.0, max_wall), cancel_check=5.0)
        opts.update(pilot_options or {})
        t0 = time.monotonic()
        Pilot(db, PilotOptions(**opts)).run()
        doc = db.get(tid)
        rep.token = doc
        rep.wall = (doc.get("timings") or {}).get("wall") or (time.monotonic() - t0)
        rep.outputs = count_outputs(task, doc)
        rep.problems = check_expect(task, doc, rep.wall)
        return rep
    finally:
        if not keep:
            try:
                db.delete()
            except Exception:  # the report matters more than the clean-up
                pass
        shutil.rmtree(out, ignore_errors=True)
