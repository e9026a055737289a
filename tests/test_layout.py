"""The import rules of docs/design.md: no module outside lrt/cli imports the CLI, the web,
UWS and provenance extras are not imported by the pilot or the library core, the token
protocol (lrt/protocol) imports neither the pilot, the CLI nor the web app, and admin and
web code reach the protocol through lrt.protocol, not through the pilot's modules."""
from __future__ import annotations

import ast
from pathlib import Path

LRT = Path(__file__).resolve().parent.parent / "lrt"
#: extras that only their commands may import
EXTRAS = ("starlette", "uvicorn", "jinja2", "prov", "lxml", "pyvo", "tqdm", "playwright")
#: modules (and packages) that may import the extras
EXTRA_HOMES = ("lrt/web/", "lrt/provenance/", "lrt/cli/", "lrt/tokens.py")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    pkg = ".".join(path.relative_to(LRT.parent).with_suffix("").parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""


def test_no_module_imports_the_cli():
    bad = [(str(p.relative_to(LRT.parent)), m) for p in LRT.rglob("*.py")
           if "cli" not in p.relative_to(LRT).parts[:1]
           for m in _imports(p) if m == "lrt.cli" or m.startswith("lrt.cli.")]
    assert bad == []


def test_extras_stay_in_their_rooms():
    bad = []
    for p in LRT.rglob("*.py"):
        rel = str(p.relative_to(LRT.parent))
        if rel.startswith(EXTRA_HOMES):
            continue
        bad += [(rel, m) for m in _imports(p) if m.split(".")[0] in EXTRAS]
    assert bad == []


#: what the token protocol may not import
PROTOCOL_MUST_NOT = ("lrt.pilot", "lrt.cli", "lrt.web")
#: pilot modules that code outside the pilot and the CLI may import: the sandbox builder
#: (lrt create, tasks) and the pilot itself for the tasks' test mode, which runs one
PILOT_SHARED = {"lrt.pilot.sandbox": None, "lrt.pilot.pilot": ("lrt/tasks/testrun.py",)}


def _under(module: str, roots) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_the_protocol_imports_neither_pilot_nor_cli_nor_web():
    bad = [(str(p.relative_to(LRT.parent)), m) for p in (LRT / "protocol").rglob("*.py")
           for m in _imports(p) if _under(m, PROTOCOL_MUST_NOT)]
    assert bad == []


def test_admin_and_web_code_do_not_import_pilot_internals():
    bad = []
    for p in LRT.rglob("*.py"):
        rel = str(p.relative_to(LRT.parent))
        if rel.startswith(("lrt/pilot/", "lrt/cli/")):
            continue
        for m in _imports(p):
            if not _under(m, ("lrt.pilot",)) or m == "lrt.pilot":
                continue
            homes = PILOT_SHARED.get(m, ())
            if m in PILOT_SHARED and (homes is None or rel in homes):
                continue
            bad.append((rel, m))
    assert bad == []


def test_the_checks_can_fail(tmp_path):
    f = LRT / "protocol" / "conflicts.py"
    assert "lrt.protocol.conflicts" not in list(_imports(f))  # sanity of the resolver
    assert any(m == "lrt.couch" for m in _imports(f))   # `from ..couch import ...` is resolved
    g = LRT / "pilot" / "pilot.py"
    assert any(_under(m, ("lrt.protocol",)) for m in _imports(g))  # the pilot uses the protocol
    assert _under("lrt.pilot.run", PROTOCOL_MUST_NOT) and not _under("lrt.pilots", PROTOCOL_MUST_NOT)


def test_configs_and_tasks_validate_without_staging():
    """Token configs and task definitions share lrt.validation and read file lists from
    lrt.filelist: neither reaches into the staging package (gfal2, tape requests)."""
    for rel in ("config.py", "validation.py", "filelist.py", "tasks/definition.py"):
        # SrmList.convert (not used by configs) asks the site table, lazily
        allowed = {"lrt.staging.sites"} if rel == "filelist.py" else set()
        staging = [m for m in _imports(LRT / rel) if m.split(".")[:2] == ["lrt", "staging"]]
        assert set(staging) <= allowed, rel
    assert "lrt.validation" in list(_imports(LRT / "tasks" / "definition.py"))
    assert "lrt.config" not in list(_imports(LRT / "tasks" / "definition.py"))
