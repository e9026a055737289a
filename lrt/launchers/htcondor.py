"""HTCondor: a submit description queueing N pilot jobs.

``lrt launch htcondor`` writes ``pilot.sub`` and the wrapper ``pilot.sh`` into
the launch folder and runs ``condor_submit -terse`` when it is installed (then
the submission is recorded like any launch); otherwise it prints the command
to run on a submit host.  The password file is listed in
``transfer_input_files`` (by path); HTCondor copies it next to the wrapper.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError, LrtError
from .base import LaunchError, LaunchOptions, Launched, Launcher, Observed
from .command import pilot_walltime
from .credentials import Connection, check_no_secret, password_file_for, submit_env
from .records import launch_dir, new_launch_id, record_launch
from .templates import find_template, render
from .wrapper import plain, render_wrapper

if TYPE_CHECKING:
    from ..couch import Database

TEMPLATE = "htcondor.sub.tmpl"


@dataclass
class CondorOptions(LaunchOptions):
    """The shared options plus HTCondor's resource requests and raw submit lines."""

    cpus: int = 1
    mem: str = "2GB"
    wrapper_template: Optional[str] = None
    extra: List[str] = field(default_factory=list)   # raw submit-description lines


def render_files(conn: Connection, opts: CondorOptions, folder: Path, launch_id: str,
                 write: bool = True) -> Dict[str, Any]:
    """Render ``pilot.sub`` and ``pilot.sh`` for ``folder`` (nothing written here)."""
    if opts.pilots < 1 or opts.cpus < 1:
        raise ConfigError("--pilots and --cpus must be at least 1")
    w = render_wrapper(conn, launch_id, opts.token_type, opts.pilot_args, opts.pilots, opts.wrapper_template,
                       opts.lrt, opts.password_file, write=False)
    tpl = find_template(TEMPLATE, opts.template)
    text = tpl.read_text()
    try:
        inputs = [plain(w["password_path"], "password file path")] if w["password_path"] else []
        if any("," in i for i in inputs):
            raise ValueError("the password file path contains a comma")
        extra = []
        for line in opts.extra:
            if "\n" in line or "\r" in line or re.match(r"\s*queue\b", line, re.I):
                raise ValueError(f"--submit-line must be one line and not a queue statement: {line!r}")
            if re.match(r"\s*getenv\s*=\s*(true|yes|t|y|1|\*)\s*$", line, re.I):
                raise ValueError(f"--submit-line {line!r} would copy the whole submitting environment (and "
                                 f"any secret in it) into the jobs; name the variables instead "
                                 f"(getenv = PATH, HOME) or use 'environment = ...'")
            extra.append(line)
        variables = {
            "launch_id": launch_id, "launch_id_plain": launch_id, "count": str(opts.pilots),
            "executable": plain(str(folder / "pilot.sh"), "folder"),
            "transfer_input_files": ", ".join(inputs),
            "log_dir": plain(str(folder), "folder"),
            "request_cpus": str(int(opts.cpus)), "request_memory": plain(str(opts.mem), "--mem"),
            "submit_file": plain(str(folder / "pilot.sub"), "folder"),
            "type": opts.token_type or "", "extra_lines": "\n".join(extra),
        }
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    sub = render(text, variables, source=str(tpl))
    check_no_secret([sub], conn)
    if write:
        password_file_for(conn, opts.password_file, write=True)  # only after every check
    return {"sub": sub, "wrapper": w["text"], "template_path": tpl, "template_text": text + w["template_text"],
            "password_path": w["password_path"], "pilot_argv": w["pilot_argv"]}


def launch(db: Optional["Database"], conn: Connection, opts: CondorOptions) -> Launched:
    """Write the files; submit and record when ``condor_submit`` exists, else say how."""
    if shutil.which("condor_submit") and db is not None:
        db.info()  # the record must be writable: find out before submitting
    launch_id = new_launch_id("htcondor")
    folder_name = Path(opts.base_dir).expanduser().resolve() if opts.base_dir else None
    # render against the final folder path first, so bad input writes nothing
    from ..server import lrt_home

    final = (folder_name or lrt_home() / "launches") / launch_id
    files = render_files(conn, opts, final, launch_id)
    folder = launch_dir(launch_id, opts.base_dir)
    (folder / "pilot.sh").write_text(files["wrapper"])
    (folder / "pilot.sh").chmod(0o700)
    (folder / "pilot.sub").write_text(files["sub"])
    if shutil.which("condor_submit") is None or db is None:
        return Launched(None, folder,
                        f"wrote {folder}/pilot.sub and pilot.sh; condor_submit is not installed here, "
                        f"so nothing was submitted. On a submit host run: condor_submit {folder}/pilot.sub")
    res = subprocess.run(["condor_submit", "-terse", str(folder / "pilot.sub")], cwd=str(folder),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         env=submit_env(conn, "file"), timeout=300, check=False)
    if res.returncode != 0:
        raise LaunchError(f"condor_submit failed (exit {res.returncode}): {res.stderr.strip()}")
    m = re.match(r"\s*(\d+)\.", res.stdout)
    cluster = m.group(1) if m else None
    try:
        doc = record_launch(db, launch_id, "htcondor", cluster, opts.pilots, opts.token_type,
                            files["template_text"], dir=str(folder), template=str(files["template_path"]),
                            credentials="file", walltime=pilot_walltime(None, files["pilot_argv"]),
                            options={"cpus": opts.cpus, "mem": opts.mem, "pilot_args": opts.pilot_args})
    except LrtError as exc:
        raise LaunchError(f"submitted HTCondor cluster {cluster} but could not record the launch: {exc}") from None
    return Launched(doc, folder, f"submitted {opts.pilots} pilot(s) as HTCondor cluster {doc['batch_id']} "
                                 f"(launch {doc['launch_id']}, logs in {doc['dir']})")


def queue_counts(cluster: str) -> Optional[Tuple[int, int]]:
    """(idle+held, running) jobs of a cluster from ``condor_q``; None when unavailable."""
    if shutil.which("condor_q") is None:
        return None
    try:
        res = subprocess.run(["condor_q", cluster, "-af", "JobStatus"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    queued = running = 0
    for line in res.stdout.split():
        if line in ("1", "5"):    # idle, held
            queued += 1
        elif line in ("2", "6"):  # running, transferring output
            running += 1
    return queued, running


class CondorLauncher(Launcher[CondorOptions]):
    """``lrt launch htcondor``: a submit description (submitted where ``condor_submit`` exists)."""

    system = "htcondor"

    def launch(self, db: "Database", conn: Connection, opts: CondorOptions) -> Launched:
        return launch(db, conn, opts)

    def dry_run(self, conn: Connection, opts: CondorOptions) -> str:
        files = render_files(conn, opts, Path("<launch folder>"), "<launch id>", write=False)
        return "# ---- pilot.sub\n" + files["sub"] + "# ---- pilot.sh\n" + files["wrapper"]

    def observe(self, records: Sequence[Dict[str, Any]]) -> Dict[str, Observed]:
        out: Dict[str, Observed] = {}
        for d in records:
            counts = queue_counts(str(d["batch_id"])) if d.get("batch_id") else None
            if counts is not None:
                out[d["_id"]] = Observed(*counts)
        return out


LAUNCHER = CondorLauncher()
