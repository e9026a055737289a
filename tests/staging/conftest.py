"""Fixtures for the staging tests: gfal2, and real XRootD servers on loopback.

* ``gfal2`` -- the gfal2 module (Debian's python3-gfal2 linked into the venv by
  scripts/testbed-gfal2.sh); tests skip with the reason when it is missing.
* ``xrootd`` -- a plain XRootD server (adler32 checksums on) on a free loopback
  port, serving a temporary directory: ``root://127.0.0.1:PORT//path``.
* ``xrootd_tape`` -- a second XRootD that behaves like a tape-backed SE: files
  put in its tape directory are NEARLINE until a bring-online recalls them to
  disk (tests/staging/tape/).  Needs libxrootd-server-dev and g++.

``make test`` installs all of it (scripts/testbed-*.sh), so in CI nothing skips.
XRootD 5.5 has no listen-address option: a small LD_PRELOAD shim
(loopback_bind.c, compiled here) keeps it on 127.0.0.1.  It refuses to run as
root, so as root it drops to the ``xrootd`` user (-R).
"""
from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from lrt.server import free_port

HERE = Path(__file__).resolve().parent
# XrdCl (inside gfal2's xrootd plug-in) otherwise retries a dead server for minutes
os.environ.setdefault("XRD_CONNECTIONRETRY", "1")
os.environ.setdefault("XRD_REQUESTTIMEOUT", "20")
os.environ.setdefault("XRD_STREAMTIMEOUT", "20")
BUILD = Path(tempfile.gettempdir()) / f"lrt-staging-build-{os.getuid()}"


@pytest.fixture(scope="session")
def gfal2():
    try:
        import gfal2 as mod
    except ImportError as exc:
        pytest.skip(f"gfal2 python bindings not importable ({exc}); run scripts/testbed-gfal2.sh VENV")
    return mod


def _build(src: Path, compiler: str, extra: List[str]) -> Path:
    """Compile ``src`` into a shared object once per source content (cached)."""
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed (scripts/testbed-xrootd.sh installs it)")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    BUILD.mkdir(mode=0o755, exist_ok=True)
    out = BUILD / f"{src.stem}-{digest}.so"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        res = subprocess.run([compiler, "-shared", "-fPIC", "-O2", *extra, "-o", str(tmp), str(src), "-ldl"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.fail(f"cannot compile {src.name}: {res.stderr[-2000:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    return out


class XrdServer:
    """One XRootD process we started; ``url`` ends without a slash: url + "//abs/path"."""

    def __init__(self, name: str, base: Path, disk: Path, tape: Optional[Path], cfg: str,
                 env: dict):
        self.name, self.base, self.disk, self.tape = name, base, disk, tape
        self.port = free_port()
        self.url = f"root://127.0.0.1:{self.port}"
        cfg_path = base / "xrootd.cfg"
        cfg_path.write_text(cfg + f"\nxrd.port {self.port}\nall.adminpath {base}/admin\n"
                            f"all.pidpath {base}\n")
        argv = ["xrootd", "-I", "v4", "-n", name, "-c", str(cfg_path), "-l", str(base / "xrootd.log")]
        if os.getuid() == 0:
            argv[1:1] = ["-R", "xrootd"]
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["LD_PRELOAD"] = str(_build(HERE / "loopback_bind.c", "cc", []))
        self.stdout = open(base / "xrootd.stdout", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stdout,
                                     stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        self._wait_up()

    def _wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                res = subprocess.run(["xrdfs", self.url, "query", "config", "version"],
                                     capture_output=True, timeout=10)
                if res.returncode == 0:
                    return
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.1)
        self.stop()
        logs = ""
        for p in sorted(self.base.rglob("xrootd.*")):
            if p.is_file() and p.suffix != ".cfg":
                logs += p.read_text(errors="replace")[-1500:]
        pytest.fail(f"xrootd {self.name} did not come up on port {self.port}:\n{logs}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stdout.close()

    def path(self, url: str) -> Path:
        """The disk file behind ``url`` (for checking what the server holds)."""
        rel = url.split("//", 2)[-1].lstrip("/")
        return self.disk / rel


def _base_dir(tag: str) -> Path:
    """A temporary tree the unprivileged xrootd user can reach (pytest's tmp is 0700)."""
    base = Path(tempfile.mkdtemp(prefix=f"lrt-xrd-{tag}-"))
    os.chmod(base, 0o755)
    return base


def _chown_tree(root: Path) -> None:
    if os.getuid() != 0:
        return
    try:
        ent = pwd.getpwnam("xrootd")
    except KeyError:
        pytest.skip("no xrootd user (scripts/testbed-xrootd.sh creates it)")
    for p in [root, *root.rglob("*")]:
        os.chown(p, ent.pw_uid, ent.pw_gid)


def _need_xrootd() -> None:
    for tool in ("xrootd", "xrdfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed; run scripts/testbed-xrootd.sh")


@pytest.fixture(scope="session")
def xrootd() -> Iterator[XrdServer]:
    _need_xrootd()
    base = _base_dir("disk")
    data = base / "data"
    (base / "admin").mkdir()
    data.mkdir()
    os.chmod(data, 0o777)
    _chown_tree(base)
    cfg = f"""all.export /
oss.localroot {data}
xrootd.chksum max 2 adler32 md5
xrd.allow host localhost
xrd.allow host 127.0.0.1
"""
    srv = XrdServer("lrtdisk", base, data, None, cfg, {})
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def xrootd_tape() -> Iterator[XrdServer]:
    _need_xrootd()
    if not Path("/usr/include/xrootd/XrdOss/XrdOssStatInfo.hh").exists():
        pytest.skip("libxrootd-server-dev not installed (scripts/testbed-xrootd.sh installs it)")
    plugin = _build(HERE / "tape" / "tape_stat.cc", "g++", ["-I/usr/include/xrootd"])
    base = _base_dir("tape")
    tape, disk, state = base / "tapestore", base / "disk", base / "state"
    for d in (tape / "tape", disk / "tape", state, base / "admin"):
        d.mkdir(parents=True)
    prep = base / "prep.py"  # a copy the xrootd user can surely read and run
    shutil.copyfile(HERE / "tape" / "prep.py", prep)
    os.chmod(prep, 0o755)
    _chown_tree(base)
    cfg = f"""all.export /tape
oss.localroot {disk}
oss.statlib -2 {plugin} {tape}
ofs.preplib libXrdOfsPrepGPI.so -admit all -run {prep}
xrootd.chksum max 2 adler32
xrd.allow host localhost
xrd.allow host 127.0.0.1
"""
    env = {"TAPE": str(tape), "DISK": str(disk), "STATE": str(state), "STAGE_DELAY": "1"}
    srv = XrdServer("lrttape", base, disk, tape, cfg, env)
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def put_on_tape():
    """``put_on_tape(server, rel, data, delay=None, fail=None)`` -> root:// URL."""
    return _put_on_tape


def _put_on_tape(srv: XrdServer, rel: str, data: bytes, delay: Optional[float] = None,
                fail: Optional[str] = None) -> str:
    """Write a file that exists only on the emulated tape; returns its root:// URL."""
    assert srv.tape is not None
    p = srv.tape / "tape" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if delay is not None:
        Path(str(p) + ".delay").write_text(str(delay))
    if fail is not None:
        Path(str(p) + ".fail").write_text(fail)
    _chown_tree(srv.tape)
    return f"{srv.url}//tape/{rel}"
