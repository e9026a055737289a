"""The rclone backend against a real S3 endpoint (moto_server on loopback) with Debian's rclone.

Library level: stage-in from ``rclone://`` and ``REMOTE:path`` URLs, stage-out
under attempt-scoped names then ``moveto``, checksums checked against what S3
holds (boto3, independent of rclone), a corrupted object, a lost lease, the
secret key kept out of every error.  End to end: a real pilot process.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from lrt.errors import StageInError, StageOutError
from lrt.staging import pilot
from lrt.transfer import Failure, Session, TransferError, TransferOptions
from lrt.transfer import rclone as rc
from pilot_helpers import ROOT, poll, token


def _adler(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xffffffff:08x}"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_stage_in_both_url_forms_checksums_verified(s3, bucket, rclone_env, tmp_path):
    a, b = os.urandom(300_000), os.urandom(7000)
    s3.put(bucket, "in/L1_SB000.tar", a)
    s3.put(bucket, "in/sub/L1_SB001.tar", b)
    doc = {"inputs": [{"url": f"rclone://moto/{bucket}/in/L1_SB000.tar", "checksum": "adler32:" + _adler(a)},
                      {"url": f"moto:{bucket}/in/sub/L1_SB001.tar"}]}  # b: against S3's MD5
    pilot.stage_in(doc, tmp_path / "work")
    assert (tmp_path / "work" / "L1_SB000.tar").read_bytes() == a
    assert (tmp_path / "work" / "L1_SB001.tar").read_bytes() == b


def test_corrupt_object_is_code_23_and_leaves_nothing(s3, bucket, rclone_env, tmp_path):
    good = os.urandom(50_000)
    corrupt = bytearray(good)
    corrupt[1000] ^= 0xFF  # the object in the store is not what the token was made for
    s3.put(bucket, "in/c.tar", bytes(corrupt))
    url = f"moto:{bucket}/in/c.tar"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url, "checksum": "adler32:" + _adler(good)}]}, tmp_path)
    assert ei.value.code == 23
    assert "checksum mismatch" in ei.value.per_file[url] and _adler(good) in ei.value.per_file[url]
    assert not (tmp_path / "c.tar").exists()
    # md5 expected values are checked too
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url, "checksum": "md5:" + _md5(good)}]}, tmp_path)
    assert ei.value.code == 23 and not (tmp_path / "c.tar").exists()


def test_missing_object_is_code_21_without_retries(s3, bucket, rclone_env, tmp_path, caplog):
    url = f"rclone://moto/{bucket}/in/nope.tar"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url}]}, tmp_path)
    assert ei.value.code == 21 and "no such object" in ei.value.per_file[url]
    assert "attempt" not in caplog.text  # not found is final: no retries


def _outputs(work: Path, tag: bytes) -> dict:
    (work / "images").mkdir(parents=True, exist_ok=True)
    files = {"sol.h5": b"solutions " + tag * 5000, "images/i1.fits": b"image " + tag * 20000}
    for rel, data in files.items():
        (work / rel).write_bytes(data)
    (work / "scratch.log").write_text("not an output")
    return files


def _doc(dest: str) -> dict:
    return {"outputs": {"dest": dest, "globs": ["*.h5", "images/*.fits"]}}


@pytest.mark.parametrize("form", ["rclone://moto/{b}/out/L1", "moto:{b}/out/L1"])
def test_stage_out_publishes_under_final_names_with_right_checksums(s3, bucket, rclone_env, tmp_path,
                                                                     form):
    files = _outputs(tmp_path, b"A")
    dest = form.format(b=bucket)
    refs = pilot.stage_out(_doc(dest), tmp_path, "att1", lambda: True)
    assert sorted(r["url"] for r in refs) == sorted(f"{dest}/{rel}" for rel in files)
    keys = s3.keys(bucket)
    assert sorted(keys) == sorted(f"out/L1/{rel}" for rel in files)  # no temporaries, no scratch
    for r in refs:
        rel = r["url"][len(dest) + 1:]
        assert s3.get(bucket, f"out/L1/{rel}") == files[rel]
        assert s3.etag(bucket, f"out/L1/{rel}") == _md5(files[rel])  # single part: ETag is the MD5
        assert r["checksum"] == "adler32:" + _adler(files[rel]) and r["size"] == len(files[rel])


def test_lost_lease_publishes_nothing_on_s3(s3, bucket, rclone_env, tmp_path):
    _outputs(tmp_path, b"Z")
    asked = []

    def lost() -> bool:
        asked.append(s3.keys(bucket))  # what the store holds when the fence is asked
        return False

    with pytest.raises(StageOutError) as ei:
        pilot.stage_out(_doc(f"moto:{bucket}/out/L2"), tmp_path, "zombie", lost)
    assert ei.value.code == 40
    # everything was uploaded under attempt-scoped names before the lease was checked ...
    assert sorted(asked[0]) == ["out/L2/images/i1.fits.lrt-tmp-zombie", "out/L2/sol.h5.lrt-tmp-zombie"]
    assert s3.keys(bucket) == {}  # ... and nothing is left: no final names, no temporaries


def test_rerun_keeps_the_published_object(s3, bucket, rclone_env, tmp_path):
    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    first = _outputs(w1, b"1")
    _outputs(w2, b"2")
    dest = f"rclone://moto/{bucket}/out/L3"
    refs1 = pilot.stage_out(_doc(dest), w1, "run1", lambda: True)
    refs2 = pilot.stage_out(_doc(dest), w2, "run2", lambda: True)
    for rel, data in first.items():
        assert s3.get(bucket, f"out/L3/{rel}") == data
    assert sorted(s3.keys(bucket)) == sorted(f"out/L3/{rel}" for rel in first)
    by_url = {r["url"]: r for r in refs2}
    for r in refs1:  # the re-run reports what is there (S3 offers MD5, not adler32)
        rel = r["url"][len(dest) + 1:]
        assert by_url[r["url"]] == {"url": r["url"], "size": len(first[rel]),
                                    "checksum": "md5:" + _md5(first[rel])}


def test_secret_never_in_error_text(s3, rclone_env, tmp_path):
    """rclone -vv prints the secret key (it logs every setting it reads from the
    environment); lrt's messages still never contain it."""
    (tmp_path / "sol.h5").write_bytes(b"x" * 100)
    bad = "moto:ab/out"  # "ab" is not a valid bucket name: S3 refuses the upload
    raw = subprocess.run(["rclone", "-vv", "--retries", "1", "copyto", str(tmp_path / "sol.h5"), bad + "/x"],
                         env={**os.environ, "AWS_CA_BUNDLE": ""}, capture_output=True, text=True,
                         timeout=60)
    assert raw.returncode != 0 and s3.secret_key in raw.stderr  # the leak the redaction is for
    assert s3.secret_key not in rc.redact_text(raw.stderr, rc.secrets(os.environ))
    opts = TransferOptions(retries=1, backoff=0, rclone_flags=("-vv",))
    with pytest.raises(StageOutError) as ei:
        pilot.stage_out({"outputs": {"dest": bad, "globs": ["*.h5"]}}, tmp_path, "a1", lambda: True,
                        options=opts)
    assert ei.value.code == 30
    text = str(ei.value) + json.dumps(ei.value.per_file)
    assert "InvalidBucketName" in text and s3.secret_key not in text
    assert s3.access_key not in text


