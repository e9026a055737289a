"""How a job runs *this* lrt: the interpreter, ``PYTHONPATH`` and the pilot's arguments."""
from __future__ import annotations

import os
import shlex
import site
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import ConfigError
from .templates import q


def _package_parent() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def _installed_in_interpreter() -> bool:
    """Is the imported lrt inside the interpreter's own site-packages?"""
    parent = _package_parent()
    dirs = []
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # pragma: no cover - old virtualenv
        pass
    try:
        dirs.append(site.getusersitepackages())
    except AttributeError:  # pragma: no cover
        pass
    return any(str(parent) == str(Path(d).resolve()) for d in dirs if d)


def lrt_command(override: Optional[str] = None) -> Dict[str, str]:
    """``{"lrt": shell words running the CLI, "pythonpath": dir or ""}`` for job scripts.

    Default: the absolute path of the interpreter running this command, with
    ``-m lrt.cli``; on a site lrt lives in a venv on the shared filesystem, so
    the same path works on the worker nodes.  When the package is not installed
    in that interpreter (a source checkout, as in the tests) ``pythonpath`` is
    the checkout, for the script to export.  ``override`` (``--lrt``) replaces
    the command as given (e.g. ``apptainer exec lrt.sif lrt``).
    """
    if override:
        words = shlex.split(override)
        if not words:
            raise ConfigError("--lrt is empty")
        return {"lrt": " ".join(q(w) for w in words), "pythonpath": ""}
    exe = os.path.abspath(sys.executable)
    pythonpath = "" if _installed_in_interpreter() else str(_package_parent())
    return {"lrt": f"{q(exe)} -m lrt.cli", "pythonpath": pythonpath}


def pilot_args(token_type: Optional[str], extra: Optional[str]) -> List[str]:
    """The argument vector after ``lrt pilot``: ``--type T`` plus the user's extras."""
    args: List[str] = []
    if token_type:
        args += ["--type", token_type]
    if extra:
        try:
            args += shlex.split(extra)
        except ValueError as exc:
            raise ConfigError(f"--pilot-args: {exc}") from None
    return args


def pilot_walltime(batch_time: Optional[str], pilot_argv: Sequence[str]) -> Optional[float]:
    """Seconds a launch's pilots may run, when known: the shorter of the batch limit and ``--walltime``.

    ``batch_time`` is Slurm's ``--time`` (a lone number there means minutes).
    Used by ``lrt why`` to tell a token that no pilot's walltime fits.
    """
    from ..batch import parse_duration

    found: List[float] = []
    if batch_time:
        t = str(batch_time).strip()
        try:
            found.append(float(t) * 60 if t.isdigit() else parse_duration(t))
        except ValueError:
            pass
    for i, a in enumerate(pilot_argv):
        val = None
        if a == "--walltime" and i + 1 < len(pilot_argv):
            val = pilot_argv[i + 1]
        elif a.startswith("--walltime="):
            val = a.split("=", 1)[1]
        if val is not None:
            try:
                found.append(parse_duration(val))
            except ValueError:
                pass
    return min(found) if found else None
