"""One process for local runs: the ingest function on HTTP and the sink's consumer loop.

The embedded ClickHouse engine admits one process per data directory, so locally the HTTP API
(which reads positions) and the sink (which inserts) share this process and its store. In a
cluster each function is its own service. Run: ``python -m functions.local`` (``make run``).
"""

from __future__ import annotations

import logging
import signal
import threading

import functions_framework.aio
import uvicorn

import functions.main
from clickhouse.migrate import apply_migrations
from functions.bootstrap import REQUEST_GC_THRESHOLD, start
from functions.errors import StoreUnavailable
from functions.http.server_limits import uvicorn_limits
from functions.runtime import get_producer, get_store
from functions.settings import Settings, get_settings
from functions.sink.triggers.consumer import BatchConsumer

log = logging.getLogger("functions.local")


def _migrated_sink(settings: Settings) -> BatchConsumer:
    store = get_store()
    for migration in apply_migrations(store.client, store.database):
        log.info("applied migration %04d_%s", migration.version, migration.name)
    return BatchConsumer(settings, store)


def main() -> None:
    try:
        settings, sink = start(lambda s: (s, _migrated_sink(s)), "local", REQUEST_GC_THRESHOLD)
    except StoreUnavailable as exc:
        # One line, not a traceback. `make run`'s lock rules out a second process on the
        # embedded engine's folder, so a folder that does not open is a damaged one.
        remedy = ""
        if get_settings().clickhouse_dsn.startswith("chdb://"):
            remedy = "; if that folder is damaged, `make clean` deletes the local data"
        log.error("%s%s", exc, remedy)
        raise SystemExit(1) from None
    stop_sink = threading.Event()
    sink_thread = threading.Thread(target=sink.run, args=(stop_sink,), name="sink")
    sink_thread.start()

    app = functions_framework.aio.create_asgi_app_from_module(  # type: ignore[no-untyped-call]
        "ingest", functions.main.__file__, "http", functions.main, None
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            **uvicorn_limits(settings),
        )
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-sends the signal to the handler
    # that was there before it; a no-op there lets the sink and the producer stop below.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    log.info("serving on http://%s:%d", settings.host, settings.port)
    try:
        server.run()  # returns after SIGINT/SIGTERM, once in-flight requests are answered
    finally:
        stop_sink.set()
        sink_thread.join()
        if get_producer.cache_info().currsize:  # only close a producer that requests created
            log.info("stopped", extra={"unsent_records": get_producer().close()})


if __name__ == "__main__":
    main()
