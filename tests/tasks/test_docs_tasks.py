"""The examples of docs/tasks.md: the definition loads, the token config naming a task creates
its tokens against the real server."""
from __future__ import annotations

import re

from lrt.tasks import load_task
from lrt.tokens import TokenSet

from pilot_helpers import ROOT

DOC = (ROOT / "docs" / "tasks.md").read_text()
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC, re.S)


def test_the_definition_example_loads(tmp_path):
    block = [b for b in BLOCKS if b.startswith("# task-example: wordcount")][0]
    (tmp_path / "sandboxes").symlink_to(ROOT / "tasks" / "sandboxes")
    (tmp_path / "wordcount.yaml").write_text(block)
    task = load_task(tmp_path / "wordcount.yaml")
    shipped = load_task(ROOT / "tasks" / "wordcount.yaml")
    assert list(task.parameters) == list(shipped.parameters)
    assert task.test["expect"] == shipped.test["expect"]


def test_the_config_example_creates_checked_tokens(db, monkeypatch):
    monkeypatch.setenv("LRT_TASKS", str(ROOT / "tasks"))
    block = [b for b in BLOCKS if "task: sleeper" in b][0]
    res = TokenSet.from_text(block, path="docs/tasks.md").create(db)
    assert res.created == 3
    doc = db.get("sleep_0.5")
    assert doc["task"]["name"] == "sleeper" and doc["payload"] == {"seconds": 0.5}
