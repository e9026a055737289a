"""End to end: a real pilot process stages inputs in from XRootD, runs the payload and
publishes its outputs to XRootD; a wrong input checksum fails the token with code 23."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib

import pytest

pytest.importorskip("lrt.cli.pilot", reason="the pilot command is not in this tree")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _token(tid, inputs, dest, max_attempts=3):
    now = time.time()
    return {"_id": tid, "kind": "token", "schema": 1, "type": "stage-e2e", "state": "todo",
            "priority": 0, "created": now, "updated": now, "tokenset": "e2e", "attempts": 0,
            "max_attempts": max_attempts, "retry": {"backoff": 30, "payload_errors": False},
            "not_before": None, "expected_duration": None, "timeout": 120,
            "command": ["sh", "-c", "cat *.tar > result.h5"], "sandbox": None, "payload": {},
            "inputs": inputs, "outputs": {"dest": dest, "globs": ["*.h5"]}, "needs_staging": False,
            "lease": None, "pilot": None, "host": None, "batch_job": None, "exit_code": None,
            "error": None, "timings": {}, "output": [], "log_tail": None, "history": [],
            "cancel_requested": False}


def test_pilot_stages_in_and_out(gfal2, xrootd, couch, db, tmp_path):
    parts = [os.urandom(30_000), os.urandom(20_000)]
    inputs = []
    for i, data in enumerate(parts):
        p = xrootd.disk / "e2e-in" / f"L42_SB{i:03d}.tar"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        inputs.append({"url": f"{xrootd.url}//e2e-in/{p.name}",
                       "checksum": f"adler32:{zlib.adler32(data) & 0xffffffff:08x}"})
    bad_inputs = [dict(inputs[0], checksum="adler32:00000001")]
    dest = f"{xrootd.url}//e2e-out"
    db.bulk_docs([_token("good", inputs, dest + "/good"),
                  _token("bad", bad_inputs, dest + "/bad", max_attempts=1)])
    env = couch.env(db.name)
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-m", "lrt.cli", "pilot", "--type", "stage-e2e",
                        "--idle-exit", "1", "--poll", "0.5", "--max-tokens", "2"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    good, bad = db.get("good"), db.get("bad")
    assert good["state"] == "done", (good.get("error"), r.stderr[-2000:])
    published = xrootd.disk / "e2e-out" / "good" / "result.h5"
    assert published.read_bytes() == parts[0] + parts[1]
    ref = {"url": f"{dest}/good/result.h5", "size": len(parts[0]) + len(parts[1]),
           "checksum": f"adler32:{zlib.adler32(parts[0] + parts[1]) & 0xffffffff:08x}"}
    assert good["output"] == [ref]
    assert bad["state"] in ("failed", "error") and bad["error"]["code"] == 23, bad.get("error")
    assert not (xrootd.disk / "e2e-out" / "bad").exists()
