#!/bin/bash
# XRootD server and client for lrt's staging tests, plus what the tape emulator
# needs (headers and a C++ compiler for its small stat plug-in, a C compiler for
# the loopback bind shim).
#
#   scripts/testbed-xrootd.sh [VENV]     (VENV is accepted for the Makefile; unused)
#
# Idempotent: apt runs only when something is missing.  Nothing is started here:
# the tests start their own servers on free loopback ports (tests/staging/conftest.py)
# and stop them.  xrootd refuses to run as root, so an unprivileged system user
# `xrootd` is created when missing (the server drops to it with -R xrootd).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure testbed-xrootd xrootd-server xrootd-client libxrootd-server-dev g++ gcc libc6-dev
getent passwd xrootd >/dev/null || useradd -r -M -s /bin/false xrootd
echo "testbed-xrootd: $(xrootd -v 2>&1 | head -1) ready (servers are started by the tests)"
