"""What start-up imports: `import lrt`, `lrt --version` and the pilot's entry point must not
load heavy modules they do not use (speed itself is measured by bench/status.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from lrt.cli import _command_word, build_parser


ROOT = Path(__file__).resolve().parent.parent

#: never needed to import lrt or print its version
HEAVY = ("requests", "urllib3", "http.client", "ssl", "yaml", "tqdm", "charset_normalizer", "idna",
         "lrt.couch", "lrt.config", "lrt.tokens", "lrt.design", "lrt.launchers", "lrt.staging",
         "lrt.pilot", "lrt.protocol", "lrt.server", "lrt.batch", "concurrent.futures", "gfal2", "xmlrpc", "tarfile")
#: the HTTP stack lrt does not use (lrt.couch speaks http.client), nor its metadata lookups
NOT_THE_HTTP_STACK = ("requests", "urllib3", "charset_normalizer", "chardet", "idna", "certifi",
                      "importlib.metadata", "http.cookiejar", "email.mime")
#: admin-side or staging modules a pilot without staging never needs
NOT_ON_PILOT_PATH = NOT_THE_HTTP_STACK + (
    "yaml", "tqdm", "lrt.config", "lrt.tokens", "lrt.launchers", "lrt.staging.gfal",
    "lrt.staging.lta", "lrt.server", "gfal2", "xmlrpc", "concurrent.futures")
#: what `lrt status` needs neither: the token config parser, the launchers (no launch records),
#: the table and progress-bar extras
NOT_ON_STATUS_PATH = NOT_THE_HTTP_STACK + (
    "yaml", "tqdm", "lrt.config", "lrt.staging", "lrt.launchers", "lrt.server", "lrt.design", "lrt.pilot",
    "gfal2", "xmlrpc", "concurrent.futures", "tabulate", "rich", "starlette", "jinja2", "uvicorn", "tarfile")


def loaded_after(code: str, env=None) -> List[str]:
    """Modules in sys.modules after running ``code`` in a fresh interpreter."""
    prog = code + "\nimport json, sys\nprint('MODULES ' + json.dumps(sorted(sys.modules)))\n"
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    line = [x for x in res.stdout.splitlines() if x.startswith("MODULES ")]
    assert line, res.stdout + res.stderr
    return json.loads(line[0][len("MODULES "):])


def heavy_in(mods: List[str], heavy) -> List[str]:
    return [m for m in mods if any(m == h or m.startswith(h + ".") for h in heavy)]


def test_import_lrt_is_light():
    mods = loaded_after("import lrt")
    assert heavy_in(mods, HEAVY) == []
    assert "lrt.errors" not in mods  # the public API is imported lazily


def test_lrt_version_path_is_light():
    code = ("import io, contextlib, lrt.cli\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n        lrt.cli.main(['--version'])\n    except SystemExit:\n        pass\n"
            "assert buf.getvalue().startswith('lrt '), buf.getvalue()")
    assert heavy_in(loaded_after(code), HEAVY) == []


def test_the_lazy_import_list_can_fail():
    """The check sees a heavy import when there is one (it is not vacuous)."""
    assert "http.client" in heavy_in(loaded_after("import lrt.couch"), HEAVY)
    assert "requests" in heavy_in(loaded_after("import lrt.pilot.sandbox; import requests"), NOT_ON_PILOT_PATH)
    assert "yaml" in heavy_in(loaded_after("import lrt.tokens; lrt.tokens.TokenSet.from_text("
                                           "'type: t\\ncommand: [a]\\n')"), HEAVY)


def test_pilot_entry_point_loads_only_the_pilot_path(couch, db):
    env = dict(couch.env(db.name), PYTHONPATH=str(ROOT))
    code = "import lrt.cli\nrc = lrt.cli.main(['pilot', '--idle-exit', '0', '--poll', '0.1'])\nassert rc == 0, rc"
    mods = loaded_after(code, env)
    assert "lrt.pilot.pilot" in mods and "http.client" in mods  # it did run the pilot
    assert heavy_in(mods, NOT_ON_PILOT_PATH) == []


def test_status_command_loads_only_what_it_uses(couch, db):
    env = dict(couch.env(db.name), PYTHONPATH=str(ROOT))
    db.put({"_id": "t1", "kind": "token", "type": "a", "state": "todo"})
    code = ("import contextlib, io, json, lrt.cli\nbuf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n    rc = lrt.cli.main(['status', '--json'])\n"
            "assert rc == 0 and json.loads(buf.getvalue())['total'] == 1, buf.getvalue()")
    mods = loaded_after(code, env)
    assert "lrt.queries.status" in mods  # it did answer
    assert heavy_in(mods, NOT_ON_STATUS_PATH) == []


@pytest.mark.parametrize("argv,word", [
    (["--version"], ""), (["status"], "status"), (["--db", "x", "-v", "list"], "list"),
    (["--db=x", "create", "c.yaml"], "create"), (["--ur", "http://h", "show", "x"], "show"),
    (["-h"], None), ([], None), (["--u", "x", "status"], None),  # --u: --url or --user
])
def test_command_word(argv, word):
    assert _command_word(argv) == word


def test_one_command_parser_parses_like_the_full_one():
    argv = ["--db", "d", "create", "c.yaml", "--batch-size", "7", "--update"]
    full, one = build_parser().parse_args(argv), build_parser(argv).parse_args(argv)
    assert vars(full) == vars(one)
    assert set(build_parser(argv)._subparsers._group_actions[0].choices) == {"create"}
    for argv in (["server", "start", "--port", "5"], ["stage", "lta", "status", "3", "--json"],
                 ["launch", "local", "--pilots", "2"], ["pilot", "--idle-exit", "1"]):
        assert vars(build_parser().parse_args(argv)) == vars(build_parser(argv).parse_args(argv))


def test_unknown_command_and_help_list_every_command(lrt_cmd):
    res = subprocess.run(lrt_cmd + ["stauts"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "invalid choice: 'stauts'" in res.stderr and "'status'" in res.stderr
    res = subprocess.run(lrt_cmd + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0 and all(c in res.stdout for c in ("create", "status", "pilot", "server"))
