#!/usr/bin/env bash
# Node.js + npm: the only requirement of the embedded local CouchDB-API server.
set -euo pipefail
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  exit 0
fi
. "$(dirname "$0")/apt-ensure.sh"
apt_ensure setup-node nodejs npm
