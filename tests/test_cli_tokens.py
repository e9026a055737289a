"""The token commands as a user runs them: real subprocesses against the real server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrt import states

from conftest import new_db_name

ROOT = Path(__file__).resolve().parent.parent


class Cli:
    def __init__(self, couch, dbname: str, lrt_cmd):
        self.couch, self.dbname, self.cmd = couch, dbname, lrt_cmd

    def __call__(self, *args: str, cwd: Path = ROOT, env_extra=None) -> subprocess.CompletedProcess:
        env = self.couch.env(self.dbname)
        env["PYTHONPATH"] = str(ROOT)
        env.update(env_extra or {})
        res = subprocess.run(self.cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=120)
        # credentials never reach the terminal, whatever the command did
        assert self.couch.password not in res.stdout + res.stderr
        return res


@pytest.fixture
def cli(couch, server, lrt_cmd):
    name = new_db_name("cli")
    yield Cli(couch, name, lrt_cmd)
    server.database(name).delete()


def test_create_status_list_show(cli, server):
    # before anything exists: a clear error, and nothing is created by reading
    r = cli("status")
    assert r.returncode == 1 and "does not exist" in r.stderr and "lrt create" in r.stderr
    assert not server.database(cli.dbname).exists()

    r = cli("create", "configs/demo.yaml", "--dry-run")
    assert r.returncode == 0 and "would create 20" in r.stdout
    assert not server.database(cli.dbname).exists()

    r = cli("create", "configs/demo.yaml")
    assert r.returncode == 0, r.stderr
    assert "20 created, 0 already present" in r.stdout
    r = cli("create", "configs/demo.yaml", "--batch-size", "7")
    assert "0 created, 20 already present" in r.stdout
    r = cli("create", "configs/lofar_example.yaml", "--json")
    out = json.loads(r.stdout)
    assert out["created"] == 4 and out["present"] == 0 and out["tokens"] == 4

    db = server.database(cli.dbname)
    for i, dst in ((3, "done"), (4, "done"), (13, "error")):
        doc = db.get(f"demo_{i:02d}")
        states.apply(doc, "locked")
        states.apply(doc, dst, fields={"exit_code": 3} if dst == "error" else None)
        db.put(doc)

    st = json.loads(cli("status", "--json").stdout)
    assert st == {"db": cli.dbname,
                  "types": {"demo": {"todo": 17, "done": 2, "error": 1},
                            "lofar_calib": {"staging": 4}},
                  "states": {"staging": 4, "todo": 17, "done": 2, "error": 1}, "total": 24, "pilots": []}
    text = cli("status").stdout.splitlines()
    assert text[0].split() == ["type", "staging", "todo", "done", "error", "total"]
    assert text[2].split() == ["demo", "0", "17", "2", "1", "20"]
    assert text[-1].split() == ["total", "4", "17", "2", "1", "24"]
    st = json.loads(cli("status", "--json", "--type", "lofar_calib").stdout)
    assert st["types"] == {"lofar_calib": {"staging": 4}} and st["total"] == 4

    rows = json.loads(cli("list", "--state", "done", "--json").stdout)
    assert rows == [{"id": "demo_03", "state": "done", "type": "demo", "attempts": 0, "error": None, "pilot": None},
                    {"id": "demo_04", "state": "done", "type": "demo", "attempts": 0, "error": None, "pilot": None}]
    assert [line.split() for line in cli("list", "--state", "todo", "--limit", "3").stdout.splitlines()] == [
        ["id", "state", "type", "attempts", "error", "pilot"], ["demo_00", "todo", "demo", "0", "-", "-"],
        ["demo_01", "todo", "demo", "0", "-", "-"], ["demo_02", "todo", "demo", "0", "-", "-"]]

    r = cli("show", "lofar_calib_L654321_SB010")
    assert r.returncode == 0
    assert "state     staging" in r.stdout and "missing=[12, 13]" in r.stdout
    assert "inputs    8 file(s)" in r.stdout and "srm.txt" in r.stdout
    raw = json.loads(cli("show", "demo_13", "--json").stdout)
    assert raw["state"] == "error" and raw["exit_code"] == 3
    r = cli("show", "nope")
    assert r.returncode == 1 and "no token 'nope'" in r.stderr


def test_reset_and_delete(cli, server):
    assert cli("create", "configs/demo.yaml").returncode == 0
    db = server.database(cli.dbname)
    for i in range(5):
        doc = db.get(f"demo_{i:02d}")
        states.apply(doc, "locked", fields={"attempts": 1})
        if i < 4:
            states.apply(doc, "error", fields={"exit_code": 1})
        db.put(doc)

    r = cli("reset", "--state", "todo")
    assert r.returncode == 3 and "cannot become todo" in r.stderr
    r = cli("reset", "--state", "error", "--dry-run")
    assert r.returncode == 0 and "4 matched, 4 would be reset" in r.stdout
    assert db.get("demo_00")["state"] == "error"
    out = json.loads(cli("reset", "--state", "error", "--type", "demo", "--json").stdout)
    assert out["changed"] == 4 and out["conflicts"] == 0 and out["dry_run"] is False
    doc = db.get("demo_00")
    assert doc["state"] == "todo" and doc["attempts"] == 0 and doc["exit_code"] is None

    r = cli("delete", "--type", "demo")
    assert r.returncode == 2 and "--yes" in r.stderr
    r = cli("delete", "--type", "demo", "--yes")
    assert r.returncode == 1 and "1 locked token" in r.stderr and "--force" in r.stderr
    assert json.loads(cli("status", "--json").stdout)["total"] == 20
    r = cli("delete", "--type", "demo", "--state", "todo", "--yes")
    assert r.returncode == 0 and "19 matched, 19 deleted" in r.stdout
    r = cli("delete", "--type", "demo", "--yes", "--force")
    assert r.returncode == 0 and "1 deleted" in r.stdout
    assert cli("status").stdout.strip() == f"no tokens in database {cli.dbname}"


def test_bad_config_exit_code_and_nothing_written(cli, server, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: demo\ncommand: [python3]\nfiles: {list: links.txt}\n")
    (tmp_path / "links.txt").write_text("srm://h.org/L1_SB000_uv.MS\nnot-a-url\n\nftp://h/x\n")
    r = cli("create", str(bad))
    assert r.returncode == 2
    assert "links.txt" in r.stderr and "line(s) 2, 4" in r.stderr
    # one message, no traceback: the summary and each bad line with its reason
    assert r.stderr.count("\n") == 3 and "Traceback" not in r.stderr
    assert "  line 2: " in r.stderr and "  line 4: unsupported scheme ftp" in r.stderr
    assert not server.database(cli.dbname).exists()
    r = cli("create", "configs/nowhere.yaml")
    assert r.returncode == 2 and "token config not found" in r.stderr


def test_files_override(cli, server, tmp_path):
    (tmp_path / "other.txt").write_text("".join(
        f"srm://srm.example.org:8443/pnfs/lofar/L777777_SB{s:03d}_uv.MS.tar\n" for s in range(25)))
    r = cli("create", str(ROOT / "configs/lofar_example.yaml"), "--files", "other.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3 created" in r.stdout
    ids = sorted(x["id"] for x in json.loads(cli("list", "--json").stdout))
    assert ids == ["lofar_calib_L777777_SB000", "lofar_calib_L777777_SB010",
                   "lofar_calib_L777777_SB020"]


def test_wrong_password_is_clear_and_secret_free(cli, server, throwaway_user):
    assert cli("create", "configs/sweep_example.yaml").returncode == 0
    secret = "Wr0ng-Pa55w0rd-XYZ"
    for args in (["status"], ["list"], ["create", "configs/sweep_example.yaml"]):
        # a wrong password for a throwaway user: the suite's own account is never locked out
        r = cli(*args, env_extra={"LRT_COUCH_USER": throwaway_user[0], "LRT_COUCH_PASSWORD": secret})
        assert r.returncode == 4, (args, r.stderr)
        assert "CouchDB refused user" in r.stderr and "LRT_COUCH_PASSWORD" in r.stderr
        assert secret not in r.stdout + r.stderr
        assert "Traceback" not in r.stderr


def test_wrong_password_from_a_file_names_the_file(cli, server, tmp_path):
    """The hint names where the password came from, not a variable that is not set."""
    assert cli("create", "configs/sweep_example.yaml").returncode == 0
    pw = tmp_path / "pw"
    pw.write_text("Wr0ng-Pa55w0rd-XYZ\n")
    pw.chmod(0o600)
    env = cli.couch.env(cli.dbname)
    del env["LRT_COUCH_PASSWORD"]
    env.update(PYTHONPATH=str(ROOT), LRT_COUCH_PASSWORD_FILE=str(pw))
    r = subprocess.run(cli.cmd + ["status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr
    assert f"the password file {pw} (LRT_COUCH_PASSWORD_FILE)" in r.stderr
    assert "LRT_COUCH_PASSWORD " not in r.stderr and "LRT_COUCH_PASSWORD /" not in r.stderr
    assert "Wr0ng" not in r.stderr and ": )" not in r.stderr


def test_a_refused_connection_fails_at_once_in_one_line(cli):
    import socket

    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        for args in (["status"], ["create", "configs/sweep_example.yaml"]):
            r = cli("--url", url, *args)
            assert r.returncode == 1, r.stderr
            assert r.stderr.strip().splitlines() == [
                f"lrt: error: cannot reach CouchDB at {url} (ConnectionError) after 1 attempt(s)"]


class _Tty:
    """A captured stderr that claims to be a terminal."""

    def __init__(self):
        self.parts = []

    def write(self, s):
        self.parts.append(s)
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return True

    @property
    def text(self):
        return "".join(self.parts)


@pytest.mark.parametrize("have_tqdm", [True, False])
def test_progress_bar_only_on_a_terminal(couch, server, monkeypatch, capsys, have_tqdm):
    from lrt.cli import main

    if have_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails: no bar, no error
    name = new_db_name("tty")
    for k, v in couch.env(name).items():
        monkeypatch.setenv(k, v)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    try:
        assert main(["create", str(ROOT / "configs/sweep_example.yaml"), "--batch-size", "5"]) == 0
    finally:
        server.database(name).delete()
    assert "12 created" in capsys.readouterr().out
    if have_tqdm:
        assert "/12 [" in tty.text and "tok/s" in tty.text  # a bar with the right total
    else:
        assert tty.text == ""


def test_logs_point_at_the_other_stream_and_say_when_they_are_an_earlier_attempts(cli, server):
    assert cli("create", "configs/sweep_example.yaml").returncode == 0
    db = server.database(cli.dbname)
    doc_id = sorted(r["id"] for r in db.all_docs()["rows"] if not r["id"].startswith("_design/"))[0]
    doc = db.get(doc_id)
    states.apply(doc, "locked")
    states.apply(doc, "error")
    doc["history"] = [{"attempt": 1, "state": "error", "end": "finish", "exit_code": 3}]
    rev = db.put(doc)
    db.put_attachment(doc_id, rev, "stderr.log", b"it went wrong\n", "text/plain")

    r = cli("logs", doc_id)
    assert r.returncode == 1
    assert r.stderr.strip() == (f"lrt: token {doc_id} has no stdout.log (state error); "
                                f"it has a stderr.log: lrt logs --stderr {doc_id}")
    r = cli("logs", "--stderr", doc_id)
    assert r.returncode == 0 and r.stdout == "it went wrong\n" and r.stderr == ""

    assert cli("reset", "--state", "error").returncode == 0
    r = cli("logs", "--stderr", doc_id)
    assert r.returncode == 0 and r.stdout == "it went wrong\n"
    assert r.stderr.strip() == (f"lrt: note: token {doc_id} is todo now; these logs are from "
                                "attempt #1, which ended error")


def test_create_reports_a_changed_config_and_update_rewrites_it(cli, server, tmp_path):
    cfg = tmp_path / "six.yaml"
    cfg.write_text("type: six\ntokenset: six\ncommand: [old.py]\nid: 'six_{i}'\nsweep: {i: {range: [0, 6]}}\n")
    assert cli("create", str(cfg)).returncode == 0
    cfg.write_text(cfg.read_text().replace("old.py", "new.py"))
    r = cli("create", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"0 created, 6 already present (tokenset six, db {cli.dbname})",
        "6 existing token(s) differ from the config in command: six_0, six_1, six_2, six_3, six_4, six_5",
        "  they were left as they are; `lrt create --update CONFIG` rewrites those that have not started"]
    r = cli("create", str(cfg), "--dry-run", "--json")
    out = json.loads(r.stdout)
    assert (out["created"], out["would_create"], out["present"], out["differ"], out["updated"]) == (0, 0, 6, 6, 6)
    r = cli("create", str(cfg), "--update")
    assert "  6 updated (--update rewrites todo, waiting and staging tokens)" in r.stdout.splitlines()
    assert server.database(cli.dbname).get("six_4")["command"] == ["new.py"]
    r = cli("create", str(cfg), "--update")
    assert r.stdout.splitlines() == [f"0 created, 6 already present (tokenset six, db {cli.dbname})"]
