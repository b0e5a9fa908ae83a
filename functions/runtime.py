"""Per-process resources, created on first use.

functions-framework imports the function module in the gunicorn master before it forks workers;
a producer or ClickHouse client made there would be shared, broken, by every worker. Each getter
here builds its resource the first time a worker asks for it.
"""

from __future__ import annotations

from functools import lru_cache

from clickhouse.store import ViewStore
from functions.producer import AsyncProducer
from functions.settings import get_settings

__all__ = ["get_producer", "get_store"]


@lru_cache(maxsize=1)
def get_producer() -> AsyncProducer:
    return AsyncProducer.from_settings(get_settings())


@lru_cache(maxsize=1)
def get_store() -> ViewStore:
    settings = get_settings()
    return ViewStore.open(
        settings.clickhouse_dsn, settings.clickhouse_database, settings.clickhouse_cluster
    )
