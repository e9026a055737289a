"""The pilot wrapper script shared by HTCondor and gLite/DIRAC jobs.

These systems copy files into the job's scratch directory (HTCondor input
files, the JDL InputSandbox), so the password travels as a file *next to* the
wrapper and the wrapper points ``LRT_COUCH_PASSWORD_FILE`` at it.  The
wrapper itself only holds the URL, user and database name.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .command import lrt_command, pilot_args
from .credentials import Connection, check_no_secret, password_file_for
from .templates import common_variables, find_template, q, render

TEMPLATE = "pilot.sh.tmpl"


def render_wrapper(conn: Connection, launch_id: str, token_type: Optional[str], extra_args: Optional[str],
                   count: int, template: Optional[str], lrt: Optional[str], password_file: Optional[str],
                   write: bool = True, default_lrt: Optional[str] = None) -> Dict[str, Any]:
    """``{"text", "template_path", "template_text", "password_path", "variables", "pilot_argv"}``."""
    tpl = find_template(TEMPLATE, template)
    text = tpl.read_text()
    pw = password_file_for(conn, password_file, write=False)
    name = pw.name if pw else "lrt-password"
    cmd = lrt_command(lrt or default_lrt)
    argv = pilot_args(token_type, extra_args)
    variables = common_variables(conn, launch_id, token_type, argv, cmd, count, "")
    variables["password_name"] = q(name)
    out = render(text, variables, source=str(tpl))
    check_no_secret([out], conn)
    if write:
        password_file_for(conn, password_file, write=True)
    return {"text": out, "template_path": tpl, "template_text": text,
            "password_path": str(pw) if pw else None, "variables": variables, "pilot_argv": argv}


def plain(value: str, what: str) -> str:
    """A value for a submit description / JDL line: no newlines, no quotes."""
    if any(c in value for c in '\n\r"'):
        raise ValueError(f"{what} must not contain newlines or double quotes: {value!r}")
    return value

