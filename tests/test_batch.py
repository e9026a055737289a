"""lrt.batch: batch-job detection and durations from environment dicts.

The real-Slurm check of walltime_end() (a job with --time that asks itself) is
in tests/test_launch_slurm.py.
"""
from __future__ import annotations

import time

import pytest

from lrt import batch


@pytest.mark.parametrize("text,seconds", [
    ("90", 90.0), (90, 90.0), (1.5, 1.5), ("2.5", 2.5), ("01:30", 90.0), ("1:00:00", 3600.0),
    ("00:02:00", 120.0), ("1-00:00:00", 86400.0), ("2-03", 2 * 86400 + 3 * 3600.0),
    ("1-02:03", 86400 + 7200 + 180.0), (" 10:00 ", 600.0), ("0", 0.0),
])
def test_parse_duration(text, seconds):
    assert batch.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "-5", "1:2:3:4", "1-", "1h", "nan", "inf", True, -1, "1--2"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        batch.parse_duration(bad)


def test_no_batch_system():
    assert batch.job_info({"HOME": "/root", "PATH": "/bin"}) is None
    assert batch.walltime_end({"HOME": "/root"}) is None
    # empty variables do not count
    assert batch.job_info({"SLURM_JOB_ID": "", "PBS_JOBID": ""}) is None


def test_slurm_plain_job():
    info = batch.job_info({"SLURM_JOB_ID": "4711", "SLURM_JOB_PARTITION": "normal",
                           "SLURM_CLUSTER_NAME": "spider"})
    assert info == {"system": "slurm", "id": "4711", "array_id": None, "array_task": None,
                    "partition": "normal", "cluster": "spider"}


def test_slurm_array_element():
    info = batch.job_info({"SLURM_JOB_ID": "102", "SLURM_ARRAY_JOB_ID": "100",
                           "SLURM_ARRAY_TASK_ID": "2"})
    assert (info["system"], info["id"], info["array_id"], info["array_task"]) == ("slurm", "102", "100", "2")


def test_slurm_end_time_from_environment():
    end = time.time() + 3600
    assert batch.walltime_end({"SLURM_JOB_ID": "1", "SLURM_JOB_END_TIME": str(int(end)),
                               "PATH": "/nonexistent"}) == int(end)


def test_slurm_without_scontrol_is_unknown(monkeypatch):
    # no SLURM_JOB_END_TIME and no scontrol on PATH: None, not an exception
    monkeypatch.setenv("PATH", "/nonexistent")
    assert batch.walltime_end({"SLURM_JOB_ID": "1"}) is None


def test_parse_slurm_time():
    t = batch.parse_slurm_time("2026-11-21T20:25:00")
    assert time.localtime(t)[:6] == (2026, 11, 21, 20, 25, 0)
    assert batch.parse_slurm_time("Unknown") is None
    assert batch.parse_slurm_time("") is None


def test_htcondor_job_ad(tmp_path):
    ad = tmp_path / ".job.ad"
    ad.write_text('ClusterId = 321\nProcId = 7\nOwner = "lofar"\n'
                  'GlobalJobId = "schedd.example.org#321.7#1700000000"\nCmd = "/bin/x = y"\n')
    info = batch.job_info({"_CONDOR_JOB_AD": str(ad)})
    assert info["system"] == "htcondor"
    assert info["id"] == "321.7"
    assert (info["array_id"], info["array_task"]) == ("321", "7")
    assert info["schedd"] == "schedd.example.org"
    assert info["owner"] == "lofar"
    assert batch.walltime_end({"_CONDOR_JOB_AD": str(ad)}) is None


def test_htcondor_unreadable_ad_falls_through():
    assert batch.job_info({"_CONDOR_JOB_AD": "/nonexistent/.job.ad"}) is None
    info = batch.job_info({"_CONDOR_JOB_AD": "/nonexistent/.job.ad", "CONDOR_ID": "5.1"})
    assert (info["system"], info["id"], info["array_task"]) == ("htcondor", "5.1", "1")


def test_classad_parser():
    ad = batch.parse_classad('A = 1\nb="two"\n  garbage line\n= 3\nC.d = x\n')
    assert ad == {"a": "1", "b": "two", "c.d": "x"}


def test_pbs_torque_array():
    info = batch.job_info({"PBS_JOBID": "123[4].pbs.example.org", "PBS_ARRAYID": "4",
                           "PBS_QUEUE": "long"})
    assert info == {"system": "pbs", "id": "123[4].pbs.example.org",
                    "array_id": "123[].pbs.example.org", "array_task": "4", "queue": "long"}


def test_pbs_plain():
    info = batch.job_info({"PBS_JOBID": "99.server"})
    assert (info["system"], info["id"], info["array_id"], info["array_task"]) == ("pbs", "99.server", None, None)


def test_dirac():
    info = batch.job_info({"DIRACJOBID": "55501", "DIRACSITE": "LCG.SARA.nl"})
    assert info == {"system": "dirac", "id": "55501", "array_id": None, "array_task": None,
                    "site": "LCG.SARA.nl"}
    assert batch.walltime_end({"DIRACJOBID": "55501"}) is None


def test_slurm_wins_over_others():
    # a DIRAC pilot running inside a Slurm job: the innermost scheduler that can kill us is Slurm
    info = batch.job_info({"SLURM_JOB_ID": "8", "DIRACJOBID": "9"})
    assert info["system"] == "slurm"


def test_batch_is_stdlib_only():
    import subprocess
    import sys
    code = ("import sys, lrt.batch; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('requests', 'yaml', 'tqdm', 'urllib3')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(__import__('pathlib').Path(__file__).parent.parent),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
