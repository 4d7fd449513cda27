PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test bench lint typecheck status-screenshot clean docs demo

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n dmq --server-address sip:127.0.0.1:5060 --control tcp:8060:interface=127.0.0.1

test: $(STAMP)
	$(BIN)/pytest -q

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]' --config-settings editable_mode=compat
	touch $(BENCH_STAMP)

# Kamailio and dmq side by side (about 15 min); writes docs/benchmarks.md and docs/bench/.
# nice -n -5 needs root; without it nice warns and runs the bench at the usual priority.
bench: $(BENCH_STAMP)
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
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
