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
from pilot_helpers import poll

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
    assert r.sbatch_options[0].startswith("--export=")
    assert r.sbatch_options[1:] == ["--job-name=lrt-pilot-calib", "--array=0-3%2", "--partition=short",
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


# ---------------------------------------------------------------- what travels to the jobs

UNRELATED = {"MY_API_TOKEN": "tok-Zx81-unrelated-secret", "LRT_TEST_COUCH_PASSWORD": "suite-pw-Qq19",
             "AWS_SECRET_ACCESS_KEY": "aws-k3y-unrelated"}


@pytest.mark.parametrize("mode", ["file", "env"])
def test_sbatch_exports_only_what_the_pilot_needs(home, conn, monkeypatch, mode):
    for k, v in UNRELATED.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SITE_SETTING", "x")
    r = slurm_l.render_script(conn, slurm_l.SlurmOptions(credentials=mode, env=["SITE_SETTING"]))
    (export,) = [o for o in r.sbatch_options if o.startswith("--export=")]
    names = export[len("--export="):].split(",")
    assert "ALL" not in names and "NONE" not in names
    assert not set(UNRELATED) & set(names), names
    assert {"PATH", "LRT_COUCH_URL", "LRT_COUCH_DB", "LRT_COUCH_USER", "SITE_SETTING"} <= set(names)
    assert ("LRT_COUCH_PASSWORD" in names) == (mode == "env")
    # names only: no value (the password least of all) on sbatch's command line
    assert all("=" not in n for n in names) and SECRET not in export


@pytest.mark.parametrize("bad", ["LRT_COUCH_PASSWORD", "LRT_COUCH_PASSWORD_FILE", "A=B", "two words", ""])
def test_env_option_refuses_passwords_and_non_names(home, conn, bad):
    with pytest.raises(ConfigError):
        slurm_l.render_script(conn, slurm_l.SlurmOptions(env=[bad]))


def test_htcondor_refuses_getenv_true(home, conn, tmp_path):
    with pytest.raises(ConfigError, match="whole submitting environment"):
        condor_l.render_files(conn, condor_l.CondorOptions(extra=["getenv = True"]), tmp_path, "x")
    files = condor_l.render_files(conn, condor_l.CondorOptions(extra=["getenv = PATH, HOME"]), tmp_path, "x")
    kv, _ = parse_submit(files["sub"])
    assert kv["getenv"] == "PATH, HOME"


def test_local_pilots_get_no_unrelated_secret(couch, db, lrt_cmd, home):
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    env.update(UNRELATED)
    env["SITE_SETTING"] = "wanted"
    fake = f"{sys.executable} -c 'import time; time.sleep(120)'"
    res = subprocess.run(lrt_cmd + ["launch", "local", "--pilots", "1", "--lrt", fake, "--env", "SITE_SETTING"],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (rec,) = [r["doc"] for r in db.all_docs(startkey="launch:", endkey="launch:\ufff0", include_docs=True)["rows"]]
    (pid,) = rec["pids"]
    try:
        environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        assert not {k.encode() for k in UNRELATED} & set(environ), sorted(environ)
        for v in UNRELATED.values():
            assert v.encode() not in b"".join(environ.values())
        assert environ[b"LRT_COUCH_PASSWORD"] == couch.password.encode()
        assert environ[b"LRT_COUCH_URL"] == couch.url.encode() and environ[b"SITE_SETTING"] == b"wanted"
        assert environ[b"LRT_LAUNCH_ID"] == rec["launch_id"].encode()
    finally:
        os.kill(pid, signal.SIGTERM)


# ---------------------------------------------------------------- refuse before submitting

@pytest.mark.parametrize("system", ["slurm", "htcondor", "jdl", "local"])
@pytest.mark.parametrize("args, says", [("--idle-exti 5", "unrecognized arguments: --idle-exti 5"),
                                        ("--lease abc", "--lease"), ("--url http://x", "unrecognized")])
def test_bad_pilot_args_are_refused_before_anything(system, args, says, couch, db, lrt_cmd, home):
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", system, "--pilots", "2", "--type", "t", "--pilot-args", args],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("lrt: error: --pilot-args:") and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "nothing was submitted" in res.stderr
    assert not home.exists()   # no launch folder, no password file
    assert db.all_docs(startkey="launch:", endkey="launch:\ufff0")["rows"] == []


def test_good_pilot_args_pass(home, couch, db, lrt_cmd):
    env = couch.env("lrt_dry_run_never_created")
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", "slurm", "--pilots", "1", "--dry-run", "--pilot-args",
                                    "--idle-exit 5 --lease 30 --walltime 1:00:00 --max-tokens 3"],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "pilot --idle-exit 5 --lease 30 --walltime 1:00:00 --max-tokens 3" in res.stdout


def test_dry_run_sbatch_line_is_shell_quoted(couch, lrt_cmd, home, tmp_path):
    """The printed sbatch line, pasted into bash, runs sbatch with exactly its arguments and nothing else."""
    env = couch.env("lrt_dry_run_never_created")
    env["LRT_HOME"] = str(home)
    x, y = tmp_path / "X", tmp_path / "Y"
    name = f"j$(touch {x})`touch {y}`;touch {y} 'q\" \\"
    res = subprocess.run(lrt_cmd + ["launch", "slurm", "--pilots", "2", "--dry-run", f"--job-name={name}",
                                    f"--sbatch-arg=--comment=a b;touch {y}"],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    line = res.stdout.splitlines()[0]
    assert line.startswith("# sbatch ")
    # a stand-in sbatch that prints its arguments, NUL-separated
    script = 'sbatch() { printf "%s\\0" "$@"; }\n' + line[2:] + "\n"
    out = subprocess.run(["bash", "-c", script], cwd=str(tmp_path), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert not x.exists() and not y.exists()
    args = out.stdout.decode().split("\0")[:-1]
    assert f"--job-name={name}" in args and f"--comment=a b;touch {y}" in args
    assert args[0] == "--parsable" and args[-1] == "<launch folder>/pilot.sh"


@pytest.mark.parametrize("url, warned", [
    ("http://127.0.0.1:5984", True), ("http://127.8.9.1:5984", True), ("https://localhost:6984/", True),
    ("http://LOCALHOST.:5984", True), ("http://[::1]:5984", True), ("http://[::ffff:127.0.0.1]:5984", True),
    ("https://couch.example.org:6984", False), ("http://10.0.0.5:5984", False), ("http://[2001:db8::1]/", False),
])
def test_loopback_warning(url, warned):
    from lrt.launchers import loopback_warning

    w = loopback_warning(url)
    assert bool(w) == warned
    if w:
        assert url in w and "worker node" in w


@pytest.mark.parametrize("system, warned", [("slurm", True), ("htcondor", True), ("jdl", True), ("local", False)])
def test_batch_launch_to_loopback_server_warns(system, warned, couch, db, lrt_cmd, home):
    assert couch.url.startswith("http://127.0.0.1")
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    extra = ["--lrt", f"{sys.executable} -c pass"] if system == "local" else ["--dry-run"]
    res = subprocess.run(lrt_cmd + ["launch", system, "--pilots", "1"] + extra,
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ("lrt: warning:" in res.stderr and "loopback" in res.stderr) == warned, res.stderr


# ---------------------------------------------------------------- what failed after

def _launch_local(couch, db, lrt_cmd, home, *args: str, rc: int = 0):
    env = couch.env(db.name)
    env["LRT_HOME"] = str(home)
    res = subprocess.run(lrt_cmd + ["launch", "local"] + list(args), env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == rc, res.stderr
    return env, res


def test_local_pilots_that_die_are_counted_failed_and_flagged(couch, db, lrt_cmd, home):
    fail = f"{sys.executable} -c 'import sys; print(\"no such site setup\"); sys.exit(3)'"
    env, res = _launch_local(couch, db, lrt_cmd, home, "--pilots", "2", "--type", "t", "--lrt", fail, rc=1)
    # `launch local` itself says so: the pilots died at once
    assert "2 of 2 local pilot(s) failed at once (exit 3)" in res.stderr, res.stderr
    assert "ends with: no such site setup" in res.stderr
    s = poll(lambda: (lambda r: r if r["failed"] == 2 else None)(launch_summary(db)[0]), 30, 0.2,
             "both pilots to be counted failed")
    assert (s["submitted"], s["running"], s["finished"], s["failed"]) == (2, 0, 0, 2)
    assert s["exit_codes"] == {"3": 2} and s["flag"] == "ALL FAILED"
    # what was learnt is kept in the record, not only in the launch folder
    (rec,) = [r["doc"] for r in db.all_docs(startkey="launch:", endkey="launch:\ufff0", include_docs=True)["rows"]]
    assert {e["exit"] for e in rec["ended"].values()} == {3}
    table = subprocess.run(lrt_cmd + ["launch", "list"], env=env, cwd=str(ROOT), capture_output=True, text=True,
                           timeout=60).stdout
    assert "ALL FAILED (3: 2)" in table.splitlines()[1], table
    status = subprocess.run(lrt_cmd + ["status"], env=env, cwd=str(ROOT), capture_output=True, text=True,
                            timeout=60).stdout
    assert "ALL FAILED" in status, status
    st = json.loads(subprocess.run(lrt_cmd + ["status", "--json"], env=env, cwd=str(ROOT), capture_output=True,
                                   text=True, timeout=60).stdout)
    assert [(p["failed"], p["flag"]) for p in st["pilots"]] == [(2, "ALL FAILED")]


def test_real_local_pilots_that_end_idle_are_counted_finished(couch, db, lrt_cmd, home):
    _launch_local(couch, db, lrt_cmd, home, "--pilots", "2", "--type", "nothing-here",
                  "--pilot-args", "--idle-exit 1 --poll 0.2")
    s = poll(lambda: (lambda r: r if r["finished"] + r["failed"] == 2 else None)(launch_summary(db)[0]), 60, 0.3,
             "both pilots to end")
    assert (s["finished"], s["failed"], s["flag"], s["running"]) == (2, 0, "", 0), s


def test_killed_local_pilot_is_failed_with_its_signal(couch, db, lrt_cmd, home):
    fake = f"{sys.executable} -c 'import time; time.sleep(120)'"
    _launch_local(couch, db, lrt_cmd, home, "--pilots", "2", "--lrt", fake)
    (rec,) = [r["doc"] for r in db.all_docs(startkey="launch:", endkey="launch:\ufff0", include_docs=True)["rows"]]
    os.kill(rec["pids"][0], signal.SIGTERM)   # the wrapper passes it on to the pilot
    s = poll(lambda: (lambda r: r if r["failed"] == 1 else None)(launch_summary(db)[0]), 30, 0.2, "one failed")
    assert (s["running"], s["finished"], s["flag"], s["exit_codes"]) == (1, 0, "1 FAILED", {"SIG15": 1})
    w = rec["pids"][1]
    orphans = [int(c) for c in Path(f"/proc/{w}/task/{w}/children").read_text().split()]
    os.kill(w, signal.SIGKILL)   # the wrapper itself: its pilot's end is unknown
    try:
        s = poll(lambda: (lambda r: r if r["failed"] == 2 else None)(launch_summary(db)[0]), 30, 0.2, "two failed")
        assert s["flag"] == "ALL FAILED" and s["exit_codes"] == {"SIG15": 1, "LOST": 1}
    finally:
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)


def test_parse_sacct():
    """sacct's parsable output (accounting is off on the test cluster; squeue covers recent ends there)."""
    text = ("77_0|COMPLETED|0:0\n77_1|FAILED|2:0\n77_2|CANCELLED by 1000|0:15\n77_3|TIMEOUT|0:0\n"
            "77_[4-6]|PENDING|0:0\n77_7|RUNNING|0:0\n78_0|FAILED|1:0\n")
    got = slurm_l.parse_sacct(text, "77")
    assert sorted(got) == ["0", "1", "2", "3"]
    assert got["0"]["end"] == "finished"
    assert (got["1"]["end"], got["1"]["exit"]) == ("failed", 2)
    assert (got["2"]["state"], got["2"].get("signal")) == ("CANCELLED", 15)
    assert got["3"]["end"] == "failed"


def test_every_backend_is_a_launcher_under_its_own_name():
    """The registry is what the CLI and launch_summary dispatch on: a backend missing from it,
    or registered under another name, would be a system `lrt launch` cannot reach."""
    from lrt.launchers import BACKENDS, Launcher, LaunchOptions, launcher

    assert sorted(BACKENDS) == ["htcondor", "jdl", "local", "slurm"]
    for name in BACKENDS:
        backend = launcher(name)
        assert isinstance(backend, Launcher)
        assert backend.system == name
    assert launcher("local").remote is False
    with pytest.raises(ConfigError, match="no launcher for 'pbs'"):
        launcher("pbs")
    # the shared options are one dataclass every backend's options extend
    from lrt.launchers import htcondor, jdl, local, slurm

    for opts in (slurm.SlurmOptions, htcondor.CondorOptions, jdl.JdlOptions, local.LocalOptions):
        assert issubclass(opts, LaunchOptions)
