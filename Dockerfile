# One image for every function; what a container runs is chosen by its manifest:
#   FUNCTION_TARGET=ingest  (default command)   HTTP ingest, functions-framework ASGI
#   FUNCTION_TARGET=sink    (default command)   KafkaSource CloudEvent sink
#   FUNCTION_TARGET=sink_connector (default)    OpenFaaS Pro kafka-connector sink
#   command: python -m functions.sink           consumer-group sink (KEDA)
#   command: python -m clickhouse.migrate       schema migration (Job)
# Dependencies come from uv.lock, exactly (uv sync --frozen), without the dev group and without
# the local group (chDB, the embedded engine, with pandas and pyarrow: a cluster runs ClickHouse
# servers, and a pod without CLICKHOUSE_DSN stops at start instead of falling back to it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The uv the Makefile uses (its UV_VERSION; a test keeps the two equal).
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir uv==${UV_VERSION}
WORKDIR /app
ENV UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-group local --no-install-project
COPY functions ./functions
COPY clickhouse ./clickhouse
RUN uv sync --frozen --no-dev --no-group local

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FUNCTION_SOURCE=/app/functions/main.py \
    FUNCTION_USE_ASGI=true
# Numeric, so that Kubernetes can check runAsNonRoot without a passwd lookup.
USER 10001:10001
# 8080: functions-framework; the consumer loop serves its probes on HEALTH_PORT (8080 too).
EXPOSE 8080
# Exec form: the server is PID 1 and receives SIGTERM itself. gunicorn with the project's
# worker and limits (functions/http/gunicorn_config.py) on functions-framework's ASGI app for
# FUNCTION_TARGET; functions-framework's own launcher cannot be given a worker class or limits.
CMD ["gunicorn", "--config", "python:functions.http.gunicorn_config", \
     "functions_framework.aio:create_asgi_app()"]
