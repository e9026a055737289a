"""Slurm: pilots as a job array, submitted with ``sbatch --parsable``.

Resources (array size and throttle, time, partition, cpus, memory,
dependency) go on the sbatch command line, not into the template, so a user's
own template only has to say how a pilot starts on their site (module loads,
containers).  The rendered script is kept in the launch folder next to the
job logs; the submission is recorded in the database (see lrt.launchers).

Also here: the queue query behind ``launch_summary`` (one ``squeue`` for all
launches) and the elastic launcher (``lrt launch slurm --auto``).
"""
from __future__ import annotations

import getpass
import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import ConfigError, LrtError
from . import (Connection, LaunchError, check_no_secret, common_variables, find_template, launch_dir,
               launch_records, lrt_command, new_launch_id, password_file_for, pilot_args, q,
               record_launch, render, submit_env)

TEMPLATE = "slurm.sh.tmpl"
SQUEUE_TIMEOUT = 30.0


@dataclass
class SlurmOptions:
    pilots: int = 1
    token_type: Optional[str] = None
    partition: Optional[str] = None
    time: Optional[str] = None
    cpus: Optional[int] = None
    mem: Optional[str] = None
    throttle: Optional[int] = None
    after: Optional[str] = None
    template: Optional[str] = None
    pilot_args: Optional[str] = None
    sbatch_args: List[str] = field(default_factory=list)
    credentials: str = "file"          # "file" | "env"
    password_file: Optional[str] = None
    base_dir: Optional[str] = None
    lrt: Optional[str] = None
    job_name: Optional[str] = None


@dataclass
class Rendered:
    """Everything a submission needs, computed before anything is written."""

    launch_id: str
    script: str
    template_path: Path
    template_text: str
    sbatch_options: List[str]
    password_path: Optional[str]
    variables: Dict[str, str]


def validate(opts: SlurmOptions) -> None:
    if opts.pilots < 1:
        raise ConfigError("--pilots must be at least 1")
    if opts.throttle is not None and opts.throttle < 1:
        raise ConfigError("--throttle must be at least 1")
    if opts.cpus is not None and opts.cpus < 1:
        raise ConfigError("--cpus must be at least 1")
    if opts.credentials not in ("file", "env"):
        raise ConfigError("--credentials must be 'file' or 'env'")
    if opts.after is not None and not opts.after.replace("_", "").replace(":", "").isdigit():
        raise ConfigError(f"--after wants a Slurm job id (digits, optionally id:id...), got {opts.after!r}")


def render_script(conn: Connection, opts: SlurmOptions, launch_id: Optional[str] = None,
                  write: bool = True) -> Rendered:
    """Render the job script and sbatch options (no side effects but the password file).

    In ``file`` mode the password reaches the job as ``LRT_COUCH_PASSWORD_FILE``
    pointing at a 0600 file (shared filesystem); in ``env`` mode the script
    says nothing and sbatch carries ``LRT_COUCH_PASSWORD`` in the job's
    environment.  Either way the password itself is not in the script.
    """
    validate(opts)
    launch_id = launch_id or new_launch_id("slurm")
    tpl = find_template(TEMPLATE, opts.template)
    text = tpl.read_text()
    argv = pilot_args(opts.token_type, opts.pilot_args)
    pw_path: Optional[str] = None
    if opts.credentials == "file":
        p = password_file_for(conn, opts.password_file, write=False)
        pw_path = str(p) if p else None
        pw_setup = (f"export LRT_COUCH_PASSWORD_FILE={q(pw_path)}" if pw_path else
                    "# no password configured")
    else:
        pw_setup = "# the password arrives in the job environment (LRT_COUCH_PASSWORD, passed on by sbatch)"
    variables = common_variables(conn, launch_id, opts.token_type, argv, lrt_command(opts.lrt),
                                 opts.pilots, pw_setup)
    variables["time_limit"] = q(opts.time or "")
    variables["partition"] = q(opts.partition or "")
    script = render(text, variables, source=str(tpl))
    sb: List[str] = [f"--job-name={opts.job_name or 'lrt-pilot' + ('-' + opts.token_type if opts.token_type else '')}"]
    array = f"0-{opts.pilots - 1}"
    if opts.throttle:
        array += f"%{opts.throttle}"
    sb.append(f"--array={array}")
    if opts.partition:
        sb.append(f"--partition={opts.partition}")
    if opts.time:
        sb.append(f"--time={opts.time}")
    if opts.cpus:
        sb.append(f"--cpus-per-task={opts.cpus}")
    if opts.mem:
        sb.append(f"--mem={opts.mem}")
    if opts.after:
        sb.append(f"--dependency=afterok:{opts.after}")
    sb += list(opts.sbatch_args)
    check_no_secret([script, " ".join(sb)], conn)
    if opts.credentials == "file":
        password_file_for(conn, opts.password_file, write=write)  # only now, after every check
    return Rendered(launch_id, script, tpl, text, sb, pw_path, variables)


def sbatch_argv(r: Rendered, folder: Path) -> List[str]:
    return (["sbatch", "--parsable", f"--chdir={folder}", f"--output={folder}/pilot-%A_%a.out"]
            + r.sbatch_options + [str(folder / "pilot.sh")])