def test_rclone_urls_parse_and_refuse_inline_credentials():
    assert rc.spec("rclone://moto/bucket/a/b.tar") == "moto:bucket/a/b.tar"
    assert rc.spec("rclone://loc//data/x") == "loc:/data/x"
    assert rc.spec("acacia:proj/x.tar") == "acacia:proj/x.tar"
    for bad in (":s3,secret_access_key=SEKRIT:bucket/x", "rclone://:s3,secret_access_key=SEKRIT:/x",
                "rclone://moto/b/x?secret=SEKRIT"):
        with pytest.raises(TransferError) as ei:
            rc.spec(bad)
        assert ei.value.failure is Failure.UNSUPPORTED and "SEKRIT" not in str(ei.value)
    assert "secret_access_key=***" in rc.redact_text("x secret_access_key=abc123 y")
    assert rc.redact_text('Setting pass="obscured123" for') == 'Setting pass="***" for'
    assert rc.redact_text("NoSuchKey: The specified key does not exist") == \
        "NoSuchKey: The specified key does not exist"
    assert rc.redact_text("s3://u:pw123@host/x") == "s3://***@host/x"


def test_secrets_of_a_config_file_are_redacted_too(tmp_path):
    conf = tmp_path / "rclone.conf"
    conf.write_text("[acacia]\ntype = s3\naccess_key_id = AKIDEXAMPLE\n"
                    "secret_access_key = wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY\nendpoint = https://x\n")
    found = rc.secrets({"HOME": str(tmp_path / "nohome")}, str(conf))
    assert "wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY" in found and "https://x" not in found
    assert "s3" not in found
    text = rc.redact_text("auth failed for wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY at https://x", found)
    assert "wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY" not in text and "https://x" in text
    # rclone's default config file is found without being named
    default = tmp_path / "home" / ".config" / "rclone" / "rclone.conf"
    default.parent.mkdir(parents=True)
    default.write_text(conf.read_text())
    assert "wJalrXUtnFEMIbPxRfiCYEXAMPLEKEY" in rc.secrets({"HOME": str(tmp_path / "home")})


