"""Many pilots, many tokens, and a server that goes away mid-run: every token runs exactly once."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from lrt import design
from lrt.couch import Server
from lrt.server import LocalServer, free_port

from pilot_helpers import RECORD, ROOT, executions, make_tokens, poll, start_pilot, states, token


def _assert_once(db, rec: Path, ids):
    runs = executions(rec)
    dup = [i for i, n in Counter(runs).items() if n > 1]
    assert not dup, f"{len(dup)} token(s) ran more than once, e.g. {dup[:5]}"
    assert sorted(runs) == sorted(ids)
    assert states(db) == {"done": len(ids)}
    assert db.view("lrt", "locked", limit=1)["rows"] == []


def test_16_pilots_2000_tokens_each_exactly_once(db, couch, tmp_path, lrt_cmd):
    rec = tmp_path / "rec"
    rec.mkdir()
    ids = make_tokens(db, (token(f"tok-{i:05d}", RECORD + [str(rec)], priority=i % 3) for i in range(2000)))
    res = subprocess.run([*lrt_cmd, "run-local", "--pilots", "16", "--idle-exit", "4", "--poll", "1"],
                         cwd=str(ROOT), env=couch.env(db.name), capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    print(res.stdout)
    assert "16 pilot(s) ran 2000 token(s)" in res.stdout
    assert len(os.listdir(rec)) > 1  # the work was shared
    _assert_once(db, rec, ids)


def test_server_stop_and_restart_mid_run(tmp_path):
    base = tmp_path / "couch"
    srv = LocalServer.start(base=base, port=free_port())
    port = srv.port
    try:
        s = Server(srv.url, srv.user, srv.password)
        db = s.database("restart")
        db.create()
        design.install(db)
        rec = tmp_path / "rec"
        rec.mkdir()
        slow_record = ["sh", "-c", 'sleep 0.02; printf "%s\\n" "$LRT_TOKEN_ID" >> "$1/$LRT_PILOT_ID"', "r"]
        ids = make_tokens(db, (token(f"r-{i:04d}", slow_record + [str(rec)]) for i in range(300)))
        env = dict(os.environ, LRT_COUCH_URL=srv.url, LRT_COUCH_USER=srv.user,
                   LRT_COUCH_PASSWORD=srv.password, LRT_COUCH_DB="restart",
                   LRT_CONFIG="/nonexistent/lrt-config.yaml")
        logs = [tmp_path / f"pilot{i}.log" for i in range(4)]
        procs = [start_pilot(env, "--idle-exit", "8", "--lease", "60", "--poll", "0.5", log=lg)
                 for lg in logs]
        try:
            poll(lambda: len(executions(rec)) >= 40, timeout=120, what="40 tokens done")
            srv.stop()
            poll(lambda: any("cannot claim" in lg.read_text() or "retrying" in lg.read_text()
                             for lg in logs), timeout=60, what="a pilot noticing the outage")
            srv = LocalServer.start(base=base, port=port)
            assert srv.port == port
            codes = [p.wait(300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert codes == [0, 0, 0, 0], [lg.read_text()[-2000:] for lg in logs]
        s = Server(srv.url, srv.user, srv.password)
        _assert_once(s.database("restart"), rec, ids)
    finally:
        srv.stop()
