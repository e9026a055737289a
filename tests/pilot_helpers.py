"""Helpers for the pilot tests: tokens written straight in schema v1, pilot processes, polling."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent

#: a payload that appends its token id to <dir>/<pilot id> (one line per execution)
RECORD = ["sh", "-c", 'printf "%s\\n" "$LRT_TOKEN_ID" >> "$1/$LRT_PILOT_ID"', "record"]


def token(doc_id: str, command: List[str], **fields: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "_id": doc_id, "kind": "token", "schema": 1, "type": "test", "state": "todo",
        "priority": 0, "created": time.time(), "updated": time.time(), "tokenset": "pilot-tests",
        "attempts": 0, "max_attempts": 3, "retry": {"backoff": 30, "payload_errors": False},
        "not_before": None, "expected_duration": None, "timeout": None, "command": list(command),
        "sandbox": None, "payload": {}, "inputs": [], "outputs": None, "needs_staging": False,
        "lease": None, "pilot": None, "host": None, "batch_job": None, "exit_code": None,
        "error": None, "timings": {}, "output": [], "log_tail": None, "history": [],
        "cancel_requested": False,
    }
    doc.update(fields)
    return doc


def make_tokens(db: Any, docs: Iterable[Dict[str, Any]]) -> List[str]:
    docs = list(docs)
    ids: List[str] = []
    for i in range(0, len(docs), 1000):
        res = db.bulk_docs(docs[i:i + 1000])
        assert not res.errors and not res.conflicts, res.errors or res.conflicts
        ids += [d["_id"] for d in docs[i:i + 1000]]
    return ids


def poll(cond: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = "") -> Any:
    """Wait until ``cond()`` is truthy; return its value (fail the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


def pilot_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "lrt.cli", "pilot", *args]


def start_pilot(env: Dict[str, str], *args: str, log: Optional[Path] = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(pilot_cmd(*args), cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def executions(record_dir: Path) -> List[str]:
    """Every token id any payload recorded (one per execution)."""
    out: List[str] = []
    for f in sorted(record_dir.iterdir()):
        out += [line for line in f.read_text().splitlines() if line]
    return out


def states(db: Any) -> Dict[str, int]:
    rows = db.view("lrt", "tokens", group_level=1).get("rows", [])
    return {r["key"][0]: r["value"] for r in rows}
