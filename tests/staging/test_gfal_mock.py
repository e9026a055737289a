"""State queries and bring-online through the real gfal2 mock plug-in, and the
same against the tape-emulating XRootD (a real NEARLINE -> ONLINE transition)."""
from __future__ import annotations

import json
import os
import subprocess

from lrt.staging.gfal import Gfal, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NEAR = "mock://tape.example.org/lofar/L1_SB{:03d}.tar?size=100&user.status=NEARLINE"
ONL = "mock://disk.example.org/lofar/L2_SB{:03d}.tar?size=100&user.status=ONLINE_AND_NEARLINE"


def test_state_query_counts_and_errors(gfal2):
    urls = [NEAR.format(i) for i in range(6)] + [ONL.format(i) for i in range(2)]
    urls += ["mock://tape.example.org/lofar/lost.tar?size=1&user.status=LOST",
             "mock://tape.example.org/lofar/missing.tar?errno=2"]
    g = Gfal()
    states = g.states(urls + urls[:2])  # duplicates asked once
    assert g.calls == len(urls)
    s = summarize(states)
    assert s["counts"] == {"NEARLINE": 6, "ONLINE_AND_NEARLINE": 2, "LOST": 1, "ERROR": 1}
    assert s["total"] == 10 and s["online"] == 2 and s["percent_online"] == 20.0
    assert "No such file" in states[urls[-1]][1]


def test_bulk_bring_online_with_delays_and_per_file_errors(gfal2):
    slow = [NEAR.format(i) + "&staging_time=2" for i in range(5)]
    bad = ["mock://tape.example.org/lofar/L3_SB000.tar?size=1&staging_time=1&staging_errno=5"]
    g = Gfal(batch=4)
    req = g.bring_online(slow + bad, pin=600)
    assert req.errors == {}
    assert [len(u) for _, u in req.batches] == [4, 2] and g.calls == 2  # one call per batch
    first = g.poll(req.batches)
    assert sorted(first.pending) == sorted(slow + bad) and not first.online
    res = g.wait_online(req, interval=0.3, timeout=30)
    assert sorted(res.online) == sorted(slow)
    assert list(res.failed) == bad and "Input/output error" in res.failed[bad[0]]
    assert res.pending == []


def test_tape_xrootd_nearline_to_online(gfal2, xrootd_tape, put_on_tape):
    urls = [put_on_tape(xrootd_tape, f"obs1/L9_SB{i:03d}.tar", os.urandom(1000)) for i in range(3)]
    broken = put_on_tape(xrootd_tape, "obs1/L9_SB003.tar", b"x", fail="tape cartridge unreadable")
    g = Gfal()
    assert {s for s, _ in g.states(urls + [broken]).values()} == {"NEARLINE"}
    req = g.bring_online(urls + [broken], pin=600, timeout=60)
    assert g.calls == 5 and len(req.batches) == 1
    res = g.wait_online(req, interval=0.3, timeout=60)
    assert sorted(res.online) == sorted(urls)
    assert "tape cartridge unreadable" in res.failed[broken]
    after = g.states(urls)
    assert {s for s, _ in after.values()} == {"ONLINE_AND_NEARLINE"}


def test_cli_status_and_request_json(gfal2, tmp_path, lrt_cmd):
    lst = tmp_path / "list.txt"
    urls = [NEAR.format(i) for i in range(3)] + [ONL.format(0)]
    lst.write_text("\n".join(urls) + "\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(lrt_cmd + ["stage", "status", str(lst), "--json"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["total"] == 4 and out["online"] == 1 and out["gfal2_calls"] == 4
    assert out["files"][urls[0]]["state"] == "NEARLINE"
    r = subprocess.run(lrt_cmd + ["stage", "request", str(lst), "--pin", "120", "--wait",
                                  "--interval", "0.2", "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["online"] == 4 and out["failed"] == {}
    assert len(out["requests"]) == 2  # one bulk request per storage endpoint (two mock hosts)


def test_without_gfal2_stage_commands_say_so_in_one_line(tmp_path, lrt_cmd):
    block = tmp_path / "block"
    block.mkdir()
    (block / "gfal2.py").write_text("raise ImportError('gfal2 blocked for this test')\n")
    lst = tmp_path / "list.txt"
    lst.write_text(NEAR.format(0) + "\n")
    env = dict(os.environ, PYTHONPATH=f"{block}:{ROOT}")
    for args in (["stage", "status", str(lst)], ["stage", "request", str(lst)],
                 ["stage", "run", "--once"]):
        r = subprocess.run(lrt_cmd + args, capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=60)
        assert r.returncode == 5, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "gfal2" in r.stderr and "Traceback" not in r.stderr
    # the pilot's stage-in/out fail the token with their own codes and say why
    probe = ("from lrt.staging import pilot; from lrt.errors import StagingError\n"
             "for f, a in ((pilot.stage_in, ({'inputs': [{'url': 'root://h//x'}]}, '.')),\n"
             "             (pilot.stage_out, ({'outputs': {'dest': 'root://h//o', 'globs': ['list.txt']}},\n"
             "                                '.', 'att', lambda: True))):\n"
             "    try:\n        f(*a)\n    except StagingError as e:\n        print(e.code, e)\n")
    r = subprocess.run([lrt_cmd[0], "-c", probe], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path), timeout=60)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, r.stderr
    assert lines[0].startswith("21 ") and lines[1].startswith("30 ") and "gfal2" in r.stdout
    # everything else still works without gfal2
    r = subprocess.run(lrt_cmd + ["--help"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and "stage" in r.stdout
    srm = tmp_path / "srm.txt"
    srm.write_text("srm://srm.grid.sara.nl:8443/pnfs/grid.sara.nl/data/lofar/ops/L1_SB000.tar\n")
    r = subprocess.run(lrt_cmd + ["stage", "convert", str(srm), "--to", "gsiftp"], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("gsiftp://gridftp.grid.sara.nl:2811/pnfs/")
