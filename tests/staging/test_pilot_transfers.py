"""stage_in / stage_out through gfal2 against a real XRootD server on loopback."""
from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path
from typing import Optional

import pytest

from lrt.errors import StageInError, StageOutError
from lrt.staging import pilot


def _adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xffffffff:08x}"


def _put(xrootd, rel: str, data: bytes) -> str:
    p = xrootd.disk / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, 0o644)
    return f"{xrootd.url}//{rel}"


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("LRT_STAGE_BACKOFF", "0.05")


def test_stage_in_with_expected_and_source_checksums(gfal2, xrootd, tmp_path):
    a, b = os.urandom(200_000), os.urandom(5000)
    ua = _put(xrootd, "in1/a.MS.tar", a)
    ub = _put(xrootd, "in1/b.MS.tar", b)
    doc = {"inputs": [{"url": ua, "checksum": "adler32:" + _adler(a)},
                      {"url": ub, "checksum": None}]}  # b: verified against the server's adler32
    pilot.stage_in(doc, tmp_path / "work")
    assert (tmp_path / "work" / "a.MS.tar").read_bytes() == a
    assert (tmp_path / "work" / "b.MS.tar").read_bytes() == b


def test_stage_in_wrong_expected_checksum_is_code_23(gfal2, xrootd, tmp_path, fast_retries):
    data = os.urandom(10_000)
    url = _put(xrootd, "in2/c.tar", data)
    wrong = "adler32:" + _adler(data + b"x")
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url, "checksum": wrong}]}, tmp_path)
    assert ei.value.code == 23
    assert url in ei.value.per_file and "checksum" in ei.value.per_file[url].lower()
    assert not (tmp_path / "c.tar").exists()


def test_stage_in_missing_file_is_code_21_with_reason(gfal2, xrootd, tmp_path, fast_retries):
    good = _put(xrootd, "in3/ok.tar", b"fine")
    missing = f"{xrootd.url}//in3/nope.tar"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": good}, {"url": missing}]}, tmp_path)
    assert ei.value.code == 21
    assert list(ei.value.per_file) == [missing]


def test_stage_in_nearline_input_is_code_22(gfal2, tmp_path):
    url = "mock://tape.example.org/L1_SB000.tar?size=100&user.status=NEARLINE"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url}]}, tmp_path)
    assert ei.value.code == 22 and "NEARLINE" in ei.value.per_file[url]


def _outputs_doc(dest: str) -> dict:
    return {"outputs": {"dest": dest, "globs": ["*.h5", "images/*.fits"]}}


def _make_outputs(work: Path, tag: bytes) -> dict:
    (work / "images").mkdir(parents=True, exist_ok=True)
    files = {"sol.h5": b"solutions " + tag * 1000, "images/i1.fits": b"image " + tag * 3000}
    for rel, data in files.items():
        (work / rel).write_bytes(data)
    (work / "scratch.log").write_text("not an output")
    return files


def test_stage_out_temp_then_commit_on_xrootd(gfal2, xrootd, tmp_path):
    files = _make_outputs(tmp_path, b"A")
    dest = f"{xrootd.url}//out1/L1"
    refs = pilot.stage_out(_outputs_doc(dest), tmp_path, "att1", lambda: True)
    assert sorted(r["url"] for r in refs) == sorted(f"{dest}/{rel}" for rel in files)
    for r in refs:
        rel = r["url"][len(dest) + 1:]
        assert (xrootd.disk / "out1/L1" / rel).read_bytes() == files[rel]
        assert r["checksum"] == "adler32:" + _adler(files[rel]) and r["size"] == len(files[rel])
    leftovers = [p.name for p in (xrootd.disk / "out1").rglob("*") if ".lrt-" in p.name]
    assert leftovers == []
    assert not (xrootd.disk / "out1/L1/scratch.log").exists()


@pytest.mark.parametrize("where", ["xrootd", "file"])
def test_stage_out_lost_lease_publishes_nothing(gfal2, xrootd, tmp_path, where):
    work = tmp_path / "w"
    work.mkdir()
    _make_outputs(work, b"Z")
    if where == "xrootd":
        dest, root = f"{xrootd.url}//out2/L2", xrootd.disk / "out2"
    else:
        dest, root = "file://" + str(tmp_path / "pub"), tmp_path / "pub"
    asked = []

    def lost() -> bool:
        asked.append(1)
        return False

    with pytest.raises(StageOutError) as ei:
        pilot.stage_out(_outputs_doc(dest), work, "zombie", lost)
    assert ei.value.code == 40 and asked
    assert not root.exists() or [p for p in root.rglob("*") if p.is_file()] == []


