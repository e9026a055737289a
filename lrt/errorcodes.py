"""Error codes written into a token's ``error`` field: one table, documented in
docs/error-codes.md (the tests check the two agree).

In the spirit of GRID_LRT's numeric codes, each code has a *class*:

* ``system`` -- the infrastructure failed (sandbox, staging, upload, lease lost,
  pilot killed).  Retried automatically up to ``max_attempts``: another node or a
  later try will probably succeed.
* ``payload`` -- the user's program failed.  Deterministic by default: not
  retried unless the token's ``retry.payload_errors`` is true.

Codes are stable: never renumber one; add new ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Code:
    code: int
    name: str
    cls: str  # "system" | "payload"
    retry: bool  # retried automatically (within max_attempts) by default
    meaning: str

    def error(self, message: str) -> Dict[str, object]:
        """The token's ``error`` field for this code."""
        return {"code": self.code, "name": self.name, "class": self.cls, "message": message[:2000]}


_ALL = [
    Code(10, "SANDBOX_DOWNLOAD", "system", True, "the sandbox could not be downloaded"),
    Code(11, "SANDBOX_HASH", "system", True, "the downloaded sandbox does not match its sha256"),
    Code(12, "SANDBOX_UNSAFE", "system", False,
         "the sandbox archive holds absolute paths, '..' or links leading outside"),
    Code(20, "STAGING_FAILED", "system", False, "bring-online from tape failed (per-file reasons kept)"),
    Code(21, "STAGE_IN_FAILED", "system", True, "copying an input into the work directory failed"),
    Code(22, "DATA_NOT_ONLINE", "system", True, "an input was not online when the pilot needed it"),
    Code(23, "CHECKSUM_MISMATCH", "system", True, "an input or output checksum did not match"),
    Code(30, "STAGE_OUT_FAILED", "system", True, "uploading or committing an output failed"),
    Code(40, "LEASE_LOST", "system", True, "the pilot lost its lease (paused, partitioned) and stopped"),
    Code(41, "PILOT_LOST", "system", True, "the lease expired: the pilot died or was killed"),
    Code(42, "PREEMPTED", "system", True,
         "the pilot was stopped (SIGTERM/SIGINT, walltime) and released the token; not counted"),
    Code(43, "CONFLICT_RESOLVED", "system", True,
         "a conflicting revision (CouchDB cluster) was resolved against this attempt"),
    Code(44, "PILOT_ERROR", "system", True,
         "the pilot failed unexpectedly while handling the token (local problem such as a full disk, or a bug)"),
    Code(50, "COMMAND_NOT_FOUND", "payload", False, "the payload command could not be executed"),
    Code(51, "BAD_TOKEN", "payload", False, "the token lacks what the pilot needs (e.g. no command)"),
    Code(60, "PAYLOAD_FAILED", "payload", False, "the payload exited with a non-zero status"),
    Code(61, "PAYLOAD_TIMEOUT", "payload", False, "the payload ran past the token's timeout and was killed"),
    Code(62, "PAYLOAD_SIGNALED", "payload", False, "the payload was killed by a signal"),
    Code(70, "CANCELLED", "system", False, "cancelled by a user"),
]

BY_CODE: Dict[int, Code] = {c.code: c for c in _ALL}
BY_NAME: Dict[str, Code] = {c.name: c for c in _ALL}


def get(key: "int | str") -> Code:
    return BY_CODE[key] if isinstance(key, int) else BY_NAME[key]


def all_codes() -> "list[Code]":
    return list(_ALL)
