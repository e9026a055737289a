"""``file://`` URLs: local and shared (POSIX) file systems, standard library only.

The one backend with an exclusive commit: a hard link never replaces an
existing name, so even two attempts that both believe they hold a token
publish each output once.
"""
from __future__ import annotations

import errno as _errno
import os
import urllib.parse
from pathlib import Path
from typing import IO, Optional

from .base import _CHUNK, Checksum, Failure, Stat, TransferError, Verified, Verify, _hasher, file_checksum


def path_of(url: str) -> Path:
    """The local path of a ``file://`` URL (host empty or ``localhost``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "file":
        raise TransferError(f"{url}: not a file:// URL", Failure.UNSUPPORTED)
    if parts.netloc not in ("", "localhost"):
        raise TransferError(f"file URL with a host is not supported: {url}", Failure.UNSUPPORTED)
    return Path(urllib.parse.unquote(parts.path))


def _error(url: str, exc: OSError) -> TransferError:
    failure = Failure.NOT_FOUND if exc.errno == _errno.ENOENT else Failure.FAILED
    return TransferError(f"[{exc.errno}] {url}: {exc.strerror or exc}", failure, exc.errno)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class FileTransfer:
    """Copies between local paths, checksums computed while copying."""

    name = "file"

    def status(self, url: str) -> Optional[str]:
        return None

    def stat(self, url: str) -> Optional[Stat]:
        try:
            st = os.stat(path_of(url))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(url, exc) from None
        return Stat(size=st.st_size)

    def checksum(self, url: str, algo: str) -> Optional[str]:
        try:
            return file_checksum(path_of(url), algo)
        except ValueError:
            return None
        except OSError as exc:
            raise _error(url, exc) from None

    def _copy(self, src: Path, dest: Path, algo: str, src_url: str) -> str:
        """Copy ``src`` to ``dest`` (parents made), returning ``algo`` of the bytes read."""
        update, digest = _hasher(algo)
        try:
            fin = open(src, "rb")
        except OSError as exc:
            raise _error(src_url, exc) from None
        with fin:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as fout:
                while True:
                    block = fin.read(_CHUNK)
                    if not block:
                        break
                    update(block)
                    fout.write(block)
        return digest()

    def copy_in(self, url: str, dest: Path, expected: Optional[Checksum]) -> Verified:
        algo = expected.algo if expected else "adler32"
        try:
            _hasher(algo)
        except ValueError as exc:
            raise TransferError(f"{url}: {exc}", Failure.UNSUPPORTED) from None
        try:
            read = self._copy(path_of(url), dest, algo, url)
            written = file_checksum(dest, algo)
        except OSError as exc:
            _remove(dest)
            raise _error(str(dest), exc) from None
        except TransferError:
            _remove(dest)
            raise
        want = expected.value if expected else read
        if written != want or read != want:
            _remove(dest)
            raise TransferError(f"checksum mismatch: {algo} of the copy is {written}, "
                                f"{'the token expects' if expected else 'the source read as'} {want}",
                                Failure.CHECKSUM, _errno.EILSEQ)
        return Verified(Verify.EXPECTED if expected else Verify.SOURCE, algo)

    def copy_out(self, src: Path, url: str, checksum: Checksum) -> Verified:
        dest = path_of(url)
        try:
            self._copy(src, dest, checksum.algo, str(src))
            got = file_checksum(dest, checksum.algo)
        except OSError as exc:
            _remove(dest)
            raise _error(url, exc) from None
        if got != checksum.value:
            _remove(dest)
            raise TransferError(f"checksum mismatch after upload to {url}: {checksum.algo} {got}, "
                                f"not {checksum.value}", Failure.CHECKSUM, _errno.EILSEQ)
        return Verified(Verify.TARGET, checksum.algo)

    def commit(self, tmp: str, final: str) -> bool:
        local_tmp, local_final = path_of(tmp), path_of(final)
        try:
            os.link(local_tmp, local_final)  # atomic, never replaces an existing name
        except FileExistsError:
            _remove(local_tmp)
            return False
        except OSError as exc:
            raise TransferError(f"cannot commit {final}: {exc}", Failure.FAILED, exc.errno) from None
        _remove(local_tmp)
        return True

    def delete(self, url: str) -> None:
        try:
            path_of(url).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(url, exc) from None

    def read(self, url: str, dest: IO[bytes]) -> None:
        # only read errors are the source's; a write error on dest (full disk) is the caller's
        def failed(exc: OSError) -> TransferError:
            return TransferError(f"cannot read {url}: {exc.strerror or exc}",
                                 Failure.NOT_FOUND if exc.errno == _errno.ENOENT else Failure.FAILED,
                                 exc.errno)
        try:
            src = open(path_of(url), "rb")
        except OSError as exc:
            raise failed(exc) from None
        with src:
            while True:
                try:
                    block = src.read(_CHUNK)
                except OSError as exc:
                    raise failed(exc) from None
                if not block:
                    break
                dest.write(block)
