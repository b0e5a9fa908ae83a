# Two commands do everything from a fresh clone: `make run` and `make test`.
# Set-up (virtualenv, locked deps, Kafka jars, dev signing key, schemas) happens on demand.

PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := .local/uv/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
DEV_SECRET := .local/jwt-secret
# The embedded engine unless the environment names a ClickHouse server (Settings has no default).
CLICKHOUSE_DSN ?= chdb://$(CURDIR)/.local/clickhouse
LOCAL_ENV := JWT_SECRET_FILE=$(CURDIR)/$(DEV_SECRET) CLICKHOUSE_DSN=$(CLICKHOUSE_DSN)
PORT ?= 8080
KAFKA_PORT ?= 9092
# Dead letters wait for a person: kept 30 days, as in k8s/infra/kafka/topics.yaml.
DLQ_TOPIC_CONFIG := retention.ms=2592000000
# Held by `make run` (and what it starts) while it uses .local/; `make clean` needs it too.
STACK_LOCK := .local/stack.lock

.PHONY: setup run test lint token schemas manifests clean chaos soak bench bench-short
.PHONY: cluster-up cluster-down dev
.PHONY: dlq dlq-replay observe trace logs otelcol storage-study
# The OpenTelemetry variables given to make or set in the shell, handed to the functions as they
# are (docs/observability.md); none set: nothing is exported.
OTEL_ENV := $(foreach v,$(filter OTEL_%,$(.VARIABLES)),$(v)='$($(v))')
.DEFAULT_GOAL := help

help:
	@echo "make run     start Kafka, the ingest API on http://127.0.0.1:$(PORT) and the sink"
	@echo "make test    the whole test suite (own broker, own data)"
	@echo "make token SUB=<uuid>   print a dev access token for the local run"
	@echo "make chaos   100k events through broker, sink and ClickHouse faults; reconciles (CHAOS_ARGS=--help)"
	@echo "make soak    the sink's RSS over minutes of records; fails if it keeps growing (SOAK_ARGS=--help)"
	@echo "make manifests          render every k8s overlay and validate it offline (docs/deployment.md)"
	@echo "make otelcol the OpenTelemetry Collector the tests send to (built once, Go)"
	@echo "make bench   benchmarks against the seed's stack (~15 min; make bench-short: ~4 min)"
	@echo "make diagrams           render docs/architecture/*.puml to the SVGs shown in the docs"
	@echo "make cluster-up [OVERLAY=dev]   kind cluster, operators, secrets, image, overlay (docs/deployment.md)"
	@echo "make dev     skaffold dev on that cluster, port-forwards to ingest, Kibana, ClickHouse"
	@echo "make cluster-down       delete the kind cluster"
	@echo "make dlq     dead letters of the local broker by reason (BODIES=1 prints the values; REASON=, OFFSETS=A-B)"
	@echo "make observe collector, Jaeger, OpenSearch, Spotlight on this machine; then make run OBSERVE=1"
	@echo "make trace ID=<trace id>   a trace as a text waterfall; make logs TRACE=<trace id>: its log lines"
	@echo "make dlq-replay         send the dead letters that now pass back to the sink (DRY_RUN=1, REASON=, OFFSETS=A-B)"
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

# OBSERVE=1: export to `make observe` (OTLP to its collector, errors to Spotlight, access lines
# on) and keep a copy of stdout for its log shipper.
OBSERVE_ENV = OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
	SENTRY_DSN=http://observe@127.0.0.1:8969/0 SENTRY_ENVIRONMENT=local LOG_ACCESS=true
OBSERVE_TEE = 2>&1 | tee -ia .local/observe/functions.log

run: setup
	@$(if $(OBSERVE),mkdir -p .local/observe)
	@exec env $(LOCAL_ENV) $(OTEL_ENV) PORT=$(PORT) $(if $(OBSERVE),$(OBSERVE_ENV)) \
		$(PY) infra/localkafka.py run --lock $(STACK_LOCK) \
		--data .local/kafka --port $(KAFKA_PORT) --ready-url http://127.0.0.1:$(PORT)/readyz \
		--topic views:6 --topic views.dlq:1:$(DLQ_TOPIC_CONFIG) -- $(PY) -m functions.local \
		$(if $(OBSERVE),$(OBSERVE_TEE))

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check functions clickhouse infra loadtest tests tools
	$(VENV)/bin/ruff format --check functions clickhouse infra loadtest tests tools
	$(VENV)/bin/mypy functions clickhouse
	$(VENV)/bin/lint-imports --no-cache

