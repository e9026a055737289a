"""Sandboxes: the payload's code, shipped to worker nodes as one verified tarball.

A sandbox is a folder (``sandboxes/NAME/``) packed into a *reproducible*
``tar.gz`` -- sorted entries, fixed mtime/uid/gid/owner names, normalised
permissions, gzip header without name or time -- so the same content always
gives the same bytes and therefore the same sha256.  The sha256 is the
sandbox's identity: tokens name it (``sandbox: {"sha256": ..., "url": ...}``),
it is stored as the attachment ``sandbox.tar.gz`` of the document
``sandbox-<sha256>``, and pilots verify it after every download.  Content
addressing makes uploads idempotent (building an unchanged folder uploads
nothing) and makes a sandbox impossible to change under a running token.

Pilots fetch a sandbox once per node: the cache directory holds
``<cache>/<sha256>/`` (extracted, complete by construction) and nothing else
that is ever trusted.  Concurrent pilots on one node are safe: an ``flock``
serialises the download and extraction, and both steps also go through a
temporary name and an atomic ``rename``, so even where ``flock`` is not honoured
(some network file systems) a reader sees either no directory or a finished one.

Archives are treated as hostile: every member is checked *before* anything is
written (absolute names, ``..``, links leading outside the sandbox -- also
through chains of links --, hard links to anything but an earlier regular file,
device files and FIFOs, duplicate names) and extraction is done here, not by
``tarfile.extractall``, with ``O_EXCL|O_NOFOLLOW`` and permission bits limited
to ``0o777`` (setuid/setgid/sticky stripped), so the checks do not depend on
the Python version (tarfile's extraction filters exist only from 3.12).

This module is on the pilot path: standard library and ``requests`` only;
URLs other than http(s) and the database go through :mod:`lrt.transfer`
(``file://``; rclone remotes; gfal2, imported only for URLs that need it:
``root://``, ``srm://``, ...).
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .. import errorcodes
from ..errors import LrtError

if TYPE_CHECKING:
    from ..couch import Database
    from ..transfer import TransferOptions

#: name of the attachment that holds the tarball on a sandbox document
ATTACHMENT = "sandbox.tar.gz"
#: sandbox documents are ``sandbox-<sha256>``
DOC_PREFIX = "sandbox-"
#: every member of a built archive gets this mtime (2000-01-01T00:00:00Z)
FIXED_MTIME = 946684800
#: names never packed (build products and VCS metadata are not part of the payload's code)
EXCLUDE = frozenset({"__pycache__", ".git", ".hg", ".svn", ".DS_Store", ".pytest_cache"})
#: deepest chain of symbolic links followed while checking an archive
MAX_LINK_DEPTH = 40

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: default cap on a sandbox's extracted size (bytes); LRT_SANDBOX_MAX_BYTES overrides.
#: A few kB of gzip can declare gigabytes of zeros: the cap keeps a hostile or
#: mistaken sandbox from filling a worker node's disk.
MAX_EXTRACTED_BYTES = 8 << 30


def max_extracted_bytes() -> int:
    try:
        return int(os.environ.get("LRT_SANDBOX_MAX_BYTES", "")) or MAX_EXTRACTED_BYTES
    except ValueError:
        return MAX_EXTRACTED_BYTES

SANDBOX_DOWNLOAD = errorcodes.get("SANDBOX_DOWNLOAD").code  # 10
SANDBOX_HASH = errorcodes.get("SANDBOX_HASH").code  # 11
SANDBOX_UNSAFE = errorcodes.get("SANDBOX_UNSAFE").code  # 12
BAD_TOKEN = errorcodes.get("BAD_TOKEN").code  # 51


class SandboxError(LrtError):
    """Building, fetching or unpacking a sandbox failed.

    ``code`` is the :mod:`lrt.errorcodes` number the pilot writes into the
    token: 10 SANDBOX_DOWNLOAD, 11 SANDBOX_HASH, 12 SANDBOX_UNSAFE (51
    BAD_TOKEN for a token whose sandbox field is malformed).
    """

    def __init__(self, message: str, code: int = SANDBOX_DOWNLOAD):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# building


@dataclass
class BuiltSandbox:
    """What :func:`build_archive` produced."""

    name: str
    sha256: str
    size: int
    files: List[str]
    path: Optional[Path] = None  # the tarball on disk (caller owns it)
    uploaded: bool = False  # set by :func:`upload`

    @property
    def doc_id(self) -> str:
        return DOC_PREFIX + self.sha256


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through it.

    Hashing while writing means a download or a build is read exactly once.
    """

    def __init__(self, dest: IO[bytes]):
        self.dest = dest
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.hash.update(data)
        self.size += len(data)
        self.dest.write(data)
        return len(data)


