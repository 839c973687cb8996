# Two commands matter: `make run` and `make test`. Both set everything up from nothing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# pip takes the CPU build from a local wheel cache when it has one; on a GPU host set e.g.
# TORCH_SPEC='torch==2.13.0' with a CUDA index (PIP_EXTRA_INDEX_URL) for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# onnxruntime's build: cpu (onnxruntime) or gpu (onnxruntime-gpu, CUDA 13 + cuDNN 9), never both.
ORT_EXTRA ?= cpu
STAMP := $(VENV)/.installed

.PHONY: help preflight setup browser postgres redis docs serve run test test-fast up down lint lock clean env
help:
	@echo "make run    - set up, generate data, run the whole pipeline through Airflow, print a summary"
	@echo "make test   - set up and run every test (DAG integrity, jobs, end-to-end)"
	@echo "make preflight - check Python 3.11, Java 17+ (and for the tests PostgreSQL and Redis), with a fix for each"
	@echo "make up     - start the Airflow UI (standalone) and the MLflow UI on the local state"
	@echo "make down   - stop them"
	@echo "make lint   - ruff"
	@echo "make env    - write .env for docker compose, every secret generated (scripts/make_env.py)"
	@echo "make docs   - build the documentation site (docs/, MkDocs) and serve it on http://127.0.0.1:8001"
	@echo "make serve  - the real-time scoring service on the local state (http://127.0.0.1:8000, docs/serving.md)"

# What the machine must have before anything is installed; each missing piece with its one-line fix.
preflight:
	@scripts/preflight.sh "$(PYTHON)"

setup: preflight $(STAMP)
$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt "$(TORCH_SPEC)" -e ".[dev,$(ORT_EXTRA)]"
	@scripts/preflight.sh --venv $(VENV)
	touch $(STAMP)

run: setup
	PATH="$(abspath $(BIN)):$$PATH" scripts/run-pipeline.sh

# What the tests need beside Python, as Debian packages where this user may install them
# (scripts/system-package.sh); elsewhere the tests that need them skip, and CI requires them.
browser:  # headless Chromium for the UI tests (tests/browser.py)
	@scripts/system-package.sh chromium "the UI tests" chromium chromium-browser google-chrome
postgres:  # PostgreSQL's server binaries: tests/e2e/test_postgres.py starts its own server from them
	@scripts/system-package.sh postgresql "the PostgreSQL tests" initdb "/usr/lib/postgresql/*/bin/initdb"
redis:  # redis-server: the online store's tests start their own (tests/redis_server.py)
	@scripts/system-package.sh redis-server "the Redis online store tests" redis-server /usr/bin/redis-server

test: export PREFLIGHT_TESTS := 1
test: postgres redis setup browser
	$(BIN)/ruff check dags plugins jobs services tests bench
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest --durations=15

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not e2e"

# The real-time scoring service on the embedded default (the state `make run` leaves): 127.0.0.1:8000,
# its first API key written to .state/serving/api-key (docs/serving.md).
serve: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m services.scoring

# The documentation site; tests/docs runs the same build with --strict (every link and anchor resolves).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

up: setup
	PATH="$(abspath $(BIN)):$$PATH" scripts/stack.sh up

down:
	PATH="$(abspath $(BIN)):$$PATH" scripts/stack.sh down

lint: setup
	$(BIN)/ruff check dags plugins jobs services tests bench
	PYTHONPATH=plugins $(BIN)/lint-imports

# Re-resolve the environment from pyproject.toml and rewrite the pinned constraints.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade "pip>=25"
	.venv-lock/bin/python -m pip install --quiet "$(TORCH_SPEC)" -e ".[dev,cpu]"
	{ echo "# Fully pinned environment (pip freeze, Python 3.11, x86_64). Regenerate with 'make lock'."; \
	  echo "# torch is pinned apart (TORCH_SPEC in the Makefile) so GPU hosts can choose a build."; \
	  echo "# onnxruntime-gpu (the gpu extra) is pinned beside onnxruntime; an environment has one of the two."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -vE '^torch=='; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | sed -n 's/^onnxruntime==/onnxruntime-gpu==/p'; \
	  } > requirements/constraints.txt
	rm -rf .venv-lock

# The compose stack's .env: every secret generated at random, owner-only; values already there are kept.
env:
	@$(or $(PYTHON),python3) scripts/make_env.py

clean:
	rm -rf .state .pytest_cache