test: setup lint /usr/bin/chromedriver
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

# Chromium and its driver come from Debian too, for the docs page's browser test.
/usr/bin/chromedriver:
	@command -v chromedriver >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

bench: setup /usr/bin/wrk
	PYTHONPATH=infra $(PY) -m loadtest --profile full

bench-short: setup /usr/bin/wrk
	PYTHONPATH=infra $(PY) -m loadtest --profile short

# The OpenTelemetry Collector of the tests (Go; built once into .local/otelcol/).
otelcol: $(VENV)/.synced
	PYTHONPATH=infra $(PY) infra/localotelcol.py build

token: $(VENV)/.synced $(DEV_SECRET)
	@test -n "$(SUB)" || { echo "usage: make token SUB=<user uuid>" >&2; exit 2; }
	@$(LOCAL_ENV) $(PY) -m functions.auth token --sub $(SUB)

clean:
	@$(PYTHON) infra/stacklock.py $(STACK_LOCK) -- rm -rf $(VENV) .local/clickhouse .local/kafka

# PlantUML from Maven Central on the machine's Java, like the Kafka jars (no network renderer).
# The SVGs are committed; tests/test_diagrams.py checks each against its source and this pin.
PLANTUML_VERSION := 1.2026.10
PLANTUML_JAR := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/watch-progress/plantuml-mit-$(PLANTUML_VERSION).jar

$(PLANTUML_JAR):
	@echo "fetching PlantUML $(PLANTUML_VERSION) from Maven Central"
	@mvn -q -B -Dstyle.color=never dependency:copy \
		-Dartifact=net.sourceforge.plantuml:plantuml-mit:$(PLANTUML_VERSION) -DoutputDirectory=$(dir $@)

.PHONY: diagrams
diagrams: $(PLANTUML_JAR)
	@echo "rendering $(wildcard docs/architecture/*.puml)"
	@java -Djava.awt.headless=true -jar $(PLANTUML_JAR) -tsvg docs/architecture/*.puml
# The kind cluster (infra/kind; needs Docker, kind, Helm, skaffold: docs/deployment.md).
OVERLAY ?= dev
cluster-up: setup
	infra/kind/up.sh $(OVERLAY)

cluster-down:
	infra/kind/down.sh

dev: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH skaffold dev --port-forward=user

# Hostile clients: what each protection costs and bounds, servers side by side (docs/security.md).
.PHONY: abuse
abuse: setup /usr/bin/wrk
	PYTHONPATH=infra $(PY) -m loadtest.abuse $(ABUSE_ARGS)

# Dead letters of the running broker (`make run`), or of KAFKA_BOOTSTRAP_SERVERS.
DLQ_FILTERS = $(if $(REASON),--reason $(REASON)) $(if $(OFFSETS),--offsets $(OFFSETS))

dlq: $(VENV)/.synced $(DEV_SECRET)
	@$(LOCAL_ENV) $(PY) -m functions.sink.replay list $(DLQ_FILTERS) $(if $(BODIES),--bodies)

dlq-replay: $(VENV)/.synced $(DEV_SECRET)
	@$(LOCAL_ENV) $(PY) -m functions.sink.replay replay $(DLQ_FILTERS) $(if $(DRY_RUN),--dry-run)

# Real telemetry backends for `make run OBSERVE=1`, built and fetched once into .local/observe/
# (Jaeger's first build takes ~5 min); not needed by `make test`.
observe: $(VENV)/.synced
	$(PY) infra/observe/observe.py up

trace: $(VENV)/.synced
	@test -n "$(ID)" || { echo "usage: make trace ID=<trace id>" >&2; exit 2; }
	@$(PY) infra/observe/observe.py trace $(ID)

logs: $(VENV)/.synced
	@test -n "$(TRACE)" || { echo "usage: make logs TRACE=<trace id>" >&2; exit 2; }
	@$(PY) infra/observe/observe.py logs $(TRACE)

# Installs Debian's PostgreSQL 15 itself if it is missing; runs its own server on a free port.
storage-study: setup
	PYTHONPATH=infra $(PY) -m loadtest.storage $(STUDY_ARGS)
