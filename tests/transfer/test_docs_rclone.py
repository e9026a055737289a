"""The rclone example of docs/staging.md, run for real: its token config and file list
create tokens, a real pilot stages the inputs in from S3 (moto) through the remote
``acacia`` and publishes the outputs back."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import urllib.parse
import zlib

from lrt.tokens import TokenSet
from pilot_helpers import ROOT

DOC = ROOT / "docs" / "staging.md"


def _example():
    text = DOC.read_text()
    m = re.search(r"```yaml\n(# rclone-example\n.*?)```.*?```text\n(.*?)```", text, re.S)
    assert m, "docs/staging.md lost its rclone example"
    return m.group(1), m.group(2)


def test_rclone_example_of_the_docs(s3, couch, db, tmp_path):
    config, file_list = _example()
    urls = [line.split()[0] for line in file_list.splitlines() if line.strip()]
    data = {}
    for url in urls:
        p = urllib.parse.urlsplit(url)
        assert p.scheme == "rclone" and p.netloc == "acacia"
        bucket, key = p.path.lstrip("/").split("/", 1)
        if bucket not in {b["Name"] for b in s3.client.list_buckets()["Buckets"]}:
            s3.client.create_bucket(Bucket=bucket)
        data[url] = hashlib.sha256(url.encode()).digest() * 500
        s3.put(bucket, key, data[url])
    (tmp_path / "acacia.txt").write_text(file_list)
    (tmp_path / "acacia.yaml").write_text(config)
    ts = TokenSet.from_text(config, path="docs/staging.md:rclone-example", base_dir=tmp_path)
    ts.create(db)
    ids = sorted(r["id"] for r in db.all_docs()["rows"] if not r["id"].startswith("_design/"))
    assert ids == ["calib_000", "calib_001"]

    env = couch.env(db.name)
    env["PYTHONPATH"] = str(ROOT)
    # the remote of the example, configured the way the docs say: environment only
    env.update({k.replace("RCLONE_CONFIG_MOTO_", "RCLONE_CONFIG_ACACIA_"): v for k, v in s3.env.items()})
    r = subprocess.run([sys.executable, "-m", "lrt.cli", "pilot", "--type", "acacia_calib",
                        "--idle-exit", "1", "--poll", "0.5", "--max-tokens", "2"],
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    dest = "rclone://acacia/lofar-results/calib"
    for i, tid in enumerate(ids):
        doc = db.get(tid)
        assert doc["state"] == "done", (doc.get("error"), r.stderr[-3000:])
        expect = data[urls[2 * i]] + data[urls[2 * i + 1]]
        key = f"calib/{tid}.h5"
        assert s3.get("lofar-results", key) == expect
        assert s3.etag("lofar-results", key) == hashlib.md5(expect).hexdigest()
        assert doc["output"] == [{"url": f"{dest}/{tid}.h5", "size": len(expect),
                                  "checksum": f"adler32:{zlib.adler32(expect) & 0xffffffff:08x}"}]
    assert sorted(s3.keys("lofar-results")) == ["calib/calib_000.h5", "calib/calib_001.h5"]
    assert s3.secret_key not in r.stdout + r.stderr