def test_rclone_missing_is_a_clear_stage_error(tmp_path):
    opts = TransferOptions(rclone="/nonexistent/rclone")
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": "moto:b/x.tar"}]}, tmp_path, options=opts)
    assert ei.value.code == 21 and "rclone is not installed" in str(ei.value)
    with pytest.raises(TransferError) as e2:
        Session(opts).for_url("rclone://moto/b/x")
    assert e2.value.failure is Failure.MISSING


def test_sandbox_from_an_rclone_remote(s3, bucket, rclone_env, tmp_path):
    from lrt.pilot import sandbox

    example = ROOT / "sandboxes"
    folder = next(p for p in sorted(example.iterdir()) if p.is_dir())
    tarball = tmp_path / "sb.tar.gz"
    built = sandbox.build(folder, output=tarball)
    s3.put(bucket, "sb/sb.tar.gz", tarball.read_bytes())
    path = sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c1", url=f"rclone://moto/{bucket}/sb/sb.tar.gz")
    assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in folder.iterdir()
                                                             if p.name not in sandbox.EXCLUDE)
    with pytest.raises(sandbox.SandboxError) as ei:  # a missing key is no empty download
        sandbox.fetch_sandbox(None, built.sha256, tmp_path / "c2", url=f"moto:{bucket}/sb/none.tar.gz")
    assert ei.value.code == 10 and "no such object" in str(ei.value)


# ---------------------------------------------------------------------------------------
# a real pilot


def _pilot(couch, db, s3, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = couch.env(db.name)
    env.update(s3.env)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "lrt.cli", "-v", "pilot", "--type", "rclone-e2e",
                           "--idle-exit", "1", "--poll", "0.5", *args],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)


def _all_text(db, ids) -> str:
    """Every revision's JSON and every attachment (logs) of ``ids``, as one text."""
    out = []
    for i in ids:
        doc = db.get(i)
        out.append(json.dumps(doc))
        for name in (doc.get("_attachments") or {}):
            buf = io.BytesIO()
            db.get_attachment(i, name, dest=buf)
            out.append(buf.getvalue().decode("utf-8", "replace"))
    return "\n".join(out)


