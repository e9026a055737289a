#!/bin/bash
# Debian's chromium for the dashboard's browser tests (tests/web/), driven by
# Playwright for Python with executable_path=/usr/bin/chromium: Playwright never
# downloads a browser of its own (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1).
#
#   scripts/testbed-chromium.sh [VENV]     (VENV is accepted for the Makefile; unused)
#
# Idempotent: apt runs only when chromium is missing.  Fonts come with it
# (fonts-liberation is a dependency), so screenshots render text.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

. "$(dirname "$0")/apt-ensure.sh"
apt_ensure testbed-chromium chromium fonts-liberation
echo "testbed-chromium: $(chromium --version 2>/dev/null | head -1) ready"
