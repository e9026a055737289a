"""Stage-in and stage-out for the pilot: inputs into the work directory, outputs out.

This is the interface the pilot calls (keep the signatures):

* :func:`stage_in` copies every ``doc["inputs"][i]["url"]`` into the work
  directory through the transfer backend of its URL (:mod:`lrt.transfer`:
  ``file://``, rclone remotes, gfal2 for the rest), verifying checksums (the
  token's expected value, else the source's own when it offers one), with retries.
* :func:`stage_out` publishes the declared outputs *exactly once* even when an
  attempt is duplicated, paused or killed: each file is uploaded under an
  attempt-scoped temporary name (``<name>.lrt-tmp-<attempt_id>``), and only
  when everything is uploaded, and ``still_holding()`` says this attempt still
  owns the token, is it committed by rename.  A commit never overwrites: a final
  name that already exists was published by another attempt of the same token,
  and this attempt drops its temporaries and reports the existing file.

  No-overwrite commit: on ``file://`` destinations (local or shared file
  systems) a hard link -- atomic, fails if the name exists -- then removing the
  temporary, so even two attempts that both believe they hold the token publish
  once.  Remote storage (XRootD, WebDAV, S3 through gfal2 or rclone) offers no
  rename-if-absent (rename replaces; gfal2's mkdir and no-overwrite copy check
  then act, and a losing copy deletes the winner's file -- measured), so there
  the lease is the fence: ``still_holding()`` right before each rename, then
  exists-check and rename (atomic: readers see the old name absent or a
  complete file).

Settings (retries, backoff, timeouts, rclone's) are a
:class:`~lrt.transfer.TransferOptions`; without one, each call builds it from
the environment (``LRT_STAGE_*``, ``LRT_RCLONE*``) when it starts.  Backends are
loaded only for the URLs a token uses: the pilot path imports only the
standard library, requests and pyyaml unless a token actually stages data.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .. import errorcodes
from ..errors import ConfigError, StageInError, StageOutError
from ..transfer import (TMP_MARK, Checksum, Failure, Session, Transfer, TransferError,
                        TransferOptions, Verify, backend_name, file_checksum, file_name, join)

log = logging.getLogger("lrt.staging")

STAGE_IN_FAILED = errorcodes.get("STAGE_IN_FAILED").code
DATA_NOT_ONLINE = errorcodes.get("DATA_NOT_ONLINE").code
CHECKSUM_MISMATCH = errorcodes.get("CHECKSUM_MISMATCH").code
STAGE_OUT_FAILED = errorcodes.get("STAGE_OUT_FAILED").code
LEASE_LOST = errorcodes.get("LEASE_LOST").code
#: tape states in which an input cannot be copied now
NOT_ONLINE = ("NEARLINE", "LOST", "UNAVAILABLE")


def adler32_file(path: Path) -> str:
    """adler32 of a local file as 8 hex digits (the form gfal2 and XRootD use)."""
    return file_checksum(path, "adler32")


def _options(options: Optional[TransferOptions], exc_cls: type, code: int) -> TransferOptions:
    if options is not None:
        return options
    try:
        return TransferOptions.from_env()
    except ConfigError as exc:
        raise exc_cls(f"staging settings: {exc}", code, {}) from None


def _backend(session: Session, url: str, exc_cls: type, code: int) -> Transfer:
    """The backend for ``url``, or the stage error saying what is missing on this node."""
    try:
        return session.for_url(url)
    except TransferError as exc:
        if exc.failure is Failure.MISSING:
            raise exc_cls(f"this token stages data but {exc.reason}", code, {url: exc.reason}) from None
        raise exc_cls(f"{url}: {exc.reason}", code, {url: exc.reason}) from None


def _backoff(options: TransferOptions, attempt: int) -> None:
    time.sleep(options.backoff * (2 ** (attempt - 1)))


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------
# stage-in


def _input_name(url: str) -> str:
    try:
        name = file_name(url)
    except TransferError as exc:
        raise StageInError(f"input {url}: {exc.reason}", STAGE_IN_FAILED, {url: exc.reason}) from None
    if not name:
        raise StageInError(f"input {url}: no file name in the URL", STAGE_IN_FAILED,
                           {url: "no file name"})
    return name


def _parse_checksum(value: Optional[str], url: str) -> Optional[Checksum]:
    try:
        return Checksum.parse(value)
    except ValueError:
        raise StageInError(f"input {url}: checksum {value!r} is not 'algorithm:hex'",
                           STAGE_IN_FAILED, {url: "malformed checksum"}) from None


def stage_in(doc: dict, workdir: Path, options: Optional[TransferOptions] = None) -> None:
    """Copy the token's inputs into ``workdir`` (by base name), checksums verified.

    Raises :class:`StageInError` with code 22 when an input is on tape only
    (the token should have gone through ``staging``), 23 on a checksum
    mismatch, 21 for every other failure; ``per_file`` maps URL -> reason.
    Nothing is half-written: a failed copy leaves no file behind.
    """
    inputs = doc.get("inputs") or []
    if not inputs:
        return
    workdir = Path(workdir)
    plan = []
    names: Dict[str, str] = {}
    for item in inputs:  # validate everything before the first copy
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url:
            raise StageInError(f"malformed input entry {item!r}", STAGE_IN_FAILED, {})
        name = _input_name(url)
        if name in names and names[name] != url:
            raise StageInError(f"inputs {names[name]} and {url} have the same file name {name!r}",
                               STAGE_IN_FAILED, {url: "duplicate file name"})
        names[name] = url
        plan.append((url, workdir / name, _parse_checksum(item.get("checksum"), url)))

    opts = _options(options, StageInError, STAGE_IN_FAILED)
    session = Session(opts)
    backends = [_backend(session, url, StageInError, STAGE_IN_FAILED) for url, _, _ in plan]
    workdir.mkdir(parents=True, exist_ok=True)
    failed: Dict[str, str] = {}
    codes: Dict[str, int] = {}
    for backend, (url, dest, expected) in zip(backends, plan):
        code, reason = _copy_in(backend, opts, url, dest, expected)
        if code:
            failed[url] = reason
            codes[url] = code
    if failed:
        worst = (CHECKSUM_MISMATCH if CHECKSUM_MISMATCH in codes.values() else
                 DATA_NOT_ONLINE if DATA_NOT_ONLINE in codes.values() else STAGE_IN_FAILED)
        first = next(iter(failed.items()))
        raise StageInError(f"stage-in failed for {len(failed)} of {len(plan)} input(s); "
                           f"first: {first[0]}: {first[1]}", worst, failed)


def _copy_in(backend: Transfer, opts: TransferOptions, url: str, dest: Path,
             expected: Optional[Checksum]) -> Tuple[int, str]:
    """Copy one input with retries; (0, "") or (error code, reason)."""
    # Not online (tape only)?  Copying would block on a recall or fail obscurely.
    status = backend.status(url)
    if status in NOT_ONLINE:
        return DATA_NOT_ONLINE, f"input is {status}, not online"
    reason, code = "", STAGE_IN_FAILED
    for attempt in range(1, opts.retries + 1):
        try:
            verified = backend.copy_in(url, dest, expected)
        except TransferError as exc:
            reason = exc.reason
            _remove_quietly(dest)
            if exc.failure is Failure.CHECKSUM:
                if expected:  # the source does not hold what the token expects: retrying won't help
                    return CHECKSUM_MISMATCH, f"checksum mismatch (expected {expected}): {reason}"
                code = CHECKSUM_MISMATCH
            elif exc.failure in (Failure.NOT_FOUND, Failure.UNSUPPORTED, Failure.MISSING):
                return STAGE_IN_FAILED, reason
            else:
                code = STAGE_IN_FAILED
            log.warning("stage-in %s: attempt %d/%d failed: %s", url, attempt, opts.retries, reason)
            if attempt < opts.retries:
                _backoff(opts, attempt)
            continue
        if verified.how is Verify.SIZE:
            log.warning("stage-in %s: verified by size only (no checksum to compare)", url)
        return 0, ""
    return code, reason


# ---------------------------------------------------------------------------------------
# stage-out


def _collect(outputs: dict, workdir: Path) -> List[Tuple[Path, str]]:
    globs = outputs.get("globs") or []
    if isinstance(globs, str):
        globs = [globs]
    found: Dict[str, Path] = {}
    for pattern in globs:
        if not isinstance(pattern, str) or pattern.startswith("/") or ".." in Path(pattern).parts:
            raise StageOutError(f"output glob {pattern!r} must be relative to the work directory",
                                STAGE_OUT_FAILED, {})
        matches = [p for p in sorted(workdir.glob(pattern))
                   if p.is_file() and TMP_MARK not in p.name]
        if not matches:
            raise StageOutError(f"declared output {pattern!r} matched no file in the work directory",
                                STAGE_OUT_FAILED, {pattern: "no match"})
        for p in matches:
            found[p.relative_to(workdir).as_posix()] = p
    return [(p, rel) for rel, p in sorted(found.items())]


def _dest_prefix(outputs: object) -> str:
    dest = outputs.get("dest") if isinstance(outputs, dict) else None
    if isinstance(dest, str) and dest:
        try:
            backend_name(dest)
            return dest
        except TransferError:
            pass
    raise StageOutError(f"outputs.dest {dest!r} is not a URL prefix (scheme://... or "
                        "rclone://REMOTE/path or REMOTE:path)", STAGE_OUT_FAILED, {})


def stage_out(doc: dict, workdir: Path, attempt_id: str, still_holding: Callable[[], bool],
              options: Optional[TransferOptions] = None) -> List[dict]:
    """Upload the declared outputs and publish them exactly once.

    Returns ``[{"url", "checksum", "size"}]`` for every output (also those an
    earlier attempt already published).  Raises :class:`StageOutError`: code 30
    when uploading or committing failed, code 40 when ``still_holding()`` said
    this attempt lost the token -- then nothing of this attempt is published and
    its temporaries are removed.
    """
    outputs = doc.get("outputs")
    if not outputs:
        return []
    dest = _dest_prefix(outputs)
    if not attempt_id or "/" in attempt_id:
        raise StageOutError(f"bad attempt id {attempt_id!r}", STAGE_OUT_FAILED, {})
    workdir = Path(workdir)
    files = _collect(outputs, workdir)
    if not files:
        return []
    opts = _options(options, StageOutError, STAGE_OUT_FAILED)
    backend = _backend(Session(opts), dest, StageOutError, STAGE_OUT_FAILED)

    uploaded: List[Tuple[str, str, str, int]] = []  # (tmp url, final url, adler32, size)
    try:
        for path, rel in files:
            final = join(dest, rel)
            tmp = final + TMP_MARK + attempt_id
            checksum = adler32_file(path)
            size = path.stat().st_size
            _upload(backend, opts, path, tmp, checksum)
            uploaded.append((tmp, final, checksum, size))
    except StageOutError:
        _cleanup(backend, [u[0] for u in uploaded])
        raise

    refs: List[dict] = []
    for i, (tmp, final, checksum, size) in enumerate(uploaded):
        if not still_holding():
            _cleanup(backend, [u[0] for u in uploaded[i:]])
            log.warning("stage-out: attempt %s no longer holds the token; %d output(s) not "
                        "published, temporaries removed", attempt_id, len(uploaded) - i)
            raise StageOutError("this attempt no longer holds the token: outputs not published, "
                                "temporaries removed", LEASE_LOST,
                                {u[1]: "not committed (lease lost)" for u in uploaded[i:]})
        try:
            won = backend.commit(tmp, final)
        except TransferError as exc:
            _cleanup(backend, [u[0] for u in uploaded[i:]])
            raise StageOutError(exc.reason, STAGE_OUT_FAILED, {final: exc.reason}) from None
        if won:
            refs.append({"url": final, "checksum": f"adler32:{checksum}", "size": size})
        else:
            log.warning("stage-out: %s was already published by another attempt; kept it", final)
            refs.append(_existing_ref(backend, final))
    return refs


def _upload(backend: Transfer, opts: TransferOptions, path: Path, tmp: str, checksum: str) -> None:
    reason = ""
    for attempt in range(1, opts.retries + 1):
        try:
            verified = backend.copy_out(path, tmp, Checksum("adler32", checksum))
        except TransferError as exc:
            reason = exc.reason
            log.warning("stage-out %s: attempt %d/%d failed: %s", tmp, attempt, opts.retries, reason)
            if exc.failure in (Failure.UNSUPPORTED, Failure.MISSING):
                break
            if attempt < opts.retries:
                _backoff(opts, attempt)
            continue
        if verified.how is Verify.SIZE:
            log.warning("stage-out %s: verified by size only (the destination offers no checksum)", tmp)
        return
    raise StageOutError(f"upload of {path.name} failed: {reason}", STAGE_OUT_FAILED, {tmp: reason})


def _existing_ref(backend: Transfer, url: str) -> dict:
    ref: Dict[str, object] = {"url": url, "checksum": None, "size": None}
    try:
        st = backend.stat(url)
        if st is not None:
            ref["size"] = st.size
        value = backend.checksum(url, "adler32")
        if value is not None:
            ref["checksum"] = f"adler32:{value}"
        elif st is not None and st.hashes:
            algo, value = sorted(st.hashes.items())[0]
            ref["checksum"] = f"{algo}:{value}"
    except TransferError:
        pass
    return ref


def _cleanup(backend: Transfer, urls: List[str]) -> None:
    for u in urls:
        try:
            backend.delete(u)
        except TransferError as exc:
            log.warning("stage-out: could not remove temporary %s: %s", u, exc.reason)
