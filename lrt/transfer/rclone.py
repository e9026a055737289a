"""rclone remotes (``rclone://REMOTE/path`` or ``REMOTE:path``): S3, Ceph, Acacia, ...

rclone runs as an argv subprocess (never a shell) with a timeout per call.
Remotes are configured the way rclone users do it -- ``RCLONE_CONFIG_<NAME>_*``
environment variables or an rclone config file -- and reach rclone only through
its environment and ``--config``: never through argv, tokens, job scripts or
logs.  Every message taken from rclone's output is passed through
:func:`redact_text`, which blanks the values of credential-looking variables and
config keys (rclone's ``-vv`` prints them).  ``AWS_CA_BUNDLE`` is removed from
rclone's environment (rclone 1.60's S3 client fails on it).

Checksums: after every copy lrt compares the local file with the remote's own
hash (``lsjson --stat --hash``; the first of md5, sha1, sha256, crc32 the
remote supports -- for S3 the MD5 of single-part objects, or the one rclone
stored for its multipart uploads).  Where the remote offers none, sizes are
compared and the log says so.  A token's own checksum (``adler32:...``) is
checked against the local copy.

On-the-fly remotes (``:s3,secret_access_key=...:bucket``) are refused: their
parameters would put credentials into tokens.
"""
from __future__ import annotations

import configparser
import errno as _errno
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import IO, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .base import (_CHUNK, Checksum, Failure, Stat, TransferError, TransferOptions, Verified, Verify,
                   commit_if_absent, file_checksum)

log = logging.getLogger("lrt.transfer")

#: a configured remote's name (rclone: letters, digits, ``_ - . + @`` and space, not first ``-``/space)
_NAME = r"[A-Za-z0-9_][-A-Za-z0-9_.+@ ]*"
_REMOTE_RE = re.compile(rf"^({_NAME}):(.*)$", re.S)
#: hashes lrt can also compute locally, in order of preference
_HASHES = ("md5", "sha1", "sha256", "crc32")
#: rclone exit codes: directory not found, file not found
_NOT_FOUND_CODES = (3, 4)
#: names of variables and config keys whose values are credentials
_SECRET_NAME = re.compile(r"(SECRET|PASS|TOKEN|KEY|CREDENTIAL|SESSION|SAS)", re.I)
_NOT_SECRET = re.compile(r"(_|^)(ENV_AUTH|AUTH_URL|AUTH_VERSION|TYPE|PROVIDER|REGION|ENDPOINT)$", re.I)
#: ``secret_access_key=VALUE``, ``password="VALUE"``, ``"token": "VALUE"`` (not ``NoSuchKey: text``)
_KEY_VALUE = re.compile(r"""(?i)\b([a-z_]*(?:secret|pass|password|token|key|credentials?)[a-z_]*)"""
                        r"""(\s*=\s*"?|"\s*:\s*")([^\s"',;&]+)""")


def is_remote(url: str) -> bool:
    """Does ``url`` name an rclone remote (``rclone://`` or ``REMOTE:path``)?"""
    if "://" in url:
        return url.lower().startswith("rclone://")
    return _REMOTE_RE.match(url) is not None


def parse(url: str) -> Tuple[str, str]:
    """(remote name, path on it) of ``rclone://REMOTE/path`` or ``REMOTE:path``."""
    if url.lower().startswith("rclone://"):
        parts = urllib.parse.urlsplit(url)
        name = urllib.parse.unquote(parts.netloc)
        path = urllib.parse.unquote(parts.path)[1:]  # rclone://loc//abs -> loc:/abs
        if parts.query or parts.fragment:
            raise TransferError("rclone URLs take no query string or fragment "
                                "(remote settings belong in RCLONE_CONFIG_<NAME>_* or the config file)",
                                Failure.UNSUPPORTED)
    else:
        m = _REMOTE_RE.match(url)
        if m is None:
            raise TransferError("not an rclone remote path (want rclone://REMOTE/path or REMOTE:path; "
                                "on-the-fly ':backend,...:' remotes are refused, configure a named remote)",
                                Failure.UNSUPPORTED)
        name, path = m.group(1), m.group(2)
    if not re.fullmatch(_NAME, name or ""):
        raise TransferError("rclone remote name is not a configured remote's name (on-the-fly "
                            "':backend,...:' remotes are refused: configure RCLONE_CONFIG_<NAME>_*)",
                            Failure.UNSUPPORTED)
    return name, path


