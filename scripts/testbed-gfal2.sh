#!/bin/bash
# gfal2 (CERN grid file access) for lrt's staging: Debian packages + the Python
# bindings made importable from the project venv.
#
#   scripts/testbed-gfal2.sh VENV       (the Makefile's `testbed` target passes .venv)
#
# Idempotent: apt runs only when a package is missing; the symlink is refreshed.
# gfal2 stays optional for lrt: without it only `lrt stage ...` and the pilot's
# stage-in/out are unavailable (they say so in one line).
#
# Why a symlink: PyPI's gfal2-python does not build against Debian 12's libgfal2,
# while Debian's python3-gfal2 is built for CPython 3.11 -- the same ABI
# (cpython-311-x86_64-linux-gnu) as the venv's interpreter, so the .so loads as is.
set -euo pipefail
VENV=${1:?usage: $0 VENV}
export DEBIAN_FRONTEND=noninteractive

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure testbed-gfal2 gfal2 python3-gfal2 gfal2-plugin-file gfal2-plugin-http gfal2-plugin-mock \
    gfal2-plugin-xrootd gfal2-util-scripts python3-gfal2-util

[ -x "$VENV/bin/python" ] || { echo "testbed-gfal2: no venv at $VENV" >&2; exit 1; }
so=$(ls /usr/lib/python3/dist-packages/gfal2.cpython-*.so 2>/dev/null | head -1)
[ -n "$so" ] || { echo "testbed-gfal2: python3-gfal2 installed no gfal2 extension module" >&2; exit 1; }
suffix=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
case "$so" in
    *"$suffix") ;;
    *) echo "testbed-gfal2: $so does not match the venv's ABI ($suffix); gfal2 left out" >&2; exit 1;;
esac
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
ln -sfn "$so" "$site/$(basename "$so")"
"$VENV/bin/python" -c 'import gfal2; print("testbed-gfal2: gfal2", gfal2.get_version(), "importable")'