def _walk(folder: Path) -> Iterator[Tuple[str, Path]]:
    """(archive name, path) of every entry below ``folder``, sorted, directories first."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE)
        rel_dir = Path(dirpath).relative_to(folder)
        entries = sorted([d for d in dirnames] + [f for f in filenames if f not in EXCLUDE
                                                  and not f.endswith((".pyc", ".pyo"))])
        for name in entries:
            rel = (rel_dir / name).as_posix()
            yield rel, Path(dirpath) / name


def _tarinfo(name: str, path: Path, folder: Path) -> tarfile.TarInfo:
    st = os.lstat(path)
    ti = tarfile.TarInfo(name)
    ti.mtime = FIXED_MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    if stat.S_ISDIR(st.st_mode):
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        resolved = (path.parent / target).resolve()
        if os.path.isabs(target) or not _is_within(resolved, folder.resolve()):
            raise SandboxError(f"{path}: symbolic link to {target!r} leads outside the sandbox folder",
                               SANDBOX_UNSAFE)
        ti.type = tarfile.SYMTYPE
        ti.linkname = target
        ti.mode = 0o777
    elif stat.S_ISREG(st.st_mode):
        ti.type = tarfile.REGTYPE
        ti.size = st.st_size
        ti.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    else:
        raise SandboxError(f"{path}: not a regular file, directory or symbolic link", SANDBOX_UNSAFE)
    return ti


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def build_archive(folder: Union[str, Path], dest: IO[bytes]) -> BuiltSandbox:
    """Pack ``folder`` reproducibly into ``dest`` (a binary file object).

    Same content => same bytes => same sha256, whatever the files' mtimes,
    owners or the order the file system lists them in.  Modes are normalised
    to 0755 (directories, executables) and 0644 (other files), so a checkout
    with a different umask gives the same hash.  Byte-identical output across
    different zlib versions is not guaranteed (it is the same on one machine).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SandboxError(f"{folder}: not a directory", BAD_TOKEN)
    entries = list(_walk(folder))
    if not entries:
        raise SandboxError(f"{folder}: empty sandbox folder", BAD_TOKEN)
    infos = [(_tarinfo(name, path, folder), path) for name, path in entries]  # validate first
    writer = _HashingWriter(dest)
    buffered = io.BufferedWriter(writer, buffer_size=_CHUNK)
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffered, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for ti, path in infos:
                if ti.isreg():
                    with open(path, "rb") as fh:
                        tar.addfile(ti, fh)
                else:
                    tar.addfile(ti)
    buffered.flush()
    files = [ti.name for ti, _ in infos if not ti.isdir()]
    return BuiltSandbox(name=folder.resolve().name, sha256=writer.hash.hexdigest(), size=writer.size,
                        files=files)


