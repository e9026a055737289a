"""Task definitions, parameter checks, `lrt task`, `lrt submit`, lrt.tasks.submit, `task:` in
token configs -- against the real server, with real pilots running the shipped example tasks."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.errors import ConfigError
from lrt.tasks import ParameterError, TaskRegistry, load_task, make_token, submit
from lrt.tokens import TokenSet

from pilot_helpers import ROOT, poll, start_pilot, stop

TASKS = ROOT / "tasks"
SMALL = (TASKS / "fixtures" / "small.txt").resolve().as_uri()


def lrt(couch, db, *args, cwd=ROOT, env_extra=None):
    env = couch.env(db.name)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "lrt.cli", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)


def tokens_in(db):
    return [r["id"] for r in db.all_docs(include_docs=True)["rows"]
            if (r.get("doc") or {}).get("kind") == "token"]


# -- definitions ---------------------------------------------------------------------------------
def test_shipped_tasks_load():
    reg = TaskRegistry(TASKS)
    assert reg.names() == ["sleeper", "wordcount"]
    wc = reg.get("wordcount")
    assert wc.sha256 == hashlib.sha256((TASKS / "wordcount.yaml").read_bytes()).hexdigest()
    assert {n: p.type for n, p in wc.parameters.items()} == {
        "texts": "file", "min_length": "int", "mode": "enum", "lower": "bool", "scale": "float",
        "label": "str"}
    assert wc.timeout == 600 and wc.expected_duration == 5
    assert wc.test["inputs"] == [f"file://{TASKS.resolve()}/fixtures/small.txt"]


BAD = [
    ("task: t\nversion: 1\ncommand: [x]\nparameters:\n  n: {type: integer}\n", 5, "type must be one of"),
    ("task: t\nversion: 1\ncommand: [x]\nparameters:\n  n: {type: int, min: 5, max: 1}\n", 5, "min 5"),
    ("task: t\nversion: 1\ncommand: [x]\nparameters:\n  n: {type: int,\n      default: 0, min: 1}\n",
     6, "below the minimum"),
    ("task: t\nversion: 1\ncommand: [x]\nparamters: {}\n", 4, "did you mean 'parameters'"),
    ("task: t\nversion: 1\ncommand: run.py\n", 3, "not a string"),
    ("task: other\nversion: 1\ncommand: [x]\n", 1, "must be named other.yaml"),
    ("task: t\nversion: 1\ncommand: [x]\nparameters:\n  m: {type: enum}\n", 5, "choices"),
    ("task: t\nversion: 1\ncommand: [x]\nparameters:\n  s: {type: str, pattern: '('}\n", 5, "regular"),
    ("task: t\nversion: 1\ncommand: [x]\noutputs: {dest: 'file:///x/{nope}'}\n", 4, "placeholder"),
    ("task: t\nversion: 1\ncommand: [x]\ntest:\n  expect: {outputs: {zz: {min_count: 1}}}\n", 5, "no output"),
    ("task: t\nversion: 1\ncommand: [x]\nresources: {walltime: 4 hours}\n", 4, "duration"),
]


@pytest.mark.parametrize("text,line,msg", BAD)
def test_bad_definitions_name_file_and_line(tmp_path, text, line, msg):
    p = tmp_path / "t.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_task(p)
    assert ei.value.path == str(p) and ei.value.line == line, str(ei.value)
    assert msg in str(ei.value) and str(ei.value).startswith(f"{p}:{line}: ")


def test_parameter_values_checked_and_named():
    wc = TaskRegistry(TASKS).get("wordcount")
    ok = wc.check({"texts": f"{SMALL},{SMALL}", "min_length": "3", "lower": "yes", "scale": "2",
                   "mode": "lines"}, text=True)
    assert ok == {"texts": [SMALL, SMALL], "min_length": 3, "mode": "lines", "lower": True,
                  "scale": 2.0}
    cases = [({"texts": [SMALL], "min_length": 41}, "min_length", "above the maximum 40"),
             ({"texts": [SMALL], "min_length": "3"}, "min_length", "not an integer"),
             ({"texts": [SMALL], "min_length": True}, "min_length", "not an integer"),
             ({"texts": [SMALL], "scale": "x"}, "scale", "not a (finite) number"),
             ({"texts": [SMALL], "mode": "word"}, "mode", "did you mean 'words'"),
             ({"texts": [SMALL], "lower": "yes"}, "lower", "not true or false"),
             ({"texts": [SMALL], "label": "has space"}, "label", "pattern"),
             ({"texts": ["/no/scheme.txt"]}, "texts", "not a URL"),
             ({"texts": SMALL}, "texts", "list"),
             ({}, "texts", "required"),
             ({"texts": [SMALL], "bogus": 1}, None, "no parameter 'bogus'")]
    for params, name, msg in cases:
        with pytest.raises(ParameterError) as ei:
            wc.check(params)
        assert ei.value.param == name and msg in str(ei.value), (params, str(ei.value))


def test_submit_writes_one_token_recording_the_task(db, monkeypatch):
    monkeypatch.setenv("LRT_TASKS", str(TASKS))
    tid = submit(db, "wordcount", texts=[SMALL], min_length=2, label="x1")
    doc = db.get(tid)
    wc = TaskRegistry(TASKS).get("wordcount")
    assert doc["task"] == {"name": "wordcount", "version": "1", "sha256": wc.sha256}
    assert doc["type"] == "wordcount" and doc["state"] == "todo"
    assert doc["payload"] == {"texts": ["small.txt"], "min_length": 2, "mode": "words",
                              "lower": False, "scale": 1.0, "label": "x1"}
    import zlib

    want = "adler32:%08x" % zlib.adler32((TASKS / "fixtures" / "small.txt").read_bytes())
    assert doc["inputs"] == [{"url": SMALL, "checksum": want}]  # a local input: checksummed
    assert doc["task_params"]["texts"] == [SMALL]
    assert doc["outputs"]["dest"] == f"file:///tmp/lrt-results/wordcount/{tid}"
    assert len(doc["sandbox"]["sha256"]) == 64
    before = set(tokens_in(db))
    with pytest.raises(ParameterError) as ei:
        submit(db, "wordcount", texts=[SMALL], min_length=0)
    assert ei.value.param == "min_length"
    assert set(tokens_in(db)) == before


def test_cli_list_show_submit(couch, db, tmp_path):
    r = lrt(couch, db, "task", "list", "--tasks", str(TASKS))
    assert r.returncode == 0 and "wordcount" in r.stdout and "sleeper" in r.stdout, r.stderr
    r = lrt(couch, db, "task", "show", "wordcount", "--tasks", str(TASKS))
    assert r.returncode == 0, r.stderr
    assert "min_length" in r.stdout and "int 1..40 [letters]" in r.stdout and "default 1" in r.stdout
    assert "shortest word counted" in r.stdout
    r = lrt(couch, db, "task", "show", "wordcount", "--json", env_extra={"LRT_TASKS": str(TASKS)})
    assert json.loads(r.stdout)["parameters"]["mode"]["choices"] == ["words", "lines", "both"]

    before = set(tokens_in(db))
    r = lrt(couch, db, "submit", "wordcount", f"texts={SMALL}", "min_length=abc", "--tasks", str(TASKS))
    assert r.returncode == 2 and "min_length" in r.stderr and "not an integer" in r.stderr
    r = lrt(couch, db, "submit", "wordcount", f"texts={SMALL}", "colour=red", "--tasks", str(TASKS))
    assert r.returncode == 2 and "no parameter 'colour'" in r.stderr
    assert set(tokens_in(db)) == before

    dest = (tmp_path / "out").as_uri()
    r = lrt(couch, db, "submit", "wordcount", f"texts={SMALL}", "mode=both", "--dest", dest,
            "--tasks", str(TASKS))
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    doc = db.get(tid)
    assert doc["payload"]["mode"] == "both" and doc["owner"] == couch.user
    assert doc["outputs"]["dest"] == dest

    # an ordinary token: a real pilot runs it, `lrt show` shows it
    p = start_pilot(couch.env(db.name), "--max-tokens", "1", "--idle-exit", "30", "--poll", "0.2")
    try:
        done = poll(lambda: db.get(tid)["state"] in ("done", "error", "failed") and db.get(tid),
                    timeout=120, what="the submitted token to finish")
    finally:
        stop(p)
    assert done["state"] == "done", done.get("error")
    names = sorted(o["url"].rsplit("/", 1)[-1] for o in done["output"])
    assert names == ["count_small.txt", "summary.json"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["files"]["small.txt"]["lines"] == 3
    r = lrt(couch, db, "show", tid)
    assert r.returncode == 0 and tid in r.stdout


def test_task_test_runs_the_case_through_a_real_pilot(couch, db):
    for name in ("wordcount", "sleeper"):
        r = lrt(couch, db, "task", "test", name, "--tasks", str(TASKS))
        assert r.returncode == 0 and f"PASS {name}" in r.stdout, r.stdout + r.stderr
    assert "output marker: 1 file(s)" in r.stdout
    with couch.server() as s:  # the scratch databases are gone, nothing was published
        assert not [d for d in s.all_dbs() if d.startswith("lrt_tasktest_")]
    assert not Path("/tmp/lrt-results/sleeper").exists() or not any(
        Path("/tmp/lrt-results/sleeper").iterdir())


def test_task_test_fails_when_expect_is_not_met(couch, db, tmp_path):
    (tmp_path / "sandboxes").symlink_to(TASKS / "sandboxes")
    text = (TASKS / "sleeper.yaml").read_text().replace(
        "parameters: {seconds: 0.1}", "parameters: {seconds: 0.1, exit_code: 3}")
    (tmp_path / "sleeper.yaml").write_text(text)
    r = lrt(couch, db, "task", "test", "sleeper", "--tasks", str(tmp_path))
    assert r.returncode == 1 and "FAIL sleeper" in r.stdout, r.stdout + r.stderr
    assert "exit code 3, expected 0" in r.stdout


def test_token_config_naming_a_task_is_checked_before_writing(db, tmp_path, monkeypatch):
    monkeypatch.setenv("LRT_TASKS", str(TASKS))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: sleeper\nid: 'sl_{seconds}'\nsweep:\n  seconds: [0.1, 0.2, 4000]\n")
    ts = TokenSet.from_config(cfg)
    with pytest.raises(ConfigError) as ei:
        ts.create(db)
    assert "token #2" in str(ei.value) and "'seconds'" in str(ei.value) and "maximum 3600" in str(ei.value)
    assert tokens_in(db) == []
    cfg.write_text("task: sleeper\nid: 'sl_{seconds}'\nsweep:\n  seconds: [0.1, 0.2]\n")
    res = TokenSet.from_config(cfg).create(db)
    assert res.created == 2
    doc = db.get("sl_0.1")
    assert doc["task"]["name"] == "sleeper" and doc["type"] == "sleeper"
    assert doc["command"] == ["run.py"] and doc["sandbox"]["sha256"]
    cfg.write_text("task: nosuch\n")
    with pytest.raises(ConfigError) as ei:
        TokenSet.from_config(cfg)
    assert ei.value.line == 1 and "no task 'nosuch'" in str(ei.value)


def test_make_token_pending_and_staged():
    wc = TaskRegistry(TASKS).get("wordcount")
    doc = make_token(wc, {"texts": [SMALL]}, run=False, owner="alice")
    assert doc["state"] == "pending" and doc["owner"] == "alice"


def test_lrt_cancel_works_on_a_held_submission(couch, db):
    r = lrt(couch, db, "submit", "sleeper", "seconds=1", "--hold", "--tasks", str(TASKS))
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    assert db.get(tid)["state"] == "pending"
    r = lrt(couch, db, "cancel", tid)
    assert r.returncode == 0, r.stderr
    assert db.get(tid)["state"] == "cancelled"