def submit(db: Any, conn: Connection, opts: SlurmOptions, extra_record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Render, write, ``sbatch``, record; returns the launch document."""
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found: is this a Slurm submit host? (--dry-run shows the script)")
    # the database must take the record: find out before anything is submitted
    db.info()
    r = render_script(conn, opts)
    folder = launch_dir(r.launch_id, opts.base_dir)
    script_path = folder / "pilot.sh"
    script_path.write_text(r.script)
    script_path.chmod(0o700)
    argv = sbatch_argv(r, folder)
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             env=submit_env(conn, opts.credentials), timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise LaunchError(f"sbatch failed: {exc}") from None
    if res.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise LaunchError(f"sbatch failed (exit {res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    batch_id = res.stdout.strip().split(";")[0].strip()
    if not batch_id.isdigit():
        raise LaunchError(f"sbatch answered {res.stdout.strip()!r}, expected a job id (job may be submitted; "
                          f"check squeue)")
    record: Dict[str, Any] = {
        "dir": str(folder), "template": str(r.template_path), "credentials": opts.credentials,
        "after": opts.after, "argv": argv,
        "options": {"partition": opts.partition, "time": opts.time, "cpus": opts.cpus, "mem": opts.mem,
                    "throttle": opts.throttle, "pilot_args": opts.pilot_args},
    }
    record.update(extra_record or {})
    try:
        return record_launch(db, r.launch_id, "slurm", batch_id, opts.pilots, opts.token_type, r.template_text,
                             **record)
    except LrtError as exc:
        raise LaunchError(f"submitted Slurm job {batch_id} ({opts.pilots} pilots, logs in {folder}) but could "
                          f"not record the launch: {exc}") from None


# ---------------------------------------------------------------------------
# queue


def queue_states(user: Optional[str] = None) -> Optional[List[Tuple[str, str, str]]]:
    """``[(array_job_id, job_id, state), ...]`` for the user's jobs, or None if squeue is unusable.

    ``-r`` lists every array element on its own line, pending ones included, so
    counts are per pilot.
    """
    if shutil.which("squeue") is None:
        return None
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-u", user or getpass.getuser(), "-o", "%F|%i|%T"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=SQUEUE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    out = []
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}


def count_states(states: List[Tuple[str, str, str]], batch_id: str) -> Tuple[int, int]:
    """(queued, running) elements of array job ``batch_id``."""
    queued = running = 0
    for array_id, job_id, state in states:
        if array_id != batch_id and job_id != batch_id:
            continue
        if state in _RUNNING:
            running += 1
        elif state in _QUEUED:
            queued += 1
    return queued, running


# ---------------------------------------------------------------------------
# elastic launcher


def claimable(db: Any, token_type: Optional[str]) -> int:
    """todo tokens of the type (all types when None), from the monitoring view's _count."""
    if token_type is None:
        start, end = ["todo"], ["todo", {}]
    else:
        start, end = ["todo", token_type], ["todo", token_type, {}]
    rows = db.view("lrt", "tokens", startkey=start, endkey=end, reduce=True).get("rows", [])
    return int(rows[0]["value"]) if rows else 0


def active_pilots(db: Any, token_type: Optional[str]) -> Tuple[int, int]:
    """(queued, running) Slurm pilots of this type launched into this database."""
    states = queue_states()
    if states is None:
        raise LaunchError("squeue is not usable here; the elastic launcher needs it")
    queued = running = 0
    for d in launch_records(db, limit=None, system="slurm", token_type=token_type):
        if d.get("batch_id"):
            qd, rn = count_states(states, str(d["batch_id"]))
            queued, running = queued + qd, running + rn
    return queued, running


def run_elastic(db: Any, conn: Connection, opts: SlurmOptions, max_pilots: int, tokens_per_pilot: int = 10,
                interval: float = 30.0, max_rounds: Optional[int] = None,
                out: Callable[[str], None] = print, futile_limit: int = 3) -> int:
    """Keep ceil(todo / tokens_per_pilot) pilots (at most ``max_pilots``) queued or running.

    Each round counts claimable tokens and our queued/running pilots and
    submits the difference as one array (recorded like any launch, with
    ``auto: true``).  Stops when no token is todo and no pilot is left, or after
    ``max_rounds``.  Pilots that keep ending without the todo count going down
    (``futile_limit`` rounds in a row, e.g. a broken template) stop it with an
    error instead of an endless resubmission loop.  Returns pilots submitted.
    """
    if max_pilots < 1 or tokens_per_pilot < 1:
        raise ConfigError("--max-pilots and --tokens-per-pilot must be at least 1")
    validate(opts)
    submitted = 0
    rounds = 0
    futile = 0
    last_submit_todo: Optional[int] = None
    while True:
        rounds += 1
        todo = claimable(db, opts.token_type)
        queued, running = active_pilots(db, opts.token_type)
        active = queued + running
        if todo == 0 and active == 0:
            out(f"round {rounds}: no todo tokens and no pilots left; done ({submitted} pilots submitted)")
            return submitted
        if active == 0 and last_submit_todo is not None and todo >= last_submit_todo:
            futile += 1
            if futile >= futile_limit:
                raise LaunchError(f"{futile} rounds of pilots ended without the todo count going down "
                                  f"({todo} todo); check the pilot logs in the launch folders")
        elif active == 0 or (last_submit_todo is not None and todo < last_submit_todo):
            futile = 0
        wanted = min(math.ceil(todo / tokens_per_pilot), max_pilots) - active
        msg = f"round {rounds}: {todo} todo, {queued} queued, {running} running"
        if wanted > 0:
            o = SlurmOptions(**{**opts.__dict__, "pilots": wanted})
            doc = submit(db, conn, o, extra_record={"auto": True})
            submitted += wanted
            last_submit_todo = todo
            msg += f" -> submitted {wanted} (job {doc['batch_id']})"
        out(msg)
        if max_rounds is not None and rounds >= max_rounds:
            out(f"stopping after {rounds} rounds ({submitted} pilots submitted)")
            return submitted
        time.sleep(interval)