def upload(db: "Database", built: BuiltSandbox, archive: Union[str, Path]) -> bool:
    """Store ``archive`` as sandbox ``built.sha256`` unless it is already there.

    Returns True when something was uploaded.  The document is written first,
    the attachment (streamed from disk) second; a document without its
    attachment -- an upload cut short -- is completed by the next build.
    """
    from ..couch import Conflict

    doc_id = built.doc_id
    for _ in range(5):
        doc = db.get_or_none(doc_id)
        if doc is not None:
            att = (doc.get("_attachments") or {}).get(ATTACHMENT)
            if att and int(att.get("length", -1)) == built.size:
                return False
            rev = doc["_rev"]
        else:
            doc = {"_id": doc_id, "kind": "sandbox", "schema": 1, "name": built.name,
                   "sha256": built.sha256, "size": built.size, "created": time.time(),
                   "files": built.files}
            try:
                rev = db.put(doc)
            except Conflict:
                continue  # a concurrent build of the same content: re-read
        with open(archive, "rb") as fh:
            try:
                db.put_attachment(doc_id, rev, ATTACHMENT, fh, content_type="application/gzip")
            except Conflict:
                continue
        return True
    raise SandboxError(f"could not store {doc_id}: it kept changing under us", SANDBOX_DOWNLOAD)


