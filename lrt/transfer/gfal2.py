"""gfal2 URLs (``root://``, ``srm://``, ``gsiftp://``, ``davs://``, ``https://``, ``s3://``,
``mock://``, ...): CERN's grid file access library, one API for many protocols.

gfal2 is optional (OS packages, python3-gfal2): it is imported when the first
gfal2 URL is used, and a missing module is :attr:`Failure.MISSING` with what to
install.  One gfal2 context per :class:`Gfal2Transfer`.
"""
from __future__ import annotations

import errno as _errno
from pathlib import Path
from typing import IO, Any, Optional, Set

from .base import (Checksum, Failure, Stat, TransferError, TransferOptions, Verified, Verify,
                   commit_if_absent)

_CHUNK = 1 << 20


def load() -> Any:
    """The gfal2 module, or :class:`TransferError` (MISSING) saying what to install."""
    try:
        import gfal2  # lazy on purpose: optional, OS-packaged
    except ImportError as exc:
        raise TransferError(f"gfal2's Python bindings are not importable on this node ({exc}); "
                            "install python3-gfal2 and its plugins (docs/staging.md)",
                            Failure.MISSING) from None
    return gfal2


def reason(exc: BaseException) -> str:
    """One line for a gfal2 error: ``[errno] message``."""
    code = getattr(exc, "code", None)
    msg = getattr(exc, "message", None) or str(exc)
    return f"[{code}] {msg}" if code is not None else msg


def _is_checksum_error(exc: BaseException) -> bool:
    msg = (getattr(exc, "message", None) or str(exc)).lower()
    return getattr(exc, "code", None) == _errno.EILSEQ or "checksum" in msg


def _file_url(path: Path) -> str:
    return "file://" + str(Path(path).resolve())


class Gfal2Transfer:
    """The gfal2 calls stage-in, stage-out and sandbox fetch need."""

    name = "gfal2"

    def __init__(self, options: TransferOptions, ctx: Any = None):
        self.gfal2 = load()
        self.ctx = ctx if ctx is not None else self.gfal2.creat_context()
        self.options = options
        #: destinations that cannot compute checksums (upload verified by size only)
        self._no_checksum: Set[str] = set()

    def _error(self, exc: Any) -> TransferError:
        failure = (Failure.CHECKSUM if _is_checksum_error(exc) else
                   Failure.NOT_FOUND if getattr(exc, "code", None) == _errno.ENOENT else Failure.FAILED)
        return TransferError(reason(exc), failure, getattr(exc, "code", None))

    def status(self, url: str) -> Optional[str]:
        try:
            return str(self.ctx.getxattr(url, "user.status")).strip() or None
        except self.gfal2.GError:
            return None  # protocols without the attribute (file://, http): no tape state

    def stat(self, url: str) -> Optional[Stat]:
        try:
            return Stat(size=int(self.ctx.stat(url).st_size))
        except self.gfal2.GError as exc:
            if exc.code == _errno.ENOENT:
                return None
            raise TransferError(f"cannot check {url}: {reason(exc)}", Failure.FAILED, exc.code) from None

    def checksum(self, url: str, algo: str) -> Optional[str]:
        try:
            value = str(self.ctx.checksum(url, algo)).lower()
        except self.gfal2.GError:
            return None
        return value.zfill(8) if algo == "adler32" else value

    def copy_in(self, url: str, dest: Path, expected: Optional[Checksum]) -> Verified:
        algo = expected.algo if expected else None
        if algo is None and self.checksum(url, "adler32") is not None:
            algo = "adler32"  # verify against the source's own checksum when it offers one
        params = self.ctx.transfer_parameters()
        params.overwrite = True
        params.timeout = self.options.timeout
        if algo:
            params.set_checksum(self.gfal2.checksum_mode.both, algo, expected.value if expected else "")
        try:
            self.ctx.filecopy(params, url, _file_url(dest))
        except self.gfal2.GError as exc:
            raise self._error(exc) from None
        if expected:
            return Verified(Verify.EXPECTED, algo)
        return Verified(Verify.SOURCE, algo) if algo else Verified(Verify.SIZE)

    def copy_out(self, src: Path, url: str, checksum: Checksum) -> Verified:
        endpoint = url.split("://", 1)[-1].split("/", 1)[0]
        verify = endpoint not in self._no_checksum
        while True:
            params = self.ctx.transfer_parameters()
            params.overwrite = True  # the temporary name is ours alone
            params.create_parent = True
            params.timeout = self.options.timeout
            if verify:
                params.set_checksum(self.gfal2.checksum_mode.target, checksum.algo, checksum.value)
            try:
                self.ctx.filecopy(params, _file_url(src), url)
            except self.gfal2.GError as exc:
                why = reason(exc)
                if verify and exc.code in (_errno.ENOTSUP, _errno.ENOSYS) and "checksum" in why.lower():
                    verify = False  # the destination cannot compute checksums: size check only
                    self._no_checksum.add(endpoint)
                    continue
                raise TransferError(why, Failure.FAILED, exc.code) from None
            return Verified(Verify.TARGET, checksum.algo) if verify else Verified(Verify.SIZE)

    def commit(self, tmp: str, final: str) -> bool:
        # gfal2 has no rename-if-absent for remote storage (its mkdir/copy are
        # check-then-act too): the lease is the fence, see commit_if_absent
        def rename() -> None:
            try:
                self.ctx.rename(tmp, final)
            except self.gfal2.GError as exc:
                raise TransferError(reason(exc), Failure.FAILED, exc.code) from None

        return commit_if_absent(tmp, final, lambda u: self.stat(u) is not None, rename, self.delete)

    def delete(self, url: str) -> None:
        try:
            self.ctx.unlink(url)
        except self.gfal2.GError as exc:
            if exc.code != _errno.ENOENT:
                raise TransferError(reason(exc), Failure.FAILED, exc.code) from None

    def read(self, url: str, dest: IO[bytes]) -> None:
        try:
            fh = self.ctx.open(url, "r")
            # read() decodes to str (and fails on binary data); read_bytes() does not
            read = getattr(fh, "read_bytes", None) or fh.read
            while True:
                chunk = read(_CHUNK)
                if not chunk:
                    break
                dest.write(chunk if isinstance(chunk, bytes) else chunk.encode("latin-1"))
        except self.gfal2.GError as exc:
            raise self._error(exc) from None
