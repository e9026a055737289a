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
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import ConfigError, LrtError
from .base import LaunchError, LaunchOptions, Launched, Launcher, Observed
from .command import lrt_command, pilot_args, pilot_walltime
from .credentials import Connection, check_no_secret, job_env_names, password_file_for, submit_env
from .records import (ACCOUNTING_EVERY, PilotEnd, ended_entry, launch_dir, launch_records, new_launch_id,
                      record_launch)
from .templates import common_variables, find_template, q, render

if TYPE_CHECKING:
    from ..couch import Database

TEMPLATE = "slurm.sh.tmpl"
SQUEUE_TIMEOUT = 30.0


@dataclass
class SlurmOptions(LaunchOptions):
    """The shared options plus the sbatch resources and how the password travels."""

    partition: Optional[str] = None
    time: Optional[str] = None
    cpus: Optional[int] = None
    mem: Optional[str] = None
    throttle: Optional[int] = None
    after: Optional[str] = None
    sbatch_args: List[str] = field(default_factory=list)
    credentials: str = "file"          # "file" | "env"
    job_name: Optional[str] = None
    env: List[str] = field(default_factory=list)   # more variable names for the job (--env)


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
    pilot_argv: List[str] = field(default_factory=list)


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
    # only what the pilot needs travels: sbatch's default (--export=ALL) would copy the whole
    # submitting environment, secrets included, into the job and slurmctld's state files
    sb: List[str] = [f"--export={','.join(job_env_names(conn, opts.credentials, opts.env))}",
                     f"--job-name={opts.job_name or 'lrt-pilot' + ('-' + opts.token_type if opts.token_type else '')}"]
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
    return Rendered(launch_id, script, tpl, text, sb, pw_path, variables, argv)


def sbatch_argv(r: Rendered, folder: Path) -> List[str]:
    return (["sbatch", "--parsable", f"--chdir={folder}", f"--output={folder}/pilot-%A_%a.out"]
            + r.sbatch_options + [str(folder / "pilot.sh")])