def build(folder: Union[str, Path], db: Optional["Database"] = None, *, output: Optional[Union[str, Path]] = None
          ) -> BuiltSandbox:
    """Pack ``folder``; upload it to ``db`` if given; keep the tarball at ``output`` if given."""
    folder = Path(folder)
    out_dir = Path(output).resolve().parent if output else None
    fd, tmp = tempfile.mkstemp(prefix=".lrt-sandbox-", suffix=".tar.gz", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            built = build_archive(folder, fh)
        if db is not None:
            built.uploaded = upload(db, built, tmp)
        if output:
            os.replace(tmp, output)
            built.path = Path(output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return built


def list_sandboxes(db: "Database") -> List[Dict[str, Any]]:
    """Every sandbox document (ids are prefixed, so ``_all_docs`` needs no view)."""
    res = db.all_docs(startkey=DOC_PREFIX, endkey=DOC_PREFIX + "\ufff0", include_docs=True)
    out = []
    for row in res.get("rows", []):
        doc = row.get("doc") or {}
        if doc.get("kind") != "sandbox":
            continue
        att = (doc.get("_attachments") or {}).get(ATTACHMENT)
        out.append({"sha256": doc.get("sha256"), "name": doc.get("name"), "size": doc.get("size"),
                    "created": doc.get("created"), "files": len(doc.get("files") or []),
                    "complete": bool(att and int(att.get("length", -1)) == doc.get("size"))})
    return out


# ---------------------------------------------------------------------------
# fetching


def check_sha256(sha256: Any) -> str:
    """The normalised (lower-case) hash, or :class:`SandboxError` (51 BAD_TOKEN)."""
    if not isinstance(sha256, str) or not _SHA_RE.match(sha256.lower()):
        raise SandboxError(f"sandbox sha256 must be 64 hexadecimal digits, got {sha256!r}", BAD_TOKEN)
    return sha256.lower()


def default_cache_dir() -> Path:
    """``$LRT_SANDBOX_CACHE``, else a per-user folder in the node's temp dir.

    Node-local on purpose: every pilot of this user on the node shares it, so a
    sandbox is downloaded once per node, not once per pilot.
    """
    env = os.environ.get("LRT_SANDBOX_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(tempfile.gettempdir()) / f"lrt-sandboxes-{os.getuid()}"


def _prepare_cache(cache_dir: Path) -> None:
    """Create the cache (0700) and refuse one that someone else could have filled."""
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.stat(cache_dir)
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SandboxError(f"sandbox cache {cache_dir} is not owned by this user or is writable by "
                           "others; refusing to trust its contents", SANDBOX_UNSAFE)


class _Lock:
    """An exclusive ``flock`` on ``path``; a no-op where flock is unavailable.

    Correctness never depends on it (renames are atomic); it only saves
    duplicate downloads when many pilots start at once.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd: Optional[int] = None

    def __enter__(self) -> "_Lock":
        try:
            import fcntl

            self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            # removed while held, so no lock file is left behind (a refused or a finished
            # fetch alike); a pilot waiting on the old file then downloads again at worst
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)  # closing releases the lock


def _download_to(db: Optional["Database"], sha256: str, url: Optional[str], dest: IO[bytes],
                 options: "Optional[TransferOptions]" = None) -> None:
    """Write the sandbox's bytes into ``dest`` from ``url`` or the database attachment."""
    if url is None:
        from ..couch import CouchError, NotFound

        if db is None:
            raise SandboxError(f"sandbox {sha256[:12]}: no URL and no database to fetch it from")
        try:
            db.get_attachment(DOC_PREFIX + sha256, ATTACHMENT, dest=dest)
        except NotFound:
            raise SandboxError(f"sandbox {sha256[:12]} is not in database {db.name} (no document "
                               f"{DOC_PREFIX}{sha256} with attachment {ATTACHMENT}); upload it with "
                               "`lrt sandbox build FOLDER`") from None
        except CouchError as exc:
            raise SandboxError(f"sandbox {sha256[:12]}: download from CouchDB failed: {exc}") from None
        return
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        import requests

        try:
            with requests.get(url, stream=True, timeout=(30, 300)) as resp:
                if resp.status_code != 200:
                    raise SandboxError(f"sandbox {sha256[:12]}: GET {_redact(url)} answered "
                                       f"HTTP {resp.status_code}")
                for chunk in resp.iter_content(_CHUNK):
                    dest.write(chunk)
        except requests.RequestException as exc:
            raise SandboxError(f"sandbox {sha256[:12]}: GET {_redact(url)} failed: "
                               f"{type(exc).__name__}") from None
        return
    from .. import transfer

    try:
        kind = transfer.backend_name(url)
    except transfer.TransferError:
        raise SandboxError(f"sandbox URL {_redact(url)!r} has no scheme (want https://, file://, "
                           "root://, rclone://REMOTE/path, ...)", BAD_TOKEN) from None
    if kind == transfer.GFAL2:
        _gfal2_download(url, sha256, dest, options)
        return
    try:
        session = transfer.Session(options or transfer.TransferOptions.from_env())
        session.for_url(url).read(url, dest)
    except transfer.TransferError as exc:
        if exc.failure is transfer.Failure.UNSUPPORTED:
            raise SandboxError(f"sandbox URL: {exc.reason}", BAD_TOKEN) from None
        raise SandboxError(f"sandbox {sha256[:12]}: {exc.reason}") from None
    except LrtError as exc:  # settings (ConfigError)
        raise SandboxError(f"sandbox {sha256[:12]}: {exc}") from None


def _redact(url: str) -> str:
    """The URL without credentials or query string (which may hold tokens)."""
    from ..couch import redact_url

    return redact_url(url, keep_query=False)


def _gfal2_download(url: str, sha256: str, dest: IO[bytes],
                    options: "Optional[TransferOptions]" = None) -> None:
    """Read ``url`` through gfal2 (root://, srm://, davs://, s3://, ...)."""
    from .. import transfer
    from ..transfer.gfal2 import Gfal2Transfer

    try:
        backend = Gfal2Transfer(options or transfer.TransferOptions())
    except transfer.TransferError:
        raise SandboxError(f"sandbox URL {_redact(url)} needs the gfal2 Python bindings "
                           "(Debian/EL package python3-gfal2), which are not installed") from None
    try:
        backend.read(url, dest)
    except transfer.TransferError as exc:
        raise SandboxError(f"sandbox {sha256[:12]}: gfal2 read of {_redact(url)} failed: "
                           f"{exc.reason}") from None


@dataclass
class FetchResult:
    """What :func:`fetch` did (the pilot logs it; tests count on it)."""

    path: Path
    downloaded: bool = False
    extracted: bool = False
    size: int = 0
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


def fetch(db: Optional["Database"], sha256: str, cache_dir: Union[str, Path], url: Optional[str] = None,
          options: "Optional[TransferOptions]" = None) -> FetchResult:
    """Make ``<cache_dir>/<sha256>/`` exist (download, verify, check, extract once).

    ``options`` (:class:`lrt.transfer.TransferOptions`) are the transfer settings
    for URL sources other than http(s); default: from the environment, read now.
    """
    t0 = time.monotonic()
    sha256 = check_sha256(sha256)
    cache_dir = Path(cache_dir)
    final = cache_dir / sha256
    _prepare_cache(cache_dir)  # also on a cache hit: an untrusted cache is never used
    if final.is_dir():
        return FetchResult(final)
    result = FetchResult(final)
    with _Lock(cache_dir / f".{sha256}.lock"):
        if final.is_dir():  # another pilot finished while we waited
            return result
        archive = cache_dir / f".{sha256}.tar.gz"
        if not archive.exists():  # verified archives only ever get this name
            fd, tmp = tempfile.mkstemp(prefix=f".{sha256[:12]}-", suffix=".part", dir=cache_dir)
            try:
                try:
                    with os.fdopen(fd, "wb") as fh:
                        writer = _HashingWriter(fh)
                        _download_to(db, sha256, url, writer, options)  # type: ignore[arg-type]
                except OSError as exc:  # e.g. the node's disk is full
                    raise SandboxError(f"sandbox {sha256[:12]}: writing the download into {cache_dir} "
                                       f"failed: {exc}") from None
                got = writer.hash.hexdigest()
                if got != sha256:
                    raise SandboxError(f"sandbox {sha256[:12]}: downloaded {writer.size} bytes "
                                       f"hash to {got[:12]}..., not {sha256[:12]}... "
                                       f"(source: {_redact(url) if url else 'CouchDB attachment'})",
                                       SANDBOX_HASH)
                os.replace(tmp, archive)
                result.downloaded, result.size = True, writer.size
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", suffix=".x", dir=cache_dir))
        try:
            try:
                extract(archive, tmpdir)
            except OSError as exc:
                raise SandboxError(f"sandbox {sha256[:12]}: extracting into {cache_dir} failed: {exc}"
                                   ) from None
            try:
                os.rename(tmpdir, final)
                result.extracted = True
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                    raise
                result.notes.append("another pilot extracted it first")
        except SandboxError as exc:
            if exc.code == SANDBOX_UNSAFE:
                archive.unlink()  # hostile content: do not keep it around
            raise
        finally:
            if tmpdir.exists():
                shutil.rmtree(tmpdir, ignore_errors=True)
        try:
            archive.unlink()  # extracted: the tarball is no longer needed
        except OSError:
            pass
    result.seconds = time.monotonic() - t0
    return result


def fetch_sandbox(db: Optional["Database"], sha256: str, cache_dir: Union[str, Path], url: Optional[str] = None,
                  options: "Optional[TransferOptions]" = None) -> Path:
    """The extracted sandbox directory, downloading and checking it the first time.

    ``db`` is the token database (the attachment source) and may be None when
    ``url`` is given.  Raises :class:`SandboxError` with ``code`` 10 (download
    failed), 11 (hash mismatch), 12 (unsafe archive) or 51 (malformed hash).
    """
    return fetch(db, sha256, cache_dir, url, options).path


# ---------------------------------------------------------------------------
# checking and extracting


def _split(name: str) -> List[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _resolve(parts: Sequence[str], links: Dict[str, str], depth: int = 0) -> Optional[List[str]]:
    """Resolve ``parts`` (relative to the sandbox root) through the archive's symlinks.

    Returns the resolved components, or None if the path leaves the root at any
    step.  This follows links exactly like the kernel would after extraction,
    so chains such as ``a -> ..`` plus ``b -> a/..`` are caught even though each
    target looks harmless on its own.
    """
    if depth > MAX_LINK_DEPTH:
        return None
    stack: List[str] = []
    for comp in parts:
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(comp)
        target = links.get("/".join(stack))
        if target is not None:
            if target.startswith("/"):
                return None
            resolved = _resolve(stack[:-1] + target.split("/"), links, depth + 1)
            if resolved is None:
                return None
            stack = resolved
    return stack


def check_members(members: Sequence[tarfile.TarInfo]) -> None:
    """Refuse an archive that could write or point outside its extraction dir.

    Raises :class:`SandboxError` (code 12) naming the first offending member.
    Nothing has been written when this runs.  A leading ``./`` entry (what
    ``tar -C dir -czf x.tgz .`` makes) is the root itself and is allowed.
    """
    def bad(m: tarfile.TarInfo, why: str) -> SandboxError:
        return SandboxError(f"unsafe sandbox archive: member {m.name!r} {why}", SANDBOX_UNSAFE)

    seen: Dict[str, Tuple[int, tarfile.TarInfo]] = {}
    links: Dict[str, str] = {}
    limit, total = max_extracted_bytes(), 0
    for pos, m in enumerate(members):
        name = m.name
        if m.isreg():
            total += m.size
            if total > limit:
                raise bad(m, f"takes the extracted size past {limit} bytes "
                             "(LRT_SANDBOX_MAX_BYTES)")
        if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
            raise bad(m, "has an absolute path")
        if "\\" in name:
            raise bad(m, "contains a backslash")
        if "\x00" in name:
            raise bad(m, "contains a NUL byte")
        parts = _split(name)
        if ".." in parts:
            raise bad(m, "contains '..'")
        if m.ischr() or m.isblk():
            raise bad(m, "is a device file")
        if m.isfifo():
            raise bad(m, "is a FIFO")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise bad(m, f"has an unsupported type {m.type!r}")
        if not parts:
            if m.isdir():
                continue  # "./": the extraction directory itself
            raise bad(m, "has an empty name")
        key = "/".join(parts)
        if key in seen:
            if m.isdir() and seen[key][1].isdir():
                continue  # a directory listed twice is harmless
            raise bad(m, "appears twice (a later entry would replace the first)")
        seen[key] = (pos, m)
        if m.issym():
            links[key] = m.linkname
    for pos, m in enumerate(members):
        parts = _split(m.name)
        # nothing may be written through a symlink, even one that stays inside
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise bad(m, f"lies below the symbolic link {'/'.join(parts[:i])!r}")
        if m.issym():
            target = m.linkname
            if not target:
                raise bad(m, "is a symbolic link with an empty target")
            if target.startswith("/"):
                raise bad(m, f"is a symbolic link to the absolute path {target!r}")
            if _resolve(parts[:-1] + target.split("/"), links) is None:
                raise bad(m, f"is a symbolic link to {target!r}, which leads outside the sandbox")
        elif m.islnk():
            target = m.linkname
            tparts = _split(target)
            if target.startswith("/") or not tparts or ".." in tparts:
                raise bad(m, f"is a hard link to {target!r}, outside the sandbox")
            for i in range(1, len(tparts) + 1):
                if "/".join(tparts[:i]) in links:
                    raise bad(m, f"is a hard link through the symbolic link {'/'.join(tparts[:i])!r}")
            found = seen.get("/".join(tparts))
            if found is None or not found[1].isreg() or found[0] > pos:
                raise bad(m, f"is a hard link to {target!r}, which is not an earlier regular file "
                             "of the archive")


def extract(archive: Union[str, Path], dest: Union[str, Path]) -> List[str]:
    """Check every member of ``archive``, then extract it into the empty dir ``dest``.

    Returns the member names.  Permission bits are kept only within 0o777
    (setuid, setgid and sticky bits are dropped), files are created with
    ``O_EXCL|O_NOFOLLOW`` and owned by the extracting user.
    """
    dest = Path(dest)
    try:
        tf = tarfile.open(str(archive), mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SandboxError(f"sandbox archive is not a readable tar file: {exc}", SANDBOX_UNSAFE) from None
    with tf:
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise SandboxError(f"sandbox archive is corrupt: {exc}", SANDBOX_UNSAFE) from None
        check_members(members)
        root_fd_path = str(dest)
        for m in members:
            if not _split(m.name):
                continue  # "./"
            target = os.path.join(root_fd_path, *_split(m.name))
            mode = m.mode & 0o777
            if m.isdir():
                os.makedirs(target, mode=0o700, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            if m.isreg():
                src = tf.extractfile(m)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                             0o600)
                with os.fdopen(fd, "wb") as out:
                    if src is not None:
                        shutil.copyfileobj(src, out, _CHUNK)
                os.chmod(target, mode | stat.S_IRUSR)
            elif m.issym():
                os.symlink(m.linkname, target)
            elif m.islnk():
                os.link(os.path.join(root_fd_path, *_split(m.linkname)), target, follow_symlinks=False)
        # directory modes last, so a read-only directory does not block its own files
        for m in members:
            if m.isdir() and _split(m.name):
                os.chmod(os.path.join(root_fd_path, *_split(m.name)),
                         (m.mode & 0o777) | stat.S_IRWXU)
        return [m.name for m in members]


# ---------------------------------------------------------------------------
# running a payload from a sandbox


def resolve_command(command: Sequence[str], sandbox: Optional[Union[str, Path]]) -> List[str]:
    """The argv the pilot executes for ``command`` given the extracted ``sandbox``.

    The one rule: if ``command[0]`` is a relative path (no leading ``/``) that
    names an existing regular file inside the sandbox, it is replaced by that
    file's absolute path.  Everything else is left alone: other arguments are
    never rewritten (no templating), ``python3`` and other bare names that are
    not files in the sandbox are found on ``PATH`` as usual.  The payload runs
    with ``cwd`` = its work directory and ``LRT_SANDBOX`` = the sandbox dir.
    """
    argv = [str(a) for a in command]
    if not argv or sandbox is None:
        return argv
    first = argv[0]
    if first and not first.startswith("/"):
        root = Path(sandbox).resolve()
        candidate = (root / first).resolve()
        if _is_within(candidate, root) and candidate.is_file():
            argv[0] = str(candidate)
    return argv


def token_sandbox(token: Dict[str, Any]) -> Optional[Tuple[str, Optional[str]]]:
    """(sha256, url) from a token's ``sandbox`` field, None if it has none.

    Raises :class:`SandboxError` (51 BAD_TOKEN) for a malformed field, so a
    pilot can fail the token with a clear message before downloading anything.
    """
    sb = token.get("sandbox")
    if sb is None:
        return None
    if not isinstance(sb, dict):
        raise SandboxError(f"token sandbox field must be an object, got {type(sb).__name__}", BAD_TOKEN)
    url = sb.get("url")
    if url is not None and not isinstance(url, str):
        raise SandboxError("token sandbox url must be a string", BAD_TOKEN)
    return check_sha256(sb.get("sha256")), url


def describe(result: FetchResult) -> str:
    """One log line about a fetch."""
    what = []
    if result.downloaded:
        what.append(f"downloaded {result.size} bytes")
    if result.extracted:
        what.append("extracted")
    if not what:
        what.append("cached")
    return f"sandbox {result.path.name[:12]}: {', '.join(what + result.notes)} -> {result.path}"


__all__ = ["ATTACHMENT", "BuiltSandbox", "FetchResult", "SandboxError", "build", "build_archive",
           "check_members", "check_sha256", "default_cache_dir", "describe", "extract", "fetch",
           "fetch_sandbox", "list_sandboxes", "resolve_command", "token_sandbox", "upload"]
