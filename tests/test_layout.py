"""The import rules of docs/design.md: no module outside lrt/cli imports the CLI, and
the web, UWS and provenance extras are not imported by the pilot or the library core."""
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


def test_the_checks_can_fail(tmp_path):
    f = LRT / "pilot" / "claim.py"
    assert "lrt.pilot.claim" not in list(_imports(f))  # sanity of the resolver
    assert any(m == "lrt.couch" for m in _imports(f))   # `from ..couch import ...` is resolved


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
