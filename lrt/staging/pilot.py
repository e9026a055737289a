"""Stage-in and stage-out for the pilot: inputs into the work directory, outputs out.

This is the interface the pilot calls (keep the signatures):

* :func:`stage_in` copies every ``doc["inputs"][i]["url"]`` into the work
  directory through gfal2, verifying adler32 checksums (the token's expected
  value, else the source's own when it offers one), with retries.
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
  once.  Remote storage (XRootD, WebDAV, S3) offers gfal2 no rename-if-absent
  (rename replaces; gfal2's mkdir and no-overwrite copy check then act, and a
  losing copy deletes the winner's file -- measured), so there the lease is the
  fence: ``still_holding()`` right before each rename, then exists-check and
  rename (atomic: readers see the old name absent or a complete file).

gfal2 is imported lazily inside the functions: the pilot path imports only the
standard library, requests and pyyaml unless a token actually stages data.
"""
from __future__ import annotations

import errno
import logging
import os
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import errorcodes
from ..errors import StageInError, StageOutError

log = logging.getLogger("lrt.staging")

#: attempts per file (first try included) and the base of the exponential backoff
RETRIES = int(os.environ.get("LRT_STAGE_RETRIES", "3"))
BACKOFF = float(os.environ.get("LRT_STAGE_BACKOFF", "2"))
#: seconds gfal2 may spend on one transfer
TRANSFER_TIMEOUT = int(os.environ.get("LRT_STAGE_TIMEOUT", "3600"))
TMP_MARK = ".lrt-tmp-"

STAGE_IN_FAILED = errorcodes.get("STAGE_IN_FAILED").code
DATA_NOT_ONLINE = errorcodes.get("DATA_NOT_ONLINE").code
CHECKSUM_MISMATCH = errorcodes.get("CHECKSUM_MISMATCH").code
STAGE_OUT_FAILED = errorcodes.get("STAGE_OUT_FAILED").code
LEASE_LOST = errorcodes.get("LEASE_LOST").code


def _gfal2(exc_cls: type, code: int) -> Any:
    try:
        import gfal2
    except ImportError as exc:
        raise exc_cls(f"this token stages data but gfal2's Python bindings are not importable "
                      f"on this node ({exc}); install python3-gfal2 (docs/staging.md)", code) from None
    return gfal2


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    msg = getattr(exc, "message", None) or str(exc)
    return f"[{code}] {msg}" if code is not None else msg


def _is_checksum_error(exc: BaseException) -> bool:
    msg = (getattr(exc, "message", None) or str(exc)).lower()
    return getattr(exc, "code", None) == errno.EILSEQ or "checksum" in msg


def _parse_checksum(value: Optional[str], url: str) -> Tuple[Optional[str], Optional[str]]:
    """("adler32", "0a1b2c3d") from "adler32:0a1b2c3d"; (None, None) for no checksum."""
    if not value:
        return None, None
    algo, sep, hexval = str(value).partition(":")
    if not sep or not hexval:
        raise StageInError(f"input {url}: checksum {value!r} is not 'algorithm:hex'",
                           STAGE_IN_FAILED, {url: "malformed checksum"})
    return algo.lower(), hexval.lower().zfill(8) if algo.lower() == "adler32" else hexval.lower()


def adler32_file(path: Path, chunk: int = 1 << 20) -> str:
    """adler32 of a local file as 8 hex digits (the form gfal2 and XRootD use)."""
    value = 1
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            value = zlib.adler32(block, value)
    return f"{value & 0xffffffff:08x}"


def _file_url(path: Path) -> str:
    return "file://" + str(path.resolve())


def _local_path(url: str) -> Optional[Path]:
    p = urllib.parse.urlsplit(url)
    return Path(urllib.parse.unquote(p.path)) if p.scheme == "file" else None


def _backoff(attempt: int) -> None:
    time.sleep(BACKOFF * (2 ** (attempt - 1)))


# ---------------------------------------------------------------------------------------
# stage-in


def _input_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    if "SFN=" in url:  # srm://host/srm/managerv2?SFN=/path
        path = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("SFN", [path])[0]
    name = os.path.basename(path.rstrip("/"))
    if not name or name in (".", ".."):
        raise StageInError(f"input {url}: no file name in the URL", STAGE_IN_FAILED,
                           {url: "no file name"})
    return name


