"""Launchers without a batch system: templates, credentials, HTCondor/JDL files, local pilots.

The Slurm submissions themselves run against the real single-node Slurm in
tests/test_launch_slurm.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrt.errors import ConfigError, LrtError
from lrt.launchers import (Connection, connection, launch_summary, render, submit_env,
                           template_variables)
from lrt.launchers import htcondor as condor_l
from lrt.launchers import jdl as jdl_l
from lrt.launchers import slurm as slurm_l
from lrt.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55-word-%$&'\"x"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private LRT_HOME, so credential files and launch folders land in tmp."""
    h = tmp_path / "lrt-home"
    monkeypatch.setenv("LRT_HOME", str(h))
    monkeypatch.delenv("LRT_COUCH_PASSWORD_FILE", raising=False)
    return h


@pytest.fixture
def conn():
    return Connection(url="https://couch.example.org:6984", user="lofar", db="lrt_prod", password=SECRET)


def all_files_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- template language

def test_render_substitutes_only_lowercase_braced():
    text = 'a=${x} b=$HOME c=${SLURM_JOB_ID} d=$(date) e=$1 f=$$ g=$${lit} h=${x}'
    assert template_variables(text) == ["x"]
    assert render(text, {"x": "1"}) == 'a=1 b=$HOME c=${SLURM_JOB_ID} d=$(date) e=$1 f=$$ g=${lit} h=1'


def test_render_lists_every_unknown_variable():
    with pytest.raises(ConfigError) as ei:
        render("${known} ${nope} ${also_bad} ${nope}", {"known": "k"}, source="my.tmpl")
    msg = str(ei.value)
    assert "my.tmpl" in msg and "${nope}" in msg and "${also_bad}" in msg and "${known}" not in msg.split("known:")[0]


def test_url_with_password_is_refused():
    with pytest.raises(ConfigError, match="password"):
        connection(Settings(url="https://u:pw@couch.example.org", db="x"))
    c = connection(Settings(url="https://u@couch.example.org:6984/", db="x", password="p"))
    assert (c.url, c.user) == ("https://couch.example.org:6984/", "u")


# ---------------------------------------------------------------- Slurm script

def test_slurm_file_mode_script_has_path_not_password(home, conn):
    opts = slurm_l.SlurmOptions(pilots=4, token_type="calib", time="01:00:00", throttle=2, partition="short",
                                cpus=2, mem="4G", after="77", pilot_args="--lease 30 --idle-exit 5")
    r = slurm_l.render_script(conn, opts)
    assert SECRET not in r.script and SECRET not in " ".join(r.sbatch_options)
    m = re.search(r"^export LRT_COUCH_PASSWORD_FILE=(\S+)$", r.script, re.M)
    assert m, r.script
    pw = Path(m.group(1))
    assert pw == Path(r.password_path) and str(pw).startswith(str(home))
    assert pw.read_text() == SECRET
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert stat.S_IMODE(pw.parent.stat().st_mode) == 0o700
    assert "export LRT_COUCH_URL=https://couch.example.org:6984" in r.script
    assert "export LRT_COUCH_USER=lofar" in r.script
    assert re.search(r"pilot --type calib --lease 30 --idle-exit 5$", r.script, re.M)
    assert r.sbatch_options == ["--job-name=lrt-pilot-calib", "--array=0-3%2", "--partition=short",
                                "--time=01:00:00", "--cpus-per-task=2", "--mem=4G", "--dependency=afterok:77"]
    # the script is valid bash
    res = subprocess.run(["bash", "-n"], input=r.script, text=True, capture_output=True)
    assert res.returncode == 0, res.stderr


