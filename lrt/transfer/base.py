"""What every transfer backend shares: options, errors, checksums, the protocol.

One :class:`Transfer` per URL kind (``file``, ``gfal2``, ``rclone``), chosen by
:func:`lrt.transfer.registry.backend_name`.  Backends move bytes and report
*what* went wrong as a :class:`Failure`; the callers (stage-in, stage-out,
sandbox fetch) decide what that means for a token (error codes, retries), so a
new backend never has to know the token error table.
"""
from __future__ import annotations

import enum
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Dict, Mapping, Optional, Protocol, Tuple

from ..errors import ConfigError, LrtError

log = logging.getLogger("lrt.transfer")

#: the suffix stage-out uploads under before committing: ``<name>.lrt-tmp-<attempt id>``
TMP_MARK = ".lrt-tmp-"

_CHUNK = 1 << 20


class Failure(enum.Enum):
    """What kind of failure a backend met (the caller maps it to an error code)."""

    NOT_FOUND = "not found"
    CHECKSUM = "checksum mismatch"
    MISSING = "backend not installed"
    UNSUPPORTED = "not supported"
    TIMEOUT = "timed out"
    FAILED = "failed"


class TransferError(LrtError):
    """A backend could not do what it was asked.

    ``reason`` is one line, safe to store in a token (URLs redacted, no
    credentials); ``failure`` says what kind; ``errno`` is the backend's error
    number where it has one (gfal2's GError code).
    """

    def __init__(self, reason: str, failure: Failure = Failure.FAILED, errno: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.failure = failure
        self.errno = errno


@dataclass(frozen=True)
class Checksum:
    """``algorithm:hex`` as tokens hold it (``adler32:0a1b2c3d``, ``md5:...``)."""

    algo: str
    value: str

    @classmethod
    def parse(cls, text: Optional[str]) -> Optional["Checksum"]:
        """None for no checksum; ValueError when ``text`` is not ``algorithm:hex``."""
        if not text:
            return None
        algo, sep, hexval = str(text).partition(":")
        if not sep or not hexval or not algo:
            raise ValueError(f"checksum {text!r} is not 'algorithm:hex'")
        return cls.of(algo, hexval)

    @classmethod
    def of(cls, algo: str, value: str) -> "Checksum":
        algo, value = algo.lower(), str(value).strip().lower()
        return cls(algo, value.zfill(8) if algo == "adler32" else value)

    def __str__(self) -> str:
        return f"{self.algo}:{self.value}"


#: checksums lrt can compute for a local file (what a remote's hash is checked against)
LOCAL_ALGOS = ("md5", "sha1", "sha256", "adler32", "crc32")


def _hasher(algo: str) -> Tuple[Callable[[bytes], None], Callable[[], str]]:
    if algo in ("adler32", "crc32"):
        fn = zlib.adler32 if algo == "adler32" else zlib.crc32
        state = [1 if algo == "adler32" else 0]

        def update(b: bytes) -> None:
            state[0] = fn(b, state[0])

        return update, lambda: f"{state[0] & 0xffffffff:08x}"
    if algo in ("md5", "sha1", "sha256"):
        h = hashlib.new(algo)
        return h.update, h.hexdigest
    raise ValueError(f"checksum algorithm {algo!r} cannot be computed here "
                     f"(known: {', '.join(LOCAL_ALGOS)})")


def file_checksum(path: Path, algo: str = "adler32") -> str:
    """``algo`` of a local file as lower-case hex (adler32/crc32 as 8 digits)."""
    update, digest = _hasher(algo.lower())
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            update(block)
    return digest()


class Verify(enum.Enum):
    """How a completed copy was verified (logged; size-only is said out loud)."""

    EXPECTED = "against the token's checksum"
    SOURCE = "against the source's own checksum"
    TARGET = "against the destination's checksum"
    SIZE = "by size only (the storage offers no checksum lrt can compare)"


@dataclass(frozen=True)
class Verified:
    how: Verify
    algo: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.how.value}" + (f" ({self.algo})" if self.algo else "")