def stage_in(doc: dict, workdir: Path) -> None:
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

    gfal2 = _gfal2(StageInError, STAGE_IN_FAILED)
    ctx = gfal2.creat_context()
    workdir.mkdir(parents=True, exist_ok=True)
    failed: Dict[str, str] = {}
    codes: Dict[str, int] = {}
    for url, dest, (algo, expected) in plan:
        code, reason = _copy_in(gfal2, ctx, url, dest, algo, expected)
        if code:
            failed[url] = reason
            codes[url] = code
    if failed:
        worst = (CHECKSUM_MISMATCH if CHECKSUM_MISMATCH in codes.values() else
                 DATA_NOT_ONLINE if DATA_NOT_ONLINE in codes.values() else STAGE_IN_FAILED)
        first = next(iter(failed.items()))
        raise StageInError(f"stage-in failed for {len(failed)} of {len(plan)} input(s); "
                           f"first: {first[0]}: {first[1]}", worst, failed)


def _copy_in(gfal2: Any, ctx: Any, url: str, dest: Path, algo: Optional[str],
             expected: Optional[str]) -> Tuple[int, str]:
    """Copy one input with retries; (0, "") or (error code, reason)."""
    # Not online (tape only)?  Copying would block on a recall or fail obscurely.
    try:
        status = str(ctx.getxattr(url, "user.status")).strip()
    except gfal2.GError:
        status = ""  # protocols without the attribute (file://, http): just copy
    if status in ("NEARLINE", "LOST", "UNAVAILABLE"):
        return DATA_NOT_ONLINE, f"input is {status}, not online"
    if algo is None:
        try:  # verify with the source's own checksum when it offers one
            ctx.checksum(url, "adler32")
            algo = "adler32"
        except gfal2.GError:
            pass
    reason = ""
    for attempt in range(1, RETRIES + 1):
        params = ctx.transfer_parameters()
        params.overwrite = True
        params.timeout = TRANSFER_TIMEOUT
        if algo:
            params.set_checksum(gfal2.checksum_mode.both, algo, expected or "")
        try:
            ctx.filecopy(params, url, _file_url(dest))
            return 0, ""
        except gfal2.GError as exc:
            reason = _reason(exc)
            _remove_quietly(dest)
            if _is_checksum_error(exc):
                if expected:  # the source does not hold what the token expects: retrying won't help
                    return CHECKSUM_MISMATCH, f"checksum mismatch (expected {algo}:{expected}): {reason}"
                code = CHECKSUM_MISMATCH
            elif exc.code == errno.ENOENT:
                return STAGE_IN_FAILED, reason
            else:
                code = STAGE_IN_FAILED
            log.warning("stage-in %s: attempt %d/%d failed: %s", url, attempt, RETRIES, reason)
            if attempt < RETRIES:
                _backoff(attempt)
    return code, reason


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


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


def _join(prefix: str, rel: str) -> str:
    return prefix.rstrip("/") + "/" + rel


def stage_out(doc: dict, workdir: Path, attempt_id: str,
              still_holding: Callable[[], bool]) -> List[dict]:
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
    dest = outputs.get("dest") if isinstance(outputs, dict) else None
    if not isinstance(dest, str) or "://" not in dest:
        raise StageOutError(f"outputs.dest {dest!r} is not a URL prefix", STAGE_OUT_FAILED, {})
    if not attempt_id or "/" in attempt_id:
        raise StageOutError(f"bad attempt id {attempt_id!r}", STAGE_OUT_FAILED, {})
    workdir = Path(workdir)
    files = _collect(outputs, workdir)
    if not files:
        return []
    gfal2 = _gfal2(StageOutError, STAGE_OUT_FAILED)
    ctx = gfal2.creat_context()

    uploaded: List[Tuple[str, str, str, int]] = []  # (tmp url, final url, adler32, size)
    try:
        for path, rel in files:
            final = _join(dest, rel)
            tmp = final + TMP_MARK + attempt_id
            checksum = adler32_file(path)
            size = path.stat().st_size
            _upload(gfal2, ctx, path, tmp, checksum)
            uploaded.append((tmp, final, checksum, size))
    except StageOutError:
        _cleanup(gfal2, ctx, [u[0] for u in uploaded])
        raise

    refs: List[dict] = []
    for i, (tmp, final, checksum, size) in enumerate(uploaded):
        if not still_holding():
            _cleanup(gfal2, ctx, [u[0] for u in uploaded[i:]])
            raise StageOutError("this attempt no longer holds the token: outputs not published, "
                                "temporaries removed", LEASE_LOST,
                                {u[1]: "not committed (lease lost)" for u in uploaded[i:]})
        try:
            won = _commit(gfal2, ctx, tmp, final)
        except StageOutError:
            _cleanup(gfal2, ctx, [u[0] for u in uploaded[i:]])
            raise
        if won:
            refs.append({"url": final, "checksum": f"adler32:{checksum}", "size": size})
        else:
            log.warning("stage-out: %s was already published by another attempt; kept it", final)
            refs.append(_existing_ref(gfal2, ctx, final))
    return refs


