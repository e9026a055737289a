"""Local pilots: N detached ``lrt pilot`` processes on this machine.

For a workstation, a VM, or an interactive allocation.  The processes start in
their own session (a closing terminal does not kill them), log to the launch
folder, and get the password through their environment (only the owner can
read ``/proc/PID/environ``) -- the environment holds only what a pilot needs
(:func:`lrt.launchers.job_env`), not the whole submitting shell.  The launch
record keeps their PIDs and start times so ``lrt status`` can tell which are
still alive on this host.

Nobody waits for a detached process, so each pilot runs under a tiny wrapper
(:data:`WRAPPER`, the same interpreter, standard library only) that passes
signals on, waits, and writes the pilot's exit status to ``pilot-<i>.exit`` in
the launch folder; ``lrt launch list`` reads it to count finished and failed
pilots.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .base import LaunchOptions, Launched, Launcher, Observed
from .command import lrt_command, pilot_args, pilot_walltime
from .credentials import Connection, job_env
from .records import PilotEnd, ended_entry, launch_dir, new_launch_id, record_launch

if TYPE_CHECKING:
    from ..couch import Database


@dataclass
class LocalOptions(LaunchOptions):
    """The shared options plus more environment variable names for the pilots (``--env``)."""

    env: List[str] = field(default_factory=list)

#: ``python -c WRAPPER EXIT_FILE ARGV...``: run ARGV, pass TERM/INT/HUP/USR1/USR2 on, and
#: write {"exit": code, "signal": n} to EXIT_FILE (atomically) when it ends
WRAPPER = r"""
import json, os, signal, subprocess, sys
out, argv = sys.argv[1], sys.argv[2:]
try:
    child = subprocess.Popen(argv)
except OSError as exc:
    res = {"exit": 127, "signal": None, "error": str(exc)}
else:
    def forward(sig, frame):
        try:
            child.send_signal(sig)
        except OSError:
            pass
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    rc = child.wait()
    res = {"exit": rc if rc >= 0 else None, "signal": -rc if rc < 0 else None}
with open(out + ".tmp", "w") as fh:
    json.dump(res, fh)
os.replace(out + ".tmp", out)
sys.exit(res["exit"] if res["exit"] is not None else 128 + res["signal"])
"""


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


def process_states(record: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """(running, {index: ended entry}) for a local launch record, read on its host.

    An ended pilot is one whose process is gone: its exit file says how it
    ended; a gone process without one (the wrapper itself was killed) is
    counted failed with state ``LOST``.
    """
    procs = record.get("processes") or [{"pid": p} for p in record.get("pids") or []]
    folder = Path(record.get("dir") or ".")
    running = 0
    ended: Dict[str, Any] = {}
    for i, p in enumerate(procs):
        if count_alive([p]):
            running += 1
            continue
        name = p.get("exit_file") if isinstance(p, dict) else None
        if not name:
            continue  # launched before exit files existed: nothing to say
        try:
            res = json.loads((folder / name).read_text())
        except FileNotFoundError:
            ended[str(i)] = ended_entry(PilotEnd.FAILED, "LOST", None)
            continue
        except (OSError, ValueError):
            continue
        code, sig = res.get("exit"), res.get("signal")
        end = PilotEnd.FINISHED if code == 0 and not sig else PilotEnd.FAILED
        ended[str(i)] = ended_entry(end, "EXITED" if sig is None else "SIGNALED", code, sig)
    return running, ended


def launch(db: "Database", conn: Connection, opts: LocalOptions) -> Dict[str, Any]:
    """Start ``pilots`` detached pilot processes (each under :data:`WRAPPER`) and record them."""
    pilots = opts.pilots
    if pilots < 1:
        raise ConfigError("--pilots must be at least 1")
    db.info()  # the record must be writable: find out before starting anything
    pargv = pilot_args(opts.token_type, opts.pilot_args)
    cmd = lrt_command(opts.lrt)
    argv = shlex.split(cmd["lrt"]) + ["pilot"] + pargv
    env = job_env(conn, "env", opts.env)
    launch_id = new_launch_id("local")
    env["LRT_LAUNCH_ID"] = launch_id
    if cmd["pythonpath"]:
        env["PYTHONPATH"] = cmd["pythonpath"] + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    folder = launch_dir(launch_id, opts.base_dir)
    procs: List[Dict[str, Any]] = []
    for i in range(pilots):
        exit_file = f"pilot-{i}.exit"
        wrapped = [sys.executable, "-c", WRAPPER, str(folder / exit_file)] + argv
        with open(folder / f"pilot-{i}.out", "wb") as log:
            p = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, cwd=str(folder), start_new_session=True, close_fds=True)
        procs.append({"pid": p.pid, "start": _start_ticks(p.pid), "exit_file": exit_file})
    return record_launch(db, launch_id, "local", None, pilots, opts.token_type, " ".join(argv),
                         dir=str(folder), pids=[p["pid"] for p in procs], processes=procs,
                         argv=argv, walltime=pilot_walltime(None, pargv),
                         options={"pilot_args": opts.pilot_args})


def early_failures(record: Dict[str, Any], wait: float = 1.0) -> List[Dict[str, Any]]:
    """Pilots of a fresh local launch that failed within ``wait`` seconds (a broken --lrt, a bad config).

    Returns ``[{"index", "exit", "signal", "log", "tail"}]`` (``tail``: the last
    line of the pilot's output); waits less when every pilot has ended.
    """
    deadline = time.monotonic() + wait
    while True:
        running, ended = process_states(record)
        if running == 0 or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    out = []
    for k, e in sorted(ended.items(), key=lambda kv: int(kv[0])):
        if e["end"] != PilotEnd.FAILED.value:
            continue
        log = Path(record["dir"]) / f"pilot-{k}.out"
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        out.append({"index": int(k), "exit": e.get("exit"), "signal": e.get("signal"), "log": str(log),
                    "tail": lines[-1][:300] if lines else ""})
    return out


class LocalLauncher(Launcher[LocalOptions]):
    """``lrt launch local``: detached pilot processes on this host, seen through ``/proc`` and exit files."""

    system = "local"
    remote = False

    def launch(self, db: "Database", conn: Connection, opts: LocalOptions) -> Launched:
        doc = launch(db, conn, opts)
        return Launched(doc, Path(doc["dir"]),
                        f"started {doc['count']} local pilot(s): pids {' '.join(map(str, doc['pids']))} "
                        f"(launch {doc['launch_id']}, logs in {doc['dir']})")

    def observe(self, records: Sequence[Dict[str, Any]]) -> Dict[str, Observed]:
        """Only launches made on this host: their processes are not visible from elsewhere."""
        here = socket.gethostname()
        out: Dict[str, Observed] = {}
        for d in records:
            if d.get("host") == here:
                running, ended = process_states(d)
                out[d["_id"]] = Observed(0, running, ended)
        return out

    def started(self, launched: Launched) -> Optional[str]:
        doc = launched.record
        failed = early_failures(doc) if doc else []
        if not failed:
            return None
        first = failed[0]
        codes = sorted({str(f["exit"] if f["exit"] is not None else "SIG" + str(f["signal"])) for f in failed})
        return (f"{len(failed)} of {doc['count'] if doc else '?'} local pilot(s) failed at once (exit "
                f"{', '.join(codes)}); {first['log']} ends with: {first['tail'] or '(nothing)'}")


LAUNCHER = LocalLauncher()
