#!/usr/bin/env bash
# `make demo`: start the embedded local server, create the demo tokens, show them.
set -euo pipefail
VENV=${1:-.venv}
LRT="$VENV/bin/lrt"
export LRT_COUCH_DB=${LRT_COUCH_DB:-lrt_demo}
"$LRT" server start
"$LRT" views install
"$LRT" create configs/demo.yaml
"$LRT" status