def _upload(gfal2: Any, ctx: Any, path: Path, tmp: str, checksum: str) -> None:
    reason = ""
    verify = True
    for attempt in range(1, RETRIES + 1):
        params = ctx.transfer_parameters()
        params.overwrite = True  # the temporary name is ours alone
        params.create_parent = True
        params.timeout = TRANSFER_TIMEOUT
        if verify:
            params.set_checksum(gfal2.checksum_mode.target, "adler32", checksum)
        try:
            ctx.filecopy(params, _file_url(path), tmp)
            return
        except gfal2.GError as exc:
            reason = _reason(exc)
            if verify and exc.code in (errno.ENOTSUP, errno.ENOSYS) and "checksum" in reason.lower():
                verify = False  # the destination cannot compute checksums: size check only
                continue
            log.warning("stage-out %s: attempt %d/%d failed: %s", tmp, attempt, RETRIES, reason)
            if attempt < RETRIES:
                _backoff(attempt)
    raise StageOutError(f"upload of {path.name} failed: {reason}", STAGE_OUT_FAILED, {tmp: reason})


def _exists(gfal2: Any, ctx: Any, url: str) -> bool:
    try:
        ctx.stat(url)
        return True
    except gfal2.GError as exc:
        if exc.code == errno.ENOENT:
            return False
        raise StageOutError(f"cannot check {url}: {_reason(exc)}", STAGE_OUT_FAILED,
                            {url: _reason(exc)}) from None


def _commit(gfal2: Any, ctx: Any, tmp: str, final: str) -> bool:
    """Rename ``tmp`` to ``final`` unless ``final`` exists; True if this call published it."""
    local_tmp, local_final = _local_path(tmp), _local_path(final)
    if local_tmp is not None and local_final is not None:
        try:
            os.link(local_tmp, local_final)  # atomic, never replaces an existing name
        except FileExistsError:
            _remove_quietly(local_tmp)
            return False
        except OSError as exc:
            raise StageOutError(f"cannot commit {final}: {exc}", STAGE_OUT_FAILED,
                                {final: str(exc)}) from None
        _remove_quietly(local_tmp)
        return True

    # gfal2 has no rename-if-absent for remote storage (and its mkdir/copy are
    # check-then-act, not exclusive), so the fence here is the lease: the caller
    # checked still_holding() just before, and two attempts never hold one token's
    # lease at once.  The check below makes a re-run of a finished token
    # (reset, duplicate) keep the published file instead of replacing it.
    if _exists(gfal2, ctx, final):
        _cleanup(gfal2, ctx, [tmp])
        return False
    try:
        ctx.rename(tmp, final)
    except gfal2.GError as exc:
        if _exists(gfal2, ctx, final):  # e.g. a storage that refuses to replace: published
            _cleanup(gfal2, ctx, [tmp])
            return False
        raise StageOutError(f"cannot commit {final}: {_reason(exc)}", STAGE_OUT_FAILED,
                            {final: _reason(exc)}) from None
    return True


def _existing_ref(gfal2: Any, ctx: Any, url: str) -> dict:
    ref: Dict[str, Any] = {"url": url, "checksum": None, "size": None}
    try:
        ref["size"] = int(ctx.stat(url).st_size)
    except gfal2.GError:
        pass
    try:
        ref["checksum"] = "adler32:" + str(ctx.checksum(url, "adler32")).lower().zfill(8)
    except gfal2.GError:
        pass
    return ref


def _cleanup(gfal2: Any, ctx: Any, urls: List[str]) -> None:
    for u in urls:
        try:
            ctx.unlink(u)
        except gfal2.GError as exc:
            if exc.code != errno.ENOENT:
                log.warning("stage-out: could not remove temporary %s: %s", u, _reason(exc))
