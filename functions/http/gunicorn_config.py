"""gunicorn's settings in the image (the Dockerfile's command): the uvicorn worker with the
server limits of ``server_limits.py``, and a heartbeat that replaces a stuck worker.

functions-framework's own launcher fixes its gunicorn options (``timeout=0``, its worker class),
so the image runs gunicorn on functions-framework's ASGI app with this file instead.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WORKERS", "1"))
worker_class = "functions.http.server_limits.BoundedUvicornWorker"
# An async worker notifies the arbiter from its event loop: a loop blocked this long (a
# pathological request, a deadlock) gets the worker replaced instead of hanging the pod.
timeout = 30
# SIGTERM: in-flight requests end within KAFKA_DELIVERY_TIMEOUT_MS; Knative waits longer.
graceful_timeout = 20
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "error")
