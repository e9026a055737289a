"""What batch system (if any) runs this process, and when it will kill us.

The pilot records the batch job on every token it claims (``batch_job``), so a
failed token can be traced back to a job's log on the site, and it stops
claiming tokens that cannot finish before the job's walltime ends.  Both facts
come from the batch system's environment variables; the walltime end needs one
cheap query (``scontrol``/``qstat``) when the environment does not carry it.

Pilot path: standard library only.  Nothing here raises on odd input: an
unparsable environment means "unknown" (``None``), because a pilot must keep
working on a system we have never seen.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = ["job_info", "walltime_end", "parse_duration", "parse_slurm_time", "parse_classad"]

#: seconds any batch-system query may take before we give up (walltime unknown)
QUERY_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# durations


_DURATION_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_duration(value: Union[str, int, float]) -> float:
    """Seconds in a Slurm-style duration.

    Accepts plain seconds (``90``, ``"90"``, ``"1.5"``), ``"MM:SS"``,
    ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"`` and ``"D-HH:MM:SS"`` -- the
    forms ``sbatch --time`` and PBS ``walltime`` use, so a user can pass the
    same string to the batch system and to ``lrt pilot --walltime``.  Note
    Slurm's own reading of a lone number is *minutes*; lrt reads seconds and
    says so in the CLI help.  Raises ValueError on anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    s = str(value).strip()
    try:
        f = float(s)
    except ValueError:
        pass
    else:
        if f < 0 or f != f or f == float("inf"):
            raise ValueError(f"not a duration: {value!r}")
        return f
    m = _DURATION_RE.match(s)
    if not m or ":" not in s and "-" not in s:
        raise ValueError(f"not a duration (expected seconds, MM:SS, HH:MM:SS or D-HH:MM:SS): {value!r}")
    days, a, b, c = m.groups()
    if days is not None:
        # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, se = int(a), int(b or 0), int(c or 0)
        return float(int(days) * 86400 + h * 3600 + mi * 60 + se)
    if c is not None:
        return float(int(a) * 3600 + int(b) * 60 + int(c))
    return float(int(a) * 60 + int(b))


def parse_slurm_time(text: str) -> Optional[float]:
    """Unix time of a Slurm timestamp (``2026-11-21T20:25:00``, local time).

    Slurm prints times in the local time zone of the command that prints them;
    we run that command ourselves, so local time is right.  ``Unknown``,
    ``None`` or anything unparsable gives None.
    """
    text = (text or "").strip()
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def parse_classad(text: str) -> Dict[str, str]:
    """Attributes of an HTCondor job ad (``Name = value`` lines), strings unquoted.

    Only what the pilot needs: flat attributes, quoted strings unquoted; no
    expression evaluation.  Attribute names are case-insensitive in ClassAds,
    so keys are lower-cased.
    """
    out: Dict[str, str] = {}
    for line in text.splitlines():
        name, sep, val = line.partition("=")
        if not sep:
            continue
        name, val = name.strip(), val.strip()
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", name):
            continue
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1]
        out[name.lower()] = val
    return out


# ---------------------------------------------------------------------------
# which job are we?


def _nonempty(env: Mapping[str, str], *names: str) -> Optional[str]:
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            return v
    return None


