# One-command set-up: every target installs what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := .demo
DEMO_PORT ?= 18777
MNT := mnt

.PHONY: sysdeps venv unit test lint demo demo-stop bench bench-deps soak clean

sysdeps:
	@if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 2>/dev/null; then \
		echo "installing fuse3 libfuse3-dev pkg-config with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev pkg-config >/dev/null; \
	fi

$(STAMP): pyproject.toml | sysdeps
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing Python packages into $(VENV) (first run: ~1-2 min; pip shows each step)"
	$(BIN)/pip install --disable-pip-version-check --progress-bar on --upgrade pip
	$(BIN)/pip install --disable-pip-version-check --progress-bar on -e '.[test]'
	@touch $(STAMP)

venv: sysdeps $(STAMP)

lint: venv
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

unit: lint
	COMET_ERROR_TRACKING_ENABLE=false $(BIN)/pytest -m 'not fuse and not sdk' -q

test: lint
	COMET_ERROR_TRACKING_ENABLE=false $(BIN)/pytest

demo: venv
	DEMO_DIR=$(DEMO_DIR) DEMO_PORT=$(DEMO_PORT) MNT=$(MNT) BIN=$(BIN) scripts/demo.sh start

demo-stop:
	DEMO_DIR=$(DEMO_DIR) DEMO_PORT=$(DEMO_PORT) MNT=$(MNT) BIN=$(BIN) scripts/demo.sh stop

# The peers of the comparison: nginx serves the same bytes to `rclone mount :http:`.
bench-deps:
	@if ! command -v rclone >/dev/null || ! command -v nginx >/dev/null || ! command -v curl >/dev/null; then \
		echo "installing rclone nginx curl with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone nginx curl >/dev/null; \
	fi

# Writes docs/benchmarks.md, bench-results/latest.json and bench-results/ratios.png.
bench: venv bench-deps
	PYTHONPATH=src $(BIN)/python scripts/bench.py $(BENCH_ARGS)

# 32 readers for 150 s under faults, every byte checked, then 50 mount/unmount cycles;
# writes bench-results/soak.json (SOAK_ARGS=--seconds 60 for a shorter run).
soak: venv
	PYTHONPATH=src $(BIN)/python scripts/soak.py $(SOAK_ARGS)

clean: demo-stop
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