def test_slurm_env_mode_script_says_nothing(home, conn, monkeypatch):
    r = slurm_l.render_script(conn, slurm_l.SlurmOptions(pilots=1, credentials="env"))
    assert SECRET not in r.script and "LRT_COUCH_PASSWORD_FILE" not in r.script
    assert not (home / "credentials").exists()
    # env mode: sbatch gets the password in its environment; file mode: removed even if the shell had it
    monkeypatch.setenv("LRT_COUCH_PASSWORD", SECRET)
    assert submit_env(conn, "env")["LRT_COUCH_PASSWORD"] == SECRET
    assert "LRT_COUCH_PASSWORD" not in submit_env(conn, "file")
    assert submit_env(conn, "file")["LRT_COUCH_URL"] == conn.url


def test_explicit_password_file_is_used_and_must_be_private(home, conn, tmp_path):
    f = tmp_path / "pw"
    f.write_text(SECRET)
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        slurm_l.render_script(conn, slurm_l.SlurmOptions(password_file=str(f)))
    f.chmod(0o600)
    r = slurm_l.render_script(conn, slurm_l.SlurmOptions(password_file=str(f)))
    assert f"export LRT_COUCH_PASSWORD_FILE={f}" in r.script
    assert not (home / "credentials").exists()


def test_password_in_pilot_args_is_refused(home):
    c = Connection(url="http://127.0.0.1:5984", user="u", db="d", password="plainsecret123")
    with pytest.raises(LrtError, match="contains the CouchDB password"):
        slurm_l.render_script(c, slurm_l.SlurmOptions(pilot_args="--note plainsecret123"))
    assert not (home / "launches").exists()


@pytest.mark.parametrize("bad", [dict(pilots=0), dict(throttle=0), dict(cpus=0), dict(credentials="x"),
                                 dict(after="12; rm -rf /")])
def test_slurm_bad_options(home, conn, bad):
    with pytest.raises(ConfigError):
        slurm_l.render_script(conn, slurm_l.SlurmOptions(**bad))


def test_user_template_with_unknown_variables_writes_nothing(couch, db, tmp_path, lrt_cmd, home):
    tpl = tmp_path / "site.tmpl"
    tpl.write_text("#!/bin/bash\nmodule load lofar/${lofar_version}\n${env_setup}\nexec ${pilot_command} ${extra}\n")
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", "slurm", "--pilots", "2", "--template", str(tpl)], env=env,
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "${lofar_version}" in res.stderr and "${extra}" in res.stderr and "Traceback" not in res.stderr
    assert not (home / "launches").exists()
    assert db.all_docs(startkey="launch:", endkey="launch:\ufff0")["rows"] == []


def test_user_template_renders(home, conn, tmp_path):
    tpl = tmp_path / "site.tmpl"
    tpl.write_text("#!/bin/bash\n#SBATCH --account=lofar\nmodule load python\n${env_setup}\n"
                   "apptainer exec /cvmfs/lrt.sif ${pilot_command}\n# ${launch_id} ${count} ${type}\n")
    r = slurm_l.render_script(conn, slurm_l.SlurmOptions(pilots=5, token_type="t1", template=str(tpl)))
    assert "#SBATCH --account=lofar" in r.script
    assert re.search(r"^apptainer exec /cvmfs/lrt.sif \S+ -m lrt.cli pilot --type t1$", r.script, re.M)
    assert re.search(r"^# slurm-\S+ 5 t1$", r.script, re.M)


def test_cli_dry_run_writes_nothing(couch, tmp_path, lrt_cmd, home):
    env = couch.env("lrt_dry_run_never_created")
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", "slurm", "--pilots", "3", "--type", "x", "--dry-run"], env=env,
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# sbatch --parsable")
    assert "--array=0-2" in res.stdout and "pilot --type x" in res.stdout
    assert couch.password not in res.stdout + res.stderr
    assert not home.exists()


# ---------------------------------------------------------------- HTCondor