def job_info(env: Optional[Mapping[str, str]] = None) -> Optional[Dict[str, Any]]:
    """The batch job this process runs in, from its environment; None outside one.

    Returns ``{"system": "slurm"|"htcondor"|"pbs"|"dirac", "id": str,
    "array_id": str|None, "array_task": str|None, ...}`` with a few
    system-specific extras (Slurm partition and cluster, PBS queue, HTCondor
    schedd).  For an array element ``id`` is the element's own job id (what
    ``scancel``/``condor_rm`` accept) and ``array_id``/``array_task`` name the
    array.  The pilot stores this dict as the token's ``batch_job``; it
    decides itself what to record when this is None (a local pilot).

    ``env`` defaults to ``os.environ``; tests pass dicts.
    """
    e: Mapping[str, str] = os.environ if env is None else env

    sid = _nonempty(e, "SLURM_JOB_ID", "SLURM_JOBID")
    if sid:
        array_id = _nonempty(e, "SLURM_ARRAY_JOB_ID")
        task = _nonempty(e, "SLURM_ARRAY_TASK_ID")
        info: Dict[str, Any] = {"system": "slurm", "id": sid, "array_id": array_id,
                                "array_task": task}
        for key, var in (("partition", "SLURM_JOB_PARTITION"), ("cluster", "SLURM_CLUSTER_NAME"),
                         ("node", "SLURMD_NODENAME"), ("name", "SLURM_JOB_NAME")):
            v = _nonempty(e, var)
            if v:
                info[key] = v
        return info

    ad_path = _nonempty(e, "_CONDOR_JOB_AD")
    if ad_path:
        ad: Dict[str, str] = {}
        try:
            with open(ad_path, encoding="utf-8", errors="replace") as fh:
                ad = parse_classad(fh.read())
        except OSError:
            pass
        cluster, proc = ad.get("clusterid"), ad.get("procid")
        if cluster is not None:
            info = {"system": "htcondor", "id": f"{cluster}.{proc or 0}", "array_id": cluster,
                    "array_task": proc}
            for key, attr in (("schedd", "globaljobid"), ("owner", "owner")):
                if ad.get(attr):
                    info[key] = ad[attr].split("#")[0] if key == "schedd" else ad[attr]
            return info
    cid = _nonempty(e, "CONDOR_ID", "_CONDOR_ID")
    if cid:
        cluster, _, proc = cid.partition(".")
        return {"system": "htcondor", "id": cid, "array_id": cluster, "array_task": proc or None}

    pid = _nonempty(e, "PBS_JOBID")
    if pid:
        task = _nonempty(e, "PBS_ARRAYID", "PBS_ARRAY_INDEX")
        array_id = _nonempty(e, "PBS_ARRAY_ID")
        if task is not None and array_id is None:
            # Torque: "123[4].server"; PBS Pro: "123[4].server" too, array is "123[].server"
            m = re.match(r"^(\d+)\[\d*\](.*)$", pid)
            array_id = f"{m.group(1)}[]{m.group(2)}" if m else None
        info = {"system": "pbs", "id": pid, "array_id": array_id, "array_task": task}
        q = _nonempty(e, "PBS_QUEUE")
        if q:
            info["queue"] = q
        return info

    did = _nonempty(e, "DIRACJOBID")
    if did:
        info = {"system": "dirac", "id": did, "array_id": None, "array_task": None}
        site = _nonempty(e, "DIRACSITE")
        if site:
            info["site"] = site
        return info
    return None


# ---------------------------------------------------------------------------
# when will the batch system kill us?


def _run(argv: List[str]) -> Optional[str]:
    """stdout of a short query, or None on any failure (missing tool, timeout, error)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=QUERY_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.decode("utf-8", "replace")


def _slurm_end(job_id: str, env: Mapping[str, str]) -> Optional[float]:
    v = _nonempty(env, "SLURM_JOB_END_TIME")
    if v:
        try:
            t = float(v)
            if t > 0:
                return t
        except ValueError:
            pass
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if not out:
        return None
    m = re.search(r"(?:^|\s)EndTime=(\S+)", out)
    if not m:
        return None
    end = parse_slurm_time(m.group(1))
    if end is None:
        return None
    # A job without a limit (partition MaxTime=INFINITE and no --time) reports an
    # EndTime a year or so ahead; that is "no limit" for our purposes.
    if "TimeLimit=UNLIMITED" in out or "TimeLimit=INFINITE" in out:
        return None
    return end


def _pbs_end(job_id: str) -> Optional[float]:
    out = _run(["qstat", "-f", job_id])
    if not out:
        return None
    limit = re.search(r"Resource_List\.walltime\s*=\s*(\S+)", out)
    if not limit:
        return None
    used = re.search(r"resources_used\.walltime\s*=\s*(\S+)", out)
    try:
        left = parse_duration(limit.group(1)) - (parse_duration(used.group(1)) if used else 0.0)
    except ValueError:
        return None
    return time.time() + max(left, 0.0)


def walltime_end(env: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """Unix time at which the batch system will kill this job; None if unknown.

    * Slurm: ``SLURM_JOB_END_TIME`` when set (newer Slurm exports it),
      else ``EndTime`` from ``scontrol show job -o $SLURM_JOB_ID`` (asks the
      controller once; it accounts for the real start time and any
      ``scontrol update TimeLimit``).  Unlimited jobs give None.
    * PBS/Torque: ``Resource_List.walltime - resources_used.walltime`` from
      ``qstat -f $PBS_JOBID``, counted from now.
    * HTCondor, DIRAC, no batch system: None (no kill time the job can read;
      pass ``lrt pilot --walltime`` instead).

    Every query runs without a shell, with a 5 s timeout; any failure gives None
    rather than an exception, so a pilot never dies for lack of this fact.
    """
    e: Mapping[str, str] = os.environ if env is None else env
    info = job_info(e)
    if info is None:
        return None
    if info["system"] == "slurm":
        return _slurm_end(info["id"], e)
    if info["system"] == "pbs":
        return _pbs_end(info["id"])
    return None
