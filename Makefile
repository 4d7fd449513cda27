PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
PYPY ?= pypy3
PYPY_VENV := .venv-pypy
PYPY_STAMP := $(PYPY_VENV)/.installed

.PHONY: run run-pypy test test-pypy bench lint typecheck status-screenshot clean docs demo

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n dmq --server-address sip:127.0.0.1:5060 --control tcp:8060:interface=127.0.0.1

test: $(STAMP)
	$(BIN)/pytest -q

# The same package on PyPy (Debian: apt-get install pypy3 pypy3-venv pypy3-dev), for `make run-pypy`,
# `make test-pypy` and the PyPy rows of `make bench`. constraints-pypy.txt holds the last releases of
# the compiled dependencies that ship wheels for PyPy 3.9.
$(PYPY_STAMP): setup.py constraints-pypy.txt
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/pip install --quiet --upgrade pip
	$(PYPY_VENV)/bin/pip install --quiet -c constraints-pypy.txt -e '.[dev]' --config-settings editable_mode=compat
	touch $(PYPY_STAMP)

run-pypy: $(PYPY_STAMP)
	$(PYPY_VENV)/bin/twistd -n dmq --server-address sip:127.0.0.1:5060 --control tcp:8060:interface=127.0.0.1

test-pypy: $(PYPY_STAMP)
	$(PYPY_VENV)/bin/pytest -q

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]' --config-settings editable_mode=compat
	touch $(BENCH_STAMP)

# Kamailio and dmq side by side (about 15 min); writes docs/benchmarks.md and docs/bench/.
# nice -n -5 needs root; without it nice warns and runs the bench at the usual priority.
bench: $(BENCH_STAMP) $(if $(shell command -v $(PYPY)),$(PYPY_STAMP))
	nice -n -5 $(BIN)/python bench/run.py

status-screenshot: $(STAMP)
	$(BIN)/python tools/screenshot_status.py

typecheck: $(STAMP)
	$(BIN)/mypy dmq

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs build/docs
	@echo "docs: build/docs/index.html"

demo: $(STAMP)
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) $(PYPY_VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
