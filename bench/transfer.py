#!/usr/bin/env python3
"""Transfer backends: time and rclone subprocesses per file for stage-in and stage-out.

Starts moto's S3 server on a free loopback port, then stages N files of S bytes
in from S3 through the rclone backend (remote configured by RCLONE_CONFIG_*
variables), publishes N outputs back (temporary name, verify, lease check,
moveto), and does the same through the ``file://`` backend for comparison.
Prints seconds per file and rclone processes per file.  Needs rclone and
moto_server (scripts/testbed-rclone.sh VENV).

    python3 bench/transfer.py
    python3 bench/transfer.py --n 50 --size 1000000
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrt.server import free_port  # noqa: E402
from lrt.staging import pilot  # noqa: E402
from lrt.transfer import TransferOptions  # noqa: E402
from lrt.transfer import rclone as rc  # noqa: E402


def _up(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="files (default 20)")
    ap.add_argument("--size", type=int, default=100_000, help="bytes per file (default 10^5)")
    a = ap.parse_args()
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists() or shutil.which("rclone") is None:
        sys.exit("needs rclone and moto_server: scripts/testbed-rclone.sh VENV")
    port = free_port()
    moto = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    calls = [0]
    real_run = subprocess.run

    def counting_run(*args, **kw):
        calls[0] += 1
        return real_run(*args, **kw)

    rc.subprocess.run = counting_run  # type: ignore[assignment]  (the bench only)
    try:
        deadline = time.monotonic() + 60
        while not _up(port):
            if time.monotonic() > deadline or moto.poll() is not None:
                sys.exit("moto_server did not start")
            time.sleep(0.1)
        os.environ.update({
            "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other", "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": "bench", "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": "bench",
            "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG_BENCH_ENDPOINT": f"http://127.0.0.1:{port}",
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true"})
        opts = TransferOptions.from_env()
        with tempfile.TemporaryDirectory(prefix="lrt-bench-transfer-") as tmp:
            base = Path(tmp)
            src = base / "src"
            src.mkdir()
            for i in range(a.n):
                (src / f"f{i:04d}.tar").write_bytes(os.urandom(a.size))
            real_run(["rclone", "mkdir", "bench:bench"], env={k: v for k, v in os.environ.items()
                                                              if k != "AWS_CA_BUNDLE"}, check=True)
            for i in range(a.n):
                real_run(["rclone", "copyto", str(src / f"f{i:04d}.tar"), f"bench:bench/in/f{i:04d}.tar"],
                         env={k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}, check=True)
            print(f"{a.n} files of {a.size} bytes; rclone {subprocess.run(['rclone', 'version'], capture_output=True, text=True).stdout.split()[1]}")
            print(f"{'backend':8} {'step':10} {'s/file':>8} {'rclone runs/file':>17}")
            for name, inputs, dest in (
                    ("rclone", [f"rclone://bench/bench/in/f{i:04d}.tar" for i in range(a.n)], "bench:bench/out"),
                    ("file", [(src / f"f{i:04d}.tar").as_uri() for i in range(a.n)], (base / "pub").as_uri())):
                work = base / f"work-{name}"
                calls[0] = 0
                t0 = time.perf_counter()
                pilot.stage_in({"inputs": [{"url": u} for u in inputs]}, work, options=opts)
                dt, n_in = time.perf_counter() - t0, calls[0]
                print(f"{name:8} {'stage-in':10} {dt / a.n:8.3f} {n_in / a.n:17.2f}")
                calls[0] = 0
                t0 = time.perf_counter()
                refs = pilot.stage_out({"outputs": {"dest": dest, "globs": ["*.tar"]}}, work, "bench",
                                       lambda: True, options=opts)
                dt = time.perf_counter() - t0
                assert len(refs) == a.n
                print(f"{name:8} {'stage-out':10} {dt / a.n:8.3f} {calls[0] / a.n:17.2f}")
    finally:
        rc.subprocess.run = real_run  # type: ignore[assignment]
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