def spec(url: str) -> str:
    """The ``REMOTE:path`` argument rclone takes for ``url``."""
    name, path = parse(url)
    return f"{name}:{path}"


def _config_files(env: Mapping[str, str], config: Optional[str]) -> List[str]:
    """The rclone config file rclone would read (``--config``, ``RCLONE_CONFIG``, its defaults)."""
    if config or env.get("RCLONE_CONFIG"):
        paths = [config or env["RCLONE_CONFIG"]]
    else:
        home = env.get("HOME") or os.path.expanduser("~")
        xdg = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        paths = [os.path.join(xdg, "rclone", "rclone.conf"), os.path.join(home, ".rclone.conf")]
    return [p for p in paths if os.path.isfile(p)]


def secrets(env: Mapping[str, str], config: Optional[str] = None) -> List[str]:
    """Credential values in ``env`` (rclone and cloud variables) and in the rclone config file."""
    found: List[str] = []

    def add(name: str, value: str) -> None:
        value = value.strip()
        if (_SECRET_NAME.search(name) and not _NOT_SECRET.search(name) and len(value) >= 4
                and value.lower() not in ("true", "false")):
            found.append(value)

    for k, v in env.items():
        if k.startswith(("RCLONE_", "AWS_", "AZURE_", "GOOGLE_", "OS_", "SWIFT_", "B2_")):
            add(k, v)
    for path in _config_files(env, config):
        cp = configparser.RawConfigParser()
        try:
            cp.read(path)
            for section in cp.sections():
                for k, v in cp.items(section):
                    add(k, v)
        except (configparser.Error, OSError, UnicodeDecodeError):
            pass  # unreadable or encrypted: rclone will say so itself
    return sorted(set(found), key=len, reverse=True)


def redact_text(text: str, hidden: Iterable[str] = ()) -> str:
    """``text`` with every value in ``hidden``, every ``secret=...`` pair's value and
    every URL's ``user:password@`` replaced by ``***``."""
    for s in hidden:
        if s:
            text = text.replace(s, "***")
    text = _KEY_VALUE.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    return re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@", r"\1***@", text)


def _summary(stderr: str) -> str:
    """The last few distinct lines of rclone's stderr, without timestamps."""
    lines: List[str] = []
    for raw in stderr.splitlines():
        line = re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+", "", raw).strip()
        if line and line not in lines:
            lines.append(line)
    return "; ".join(lines[-3:])[-600:] or "no message"