@dataclass
class Stat:
    """What a backend knows about a stored file: size and any hashes it offers for free."""

    size: Optional[int]
    hashes: Dict[str, str] = field(default_factory=dict)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(str(raw))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class TransferOptions:
    """Settings of every transfer, built once by the caller (never read at import time).

    ``retries``: attempts per file (first included); ``backoff``: base of the
    exponential wait between them; ``timeout``: seconds one transfer may take.
    The rclone ones: the binary, a config file (``--config``; else rclone's own
    default and ``RCLONE_CONFIG_<NAME>_*`` in the environment), extra flags, and
    variables removed from rclone's environment (``AWS_CA_BUNDLE`` breaks
    rclone 1.60's S3 client; use ``RCLONE_CA_CERT`` for a custom CA instead).
    """

    retries: int = 3
    backoff: float = 2.0
    timeout: int = 3600
    op_timeout: int = 300
    rclone: str = "rclone"
    rclone_config: Optional[str] = None
    rclone_flags: Tuple[str, ...] = ()
    rclone_env_drop: Tuple[str, ...] = ("AWS_CA_BUNDLE",)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "TransferOptions":
        """Options from ``LRT_STAGE_RETRIES``, ``LRT_STAGE_BACKOFF``, ``LRT_STAGE_TIMEOUT``,
        ``LRT_RCLONE``, ``LRT_RCLONE_CONFIG`` and ``LRT_RCLONE_FLAGS`` (space separated)."""
        env = os.environ if env is None else env
        retries = _int(env, "LRT_STAGE_RETRIES", cls.retries)
        if retries < 1:
            raise ConfigError(f"LRT_STAGE_RETRIES={retries} must be at least 1")
        return cls(retries=retries, backoff=max(0.0, _float(env, "LRT_STAGE_BACKOFF", cls.backoff)),
                   timeout=max(1, _int(env, "LRT_STAGE_TIMEOUT", cls.timeout)),
                   op_timeout=max(1, _int(env, "LRT_STAGE_OP_TIMEOUT", cls.op_timeout)),
                   rclone=env.get("LRT_RCLONE") or cls.rclone,
                   rclone_config=env.get("LRT_RCLONE_CONFIG") or None,
                   rclone_flags=tuple((env.get("LRT_RCLONE_FLAGS") or "").split()))


class Transfer(Protocol):
    """One storage access method.  Every URL argument belongs to this backend.

    Copies never leave a half-written local file behind; ``copy_out`` writes
    exactly the name it is given (stage-out passes an attempt-scoped temporary
    name and later calls :meth:`commit`).
    """

    name: str

    def status(self, url: str) -> Optional[str]:
        """Tape state (``ONLINE``, ``NEARLINE``, ...) where the storage has one, else None."""

    def stat(self, url: str) -> Optional[Stat]:
        """Size (and free hashes) of a stored file; None when it does not exist."""

    def checksum(self, url: str, algo: str) -> Optional[str]:
        """The storage's ``algo`` checksum of ``url``; None when it offers none."""

    def copy_in(self, url: str, dest: Path, expected: Optional[Checksum]) -> Verified:
        """Copy ``url`` to the local file ``dest`` and verify it (``expected`` if given)."""

    def copy_out(self, src: Path, url: str, checksum: Checksum) -> Verified:
        """Upload the local ``src`` (whose checksum is ``checksum``) to ``url``, verified."""

    def commit(self, tmp: str, final: str) -> bool:
        """Move ``tmp`` to ``final`` unless ``final`` exists (then drop ``tmp``).

        True when this call published ``final``.  The caller checks that its
        attempt still holds the token's lease right before.
        """

    def delete(self, url: str) -> None:
        """Remove ``url``; absent is fine."""

    def read(self, url: str, dest: IO[bytes]) -> None:
        """Stream the bytes of ``url`` into ``dest``."""


def commit_if_absent(tmp: str, final: str, exists: Callable[[str], bool], move: Callable[[], object],
                     delete: Callable[[str], None]) -> bool:
    """:meth:`Transfer.commit` for storages with no rename-if-absent (gfal2, rclone).

    Their rename and copy are check-then-act, so the fence is the lease: the
    caller checked it just before, and two attempts never hold one token's
    lease at once.  An existing ``final`` (a re-run of a finished token: reset,
    duplicate) is kept and ``tmp`` dropped; so is one that appeared while
    ``move`` failed (e.g. a storage that refuses to replace).  ``move`` raises
    :class:`TransferError`; True when this call published ``final``.
    """
    if exists(final):
        drop_temporary(delete, tmp)
        return False
    try:
        move()
    except TransferError as exc:
        if exists(final):
            drop_temporary(delete, tmp)
            return False
        raise TransferError(f"cannot commit {final}: {exc.reason}", exc.failure, exc.errno) from None
    return True


def drop_temporary(delete: Callable[[str], None], url: str) -> None:
    """Remove a temporary upload; a failure is logged, not raised (the output is safe)."""
    try:
        delete(url)
    except TransferError as exc:
        log.warning("could not remove temporary %s: %s", url, exc.reason)
