"""The transfer seam without remote storage: URL -> backend, options, the file backend,
and what the pilot path imports."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest

from lrt.errors import ConfigError, StageInError
from lrt.staging import pilot
from lrt.transfer import (FILE, GFAL2, RCLONE, Checksum, Failure, Session, TransferError,
                          TransferOptions, backend_name, file_name, join)
from pilot_helpers import ROOT


@pytest.mark.parametrize("url, backend", [
    ("file:///data/x.tar", FILE), ("FILE:///data/x.tar", FILE),
    ("root://eos.example.org//lofar/x.tar", GFAL2), ("srm://srm.example.org:8443/pnfs/x", GFAL2),
    ("davs://webdav.example.org/x", GFAL2), ("https://example.org/x", GFAL2),
    ("s3://bucket.example.org/x", GFAL2), ("mock://h/f?size=1", GFAL2),
    ("rclone://acacia/bucket/x.tar", RCLONE), ("acacia:bucket/x.tar", RCLONE),
    ("my_remote:x", RCLONE), ("loc:/abs/path", RCLONE),
])
def test_backend_by_url(url, backend):
    assert backend_name(url) == backend


@pytest.mark.parametrize("bad", ["/abs/path", "relative/path", "", ":s3,key=x:bucket/y"])
def test_not_a_url(bad):
    with pytest.raises(TransferError) as ei:
        backend_name(bad)
    assert ei.value.failure is Failure.UNSUPPORTED


def test_names_and_joins():
    assert file_name("srm://h:8443/srm/managerv2?SFN=/pnfs/L1_SB000.tar") == "L1_SB000.tar"
    assert file_name("rclone://acacia/b/dir/L1.tar") == "L1.tar"
    assert file_name("acacia:b/dir/L2.tar") == "L2.tar"
    assert file_name("root://h//dir/") == "dir"
    assert join("acacia:b/out/", "x/y.h5") == "acacia:b/out/x/y.h5"
    assert join("acacia:", "y.h5") == "acacia:y.h5"
    assert join("root://h//out", "y.h5") == "root://h//out/y.h5"


def test_options_from_the_environment_when_asked_not_at_import():
    assert TransferOptions.from_env({}) == TransferOptions()
    o = TransferOptions.from_env({"LRT_STAGE_RETRIES": "5", "LRT_STAGE_BACKOFF": "0.5",
                                  "LRT_STAGE_TIMEOUT": "60", "LRT_RCLONE_FLAGS": "--fast-list -q",
                                  "LRT_RCLONE_CONFIG": "/etc/rclone.conf"})
    assert (o.retries, o.backoff, o.timeout) == (5, 0.5, 60)
    assert o.rclone_flags == ("--fast-list", "-q") and o.rclone_config == "/etc/rclone.conf"
    for bad in ({"LRT_STAGE_RETRIES": "many"}, {"LRT_STAGE_RETRIES": "0"}, {"LRT_STAGE_BACKOFF": "x"}):
        with pytest.raises(ConfigError) as ei:
            TransferOptions.from_env(bad)
        assert next(iter(bad)) in str(ei.value)


def test_retries_setting_is_read_per_call(tmp_path, monkeypatch, caplog):
    missing = (tmp_path / "gone" / "x.tar").as_uri()
    src = tmp_path / "ok.tar"
    src.write_bytes(b"data")
    # a setting changed after import applies (nothing is frozen at import time) ...
    monkeypatch.setenv("LRT_STAGE_RETRIES", "bogus")
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": src.as_uri()}]}, tmp_path / "w")
    assert "LRT_STAGE_RETRIES" in str(ei.value) and ei.value.code == 21
    # ... and explicit options win over the environment
    pilot.stage_in({"inputs": [{"url": src.as_uri()}]}, tmp_path / "w", options=TransferOptions())
    assert (tmp_path / "w" / "ok.tar").read_bytes() == b"data"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": missing}]}, tmp_path / "w2", options=TransferOptions())
    assert ei.value.code == 21


def test_file_backend_checksums(tmp_path):
    data = os.urandom(10_000)
    src = tmp_path / "in.tar"
    src.write_bytes(data)
    good = f"adler32:{zlib.adler32(data) & 0xffffffff:08x}"
    pilot.stage_in({"inputs": [{"url": src.as_uri(), "checksum": good}]}, tmp_path / "w1")
    assert (tmp_path / "w1" / "in.tar").read_bytes() == data
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": src.as_uri(), "checksum": "adler32:00000001"}]}, tmp_path / "w2")
    assert ei.value.code == 23 and not (tmp_path / "w2" / "in.tar").exists()
    md5 = "md5:" + __import__("hashlib").md5(data).hexdigest()
    pilot.stage_in({"inputs": [{"url": src.as_uri(), "checksum": md5}]}, tmp_path / "w3")
    t = Session().for_url(src.as_uri())
    assert t.stat(src.as_uri()).size == len(data) and t.stat((tmp_path / "no").as_uri()) is None
    assert t.checksum(src.as_uri(), "adler32") == Checksum.parse(good).value
    with pytest.raises(TransferError) as e2:
        t.copy_in("file://otherhost/x", tmp_path / "x", None)
    assert e2.value.failure is Failure.UNSUPPORTED


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is 3.10+")
def test_file_urls_and_the_pilot_path_need_no_gfal2(tmp_path):
    """gfal2 is imported only when a gfal2 URL is used: with it made unimportable,
    file:// stage-in and stage-out work, and the modules of the pilot path load
    nothing outside the standard library, requests and pyyaml."""
    (tmp_path / "in.tar").write_bytes(b"input")
    (tmp_path / "work").mkdir()
    probe = f"""
import sys
sys.modules["gfal2"] = None  # import gfal2 -> ImportError
before = set(sys.modules)
import lrt.transfer, lrt.staging.pilot, lrt.pilot.sandbox
from lrt.transfer import file, registry, base
new = {{m.split(".")[0] for m in set(sys.modules) - before}}
from lrt.staging import pilot
pilot.stage_in({{"inputs": [{{"url": {(tmp_path / 'in.tar').as_uri()!r}}}]}}, {str(tmp_path / 'work')!r})
open({str(tmp_path / 'work' / 'out.h5')!r}, "w").write("out")
refs = pilot.stage_out({{"outputs": {{"dest": {(tmp_path / 'pub').as_uri()!r}, "globs": ["*.h5"]}}}},
                       {str(tmp_path / 'work')!r}, "att", lambda: True)
print(sorted(new - set(sys.stdlib_module_names) - {{"lrt"}}), len(refs))
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(ROOT),
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "1"]
    assert (tmp_path / "pub" / "out.h5").read_text() == "out"
    assert (tmp_path / "work" / "in.tar").read_bytes() == b"input"
