#!/bin/bash
# rclone (Debian's package) for lrt's rclone transfer backend, and moto's S3
# server (PyPI, in the venv: the `test` extra) that the tests start on loopback.
#
#   scripts/testbed-rclone.sh VENV      (the Makefile's `testbed` target passes .venv)
#
# Idempotent: apt runs only when rclone is missing; pip only when moto is.
# Nothing is started here: tests/transfer/conftest.py starts `moto_server -H
# 127.0.0.1 -p <free port>` per test session and stops it.
# rclone 1.60 fails every S3 call when AWS_CA_BUNDLE is set ("LoadCustomCABundleError
# ... unsupported transport"); lrt drops that variable from rclone's environment.
set -euo pipefail
VENV=${1:?usage: $0 VENV}
export DEBIAN_FRONTEND=noninteractive

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure testbed-rclone rclone

[ -x "$VENV/bin/python" ] || { echo "testbed-rclone: no venv at $VENV" >&2; exit 1; }
if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "testbed-rclone: installing moto's S3 server into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "moto[s3]==5.2.5" flask flask-cors 2>&1 \
        | grep -v "^WARNING: Location" || true
fi
echo "testbed-rclone: $(rclone version 2>/dev/null | head -1), moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)') ready"
