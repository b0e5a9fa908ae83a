# Two commands do everything from a fresh clone: `make run` and `make test`.
# Set-up (virtualenv, locked deps, Kafka jars, dev signing key, schemas) happens on demand.

PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .local/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
DEV_SECRET := .local/jwt-secret
LOCAL_ENV := JWT_SECRET_FILE=$(CURDIR)/$(DEV_SECRET)
PORT ?= 8080

.PHONY: setup run test lint token schemas manifests clean chaos soak bench bench-short
.PHONY: storage-study
.DEFAULT_GOAL := help

help:
	@echo "make run     start Kafka, the ingest API on http://127.0.0.1:$(PORT) and the sink"
	@echo "make test    the whole test suite (own broker, own data)"
	@echo "make token SUB=<uuid>   print a dev access token for the local run"
	@echo "make chaos   100k events through broker, sink and ClickHouse faults; reconciles (CHAOS_ARGS=--help)"
	@echo "make soak    the sink's RSS over minutes of records; fails if it keeps growing (SOAK_ARGS=--help)"
	@echo "make manifests          render every k8s overlay and validate it offline (docs/deployment.md)"
	@echo "make bench   benchmarks against the seed's stack (~15 min; make bench-short: ~4 min)"
	@echo "make storage-study   ClickHouse vs PostgreSQL vs DuckDB, 10M events (STUDY_ARGS=--help)"

$(UV):
	@$(PYTHON) -m venv .local/uv
	@.local/uv/bin/pip install -q uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	@UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --quiet --python $(PYTHON)
	@touch $@

$(DEV_SECRET): | $(UV)
	@umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > $@

schemas: $(VENV)/.synced
	@$(PY) -m functions.events >/dev/null

setup: $(VENV)/.synced $(DEV_SECRET) schemas
	@$(PY) infra/localkafka.py fetch >/dev/null

run: setup
	$(LOCAL_ENV) PORT=$(PORT) $(PY) infra/localkafka.py run --data .local/kafka --port 9092 \
		--topic views:6 --topic views.dlq:1 -- $(PY) -m functions.local

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check functions clickhouse infra loadtest tests tools
	$(VENV)/bin/ruff format --check functions clickhouse infra loadtest tests tools
	$(VENV)/bin/mypy functions clickhouse
	$(VENV)/bin/lint-imports --no-cache

test: setup lint
	$(VENV)/bin/pytest

# Own broker on a free port, own embedded ClickHouse: safe beside `make run` and other checkouts.
chaos: setup
	PYTHONPATH=infra $(PY) loadtest/chaos.py $(CHAOS_ARGS)

soak: setup
	PYTHONPATH=infra $(PY) loadtest/soak.py $(SOAK_ARGS)

manifests: $(VENV)/.synced
	@for overlay in k8s/overlays/*/; do \
		printf '%s: ' "$$overlay"; \
		$(VENV)/bin/kubectl kustomize "$$overlay" | $(PY) tools/validate_manifests.py - || exit 1; \
	done
	@printf 'skaffold.yaml: ' && $(PY) tools/validate_manifests.py skaffold.yaml

# wrk comes from Debian; installed here, not in set-up: only the benchmark needs it.
/usr/bin/wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

bench: setup /usr/bin/wrk
	PYTHONPATH=infra $(PY) -m loadtest --profile full

bench-short: setup /usr/bin/wrk
	PYTHONPATH=infra $(PY) -m loadtest --profile short

token: $(VENV)/.synced $(DEV_SECRET)
	@test -n "$(SUB)" || { echo "usage: make token SUB=<user uuid>" >&2; exit 2; }
	@$(LOCAL_ENV) $(PY) -m functions.auth token --sub $(SUB)

clean:
	rm -rf $(VENV) .local/clickhouse .local/kafka

# Installs Debian's PostgreSQL 15 itself if it is missing; runs its own server on a free port.
storage-study: setup
	PYTHONPATH=infra $(PY) -m loadtest.storage $(STUDY_ARGS)
