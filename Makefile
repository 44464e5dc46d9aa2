# agentbus developer commands. Every target installs what it needs first (uv, then `uv sync --frozen`).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# uv from PATH, else one bootstrapped into .agentbus/bootstrap (a venv, or `pip install --user`).
BOOTSTRAP := .agentbus/bootstrap
UV ?= $(or $(shell command -v uv 2>/dev/null),$(BOOTSTRAP)/bin/uv)
RUN := $(UV) run --frozen
PYTEST_ARGS ?=
# tests run in parallel, one pytest-xdist worker per core (at most 4); each worker has its own PostgreSQL and every test its own nats-server
TEST_WORKERS ?= auto

.PHONY: help sync run test bench bench-smoke lint format asyncapi gateway credentials clean reset

help: ## list the targets
	@grep -hE '^[a-zA-Z_%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

$(BOOTSTRAP)/bin/uv:
	@echo "uv not found on PATH: installing it into $(BOOTSTRAP)"
	@if python3 -m venv $(BOOTSTRAP) >/dev/null 2>&1; then \
		$(BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check uv; \
	else \
		python3 -m pip install --quiet --user uv; \
		mkdir -p $(BOOTSTRAP)/bin; \
		ln -sf "$$(python3 -m site --user-base)/bin/uv" $(BOOTSTRAP)/bin/uv; \
	fi

sync: $(filter $(BOOTSTRAP)/%,$(UV)) ## install the locked dependencies into .venv
	@$(UV) sync --frozen --quiet

run: sync ## start NATS + PostgreSQL (embedded unless NATS_URL / DATABASE_URL are set), every actor and the gateway
	$(RUN) agentbus run

test: sync ## run the test suite (real nats-server and PostgreSQL; no real model calls)
	$(RUN) pytest -n $(TEST_WORKERS) --maxprocesses 4 $(PYTEST_ARGS)

bench: sync ## run the benchmarks (minutes), ending with a summary against the targets
	$(RUN) python -m tests.bench

bench-smoke: sync ## every benchmark with tiny counts (about 2 minutes); fails unless each one ran and printed its figures
	$(RUN) python -m tests.bench --smoke

lint: sync ## ruff check, ruff format --check, mypy --strict
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

format: sync ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

asyncapi: sync ## regenerate docs/asyncapi.json, the bus's AsyncAPI 3 document (a test fails while it is stale)
	$(RUN) python -m bus.asyncapi > docs/asyncapi.json.tmp
	mv docs/asyncapi.json.tmp docs/asyncapi.json

actor-%: sync ## run one actor (actor-conversation, -executor, -scheduler, -trigger, -notifier, -research), against `make run`'s NATS unless NATS_URL is set
	$(RUN) agentbus actor $*

gateway: sync ## run the gateway alone, against `make run`'s NATS unless NATS_URL is set
	$(RUN) agentbus gateway

credentials: sync ## make the NATS nkey of every process in .agentbus/credentials (make run does it too; compose.yaml needs it first)
	$(RUN) agentbus credentials

clean: ## remove caches and build output (keeps .agentbus data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache dist
	find . -path ./.venv -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

reset: ## delete .agentbus: the embedded NATS and PostgreSQL data, the NATS credentials, and the dev API key
	@if [ -e .agentbus/run.lock ] && ! flock -n .agentbus/run.lock true; then \
		echo "agentbus run is still running here: stop it first"; exit 1; fi
	rm -rf .agentbus
