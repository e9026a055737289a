"""The README's Python example runs as written, against the test server."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example(couch, server, tmp_path):
    from conftest import new_db_name

    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    name = new_db_name("readme")
    env = couch.env(name)
    env["LRT_HOME"] = str(tmp_path)
    try:
        for expect in ("12 created, 0 already present", "0 created, 12 already present"):
            r = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == expect
    finally:
        server.database(name).delete()
