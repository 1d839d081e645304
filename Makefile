# Two commands do everything on a fresh machine with Python 3.11+ and pip:
#   make run    install into .venv and run the demo (the seed's scenario on a local echo server)
#   make test   install into .venv and run every check (format, lint, types; the tests on both builds)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
# `make run` installs only the package (pycurl, click); `make test` adds the test and bench tools.
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp
# The compiled build (mypyc; README "The compiled build"): a wheel built from a copy of the tree
# (so no compiled module ever lands in src/), unpacked into build/fast-site. The suite runs on it
# with that directory first on PYTHONPATH, in the same venv (subprocesses inherit it).
FAST_SITE := build/fast-site
FAST_STAMP := $(FAST_SITE)/.built-stamp
SOURCES := $(shell find src -name '*.py' -o -name '*.js' -o -name '*.css')

.PHONY: run test lint typecheck pytest pytest-fast fast bench clean redis-server chromium

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "postkey needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e .
	@touch $(RUN_STAMP)

$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[test,bench,redis,gateway]'
	@command -v redis-server >/dev/null || $(MAKE) --no-print-directory redis-server
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory chromium
	@touch $(STAMP) $(RUN_STAMP)

# The tests start redis-server processes of their own (on free ports); install it if missing.
redis-server:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi

# The dashboard's browser test drives Debian's chromium through Playwright (no browser download).
chromium:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi

run: $(RUN_STAMP)
	$(BIN)/postkey demo

# The compiled build compiles (a minute of gcc) while the checks and the pure suite run.
test: $(STAMP)
	@$(MAKE) --no-print-directory -j3 lint typecheck pytest fast
	@$(MAKE) --no-print-directory pytest-fast

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/ruff check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Six test processes on two cores: most tests wait on sockets, timers and subprocesses.
pytest: $(STAMP)
	$(BIN)/pytest -q -n 6

# The same suite on the compiled build (TEST_ON_COMPILED_BUILD=1: a test checks it is compiled).
pytest-fast: $(FAST_STAMP) $(STAMP)
	PYTHONPATH=$(CURDIR)/$(FAST_SITE) TEST_ON_COMPILED_BUILD=1 $(BIN)/pytest -q -n 6 -p no:cacheprovider

fast: $(FAST_STAMP)

$(FAST_STAMP): pyproject.toml constraints.txt $(SOURCES) | $(VENV)/bin/python
	rm -rf build/fast build/wheel $(FAST_SITE) && mkdir -p build/fast
	cp -r src pyproject.toml README.md LICENSE build/fast/
	cd build/fast && PIP_CONSTRAINT=$(CURDIR)/constraints.txt HATCH_BUILD_HOOK_ENABLE_MYPYC=true \
		$(CURDIR)/$(BIN)/python -m pip wheel --quiet --disable-pip-version-check \
		--no-deps -w $(CURDIR)/build/wheel .
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(FAST_SITE) build/wheel/postkey-*.whl
	@touch $(FAST_STAMP)

# Benchmarks are scripts, not tests: they install nginx if missing and take a few minutes.
bench: $(STAMP) $(FAST_STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/queued.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