def submit(db: "Database", conn: Connection, opts: SlurmOptions, extra_record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
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
        "after": opts.after, "argv": argv, "walltime": pilot_walltime(opts.time, r.pilot_argv),
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


class JobRow(NamedTuple):
    """One array element as ``squeue`` shows it."""

    array_id: str
    task: str       # array index ("N/A" for a job that is not an array element)
    job_id: str
    state: str
    status: Optional[int]   # raw wait status of an ended element (exit << 8 | signal), else None


def queue_states(user: Optional[str] = None) -> Optional[List[JobRow]]:
    """Every job of ``user`` (a name or comma-separated names; default: us) that slurmctld still
    knows, ended ones included; None if squeue is unusable.

    ``-r`` lists every array element on its own line, pending ones included,
    so counts are per pilot; ``--states=all`` keeps elements that ended within
    the last ``MinJobAge`` (default 300 s), with their exit status.
    """
    if shutil.which("squeue") is None:
        return None
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", user or getpass.getuser(),
                              "-O", "ArrayJobID:|,ArrayTaskID:|,JobID:|,State:|,exit_code:|"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=SQUEUE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    out = []
    for line in res.stdout.splitlines():
        parts = [p.strip() for p in line.strip().split("|")]
        if len(parts) >= 5:
            status = int(parts[4]) if parts[4].isdigit() else None
            out.append(JobRow(parts[0], parts[1], parts[2], parts[3], status))
    return out


_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
#: ended states; only COMPLETED (exit 0) is a pilot that finished well
_ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
          "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}


def _ended(state: str, exit_code: Optional[int], signal_no: Optional[int]) -> Dict[str, Any]:
    ok = state == "COMPLETED" and not exit_code and not signal_no
    return ended_entry(PilotEnd.FINISHED if ok else PilotEnd.FAILED, state, exit_code, signal_no)


def count_states(states: List[JobRow], batch_id: str) -> Tuple[int, int]:
    """(queued, running) elements of array job ``batch_id``."""
    queued, running, _ = element_states(states, batch_id)
    return queued, running


def element_states(states: List[JobRow], batch_id: str) -> Tuple[int, int, Dict[str, Any]]:
    """(queued, running, {array index: ended entry}) for array job ``batch_id``."""
    queued = running = 0
    ended: Dict[str, Any] = {}
    for row in states:
        if row.array_id != batch_id and row.job_id != batch_id:
            continue
        if row.state in _RUNNING:
            running += 1
        elif row.state in _QUEUED:
            queued += 1
        elif row.state in _ENDED:
            st = row.status or 0
            key = row.task if row.task.isdigit() else "0"
            ended[key] = _ended(row.state, st >> 8, st & 0x7F)
    return queued, running, ended


def parse_sacct(text: str, batch_id: str) -> Dict[str, Any]:
    """``sacct -X -n -P -o JobID,State,ExitCode`` lines -> {array index: ended entry}.

    JobID is ``<array id>_<index>`` (pending ranges ``_[2-5]`` are skipped),
    State may carry a suffix (``CANCELLED by 1000``), ExitCode is ``exit:signal``.
    """
    out: Dict[str, Any] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        job, state, code = parts[0], (parts[1].split() or [""])[0], parts[2]
        head, _, task = job.partition("_")
        if head != batch_id or not task.isdigit() or state not in _ENDED:
            continue
        rc, _, sig = code.partition(":")
        out[task] = _ended(state, int(rc) if rc.isdigit() else None, int(sig) if sig.isdigit() else None)
    return out


def accounted_ends(batch_id: str) -> Optional[Dict[str, Any]]:
    """Ended elements of an array from Slurm accounting; None where ``sacct`` does not answer."""
    if shutil.which("sacct") is None:
        return None
    try:
        res = subprocess.run(["sacct", "-X", "-n", "-P", "-j", batch_id, "-o", "JobID,State,ExitCode"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=SQUEUE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:   # e.g. "Slurm accounting storage is disabled"
        return None
    return parse_sacct(res.stdout, batch_id)


# ---------------------------------------------------------------------------
# elastic launcher


def claimable(db: "Database", token_type: Optional[str]) -> int:
    """todo tokens of the type (all types when None), from the monitoring view's _count."""
    if token_type is None:
        start, end = ["todo"], ["todo", {}]
    else:
        start, end = ["todo", token_type], ["todo", token_type, {}]
    rows = db.view("lrt", "tokens", startkey=start, endkey=end, reduce=True).get("rows", [])
    return int(rows[0]["value"]) if rows else 0


def active_pilots(db: "Database", token_type: Optional[str]) -> Tuple[int, int]:
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


def run_elastic(db: "Database", conn: Connection, opts: SlurmOptions, max_pilots: int, tokens_per_pilot: int = 10,
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


# ---------------------------------------------------------------------------
# the launcher


class SlurmLauncher(Launcher[SlurmOptions]):
    """``lrt launch slurm``: a job array through ``sbatch``; seen through ``squeue`` and ``sacct``."""

    system = "slurm"

    def launch(self, db: "Database", conn: Connection, opts: SlurmOptions) -> Launched:
        doc = submit(db, conn, opts)
        return Launched(doc, Path(doc["dir"]),
                        f"submitted {opts.pilots} pilot(s) as Slurm job {doc['batch_id']} "
                        f"(launch {doc['launch_id']}, logs in {doc['dir']})")

    def dry_run(self, conn: Connection, opts: SlurmOptions) -> str:
        r = render_script(conn, opts, write=False)
        # quoted like the script: pasted into a shell, the line runs this sbatch and nothing else
        return "# " + shlex.join(sbatch_argv(r, Path("<launch folder>"))) + "\n" + r.script

    def observe(self, records: Sequence[Dict[str, Any]]) -> Dict[str, Observed]:
        """One ``squeue`` for every user's open launches; ``sacct`` only for pilots it no longer knows."""
        users = sorted({str(d.get("user") or getpass.getuser()) for d in records})
        states = queue_states(",".join(users)) if users else None
        out: Dict[str, Observed] = {}
        if states is None:
            return out
        for d in records:
            if not d.get("batch_id"):
                continue
            ended = d.get("ended") or {}
            count = int(d.get("count") or 0)
            queued, running, seen = element_states(states, str(d["batch_id"]))
            accounted: Optional[float] = None
            live = queued + running
            if live + len(set(ended) | set(seen)) < count and \
                    time.time() - float(d.get("accounted") or 0) > ACCOUNTING_EVERY:
                seen.update(accounted_ends(str(d["batch_id"])) or {})
                if live + len(set(ended) | set(seen)) < count:
                    accounted = time.time()   # accounting does not know them either: ask less often
            out[d["_id"]] = Observed(queued, running, seen, accounted)
        return out


LAUNCHER = SlurmLauncher()
