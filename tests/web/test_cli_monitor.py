"""`lrt errors`, `lrt list` columns and `lrt status --watch`, as a user runs them, on the
pool that real pilots made (the same read models the dashboard renders)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from pilot_helpers import ROOT, poll

from .pool import BOOM, IDLE, OK, XSS_ID, lrt_json


def _run(couch, dbname, *args):
    env = couch.env(dbname)
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "lrt.cli", *args], cwd=str(ROOT), env=env,
                       capture_output=True, text=True, timeout=120)
    assert couch.password not in r.stdout + r.stderr
    return r


def test_errors_grouped_by_code_and_message(couch, pool_db):
    doc = lrt_json(couch, pool_db.name, "errors")
    assert doc["total"] == len(BOOM) + 1
    [code] = doc["codes"]
    assert (code["code"], code["name"], code["class"], code["count"]) == (60, "PAYLOAD_FAILED", "payload", 4)
    [g] = code["groups"]
    assert g["prefix"] == "payload exited with status #" and g["states"] == {"error": 4}
    assert len(g["sample"]) == 3 and set(g["sample"]) <= set(BOOM + [XSS_ID])
    # first/last seen are the tokens' error times
    times = sorted(pool_db.get(i)["updated"] for i in BOOM + [XSS_ID])
    assert abs(g["first"] - times[0]) < 1e-3 and abs(g["last"] - times[-1]) < 1e-3
    assert lrt_json(couch, pool_db.name, "errors", "--type", "idle")["codes"] == []
    text = _run(couch, pool_db.name, "errors").stdout
    assert text.splitlines()[0].startswith("60 PAYLOAD_FAILED (payload): 4 token(s)")
    assert "payload exited with status #" in text


def test_list_has_header_and_columns(couch, pool_db):
    r = _run(couch, pool_db.name, "list", "--state", "error")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["id", "state", "type", "attempts", "error", "pilot"]
    row = next(line for line in lines if line.startswith("boom_00"))
    assert row.split() == ["boom_00", "error", "web", "1", "60", pool_db.get("boom_00")["pilot"]]
    rows = lrt_json(couch, pool_db.name, "list", "--type", "idle")
    assert rows == [{"id": i, "state": "todo", "type": "idle", "attempts": 0, "error": None, "pilot": None}
                    for i in IDLE]
    assert len(lrt_json(couch, pool_db.name, "list", "--limit", "3")) == 3
    assert len(lrt_json(couch, pool_db.name, "list")) == len(OK + BOOM + IDLE) + 1


def test_status_watch_redraws_until_ctrl_c(couch, pool_db):
    env = couch.env(pool_db.name)
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.Popen([sys.executable, "-m", "lrt.cli", "status", "--watch", "--interval", "0.3"],
                         cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []

        def two_tables():
            lines.append(p.stdout.readline())
            return sum("lrt status --watch" in line for line in lines) >= 2

        poll(two_tables, timeout=60, interval=0, what="two redraws")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err, err
    text = "".join(lines)
    assert "web " in text and "total" in text and "ETA" in text and "last 15 min:" in text
    assert couch.password not in text + out + err
    r = _run(couch, pool_db.name, "status", "--watch", "--interval", "0")
    assert r.returncode == 2 and "--interval" in r.stderr


def test_dashboard_binds_loopback_only(couch, pool_db):
    r = _run(couch, pool_db.name, "dashboard", "--bind", "0.0.0.0")
    assert r.returncode == 2 and "loopback" in r.stderr and "ssh -L" in r.stderr
