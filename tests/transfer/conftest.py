"""Fixtures for the transfer tests: a real S3 endpoint (moto's server) and rclone remotes.

* ``s3`` -- ``moto_server`` (PyPI moto, the ``test`` extra) on a free loopback
  port for the whole session, with an rclone remote ``moto`` configured purely
  through ``RCLONE_CONFIG_MOTO_*`` variables (:attr:`S3.env`) and a boto3
  client for checking what the store holds independently of rclone.
* ``bucket`` -- a fresh bucket per test.

``make test`` installs rclone and moto (scripts/testbed-rclone.sh); without
them these tests skip with the reason.
"""
from __future__ import annotations

import http.client
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

from lrt.server import free_port
from pilot_helpers import poll


class S3:
    """A moto S3 server we started; ``env`` configures the rclone remote ``moto``."""

    def __init__(self, port: int, proc: subprocess.Popen, log: Path):
        self.port, self.proc, self.log = port, proc, log
        self.endpoint = f"http://127.0.0.1:{port}"
        #: unique per session, so a test can search for it in tokens, logs and errors
        self.access_key = "lrt-access-" + secrets.token_hex(4)
        self.secret_key = "lrt-s3-secret-" + secrets.token_hex(12)
        self.env: Dict[str, str] = {
            "RCLONE_CONFIG": os.devnull,  # nothing from a user's ~/.config/rclone
            "RCLONE_CONFIG_MOTO_TYPE": "s3", "RCLONE_CONFIG_MOTO_PROVIDER": "Other",
            "RCLONE_CONFIG_MOTO_ENV_AUTH": "false",
            "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": self.access_key,
            "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": self.secret_key,
            "RCLONE_CONFIG_MOTO_REGION": "us-east-1", "RCLONE_CONFIG_MOTO_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE": "true",
        }
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id=self.access_key,
                                   aws_secret_access_key=self.secret_key)

    def keys(self, bucket: str, prefix: str = "") -> Dict[str, dict]:
        """key -> head of every object under ``prefix``."""
        out: Dict[str, dict] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj
        return out

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def etag(self, bucket: str, key: str) -> str:
        return self.client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def _up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[S3]:
    if shutil.which("rclone") is None:
        pytest.skip("rclone not installed; run scripts/testbed-rclone.sh VENV")
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        exe = Path(shutil.which("moto_server") or exe)
    if not exe.exists():
        pytest.skip("moto_server not installed (pip install '.[test]' or scripts/testbed-rclone.sh)")
    pytest.importorskip("boto3")
    base = tmp_path_factory.mktemp("moto")
    port = free_port()
    log = base / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        poll(lambda: proc.poll() is not None or _up(port), timeout=60, interval=0.1,
             what=f"moto_server on port {port}")
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited: {log.read_text()[-2000:]}")
        yield S3(port, proc, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


_buckets = [0]


@pytest.fixture
def bucket(s3) -> str:
    _buckets[0] += 1
    name = f"lrt-test-{secrets.token_hex(3)}-{_buckets[0]}"
    s3.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def rclone_env(s3, monkeypatch) -> Dict[str, str]:
    """This process's environment pointed at the ``moto`` remote (for library-level calls)."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LRT_STAGE_BACKOFF", "0.05")
    return dict(s3.env)
