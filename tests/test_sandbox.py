"""Sandboxes: reproducible build, idempotent upload, verified/cached/safe fetch.

Everything runs against the real local server; hostile archives are built here
with tarfile and stored as real attachments, then fetched as a pilot would.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from lrt.pilot import sandbox
from lrt.pilot.sandbox import SandboxError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sandboxes" / "example"


def copy_example(tmp_path: Path) -> Path:
    dest = tmp_path / "sb"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def store_raw(db, data: bytes, sha: Optional[str] = None) -> str:
    """Store ``data`` as a sandbox attachment under ``sha`` (default: its real hash)."""
    sha = sha or hashlib.sha256(data).hexdigest()
    doc = {"_id": f"sandbox-{sha}", "kind": "sandbox", "schema": 1, "name": "raw", "sha256": sha,
           "size": len(data), "created": time.time(), "files": []}
    rev = db.put(doc)
    db.put_attachment(doc["_id"], rev, sandbox.ATTACHMENT, data, content_type="application/gzip")
    return sha


def cache_leftovers(cache: Path) -> List[str]:
    """Entries in the cache (lock files too: none may be left, refused or not)."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir())


# ---------------------------------------------------------------------------
# build


def test_build_is_reproducible_and_content_addressed(tmp_path):
    a = copy_example(tmp_path)
    h1 = sandbox.build(a).sha256
    # different mtimes, permissions within the same class, and creation order: same hash
    b = tmp_path / "other"
    b.mkdir()
    for name in sorted(os.listdir(a), reverse=True):
        if (a / name).is_file():
            shutil.copy(a / name, b / name)
    os.utime(b / "primes.py", (1, 1))
    os.chmod(b / "primes.py", 0o600)
    os.chmod(b / "run.py", 0o700)
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert sandbox.build(b).sha256 == h1
    # content decides
    (b / "primes.py").write_text((b / "primes.py").read_text() + "\n# changed\n")
    assert sandbox.build(b).sha256 != h1
    # the executable bit is content too (it decides whether run.py can be run)
    os.chmod(a / "run.py", 0o644)
    assert sandbox.build(a).sha256 != h1


def test_build_refuses_link_leaving_folder(tmp_path):
    src = copy_example(tmp_path)
    os.symlink("/etc/passwd", src / "passwd")
    with pytest.raises(SandboxError) as ei:
        sandbox.build(src)
    assert ei.value.code == 12 and "passwd" in str(ei.value)


def test_build_twice_uploads_once(db, tmp_path):
    src = copy_example(tmp_path)
    first = sandbox.build(src, db)
    assert first.uploaded
    doc = db.get(first.doc_id)
    assert doc["kind"] == "sandbox" and doc["sha256"] == first.sha256 and doc["size"] == first.size
    assert sorted(doc["files"]) == ["README.md", "primes.py", "run.py"]
    assert doc["_attachments"][sandbox.ATTACHMENT]["length"] == first.size
    rev = doc["_rev"]
    os.utime(src / "run.py", (12345, 12345))
    sent = db.server.requests_sent
    second = sandbox.build(src, db)
    assert db.server.requests_sent - sent == 1  # one GET of the document, nothing written
    assert second.sha256 == first.sha256 and not second.uploaded
    assert db.get(first.doc_id)["_rev"] == rev
    # the stored bytes are the archive whose hash names it
    data = db.get_attachment(first.doc_id, sandbox.ATTACHMENT)
    assert hashlib.sha256(data).hexdigest() == first.sha256
    listed = sandbox.list_sandboxes(db)
    assert [r["sha256"] for r in listed] == [first.sha256] and listed[0]["complete"]


def test_interrupted_upload_is_completed(db, tmp_path):
    src = copy_example(tmp_path)
    built = sandbox.build(src)  # no db: only the hash
    db.put({"_id": built.doc_id, "kind": "sandbox", "sha256": built.sha256, "size": built.size,
            "files": [], "created": 0.0})  # as if the attachment upload had died
    assert sandbox.list_sandboxes(db)[0]["complete"] is False
    again = sandbox.build(src, db)
    assert again.uploaded
    assert sandbox.list_sandboxes(db)[0]["complete"] is True