def test_pilot_stages_in_and_out_through_rclone(s3, bucket, couch, db, tmp_path):
    parts = [os.urandom(40_000), os.urandom(25_000)]
    inputs = []
    for i, data in enumerate(parts):
        s3.put(bucket, f"in/L42_SB{i:03d}.tar", data)
        inputs.append({"url": f"rclone://moto/{bucket}/in/L42_SB{i:03d}.tar",
                       "checksum": f"adler32:{_adler(data)}"})
    corrupt = bytes(b ^ 1 for b in parts[0])
    s3.put(bucket, "in/bad/L42_SB000.tar", corrupt)
    bad_inputs = [dict(inputs[0], url=f"moto:{bucket}/in/bad/L42_SB000.tar")]
    dest = f"moto:{bucket}/out"
    cmd = ["sh", "-c", "cat *.tar > result.h5"]
    db.bulk_docs([
        token("good", cmd, type="rclone-e2e", inputs=inputs, outputs={"dest": dest + "/good", "globs": ["*.h5"]}),
        token("bad", cmd, type="rclone-e2e", inputs=bad_inputs, max_attempts=1,
              outputs={"dest": dest + "/bad", "globs": ["*.h5"]})])
    r = _pilot(couch, db, s3, tmp_path, "--max-tokens", "2")
    good, bad = db.get("good"), db.get("bad")
    assert good["state"] == "done", (good.get("error"), r.stderr[-3000:])
    result = parts[0] + parts[1]
    assert s3.get(bucket, "out/good/result.h5") == result
    assert s3.etag(bucket, "out/good/result.h5") == _md5(result)
    assert sorted(s3.keys(bucket, "out/")) == ["out/good/result.h5"]  # bad published nothing
    assert good["output"] == [{"url": f"{dest}/good/result.h5", "size": len(result),
                               "checksum": f"adler32:{_adler(result)}"}]
    assert bad["state"] in ("failed", "error") and bad["error"]["code"] == 23, bad.get("error")
    # the S3 secret is nowhere: not in the tokens (nor their logs), the pilot's output or errors
    everything = _all_text(db, ["good", "bad"]) + r.stdout + r.stderr
    assert "checksum mismatch" in everything  # the text searched does hold the errors
    assert s3.secret_key not in everything


def test_pilot_that_lost_its_lease_does_not_publish(s3, bucket, couch, db, tmp_path):
    """The payload finishes after another claim took the token over (as after a
    reap and re-claim while this pilot was paused): the outputs are uploaded
    under attempt-scoped names, the lease check before the commit fails, and
    nothing is published."""
    flags = tmp_path / "flags"
    flags.mkdir()
    payload = ["sh", "-c", f'echo data > out.h5; touch {flags}/ready; '
                           f'while [ ! -e {flags}/go ]; do sleep 0.1; done']
    db.bulk_docs([token("zombie", payload, type="rclone-e2e", max_attempts=1,
                        outputs={"dest": f"moto:{bucket}/out/z", "globs": ["*.h5"]})])
    env = couch.env(db.name)
    env.update(s3.env)
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "pilot.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lrt.cli", "-v", "pilot", "--type", "rclone-e2e",
                                 "--idle-exit", "1", "--poll", "0.5", "--max-tokens", "1"],
                                cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        poll(lambda: (flags / "ready").exists(), timeout=120, what="the payload to start")
        doc = db.get("zombie")
        assert doc["state"] == "locked"
        doc["lease"]["claim"] = "another-claim"  # another pilot holds the token now
        db.put(doc)
        (flags / "go").touch()
        assert proc.wait(120) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = db.get("zombie")
    assert after["lease"]["claim"] == "another-claim" and after["state"] == "locked", after
    assert s3.keys(bucket) == {}  # no final object, no temporary left behind
    text = log.read_text()
    # the fence that acted is the one before the commit (the payload was not stopped early)
    assert "no longer holds the token; 1 output(s) not published" in text, text[-3000:]
    assert s3.secret_key not in text


