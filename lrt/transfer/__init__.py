"""Moving files between storage and the worker node, one interface for every URL kind.

Stage-in (:func:`lrt.staging.pilot.stage_in`), stage-out
(:func:`lrt.staging.pilot.stage_out`) and sandbox fetch
(:mod:`lrt.pilot.sandbox`) go through a :class:`Transfer` chosen by URL
(:func:`backend_name`): ``file://`` (standard library), rclone remotes
(``rclone://REMOTE/path``, ``REMOTE:path``) and everything else through gfal2.
Settings are a :class:`TransferOptions` the caller builds once
(:meth:`TransferOptions.from_env`), never module globals.

This package is on the pilot path: standard library only, gfal2 imported and
rclone looked up when a URL needs them.
"""
from __future__ import annotations

from .base import (LOCAL_ALGOS, TMP_MARK, Checksum, Failure, Stat, Transfer, TransferError,
                   TransferOptions, Verified, Verify, file_checksum)
from .registry import FILE, GFAL2, RCLONE, Session, backend_name, file_name, join

__all__ = ["FILE", "GFAL2", "LOCAL_ALGOS", "RCLONE", "TMP_MARK", "Checksum", "Failure", "Session",
           "Stat", "Transfer", "TransferError", "TransferOptions", "Verified", "Verify",
           "backend_name", "file_checksum", "file_name", "join"]
