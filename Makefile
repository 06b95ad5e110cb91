# The two commands: `make run` and `make test`. Both set up whatever is missing first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
UV_VERSION := 0.13.9

export DAGSTER_HOME     ?= $(CURDIR)/var/dagster_home
export DUBBING_DATA_DIR ?= $(CURDIR)/var/data

.PHONY: run test gates setup system-deps bytecode lock bench clean

run: setup
	@scripts/run.sh

test: setup
	@scripts/setup_system.sh --test
	@scripts/test.sh

# The reliability gates at full size (make test runs bounded versions of them): the nightly CI job.
GATES := concurrency_two_users upload_resume job_recovery cancel_midrun db_reconnect smoke_web schemathesis
gates: setup
	@scripts/setup_system.sh --test
	@scripts/test.sh --co -q tests/test_gates.py >/dev/null  # starts PostgreSQL when it is down
	@failed=""; for g in $(GATES); do \
	  args=""; [ $$g = db_reconnect ] && args="--restarts 20"; \
	  $(PY) scripts/e2e_$$g.py $$args || failed="$$failed $$g"; done; \
	  if [ -n "$$failed" ]; then echo "gates failed:$$failed"; exit 1; fi; echo "all gates passed"

setup: system-deps $(VENV)/.installed bytecode

system-deps:
	@scripts/setup_system.sh

# Python dependencies, pinned by requirements.lock (regenerate with `make lock`).
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	@echo "installing Python dependencies from requirements.lock ..."
	@$(VENV)/bin/uv pip sync -q --compile-bytecode --python $(PY) requirements.lock
	@$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	@touch $@

# Bytecode for the project's own packages too: every run worker is a fresh Python process, and where
# PYTHONDONTWRITEBYTECODE is set nothing is cached, so each process would compile every module again
# (importing the code location took 5.1 s of CPU without .pyc files, 2.4 s with them).
bytecode: $(VENV)/.installed
	@$(PY) -m compileall -q dubbing_assets resources sensors upload_api >/dev/null

lock:
	@$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

bench: setup
	@scripts/postgres_up.sh
	@$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) var
