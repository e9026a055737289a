"""The demo's main job end to end, as `make demo` runs it: the demo config
(sandbox given by folder) created, drained by local pilots, one token failing
on purpose, retried and quarantined."""
import json
import subprocess
from pathlib import Path

from lrt.tokens import TokenSet

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_publishes_its_sandbox_and_drains(couch, db, lrt_cmd, tmp_path):
    res = TokenSet.from_config(ROOT / "configs" / "demo.yaml").create(db)
    assert (res.created, res.present) == (20, 0)
    docs = [r["doc"] for r in db.all_docs(include_docs=True, startkey="demo_", endkey="demo_\ufff0")["rows"]]
    shas = {d["sandbox"]["sha256"] for d in docs}
    assert len(shas) == 1 and "path" not in docs[0]["sandbox"]
    (sha,) = shas
    sandbox = db.get(f"sandbox-{sha}")
    assert sandbox["_attachments"]["sandbox.tar.gz"]["length"] == sandbox["size"]

    env = couch.env(db.name)
    env["LRT_HOME"] = str(tmp_path / "home")
    run = subprocess.run(lrt_cmd + ["run-local", "--pilots", "3", "--type", "demo", "--idle-exit", "8",
                                    "--lease", "60", "--workdir", str(tmp_path / "work"), "--keep-workdirs"],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    status = json.loads(subprocess.run(lrt_cmd + ["status", "--json"], env=env, cwd=str(ROOT),
                                       capture_output=True, text=True, timeout=60).stdout)
    assert status["types"]["demo"] == {"done": 19, "failed": 1}
    failed = db.get("demo_13")
    assert failed["state"] == "failed" and failed["exit_code"] == 3
    assert failed["error"]["name"] == "PAYLOAD_FAILED"
    assert [h["state"] for h in failed["history"]] == ["todo", "failed"]  # retried once, then quarantined
    assert "failing on purpose (parameter fail_on_block=13)" in failed["log_tail"]["stderr"]
    ok = db.get("demo_02")
    # the payload really ran from the sandbox: its output names the block's range
    outs = list((tmp_path / "work").rglob("primes-100000-150000.json"))
    assert ok["state"] == "done" and len(outs) == 1
    assert json.loads(outs[0].read_text())["count"] == 4256  # primes in [100000, 150000)
