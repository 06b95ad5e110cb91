# The two commands: `make run` and `make test`. Both set up whatever is missing first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
UV_VERSION := 0.13.9

export DAGSTER_HOME     ?= $(CURDIR)/var/dagster_home
export DUBBING_DATA_DIR ?= $(CURDIR)/var/data

.PHONY: run test setup system-deps lock bench clean

run: setup
	@scripts/run.sh

test: setup
	@scripts/setup_system.sh --test
	@scripts/test.sh

setup: system-deps $(VENV)/.installed

system-deps:
	@scripts/setup_system.sh

# Python dependencies, pinned by requirements.lock (regenerate with `make lock`).
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	@echo "installing Python dependencies from requirements.lock ..."
	@$(VENV)/bin/uv pip sync -q --python $(PY) requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

lock:
	@$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

bench: setup
	@$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) var