def parse_submit(text: str):
    """Submit description -> ({lower-case key: value}, queue count); comments and blanks skipped."""
    kv, queue = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^queue(?:\s+(\d+))?$", s, re.I)
        if m:
            assert queue is None, "two queue statements"
            queue = int(m.group(1) or 1)
            continue
        assert queue is None, f"line after queue: {s!r}"
        key, sep, val = s.partition("=")
        assert sep, f"not a key = value line: {s!r}"
        kv[key.strip().lower()] = val.strip()
    return kv, queue


def test_htcondor_submit_description(home, conn, tmp_path):
    opts = condor_l.CondorOptions(pilots=7, token_type="img", cpus=4, mem="8GB", pilot_args="--lease 120",
                                  extra=['+JobFlavour = "tomorrow"'])
    folder = tmp_path / "L"
    files = condor_l.render_files(conn, opts, folder, "htcondor-x")
    kv, queue = parse_submit(files["sub"])
    assert queue == 7
    assert kv["executable"] == str(folder / "pilot.sh")
    assert kv["request_cpus"] == "4" and kv["request_memory"] == "8GB"
    assert kv["+jobflavour"] == '"tomorrow"'
    assert kv["transfer_input_files"] == files["password_path"]
    assert Path(files["password_path"]).read_text() == SECRET
    assert "$(ClusterId).$(ProcId)" in kv["output"]
    for text in (files["sub"], files["wrapper"]):
        assert SECRET not in text
    w = files["wrapper"]
    name = Path(files["password_path"]).name
    assert f"chmod 600 {name}" in w and f'export LRT_COUCH_PASSWORD_FILE="$PWD/"{name}' in w
    assert subprocess.run(["bash", "-n"], input=w, text=True).returncode == 0


def test_htcondor_bindings_accept_the_description(home, conn, tmp_path):
    """HTCondor's own parser (PyPI `htcondor`: module htcondor2 since 24.x) reads what we wrote."""
    try:
        import htcondor2 as htcondor
    except ImportError:
        htcondor = pytest.importorskip("htcondor", reason="HTCondor Python bindings (pip install htcondor) "
                                                          "not installed")
    opts = condor_l.CondorOptions(pilots=3, cpus=2, extra=['+JobFlavour = "tomorrow"'])
    files = condor_l.render_files(conn, opts, tmp_path, "htcondor-y")
    sub = htcondor.Submit(files["sub"])
    assert sub["request_cpus"] == "2"
    assert sub["executable"] == str(tmp_path / "pilot.sh")
    assert sub["transfer_input_files"] == files["password_path"]
    assert sub["MY.LrtLaunchId"] == '"htcondor-y"'
    assert sub["MY.JobFlavour"] == '"tomorrow"'
    if hasattr(sub, "getQArgs"):
        assert sub.getQArgs().strip() == "3"


def test_htcondor_refuses_queue_in_extra_lines(home, conn, tmp_path):
    with pytest.raises(ConfigError):
        condor_l.render_files(conn, condor_l.CondorOptions(extra=["queue 1000"]), tmp_path, "x")


def test_htcondor_without_condor_writes_files_only(couch, db, lrt_cmd, home):
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", "htcondor", "--pilots", "2", "--type", "t"], env=env,
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    if shutil.which("condor_submit"):
        pytest.skip("condor_submit exists here")
    assert res.returncode == 0, res.stderr
    assert "nothing was submitted" in res.stdout
    (folder,) = list((home / "launches").iterdir())
    assert {p.name for p in folder.iterdir()} == {"pilot.sub", "pilot.sh"}
    assert couch.password not in all_files_text(folder)
    assert couch.password not in res.stdout + res.stderr


# ---------------------------------------------------------------- JDL

