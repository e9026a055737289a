"""gLite / DIRAC: a parametric JDL of N pilot jobs.

``lrt launch jdl`` writes ``pilot.jdl`` and the wrapper ``pilot.sh`` into the
launch folder.  Submission is left to the grid tools (``dirac-wms-job-submit
pilot.jdl`` or ``glite-wms-job-submit -a pilot.jdl``), which need a grid proxy
lrt does not handle.  The password file is in the InputSandbox *by path*; the
JDL never contains its content.

On grid worker nodes lrt is not at the submit host's path: the wrapper runs
``lrt`` from ``PATH`` unless ``--lrt`` says otherwise (e.g. a CVMFS venv or
``apptainer exec /cvmfs/.../lrt.sif lrt``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ConfigError
from . import Connection, password_file_for, check_no_secret, find_template, launch_dir, new_launch_id, render
from .wrapper import plain, render_wrapper

TEMPLATE = "pilot.jdl.tmpl"
DEFAULT_LRT = "lrt"


@dataclass
class JdlOptions:
    pilots: int = 1
    token_type: Optional[str] = None
    template: Optional[str] = None
    wrapper_template: Optional[str] = None
    pilot_args: Optional[str] = None
    cpu_time: Optional[float] = None        # seconds; DIRAC's CPUTime
    extra: List[str] = field(default_factory=list)   # raw 'Name = value;' attributes
    password_file: Optional[str] = None
    base_dir: Optional[str] = None
    lrt: Optional[str] = None


def jdl_string(value: str) -> str:
    """A JDL (ClassAd) string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_files(conn: Connection, opts: JdlOptions, launch_id: str, write: bool = True) -> Dict[str, Any]:
    if opts.pilots < 1:
        raise ConfigError("--pilots must be at least 1")
    w = render_wrapper(conn, launch_id, opts.token_type, opts.pilot_args, opts.pilots, opts.wrapper_template,
                       opts.lrt, opts.password_file, write=False, default_lrt=DEFAULT_LRT)
    sandbox = ["pilot.sh"] + ([w["password_path"]] if w["password_path"] else [])
    extra = []
    if opts.cpu_time:
        extra.append(f"  CPUTime = {int(opts.cpu_time)};")
    for line in opts.extra:
        line = line.strip()
        if "\n" in line or "=" not in line:
            raise ConfigError(f"--jdl-attr wants one 'Name = value' attribute, got {line!r}")
        extra.append("  " + (line if line.endswith(";") else line + ";"))
    try:
        variables = {"launch_id": launch_id, "launch_id_plain": plain(launch_id, "launch id"),
                     "count": str(int(opts.pilots)), "executable": "pilot.sh", "jdl_file": "pilot.jdl",
                     "input_sandbox": ", ".join(jdl_string(plain(s, "sandbox path")) for s in sandbox),
                     "type": opts.token_type or "", "extra_lines": "\n".join(extra)}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    tpl = find_template(TEMPLATE, opts.template)
    text = tpl.read_text()
    jdl = render(text, variables, source=str(tpl))
    check_no_secret([jdl], conn)
    if write:
        password_file_for(conn, opts.password_file, write=True)  # only after every check
    return {"jdl": jdl, "wrapper": w["text"], "template_path": tpl, "password_path": w["password_path"]}


def write(conn: Connection, opts: JdlOptions, out=print) -> Path:
    """Render, then write ``pilot.jdl`` + ``pilot.sh`` into a new launch folder."""
    launch_id = new_launch_id("jdl")
    files = render_files(conn, opts, launch_id)
    folder = launch_dir(launch_id, opts.base_dir)
    (folder / "pilot.sh").write_text(files["wrapper"])
    (folder / "pilot.sh").chmod(0o700)
    (folder / "pilot.jdl").write_text(files["jdl"])
    out(f"wrote {folder}/pilot.jdl and pilot.sh ({opts.pilots} parametric jobs)")
    out(f"submit from {folder} with: dirac-wms-job-submit pilot.jdl   (or: glite-wms-job-submit -a pilot.jdl)")
    return folder