class RcloneTransfer:
    """rclone subprocesses: ``lsjson``, ``copyto``, ``moveto``, ``deletefile``, ``cat``."""

    name = "rclone"

    def __init__(self, options: TransferOptions, env: Optional[Mapping[str, str]] = None):
        self.options = options
        binary = shutil.which(options.rclone)
        if binary is None:
            raise TransferError(f"rclone is not installed on this node (no {options.rclone!r} on "
                                "PATH); install it (Debian/EL package rclone) or set LRT_RCLONE",
                                Failure.MISSING)
        self.binary = binary
        base = dict(os.environ if env is None else env)
        for k in options.rclone_env_drop:
            base.pop(k, None)
        self.env = base
        self._hidden = secrets(base, options.rclone_config)
        self._hashes: Dict[str, Optional[str]] = {}

    # -- running rclone -------------------------------------------------------------
    def _argv(self, args: Sequence[str]) -> List[str]:
        argv = [self.binary, "--retries", "1", "--ask-password=false",
                "--contimeout", f"{min(60, self.options.op_timeout)}s",
                "--timeout", f"{self.options.op_timeout}s"]
        if self.options.rclone_config:
            argv += ["--config", self.options.rclone_config]
        return argv + list(self.options.rclone_flags) + list(args)

    def redact(self, text: str) -> str:
        return redact_text(text, self._hidden)

    def _run(self, args: Sequence[str], timeout: Optional[float] = None,
             check: bool = True) -> "subprocess.CompletedProcess[str]":
        timeout = timeout or self.options.op_timeout
        try:
            res = subprocess.run(self._argv(args), env=self.env, stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TransferError(f"rclone {args[0]} {self.redact(' '.join(args[1:]))} timed out after "
                                f"{timeout:.0f}s", Failure.TIMEOUT, _errno.ETIMEDOUT) from None
        except OSError as exc:
            raise TransferError(f"cannot run rclone: {exc.strerror or exc}", Failure.MISSING,
                                exc.errno) from None
        if check and res.returncode != 0:
            raise self._error(args, res.returncode, res.stderr)
        return res

    def _error(self, args: Sequence[str], code: int, stderr: str) -> TransferError:
        if "didn't find section in config file" in stderr:
            remotes = [m.group(1) for m in map(_REMOTE_RE.match, args[1:]) if m]
            name = remotes[0] if remotes else "?"
            env_name = re.sub(r"[^A-Za-z0-9]", "_", name).upper()
            return TransferError(self.redact(
                f"rclone remote {name!r} is not configured on this node (set RCLONE_CONFIG_{env_name}_TYPE "
                "and its other settings in the environment, or give rclone a config file)"),
                Failure.UNSUPPORTED)
        failure = Failure.NOT_FOUND if code in _NOT_FOUND_CODES else Failure.FAILED
        return TransferError(self.redact(f"rclone {args[0]} failed (exit {code}): {_summary(stderr)}"),
                             failure, _errno.ENOENT if failure is Failure.NOT_FOUND else None)

    # -- hashes ---------------------------------------------------------------------
    def _hash_for(self, url: str) -> Optional[str]:
        """The hash this remote offers that lrt can also compute (cached per remote)."""
        name, _ = parse(url)
        if name not in self._hashes:
            res = self._run(["backend", "features", f"{name}:"])
            try:
                offered = [h.lower() for h in json.loads(res.stdout).get("Hashes") or []]
            except (ValueError, AttributeError):
                offered = []
            self._hashes[name] = next((h for h in _HASHES if h in offered), None)
        return self._hashes[name]

    def _stat(self, url: str, algo: Optional[str]) -> Optional[Stat]:
        args = ["lsjson", "--stat", spec(url)]
        if algo:
            args += ["--hash", "--hash-type", algo]
        res = self._run(args, check=False)
        if res.returncode in _NOT_FOUND_CODES:
            return None
        if res.returncode != 0:
            raise self._error(args, res.returncode, res.stderr)
        try:
            item = json.loads(res.stdout)
        except ValueError:
            raise TransferError(f"rclone lsjson gave no JSON for {url}", Failure.FAILED) from None
        if not isinstance(item, dict) or item.get("IsDir"):
            return None  # on object stores a missing key looks like an (empty) directory
        hashes = {k.lower(): str(v).lower() for k, v in (item.get("Hashes") or {}).items() if v}
        size = item.get("Size")
        return Stat(size=int(size) if isinstance(size, int) and size >= 0 else None, hashes=hashes)

    def _verify(self, local: Path, remote: Stat, url: str, algo: Optional[str],
                expected: Optional[Checksum], direction: str) -> Verified:
        size = local.stat().st_size
        if remote.size is not None and remote.size != size:
            raise TransferError(f"{direction} {url}: size mismatch, local copy has {size} bytes, "
                                f"the remote {remote.size}", Failure.CHECKSUM, _errno.EILSEQ)
        if expected is not None:
            try:
                got = file_checksum(local, expected.algo)
            except ValueError as exc:
                raise TransferError(f"{url}: {exc}", Failure.UNSUPPORTED) from None
            if got != expected.value:
                raise TransferError(f"checksum mismatch: {expected.algo} of the copy is {got}, "
                                    f"the token expects {expected.value}", Failure.CHECKSUM,
                                    _errno.EILSEQ)
            return Verified(Verify.EXPECTED, expected.algo)
        theirs = remote.hashes.get(algo) if algo else None
        if algo and theirs:
            got = file_checksum(local, algo)
            if got != theirs:
                raise TransferError(f"checksum mismatch: {algo} of the local file is {got}, "
                                    f"the remote's {theirs}", Failure.CHECKSUM, _errno.EILSEQ)
            return Verified(Verify.SOURCE if direction == "stage-in" else Verify.TARGET, algo)
        log.warning("%s %s: the remote offers no checksum lrt can compare; verified by size only",
                    direction, url)
        return Verified(Verify.SIZE)

    # -- the Transfer protocol ------------------------------------------------------
    def status(self, url: str) -> Optional[str]:
        return None

    def stat(self, url: str) -> Optional[Stat]:
        return self._stat(url, self._hash_for(url))

    def checksum(self, url: str, algo: str) -> Optional[str]:
        if algo != self._hash_for(url):
            return None  # not a hash this remote stores: rclone would have to read it all
        st = self._stat(url, algo)
        return st.hashes.get(algo) if st else None

    def copy_in(self, url: str, dest: Path, expected: Optional[Checksum]) -> Verified:
        algo = self._hash_for(url)
        src = self._stat(url, algo)
        if src is None:
            raise TransferError(f"{url}: no such object", Failure.NOT_FOUND, _errno.ENOENT)
        self._run(["copyto", spec(url), str(dest)], timeout=self.options.timeout)
        if not dest.is_file():  # the object vanished between lsjson and copyto
            raise TransferError(f"{url}: rclone copied nothing", Failure.NOT_FOUND, _errno.ENOENT)
        return self._verify(dest, src, url, algo, expected, "stage-in")

    def copy_out(self, src: Path, url: str, checksum: Checksum) -> Verified:
        self._run(["copyto", str(src), spec(url)], timeout=self.options.timeout)
        algo = self._hash_for(url)
        st = self._stat(url, algo)
        if st is None:
            raise TransferError(f"{url}: not there after the upload", Failure.FAILED)
        try:
            return self._verify(src, st, url, algo, None, "stage-out")
        except TransferError:
            self.delete(url)
            raise

    def commit(self, tmp: str, final: str) -> bool:
        # object stores have no rename-if-absent rclone can use: as with gfal2 the
        # lease is the fence (see commit_if_absent)
        return commit_if_absent(tmp, final, lambda u: self._stat(u, None) is not None,
                                lambda: self._run(["moveto", spec(tmp), spec(final)], timeout=self.options.timeout),
                                self.delete)

    def delete(self, url: str) -> None:
        args = ["deletefile", spec(url)]
        res = self._run(args, check=False)
        if res.returncode == 0 or res.returncode in _NOT_FOUND_CODES:
            return
        if "doesn't exist" in res.stderr or "not found" in res.stderr.lower():
            return
        raise self._error(args, res.returncode, res.stderr)

    def read(self, url: str, dest: IO[bytes]) -> None:
        if self._stat(url, None) is None:  # `rclone cat` of a missing S3 key prints nothing, exit 0
            raise TransferError(f"{url}: no such object", Failure.NOT_FOUND, _errno.ENOENT)
        args = ["cat", spec(url)]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(self._argv(args), env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err)
            timer = threading.Timer(self.options.timeout, proc.kill)
            timer.start()
            try:
                assert proc.stdout is not None
                while True:
                    chunk = proc.stdout.read(_CHUNK)
                    if not chunk:
                        break
                    dest.write(chunk)
            finally:
                if proc.poll() is None and proc.stdout is not None:
                    proc.stdout.close()
                code = proc.wait()
                timer.cancel()
            if code != 0:
                err.seek(0)
                if code < 0:
                    raise TransferError(f"rclone cat {url} timed out after {self.options.timeout}s",
                                        Failure.TIMEOUT, _errno.ETIMEDOUT)
                raise self._error(args, code, err.read().decode("utf-8", "replace"))