def parse_jdl(text: str):
    """A flat ClassAd '[ Name = value; ... ]' -> dict with strings, ints and string lists."""
    body = text.strip()
    assert body.startswith("[") and body.endswith("]"), body
    body = body[1:-1]
    token = re.compile(r'\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|\d+|'
                       r'\{(?:\s*"(?:[^"\\]|\\.)*"\s*,?)*\s*\})\s*;)\s*', re.S)
    out, pos = {}, 0
    while pos < len(body):
        m = token.match(body, pos)
        assert m, f"unparsable JDL at: {body[pos:pos + 60]!r}"
        v = m.group("value")
        if v.startswith('"'):
            val = json.loads(v)
        elif v.startswith("{"):
            val = [json.loads(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', v)]
        else:
            val = int(v)
        assert m.group("name") not in out, "duplicate attribute"
        out[m.group("name")] = val
        pos = m.end()
    return out


def test_jdl_parametric(home, conn):
    opts = jdl_l.JdlOptions(pilots=25, token_type="pref", cpu_time=7200, extra=['Site = "LCG.SARA.nl"'])
    files = jdl_l.render_files(conn, opts, "jdl-x")
    ad = parse_jdl(files["jdl"])
    assert ad["JobType"] == "Parametric" and ad["Parameters"] == 25
    assert ad["ParameterStart"] == 0 and ad["ParameterStep"] == 1
    assert ad["Executable"] == "pilot.sh" and ad["CPUTime"] == 7200 and ad["Site"] == "LCG.SARA.nl"
    assert ad["InputSandbox"] == ["pilot.sh", files["password_path"]]
    assert "_PARAM_" in ad["StdOutput"] and ad["StdOutput"] in ad["OutputSandbox"]
    assert SECRET not in files["jdl"] and SECRET not in files["wrapper"]
    # grid nodes: lrt from PATH unless --lrt says otherwise
    assert re.search(r"^exec lrt pilot --type pref$", files["wrapper"], re.M)


def test_jdl_cli_writes_files(couch, lrt_cmd, home):
    env = couch.env("lrt_jdl_not_needed")
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", "jdl", "--pilots", "4", "--time", "2:00:00",
                                    "--lrt", "apptainer exec /cvmfs/x/lrt.sif lrt"],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (folder,) = list((home / "launches").iterdir())
    ad = parse_jdl((folder / "pilot.jdl").read_text())
    assert ad["Parameters"] == 4 and ad["CPUTime"] == 7200
    pw = Path(ad["InputSandbox"][1])
    assert pw.read_text() == couch.password and stat.S_IMODE(pw.stat().st_mode) == 0o600
    assert "exec apptainer exec /cvmfs/x/lrt.sif lrt pilot" in (folder / "pilot.sh").read_text()
    assert couch.password not in all_files_text(folder)


# ---------------------------------------------------------------- local pilots

def test_local_pilots_detached_recorded_password_in_env_only(couch, db, lrt_cmd, home, tmp_path):
    """Stand-in pilots (a sleeping interpreter via --lrt) show what `launch local` does with processes."""
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    fake = f"{sys.executable} -c 'import time; time.sleep(120)'"
    res = subprocess.run(lrt_cmd + ["launch", "local", "--pilots", "2", "--type", "t", "--lrt", fake],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (rec,) = [r["doc"] for r in db.all_docs(startkey="launch:", endkey="launch:\ufff0", include_docs=True)["rows"]]
    pids = rec["pids"]
    try:
        assert rec["kind"] == "launch" and rec["system"] == "local" and rec["count"] == 2
        for pid in pids:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert couch.password.encode() not in cmdline
            assert b"pilot\0--type\0t" in cmdline
            assert ("LRT_COUCH_PASSWORD=" + couch.password).encode() in environ
            assert os.getsid(pid) == pid  # its own session: survives the terminal
        summary = launch_summary(db)
        assert [(s["system"], s["submitted"], s["running"]) for s in summary] == [("local", 2, 2)]
        assert couch.password not in json.dumps(db.get(rec["_id"]))
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 20
    while time.time() < deadline and launch_summary(db)[0]["running"]:
        time.sleep(0.2)
    assert launch_summary(db)[0]["running"] == 0
