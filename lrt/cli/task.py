"""``lrt task list|show|test`` and ``lrt submit``: registered tasks (docs/tasks.md)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

from ..errors import LrtError


def _tasks_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", metavar="DIR", help="task folder (default: $LRT_TASKS, else ./tasks)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("task", help="registered tasks: list, show parameters, run the test case")
    tsub = p.add_subparsers(dest="task_command", metavar="ACTION")
    q = tsub.add_parser("list", help="the tasks of the task folder")
    _tasks_flag(q)
    q.set_defaults(func=cmd_list)
    q = tsub.add_parser("show", help="a task's parameters: types, defaults, help")
    q.add_argument("name")
    _tasks_flag(q)
    q.add_argument("--json", action="store_true", help="as JSON")
    q.set_defaults(func=cmd_show)
    q = tsub.add_parser("test", help="run the task's test case through a real pilot on a scratch "
                                     "database and check its expect (outputs never published)")
    q.add_argument("name")
    _tasks_flag(q)
    q.add_argument("--keep", action="store_true", help="keep the scratch database")
    q.set_defaults(func=cmd_test)
    p.set_defaults(func=lambda ctx: (p.print_help(), 2)[1])

    p = sub.add_parser("submit", help="submit one job of a task: lrt submit NAME key=value ...")
    p.add_argument("name")
    p.add_argument("params", nargs="*", metavar="KEY=VALUE",
                   help="parameter values (a multiple parameter: comma-separated, or repeat the key)")
    _tasks_flag(p)
    p.add_argument("--dest", help="output destination URL prefix (default: the task's outputs.dest)")
    p.add_argument("--hold", action="store_true",
                   help="create the job pending (UWS phase PENDING) instead of ready to run")
    p.set_defaults(func=cmd_submit)


def _registry(ctx):
    from ..tasks import TaskRegistry

    return TaskRegistry(ctx.args.tasks)


def cmd_list(ctx) -> int:
    reg = _registry(ctx)
    names = reg.names()
    if not names:
        ctx.out(f"no tasks in {reg.folder}")
        return 0
    for t in reg.all():
        ctx.out(f"{t.name:<24} v{t.version:<6} {t.description or ''}".rstrip())
    return 0


def describe(task) -> Dict[str, Any]:
    return {
        "task": task.name, "version": task.version, "sha256": task.sha256, "path": str(task.path),
        "description": task.description, "command": task.command,
        "parameters": {n: {"type": p.type, "describe": p.describe(), "default": p.default,
                           "required": p.required and not p.has_default, "multiple": p.multiple,
                           "unit": p.unit, "help": p.help, "choices": p.choices,
                           "min": p.min, "max": p.max, "pattern": p.pattern, "staging": p.staging}
                       for n, p in task.parameters.items()},
        "outputs": {o.name: {"glob": o.glob, "required": o.required} for o in task.outputs.values()},
        "dest": task.dest, "resources": task.resources, "has_test": task.test is not None,
    }


def cmd_show(ctx) -> int:
    task = _registry(ctx).get(ctx.args.name)
    if ctx.args.json:
        ctx.out(json.dumps(describe(task), indent=2, sort_keys=True))
        return 0
    ctx.out(f"task {task.name} version {task.version}  ({task.path}, sha256 {task.sha256[:12]})")
    if task.description:
        ctx.out(f"  {task.description}")
    ctx.out(f"  command: {json.dumps(task.command)}")
    ctx.out("parameters:")
    for n, p in task.parameters.items():
        d = ("default " + json.dumps(p.default)) if p.has_default else (
            "required" if p.required else "optional")
        ctx.out(f"  {n:<14} {p.describe():<32} {d}")
        if p.help:
            ctx.out(f"  {'':<14} {p.help}")
    if task.outputs:
        ctx.out(f"outputs (to {task.dest or 'no destination: give --dest'}):")
        for o in task.outputs.values():
            ctx.out(f"  {o.name:<14} {o.glob}{'  (required)' if o.required else ''}")
    if task.resources:
        ctx.out("resources: " + ", ".join(f"{k}={v}" for k, v in task.resources.items()))
    return 0


def parse_assignments(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise LrtError(f"expected KEY=VALUE, not {item!r}")
        if key in out:  # a repeated key: a list (for multiple parameters)
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value
    return out


def cmd_submit(ctx) -> int:
    from ..tasks import submit_task

    a = ctx.args
    task = _registry(ctx).get(a.name)
    params = parse_assignments(a.params)
    task.check(params, text=True)  # a bad value fails before any connection
    owner = ctx.settings.user
    tid = submit_task(ctx.db, task, params, text=True, owner=owner, run=not a.hold, dest=a.dest)
    ctx.out(tid)
    return 0


def cmd_test(ctx) -> int:
    from ..tasks.testrun import run_test

    task = _registry(ctx).get(ctx.args.name)
    ctx.out(f"lrt task test {task.name}: running the test case on a scratch database ...")
    rep = run_test(ctx.settings.server(), task, keep=ctx.args.keep)
    tok = rep.token or {}
    ctx.out(f"  token {tok.get('_id')}: {tok.get('state')}, exit code {tok.get('exit_code')}, "
            f"{rep.wall:.2f} s" if rep.wall is not None else "")
    for name, n in rep.outputs.items():
        ctx.out(f"  output {name}: {n} file(s)")
    if rep.ok:
        ctx.out(f"PASS {task.name}")
        return 0
    for p in rep.problems:
        ctx.out(f"  FAIL: {p}")
    ctx.out(f"FAIL {task.name}")
    return 1