def test_object_without_a_hash_is_verified_by_size_and_says_so(s3, bucket, rclone_env, tmp_path, caplog):
    """A multipart upload by another tool has no MD5 in S3 (its ETag is not one, and
    no rclone metadata): lrt compares sizes, logs that it did, and still checks a
    checksum the token gives."""
    part1, part2 = os.urandom(5 << 20), os.urandom(1000)  # S3's minimum part size, then a tail
    up = s3.client.create_multipart_upload(Bucket=bucket, Key="in/big.tar")
    etags = [s3.client.upload_part(Bucket=bucket, Key="in/big.tar", UploadId=up["UploadId"],
                                   PartNumber=n, Body=body)["ETag"]
             for n, body in ((1, part1), (2, part2))]
    s3.client.complete_multipart_upload(
        Bucket=bucket, Key="in/big.tar", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]})
    assert "-" in s3.etag(bucket, "in/big.tar")  # a multipart ETag, not an MD5
    url = f"moto:{bucket}/in/big.tar"
    pilot.stage_in({"inputs": [{"url": url}]}, tmp_path / "w1")
    assert (tmp_path / "w1" / "big.tar").read_bytes() == part1 + part2
    assert "verified by size only" in caplog.text
    caplog.clear()
    pilot.stage_in({"inputs": [{"url": url, "checksum": "adler32:" + _adler(part1 + part2)}]},
                   tmp_path / "w2")
    assert "size only" not in caplog.text
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url, "checksum": "adler32:" + _adler(part1)}]},
                       tmp_path / "w3")
    assert ei.value.code == 23


def test_unconfigured_remote_is_a_clear_error_not_retried(s3, rclone_env, tmp_path, caplog):
    url = "rclone://nosuchremote/bucket/x.tar"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url}]}, tmp_path)
    assert ei.value.code == 21
    assert "'nosuchremote' is not configured" in ei.value.per_file[url]
    assert "RCLONE_CONFIG_NOSUCHREMOTE_TYPE" in ei.value.per_file[url]
    assert "attempt" not in caplog.text


def test_a_storage_that_never_answers_times_out(s3, rclone_env, monkeypatch, tmp_path):
    """rclone runs with a timeout: an endpoint that accepts connections and then
    says nothing fails the input instead of hanging the pilot."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes connections; nobody ever answers
    try:
        for k, v in s3.env.items():
            if k.startswith("RCLONE_CONFIG_MOTO_"):
                monkeypatch.setenv(k.replace("_MOTO_", "_SILENT_"), v)
        monkeypatch.setenv("RCLONE_CONFIG_SILENT_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        url = "silent:bucket/x.tar"
        opts = TransferOptions(retries=1, timeout=3, op_timeout=3)
        with pytest.raises(StageInError) as ei:
            pilot.stage_in({"inputs": [{"url": url}]}, tmp_path, options=opts)
        assert ei.value.code == 21 and "timed out after 3s" in ei.value.per_file[url]
    finally:
        silent.close()


def test_aws_ca_bundle_is_kept_from_rclone(s3, bucket, rclone_env, monkeypatch, tmp_path):
    """rclone 1.60's S3 client fails when AWS_CA_BUNDLE is set (this machine sets
    it); lrt removes it from rclone's environment by default."""
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    s3.put(bucket, "in/a.tar", b"abc")
    url = f"moto:{bucket}/in/a.tar"
    with pytest.raises(StageInError) as ei:
        pilot.stage_in({"inputs": [{"url": url}]}, tmp_path / "w1",
                       options=TransferOptions(retries=1, rclone_env_drop=()))
    assert "CABundle" in ei.value.per_file[url] or "CA bundle" in ei.value.per_file[url], ei.value.per_file
    pilot.stage_in({"inputs": [{"url": url}]}, tmp_path / "w2")
    assert (tmp_path / "w2" / "a.tar").read_bytes() == b"abc"