# ---------------------------------------------------------------------------
# fetch


def test_fetch_verifies_extracts_and_caches(db, tmp_path):
    src = copy_example(tmp_path)
    built = sandbox.build(src, db)
    cache = tmp_path / "cache"
    res = sandbox.fetch(db, built.sha256, cache)
    assert res.downloaded and res.extracted and res.size == built.size
    assert res.path == cache / built.sha256
    for name in ("run.py", "primes.py", "README.md"):
        assert (res.path / name).read_bytes() == (src / name).read_bytes()
    assert os.access(res.path / "run.py", os.X_OK)
    assert not os.access(res.path / "primes.py", os.X_OK)
    assert cache_leftovers(cache) == [built.sha256]  # no tarball, no temp files left
    sent = db.server.requests_sent
    again = sandbox.fetch_sandbox(db, built.sha256, cache)
    assert again == res.path
    assert db.server.requests_sent == sent  # served from the cache: no request at all


def test_fetch_hash_mismatch_is_code_11(db, tmp_path):
    src = copy_example(tmp_path)
    good = sandbox.build(src).sha256
    (src / "run.py").write_text("#!/bin/sh\necho tampered\n")
    tampered = io.BytesIO()
    sandbox.build_archive(src, tampered)
    store_raw(db, tampered.getvalue(), sha=good)  # right name, wrong bytes
    cache = tmp_path / "cache"
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(db, good, cache)
    assert ei.value.code == 11
    assert cache_leftovers(cache) == []


def test_fetch_missing_is_code_10_and_bad_hash_is_51(db, tmp_path):
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(db, "ab" * 32, tmp_path / "cache")
    assert ei.value.code == 10 and "lrt sandbox build" in str(ei.value)
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(db, "not-a-hash", tmp_path / "cache")
    assert ei.value.code == 51


def test_cache_writable_by_others_is_refused(db, tmp_path):
    built = sandbox.build(copy_example(tmp_path), db)
    cache = tmp_path / "shared"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(db, built.sha256, cache)
    assert ei.value.code == 12 and "writable by others" in str(ei.value)


# ---------------------------------------------------------------------------
# hostile archives


