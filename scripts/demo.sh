#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded local server.
#  1. start the local CouchDB-API server (installed from npm on first use)
#  2. create the 20 demo tokens from configs/demo.yaml (builds + uploads the sandbox)
#  3. drain them with 4 local pilot processes (one payload fails on purpose,
#     is retried after a backoff, and ends quarantined as `failed`)
#  4. print the final status table and the failed token's error and log tail
set -euo pipefail
VENV=${1:-.venv}
LRT="$VENV/bin/lrt"
export LRT_COUCH_DB=${LRT_COUCH_DB:-lrt_demo}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "local server"
"$LRT" server start
"$LRT" views install >/dev/null

step "tokens from configs/demo.yaml"
# a re-run starts from a clean slate: the demo database holds only demo tokens
"$LRT" delete --type demo --yes --force >/dev/null 2>&1 || true
"$LRT" create configs/demo.yaml
"$LRT" create configs/demo.yaml   # idempotent: creates nothing the second time
"$LRT" status

step "draining with 4 local pilots"
"$LRT" run-local --pilots 4 --type demo --idle-exit 10 --lease 60

step "final status"
"$LRT" status

step "the token that failed on purpose"
"$LRT" show demo_13
step "its stderr log"
"$LRT" logs demo_13 --stderr
