"""Local pilots: N detached ``lrt pilot`` processes on this machine.

For a workstation, a VM, or an interactive allocation.  The processes start in
their own session (a closing terminal does not kill them), log to the launch
folder, and get the password through their environment (only the owner can
read ``/proc/PID/environ``).  The launch record keeps their PIDs and start
times so ``lrt status`` can tell which are still alive on this host.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from . import Connection, launch_dir, lrt_command, new_launch_id, pilot_args, record_launch


def _start_ticks(pid: int) -> Optional[int]:
    """Process start time (clock ticks since boot), to tell a PID from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[-1].split()
    try:
        if fields[0] == "Z":
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def count_alive(procs: List[Any]) -> int:
    """How many of the recorded processes (``{"pid", "start"}`` or bare PIDs) are alive."""
    n = 0
    for p in procs:
        pid, start = (p.get("pid"), p.get("start")) if isinstance(p, dict) else (p, None)
        if pid is None:
            continue
        ticks = _start_ticks(int(pid))
        if ticks is not None and (start is None or ticks == start):
            n += 1
    return n


def launch(db: Any, conn: Connection, pilots: int, token_type: Optional[str], extra_args: Optional[str],
           base_dir: Optional[str] = None, lrt: Optional[str] = None) -> Dict[str, Any]:
    """Start ``pilots`` detached pilot processes and record them."""
    if pilots < 1:
        raise ConfigError("--pilots must be at least 1")
    db.info()  # the record must be writable: find out before starting anything
    argv_tail = ["pilot"] + pilot_args(token_type, extra_args)
    cmd = lrt_command(lrt)
    argv = shlex.split(cmd["lrt"]) + argv_tail
    env = dict(os.environ)
    env.update(conn.public_env())
    env.pop("LRT_COUCH_PASSWORD_FILE", None)
    if conn.password:
        env["LRT_COUCH_PASSWORD"] = conn.password
    launch_id = new_launch_id("local")
    env["LRT_LAUNCH_ID"] = launch_id
    if cmd["pythonpath"]:
        env["PYTHONPATH"] = cmd["pythonpath"] + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    folder = launch_dir(launch_id, base_dir)
    procs: List[Dict[str, Any]] = []
    for i in range(pilots):
        with open(folder / f"pilot-{i}.out", "wb") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, cwd=str(folder), start_new_session=True, close_fds=True)
        procs.append({"pid": p.pid, "start": _start_ticks(p.pid)})
    return record_launch(db, launch_id, "local", None, pilots, token_type, " ".join(argv),
                         dir=str(folder), pids=[p["pid"] for p in procs], processes=procs,
                         argv=argv, options={"pilot_args": extra_args})
