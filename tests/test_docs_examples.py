"""Every example config is created against the real server: configs/*.yaml and the YAML
blocks in docs/configs.md and docs/tokens.md.

A doc block whose first line is ``# example: NAME`` must create tokens; one whose first
line is ``# example-error: TEXT`` must be refused with a ConfigError containing TEXT,
leaving the database without tokens.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import pytest

from lrt.errors import ConfigError
from lrt.tokens import TokenSet, status_counts
from pilot_helpers import poll

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["docs/configs.md", "docs/tokens.md"]
BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


def doc_examples() -> List[Tuple[str, str, str, str]]:
    """(doc, kind, name-or-expected-text, yaml text) of every marked block."""
    out = []
    for doc in DOCS:
        for m in BLOCK.finditer((ROOT / doc).read_text()):
            text = m.group(1)
            first = text.splitlines()[0].strip() if text.strip() else ""
            mm = re.match(r"#\s*(example|example-error):\s*(.+)$", first)
            if mm:
                out.append((doc, mm.group(1), mm.group(2).strip(), text))
    return out


EXAMPLES = doc_examples()


def token_ids(db):
    return [r["id"] for r in db.all_docs()["rows"] if not r["id"].startswith("_design/")]


def test_docs_have_examples():
    kinds = [(d, k) for d, k, _, _ in EXAMPLES]
    assert ("docs/configs.md", "example") in kinds and ("docs/configs.md", "example-error") in kinds
    assert ("docs/tokens.md", "example") in kinds


@pytest.mark.parametrize("doc, kind, name, text", EXAMPLES,
                         ids=[f"{d.split('/')[-1]}:{n}" for d, _, n, _ in EXAMPLES])
def test_doc_example(db, doc, kind, name, text):
    base = (ROOT / doc).parent
    if kind == "example-error":
        with pytest.raises(ConfigError) as ei:
            TokenSet.from_text(text, path=f"{doc}:{name}", base_dir=base).create(db)
        assert name in str(ei.value)
        assert token_ids(db) == []
        return
    ts = TokenSet.from_text(text, path=f"{doc}:{name}", base_dir=base)
    n = ts.validate()
    res = ts.create(db)
    assert n >= 1 and (res.created, res.present, res.failed) == (n, 0, 0)
    # (_all_docs, like a view, may be read from a copy of a cluster that lags behind)
    poll(lambda: len(token_ids(db)) == n, timeout=30, what=f"the {n} tokens in _all_docs")
    again = TokenSet.from_text(text, path=f"{doc}:{name}", base_dir=base).create(db)
    assert (again.created, again.present) == (0, n)


def test_doc_example_details(db):
    """The figures the prose of docs/configs.md states about its examples."""
    by_name = {n: t for _, k, n, t in EXAMPLES if k == "example"}
    base = ROOT / "docs"
    TokenSet.from_text(by_name["lofar_declared_range"], base_dir=base).create(db)
    docs = {i: db.get(i) for i in token_ids(db)}
    assert sorted(docs) == ["lofar_target_L654321_SB000", "lofar_target_L654321_SB020"]
    assert docs["lofar_target_L654321_SB000"]["payload"]["missing"] == [12, 13]
    assert docs["lofar_target_L654321_SB020"]["payload"]["missing"] == list(range(32, 40))
    assert len(TokenSet.from_text(by_name["sweep"], base_dir=base)) == 6
    assert len(TokenSet.from_text(by_name["lines_by_seed"], base_dir=base)) == 10
    minimal = TokenSet.from_text(by_name["minimal"], path="minimal.yaml", base_dir=base)
    tok = next(iter(minimal))
    assert tok["_id"] == "hello" and tok["state"] == "todo" and tok["payload"] == {}


@pytest.mark.parametrize("name, count, states", [
    ("demo", 20, {"todo": 20}),
    ("lofar_example", 4, {"staging": 4}),
    ("sweep_example", 12, {"todo": 12}),
])
def test_config_examples(db, name, count, states):
    ts = TokenSet.from_config(ROOT / "configs" / f"{name}.yaml")
    res = ts.create(db)
    assert (res.created, res.present, res.failed) == (count, 0, 0)
    # (on a cluster a view read may come from a copy the writes have not reached yet)
    poll(lambda: list(status_counts(db).values()) == [states], timeout=30, what=f"{states} in lrt status")
