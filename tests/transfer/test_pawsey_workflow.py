"""The Pawsey-style staged workflow of configs/pawsey (docs/workflows.md), run for real:
stage-in (rclone from S3 to scratch) -> compute (per file, after its stage-in) -> stage-out
(per file, after its compute, rclone back to S3), against moto's S3, the local server,
a local pilot per transfer set and the compute pilots as a real Slurm array."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from lrt.launchers import launch_records
from pilot_helpers import ROOT, poll, start_pilot, stop

CONFIGS = ROOT / "configs" / "pawsey"


def _slurm_partition() -> str:
    try:
        from test_launch_slurm import _slurm_ready
    except ImportError:  # pragma: no cover
        return ""
    if _slurm_ready():
        return ""
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15).stdout
    return out.split()[0].rstrip("*") if out.split() else ""


def test_pawsey_three_set_workflow(s3, bucket, couch, db, tmp_path, lrt_cmd):
    partition = _slurm_partition()
    if not partition:
        pytest.skip("needs Slurm (scripts/testbed-slurm.sh)")
    scratch = tmp_path / "scratch"
    work = tmp_path / "configs"
    work.mkdir()
    # the example as shipped, pointed at this test's bucket and scratch; chunk 2 fails
    for name in ("stagein.yaml", "compute.yaml", "stageout.yaml", "inputs.txt"):
        text = (CONFIGS / name).read_text()
        text = text.replace("rclone://acacia/my-project", f"rclone://acacia/{bucket}")
        text = text.replace("file:///scratch/my-project", f"file://{scratch}")
        text = text.replace("fail_chunk: -1", "fail_chunk: 2")
        (work / name).write_text(text)
    urls = [ln for ln in (work / "inputs.txt").read_text().splitlines() if ln.startswith("rclone://")]
    data = {}
    for i, url in enumerate(urls):
        key = url.split(f"rclone://acacia/{bucket}/", 1)[1]
        data[i] = hashlib.sha256(url.encode()).digest() * (100 + 37 * i)
        s3.put(bucket, key, data[i])

    env = couch.env(db.name)
    env["PYTHONPATH"] = str(ROOT)
    env["LRT_HOME"] = str(tmp_path / "lrt-home")
    env["LRT_STAGE_BACKOFF"] = "0.1"
    env.update({k.replace("RCLONE_CONFIG_MOTO_", "RCLONE_CONFIG_ACACIA_"): v for k, v in s3.env.items()})

    def lrt(*args: str) -> str:
        r = subprocess.run(lrt_cmd + list(args), capture_output=True, text=True, env=env, cwd=str(ROOT),
                           timeout=180)
        assert r.returncode == 0, f"lrt {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    for name in ("stagein", "compute", "stageout"):
        lrt("create", str(work / f"{name}.yaml"))
    assert {db.get(f"compute_{i:04d}")["state"] for i in range(4)} == {"waiting"}

    logs = tmp_path / "logs"
    logs.mkdir()
    local = [start_pilot(env, "--type", "stagein", "--idle-exit", "60", "--poll", "0.5",
                         log=logs / "stagein.log"),
             start_pilot(env, "--type", "stageout", "--idle-exit", "90", "--poll", "0.5",
                         log=logs / "stageout.log")]
    try:
        out = lrt("launch", "slurm", "--partition", partition, "--type", "compute", "--pilots", "2",
                  "--time", "00:10:00", "--dir", str(tmp_path / "launches"),
                  "--pilot-args", "--idle-exit 60 --poll 0.5")
        assert "Slurm job" in out

        def settled():
            st = {d["_id"]: d["state"] for d in
                  (r["doc"] for r in db.all_docs(include_docs=True)["rows"] if not r["id"].startswith("_"))
                  if d.get("kind") == "token"}
            outs = [st.get(f"stageout_{i:04d}") for i in range(4)]
            return st if outs == ["done", "done", "blocked", "done"] else None

        try:
            poll(settled, timeout=400, interval=1, what="the three sets to settle")
        except AssertionError:
            tails = "\n".join(p.read_text(errors="replace")[-2000:] for p in logs.iterdir())
            for rec in launch_records(db, limit=None):
                for p in sorted(Path(rec["dir"]).glob("pilot-*.out")):
                    tails += f"\n--- {p}\n" + p.read_text(errors="replace")[-2000:]
            states = {r["id"]: (r.get("doc") or {}).get("state")
                      for r in db.all_docs(include_docs=True)["rows"]}
            raise AssertionError(f"{states}\n{tails}") from None
    finally:
        for p in local:
            stop(p)
        ids = [str(d["batch_id"]) for d in launch_records(db, limit=None, system="slurm") if d.get("batch_id")]
        if ids:
            subprocess.run(["scancel"] + ids, capture_output=True, timeout=30)

    # each document read by id (quorum): _all_docs may come from a copy of a cluster that lags behind
    docs = {r["id"]: db.get(r["id"]) for r in db.all_docs()["rows"] if not r["id"].startswith("_")}
    # the compute tokens ran as Slurm array elements, each only after its own stage-in finished
    for i in range(4):
        si, co = docs[f"stagein_{i:04d}"], docs[f"compute_{i:04d}"]
        assert si["state"] == "done"
        # both stamps come from two pilots' estimates of the server clock (HTTP Date: whole seconds,
        # plus request latency under load), so the order is checked to within that resolution
        assert co["history"][0]["claimed"] >= si["history"][-1]["finished"] - 2.5
        assert co["timings"]["started"] >= si["history"][-1]["finished"] - 2.5
        assert co["history"][0]["batch_job"]["system"] == "slurm"
        assert co["inputs"] == [{"url": si["output"][0]["url"], "checksum": si["output"][0]["checksum"],
                                 "from": si["_id"]}]
    assert docs["compute_0002"]["state"] == "error"
    # exactly its own stage-out is blocked, naming it
    assert docs["stageout_0002"]["blocked_by"] == {"id": "compute_0002", "state": "error", "on": "ok"}
    assert [i for i in range(4) if docs[f"compute_{i:04d}"]["state"] != "done"] == [2]
    # every output object exists in S3 with the right content and checksum (S3's MD5 ETag,
    # and the adler32 the pilot recorded)
    got = s3.keys(bucket, "obs1/results/")
    assert sorted(got) == [f"obs1/results/L100_SB{i:03d}.result" for i in (0, 1, 3)]
    for i in (0, 1, 3):
        name = f"L100_SB{i:03d}"
        expect = f"{hashlib.sha256(data[i]).hexdigest()}  {name}.dat\n".encode() + data[i]
        key = f"obs1/results/{name}.result"
        assert s3.get(bucket, key) == expect
        assert s3.etag(bucket, key) == hashlib.md5(expect).hexdigest()
        (ref,) = docs[f"stageout_{i:04d}"]["output"]
        assert ref == {"url": f"rclone://acacia/{bucket}/{key}", "size": len(expect),
                       "checksum": f"adler32:{zlib.adler32(expect) & 0xffffffff:08x}"}
    # the S3 secret is in no log, job script or token
    written = [p for p in logs.iterdir()] + [p for p in (tmp_path / "launches").rglob("*") if p.is_file()]
    assert written and not [str(p) for p in written if s3.secret_key.encode() in p.read_bytes()]
    assert s3.secret_key not in json.dumps(docs)
