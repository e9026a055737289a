# The two commands of the README: `make demo` and `make test`.
# Everything they need is installed here: a .venv with the package, Node.js (for
# the embedded local server) and the local server itself (npm, into ~/.local/share/lrt).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LRT := $(VENV)/bin/lrt
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# the browser tests use Debian's chromium (scripts/testbed-chromium.sh), never a downloaded one
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: all demo test typecheck venv node testbed clean bench

all: test

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@# the build backend's notes (editable install) are warnings: not for a demo's screen
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(STAMP)

node:
	@scripts/setup-node.sh

# System components the integration tests run for real (gfal2, XRootD, Slurm);
# each script is idempotent and does nothing when its part is already there.
testbed: venv
	@for s in scripts/testbed-*.sh; do [ -e "$$s" ] || continue; bash "$$s" "$(VENV)" || exit 1; done

demo: venv node
	@bash scripts/demo.sh "$(VENV)"

# static types first (config: [tool.mypy] in pyproject.toml): a type error stops `make test`
# before the suite starts, with mypy's own file:line messages
typecheck: venv
	$(PY) -m mypy

test: venv node testbed typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv node
	$(PY) bench/create.py
	$(PY) bench/status.py

clean:
	rm -rf $(VENV) .lrt-demo build *.egg-info
