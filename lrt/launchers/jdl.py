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
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import ConfigError
from .base import LaunchOptions, Launched, Launcher
from .credentials import Connection, check_no_secret, password_file_for
from .records import launch_dir, new_launch_id
from .templates import find_template, render
from .wrapper import plain, render_wrapper

if TYPE_CHECKING:
    from ..couch import Database

TEMPLATE = "pilot.jdl.tmpl"
DEFAULT_LRT = "lrt"


@dataclass
class JdlOptions(LaunchOptions):
    """The shared options plus DIRAC's CPU time and raw JDL attributes."""

    wrapper_template: Optional[str] = None
    cpu_time: Optional[float] = None        # seconds; DIRAC's CPUTime
    extra: List[str] = field(default_factory=list)   # raw 'Name = value;' attributes


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


def write(conn: Connection, opts: JdlOptions) -> Launched:
    """Render, then write ``pilot.jdl`` + ``pilot.sh`` into a new launch folder (nothing is submitted)."""
    launch_id = new_launch_id("jdl")
    files = render_files(conn, opts, launch_id)
    folder = launch_dir(launch_id, opts.base_dir)
    (folder / "pilot.sh").write_text(files["wrapper"])
    (folder / "pilot.sh").chmod(0o700)
    (folder / "pilot.jdl").write_text(files["jdl"])
    return Launched(None, folder,
                    f"wrote {folder}/pilot.jdl and pilot.sh ({opts.pilots} parametric jobs)\n"
                    f"submit from {folder} with: dirac-wms-job-submit pilot.jdl   "
                    f"(or: glite-wms-job-submit -a pilot.jdl)")


class JdlLauncher(Launcher[JdlOptions]):
    """``lrt launch jdl``: files for the grid tools to submit; lrt cannot see those pilots."""

    system = "jdl"

    def launch(self, db: "Database", conn: Connection, opts: JdlOptions) -> Launched:
        return write(conn, opts)

    def dry_run(self, conn: Connection, opts: JdlOptions) -> str:
        files = render_files(conn, opts, "<launch id>", write=False)
        return "# ---- pilot.jdl\n" + files["jdl"] + "# ---- pilot.sh\n" + files["wrapper"]


LAUNCHER = JdlLauncher()
