"""Which backend handles a URL, and one place that keeps the backends of a session.

* ``file://`` -- :class:`~lrt.transfer.file.FileTransfer` (standard library);
* ``rclone://REMOTE/path`` and ``REMOTE:path`` -- :class:`~lrt.transfer.rclone.RcloneTransfer`;
* every other ``scheme://`` (``srm``, ``gsiftp``, ``root``, ``davs``, ``https``,
  ``s3``, ``mock``, ...) -- :class:`~lrt.transfer.gfal2.Gfal2Transfer`: gfal2
  decides through its plug-ins what it can reach.

Backends are imported and created when a URL first needs them, so the pilot
path loads gfal2 or looks for rclone only when a token uses them.
"""
from __future__ import annotations

import posixpath
import urllib.parse
from typing import Dict, Mapping, Optional

from .base import Failure, Transfer, TransferError, TransferOptions

FILE, GFAL2, RCLONE = "file", "gfal2", "rclone"
#: the schemes lrt documents for gfal2 (any other scheme:// goes to gfal2 too)
GFAL2_SCHEMES = ("srm", "gsiftp", "root", "roots", "xroot", "davs", "dav", "http", "https",
                 "s3", "s3s", "mock")


def backend_name(url: str) -> str:
    """``file``, ``gfal2`` or ``rclone`` for ``url``; TransferError when it is no URL at all."""
    from . import rclone

    if url[:5].lower() == "file:":  # also file:/abs/path (no //), never a remote named "file"
        return FILE
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme == "rclone":
            return RCLONE
        if scheme and urllib.parse.urlsplit(url).scheme:
            return GFAL2
    elif rclone.is_remote(url):
        return RCLONE
    raise TransferError("not a URL (want scheme://..., rclone://REMOTE/path or REMOTE:path)",
                        Failure.UNSUPPORTED)


def file_name(url: str) -> str:
    """The base name a URL's file gets in a work directory ("" when it has none)."""
    if backend_name(url) == RCLONE:
        from .rclone import parse

        path = parse(url)[1]
    else:
        parts = urllib.parse.urlsplit(url)
        path = parts.path
        if "SFN=" in url:  # srm://host/srm/managerv2?SFN=/path
            path = urllib.parse.parse_qs(parts.query).get("SFN", [path])[0]
    name = posixpath.basename(path.rstrip("/"))
    return "" if name in (".", "..") else name


def join(prefix: str, rel: str) -> str:
    """``prefix`` + ``/`` + ``rel`` (``moto:bucket`` + ``a/b`` is ``moto:bucket/a/b``)."""
    if prefix.endswith(":") and backend_name(prefix) == RCLONE:
        return prefix + rel  # the remote's root
    return prefix.rstrip("/") + "/" + rel


class Session:
    """The backends one stage-in, stage-out or fetch uses, each created once.

    ``env`` is the environment rclone runs with (default: this process's).
    """

    def __init__(self, options: Optional[TransferOptions] = None,
                 env: Optional[Mapping[str, str]] = None):
        self.options = options or TransferOptions()
        self.env = env
        self._backends: Dict[str, Transfer] = {}

    def for_url(self, url: str) -> Transfer:
        """The backend for ``url`` (TransferError MISSING when it is not installed)."""
        name = backend_name(url)
        backend = self._backends.get(name)
        if backend is None:
            if name == FILE:
                from .file import FileTransfer

                backend = FileTransfer()
            elif name == RCLONE:
                from .rclone import RcloneTransfer

                backend = RcloneTransfer(self.options, self.env)
            else:
                from .gfal2 import Gfal2Transfer

                backend = Gfal2Transfer(self.options)
            self._backends[name] = backend
        return backend