def _tar(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        build(tf)
    return buf.getvalue()


def _file(tf: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), mode
    tf.addfile(ti, io.BytesIO(data))


def _special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, linkname
    ti.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    tf.addfile(ti)


def _dir(tf: tarfile.TarFile, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    tf.addfile(ti)


def hostile_cases(outside: Path) -> Dict[str, "tuple[Callable[[tarfile.TarFile], None], str]"]:
    """name -> (archive builder, member the error must name)."""
    target = str(outside / "escaped")
    return {
        "absolute": (lambda tf: (_file(tf, "ok.txt"), _file(tf, target)), target),
        "dotdot": (lambda tf: (_file(tf, "ok.txt"), _file(tf, "../escaped")), "../escaped"),
        "inner-dotdot": (lambda tf: _file(tf, "a/../../escaped"), "a/../../escaped"),
        "symlink-abs": (lambda tf: _special(tf, "passwd", tarfile.SYMTYPE, "/etc/passwd"), "passwd"),
        "symlink-up": (lambda tf: _special(tf, "up", tarfile.SYMTYPE, "../.."), "up"),
        # each target looks harmless alone: d/up -> .. is the root; d/up2 -> up/.. is
        # lexically "d", but through the first link it is the root's parent
        "symlink-chain": (lambda tf: (_dir(tf, "d"), _special(tf, "d/up", tarfile.SYMTYPE, ".."),
                                      _special(tf, "d/up2", tarfile.SYMTYPE, "up/..")), "d/up2"),
        "symlink-loop": (lambda tf: (_special(tf, "a", tarfile.SYMTYPE, "b/x"),
                                     _special(tf, "b", tarfile.SYMTYPE, "a/y")), "a"),
        "write-through-symlink": (lambda tf: (_special(tf, "out", tarfile.SYMTYPE, "."),
                                              _file(tf, "out/f")), "out/f"),
        "hardlink-abs": (lambda tf: _special(tf, "h", tarfile.LNKTYPE, "/etc/passwd"), "h"),
        "hardlink-up": (lambda tf: _special(tf, "h", tarfile.LNKTYPE, "../escaped"), "h"),
        "hardlink-dangling": (lambda tf: _special(tf, "h", tarfile.LNKTYPE, "nothere"), "h"),
        "chardev": (lambda tf: _special(tf, "null", tarfile.CHRTYPE), "null"),
        "blockdev": (lambda tf: _special(tf, "sda", tarfile.BLKTYPE), "sda"),
        "fifo": (lambda tf: _special(tf, "pipe", tarfile.FIFOTYPE), "pipe"),
        "duplicate": (lambda tf: (_file(tf, "f"), _special(tf, "f", tarfile.SYMTYPE, "/etc/passwd")), "f"),
    }


@pytest.mark.parametrize("case", sorted(hostile_cases(Path("/x"))))
def test_hostile_archive_refused_nothing_extracted(db, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    builder, member = hostile_cases(outside)[case]
    data = _tar(builder)
    sha = store_raw(db, data)
    cache = tmp_path / "cache"
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(db, sha, cache)
    assert ei.value.code == 12, ei.value
    assert repr(member) in str(ei.value)
    assert cache_leftovers(cache) == []
    assert list(outside.iterdir()) == []
    # the extraction function itself leaves its destination untouched
    arch = tmp_path / "a.tgz"
    arch.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SandboxError):
        sandbox.extract(arch, dest)
    assert list(dest.iterdir()) == []


def test_extracted_size_is_capped(db, tmp_path, monkeypatch):
    """A small archive declaring more bytes than the cap (a zip bomb) is refused unextracted."""
    data = _tar(lambda tf: (_file(tf, "a.bin", b"\0" * 600), _file(tf, "b.bin", b"\0" * 600)))
    assert len(data) < 600  # zeros compress: the archive is far smaller than what it declares
    sha = store_raw(db, data)
    monkeypatch.setenv("LRT_SANDBOX_MAX_BYTES", "1000")
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(db, sha, tmp_path / "cache")
    assert ei.value.code == 12 and "'b.bin'" in str(ei.value) and "1000 bytes" in str(ei.value)
    assert cache_leftovers(tmp_path / "cache") == []
    monkeypatch.setenv("LRT_SANDBOX_MAX_BYTES", "1200")
    assert (sandbox.fetch_sandbox(db, sha, tmp_path / "cache") / "b.bin").stat().st_size == 600


def test_setuid_bits_stripped_and_tar_dot_layout_accepted(db, tmp_path):
    def build(tf):
        _dir(tf, ".")
        _dir(tf, "./bin")
        _file(tf, "./bin/tool", b"#!/bin/sh\nexit 0\n", mode=0o6755)
        _file(tf, "./data.txt", b"hello", mode=0o1644)
        _special(tf, "./bin/alias", tarfile.SYMTYPE, "tool")
        _special(tf, "./copy.txt", tarfile.LNKTYPE, "./data.txt")
    sha = store_raw(db, _tar(build))
    path = sandbox.fetch_sandbox(db, sha, tmp_path / "cache")
    assert stat.S_IMODE(os.stat(path / "bin" / "tool").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(path / "data.txt").st_mode) == 0o644
    assert os.readlink(path / "bin" / "alias") == "tool"
    assert (path / "copy.txt").read_bytes() == b"hello"
    assert os.stat(path / "copy.txt").st_ino == os.stat(path / "data.txt").st_ino


# ---------------------------------------------------------------------------
# concurrency


def _fetch_in_child(url, user, password, dbname, sha, cache, start, out):
    from lrt.couch import Server

    db = Server(url, user, password).database(dbname)
    start.wait(30)
    try:
        res = sandbox.fetch(db, sha, cache)
        out.put((str(res.path), res.downloaded, res.extracted, db.server.requests_sent, None))
    except Exception as exc:  # reported to the parent, which fails the test
        out.put((None, False, False, 0, repr(exc)))


def test_concurrent_fetch_one_download_one_extraction(couch, db, tmp_path):
    built = sandbox.build(copy_example(tmp_path), db)
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child,
                         args=(couch.url, couch.user, couch.password, db.name, built.sha256,
                               str(cache), start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert [r[4] for r in results] == [None] * 6
    assert {r[0] for r in results} == {str(cache / built.sha256)}
    assert sum(r[1] for r in results) == 1  # downloaded once
    assert sum(r[2] for r in results) == 1  # extracted once
    assert sum(r[3] for r in results) == 1  # one HTTP request in all
    assert cache_leftovers(cache) == [built.sha256]


# ---------------------------------------------------------------------------
# URL sources


def test_file_url_source(tmp_path):
    tarball = tmp_path / "sb.tar.gz"
    built = sandbox.build(copy_example(tmp_path), output=tarball)
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == built.sha256
    path = sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c1", url=tarball.as_uri())
    assert (path / "run.py").exists()
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(None, "0" * 64, tmp_path / "c2", url=tarball.as_uri())
    assert ei.value.code == 11
    with pytest.raises(SandboxError) as ei:
        sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c3", url=(tmp_path / "nope").as_uri())
    assert ei.value.code == 10


def test_http_url_source(tmp_path):
    tarball = tmp_path / "www" / "sb.tar.gz"
    tarball.parent.mkdir()
    built = sandbox.build(copy_example(tmp_path), output=tarball)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tarball.parent), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        path = sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c1", url=f"{base}/sb.tar.gz")
        assert (path / "primes.py").exists()
        with pytest.raises(SandboxError) as ei:
            sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c2", url=f"{base}/missing.tar.gz")
        assert ei.value.code == 10 and "404" in str(ei.value)
    finally:
        srv.shutdown()
        srv.server_close()


def test_gfal2_source(tmp_path):
    tarball = tmp_path / "sb.tar.gz"
    built = sandbox.build(copy_example(tmp_path), output=tarball)
    try:
        import gfal2  # noqa: F401
    except ImportError:
        with pytest.raises(SandboxError) as ei:
            sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c", url="root://127.0.0.1//sb.tar.gz")
        assert ei.value.code == 10 and "python3-gfal2" in str(ei.value)
        return
    # real gfal2: read through its file plugin (root:// needs a server: the staging tests run one)
    buf = io.BytesIO()
    sandbox._gfal2_download(tarball.as_uri(), built.sha256, buf)
    assert hashlib.sha256(buf.getvalue()).hexdigest() == built.sha256


# ---------------------------------------------------------------------------
# contract helpers for the pilot


def test_resolve_command_rule(tmp_path):
    sb = tmp_path / "sb"
    (sb / "bin").mkdir(parents=True)
    (sb / "run.py").write_text("#!/usr/bin/env python3\n")
    (sb / "bin" / "tool").write_text("#!/bin/sh\n")
    assert sandbox.resolve_command(["run.py", "a"], sb) == [str(sb.resolve() / "run.py"), "a"]
    assert sandbox.resolve_command(["./bin/tool"], sb) == [str(sb.resolve() / "bin" / "tool")]
    assert sandbox.resolve_command(["python3", "run.py"], sb) == ["python3", "run.py"]
    assert sandbox.resolve_command(["/bin/true"], sb) == ["/bin/true"]
    assert sandbox.resolve_command(["bin"], sb) == ["bin"]  # a directory is not a command
    assert sandbox.resolve_command(["../sb/run.py"], sb / "bin") == ["../sb/run.py"]  # stays inside
    assert sandbox.resolve_command(["run.py"], None) == ["run.py"]


def test_token_sandbox_field():
    assert sandbox.token_sandbox({"sandbox": None}) is None
    assert sandbox.token_sandbox({}) is None
    sha = "AB" * 32
    assert sandbox.token_sandbox({"sandbox": {"sha256": sha}}) == (sha.lower(), None)
    assert sandbox.token_sandbox({"sandbox": {"sha256": sha, "url": "file:///x"}})[1] == "file:///x"
    for bad in ({"sandbox": "abc"}, {"sandbox": {"sha256": "12"}}, {"sandbox": {"url": "file:///x"}},
                {"sandbox": {"sha256": sha, "url": 3}}):
        with pytest.raises(SandboxError) as ei:
            sandbox.token_sandbox(bad)
        assert ei.value.code == 51


# ---------------------------------------------------------------------------
# CLI


def test_cli_build_list_fetch(couch, db, tmp_path, lrt_cmd):
    src = copy_example(tmp_path)
    env = couch.env(db.name)
    env["LRT_SANDBOX_CACHE"] = str(tmp_path / "cache")

    def run(*args):
        return subprocess.run(lrt_cmd + list(args), cwd=str(ROOT), env=env, capture_output=True,
                              text=True, timeout=60)

    r1 = run("sandbox", "build", str(src))
    assert r1.returncode == 0, r1.stderr
    sha = r1.stdout.strip()
    assert len(sha) == 64 and "uploaded as sandbox-" in r1.stderr
    r2 = run("sandbox", "build", str(src))
    assert r2.returncode == 0 and r2.stdout.strip() == sha and "already in the database" in r2.stderr
    assert db.get(f"sandbox-{sha}")["_rev"].startswith("2-")  # doc + attachment, nothing more
    r3 = run("sandbox", "list")
    assert r3.returncode == 0 and sha[:16] in r3.stdout and " sb " in r3.stdout
    r4 = run("sandbox", "fetch", sha)
    assert r4.returncode == 0, r4.stderr
    assert Path(r4.stdout.strip()) == tmp_path / "cache" / sha
    r5 = run("sandbox", "fetch", "cd" * 32)
    assert r5.returncode == 1 and "[10 SANDBOX_DOWNLOAD]" in r5.stderr and "Traceback" not in r5.stderr
    r6 = run("sandbox", "build", str(tmp_path / "nonexistent"))
    assert r6.returncode != 0 and "not a directory" in r6.stderr and "Traceback" not in r6.stderr


# ---------------------------------------------------------------------------
# the example payload itself


def _naive_primes(a: int, b: int) -> List[int]:
    return [n for n in range(max(a, 2), b) if all(n % d for d in range(2, int(n ** 0.5) + 1))]


def test_example_payload(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "token.json").write_text(json.dumps({"_id": "t-1", "payload": {"start": 1000, "stop": 3000}}))
    env = dict(os.environ, LRT_TOKEN_ID="t-1", LRT_SANDBOX=str(EXAMPLE))
    r = subprocess.run([str(EXAMPLE / "run.py")], cwd=str(work), env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    result = json.loads((work / "primes-1000-3000.json").read_text())
    expected = _naive_primes(1000, 3000)
    assert (result["count"], result["sum"], result["largest"]) == (len(expected), sum(expected), expected[-1])
    assert result["token"] == "t-1"
    # parameters from the environment only
    work2 = tmp_path / "work2"
    work2.mkdir()
    r = subprocess.run([sys.executable, str(EXAMPLE / "run.py")], cwd=str(work2), capture_output=True,
                       text=True, env=dict(env, LRT_P_STOP="50"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads((work2 / "primes-2-50.json").read_text())["count"] == len(_naive_primes(2, 50))
    # failing on purpose: non-zero, a reason on stderr, no output
    work3 = tmp_path / "work3"
    work3.mkdir()
    (work3 / "token.json").write_text(json.dumps({"payload": {"stop": 100, "fail": True}}))
    r = subprocess.run([str(EXAMPLE / "run.py")], cwd=str(work3), env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 3 and "on purpose" in r.stderr
    assert sorted(p.name for p in work3.iterdir()) == ["token.json"]
    # a missing parameter is a clear failure too
    work4 = tmp_path / "work4"
    work4.mkdir()
    r = subprocess.run([str(EXAMPLE / "run.py")], cwd=str(work4), env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "stop" in r.stderr
