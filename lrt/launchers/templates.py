"""Launch templates: the tiny template language and where templates are found.

``${name}`` with lower-case names only is a placeholder, so shell variables
such as ``$SLURM_JOB_ID`` or ``$(date)`` pass through untouched; ``$${`` gives
a literal ``${``.  Unknown names are an error that lists them, before anything
is written or submitted.  Built-in templates live in the top-level ``launch/``
folder of the source tree (or ``<prefix>/share/lrt/launch`` for a wheel).
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..errors import ConfigError
from .credentials import Connection

_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([a-z][a-z0-9_]*)\}")


def template_variables(text: str) -> List[str]:
    """The ``${name}`` placeholders used in ``text``, in order of first use."""
    seen: List[str] = []
    for m in _PLACEHOLDER.finditer(text):
        name = m.group(1)
        if name and name not in seen:
            seen.append(name)
    return seen


def render(text: str, variables: Mapping[str, str], source: str = "template") -> str:
    """Substitute ``${name}`` placeholders; refuse unknown names.

    Only ``${lower_case}`` is a placeholder: ``$HOME``, ``${SLURM_JOB_ID}``,
    ``$(cmd)``, ``$1`` are left for the shell.  ``$${`` renders as ``${`` for
    the rare lower-case shell variable in braces.  Values are inserted as given;
    the launchers pass shell-quoted values for anything that lands in a shell
    script.  Raises :class:`ConfigError` naming every unknown placeholder.
    """
    unknown = [n for n in template_variables(text) if n not in variables]
    if unknown:
        raise ConfigError(f"unknown template variable(s): {', '.join('${' + n + '}' for n in unknown)}; "
                          f"known: {', '.join(sorted(variables))} (write $${{ for a literal ${{)",
                          path=source)

    def sub(m: "re.Match[str]") -> str:
        if m.group(1) is None:
            return "${"
        return str(variables[m.group(1)])

    return _PLACEHOLDER.sub(sub, text)


def _source_template_dir() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "launch"


#: where built-in templates are looked up, first match wins
TEMPLATE_DIRS: List[Path] = []


def find_template(name: str, user_file: Optional[str] = None) -> Path:
    """The template to use: the user's file, else the built-in ``name``.

    Built-ins are looked up in ``$LRT_TEMPLATE_DIR``, then the ``launch/``
    folder of the source tree this package was imported from, then
    ``<sys.prefix>/share/lrt/launch`` (where a wheel's data files land).
    """
    if user_file:
        p = Path(user_file).expanduser()
        if not p.is_file():
            raise ConfigError("template not found", path=str(p))
        return p.resolve()
    dirs = list(TEMPLATE_DIRS)
    if os.environ.get("LRT_TEMPLATE_DIR"):
        dirs.append(Path(os.environ["LRT_TEMPLATE_DIR"]).expanduser())
    dirs.append(_source_template_dir())
    # an installed (non-editable) lrt: templates shipped as data files
    dirs.append(Path(sys.prefix) / "share" / "lrt" / "launch")
    for d in dirs:
        if (d / name).is_file():
            return (d / name).resolve()
    raise ConfigError(f"built-in template {name!r} not found in {', '.join(map(str, dirs))}; "
                      "pass --template FILE or set LRT_TEMPLATE_DIR")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def q(value: Any) -> str:
    """Shell-quote one value (for templates that are shell scripts)."""
    return shlex.quote(str(value))


def common_variables(conn: Connection, launch_id: str, token_type: Optional[str],
                     pilot_argv: Sequence[str], lrt_cmd: Dict[str, str], count: int,
                     password_setup: str) -> Dict[str, str]:
    """Variables every template receives (documented in docs/launch.md)."""
    env_lines = [f"export {k}={q(v)}" for k, v in sorted(conn.public_env().items())]
    env_lines.append(f"export LRT_LAUNCH_ID={q(launch_id)}")
    if lrt_cmd["pythonpath"]:
        env_lines.append(f"export PYTHONPATH={q(lrt_cmd['pythonpath'])}${{PYTHONPATH:+:$PYTHONPATH}}")
    if password_setup:
        env_lines.append(password_setup)
    return {
        "lrt": lrt_cmd["lrt"],
        "pythonpath": q(lrt_cmd["pythonpath"]) if lrt_cmd["pythonpath"] else "''",
        "pilot_args": " ".join(q(a) for a in pilot_argv),
        "pilot_command": lrt_cmd["lrt"] + " pilot" + "".join(" " + q(a) for a in pilot_argv),
        "type": q(token_type or ""),
        "launch_id": q(launch_id),
        "count": str(int(count)),
        "couch_url": q(conn.url),
        "couch_user": q(conn.user or ""),
        "couch_db": q(conn.db),
        "env_setup": "\n".join(env_lines),
    }