def test_two_attempts_both_holding_publish_once_on_posix(gfal2, tmp_path):
    """Even if two attempts both pass the lease check at the same instant (the lease
    rules this out; this is the storage-level fence), a file:// destination gets
    each output once: the commit is an atomic no-replace hard link."""
    dest, root = "file://" + str(tmp_path / "pub"), tmp_path / "pub"
    # both attempts believe they hold the token at the same instant
    contents, results, errors = _race(dest, tmp_path, holder=None, barrier_timeout=30)
    assert not errors, errors
    published = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert published == ["images/i1.fits", "sol.h5"]  # no temporaries, no markers, no doubles
    for rel in published:  # each file is whole and from exactly one attempt
        data = (root / rel).read_bytes()
        assert data in (contents["a1"][rel], contents["a2"][rel])
    # both attempts report the same, published, files
    for att in ("a1", "a2"):
        by_url = {r["url"]: r for r in results[att]}
        for rel in published:
            data = (root / rel).read_bytes()
            assert by_url[f"{dest}/{rel}"]["checksum"] == "adler32:" + _adler(data)


def test_stage_out_missing_declared_output_is_code_30(gfal2, xrootd, tmp_path):
    with pytest.raises(StageOutError) as ei:
        pilot.stage_out({"outputs": {"dest": f"{xrootd.url}//out4", "globs": ["*.h5"]}},
                        tmp_path, "a", lambda: True)
    assert ei.value.code == 30


def _race(dest: str, tmp_path: Path, holder: Optional[str], barrier_timeout: float = 5):
    """Attempts a1 and a2 upload concurrently and reach commit together; only
    ``holder`` still holds the token's lease (the other is a zombie or a duplicate),
    or both do when ``holder`` is None."""
    works, contents = {}, {}
    for att in ("a1", "a2"):
        works[att] = tmp_path / att
        works[att].mkdir()
        contents[att] = _make_outputs(works[att], att.encode())
    barrier = threading.Barrier(2)
    results, errors = {}, {}

    def run(att):
        def holding() -> bool:
            try:
                barrier.wait(timeout=barrier_timeout)
            except threading.BrokenBarrierError:
                pass
            return holder is None or att == holder
        try:
            results[att] = pilot.stage_out(_outputs_doc(dest), works[att], att, holding)
        except Exception as exc:  # noqa: BLE001 - inspected by the caller
            errors[att] = exc

    threads = [threading.Thread(target=run, args=(a,)) for a in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return contents, results, errors


def test_racing_duplicate_attempt_on_xrootd_publishes_once(gfal2, xrootd, tmp_path):
    dest, root = f"{xrootd.url}//out5/L5", xrootd.disk / "out5/L5"
    contents, results, errors = _race(dest, tmp_path, holder="a2")
    assert set(results) == {"a2"} and set(errors) == {"a1"}
    assert isinstance(errors["a1"], StageOutError) and errors["a1"].code == 40
    published = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert published == ["images/i1.fits", "sol.h5"]
    for rel in published:
        assert (root / rel).read_bytes() == contents["a2"][rel]


def test_rerun_keeps_already_published_outputs(gfal2, xrootd, tmp_path):
    dest, root = f"{xrootd.url}//out6/L6", xrootd.disk / "out6/L6"
    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    w1.mkdir()
    w2.mkdir()
    first = _make_outputs(w1, b"1")
    _make_outputs(w2, b"2")
    refs1 = pilot.stage_out(_outputs_doc(dest), w1, "run1", lambda: True)
    refs2 = pilot.stage_out(_outputs_doc(dest), w2, "run2", lambda: True)
    assert sorted(refs1, key=lambda r: r["url"]) == sorted(refs2, key=lambda r: r["url"])
    for rel, data in first.items():
        assert (root / rel).read_bytes() == data
    assert [p for p in root.rglob("*") if ".lrt-" in p.name] == []
