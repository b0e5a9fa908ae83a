"""``python -m loadtest.abuse_server VARIANT PORT``: the ingest function on one uvicorn process,
with one HTTP server set-up of ``VARIANTS``, for ``loadtest/abuse.py`` to compare side by side.

The app-level protections (rate limit, shared ranking) follow the environment the caller gives.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import functions_framework.aio
import uvicorn

import functions.main
from functions.http.server_limits import uvicorn_limits
from functions.settings import Settings, get_settings

__all__ = ["VARIANTS"]

VARIANTS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    # uvicorn's defaults: what `make run` served before the limits.
    "httptools": lambda settings: {"http": "httptools"},
    # h11 with its own bound on an unfinished header (no deadline, no idle timer).
    "h11-bounded": lambda settings: {
        "http": "h11",
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
    },
    # What functions/local.py and the image serve.
    "guarded": uvicorn_limits,
}


def main() -> None:
    variant, port = sys.argv[1], int(sys.argv[2])
    settings = get_settings()
    app = functions_framework.aio.create_asgi_app_from_module(  # type: ignore[no-untyped-call]
        "ingest", functions.main.__file__, "http", functions.main, None
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        **VARIANTS[variant](settings),
    )


if __name__ == "__main__":
    main()
