"""A real HTTP server on 127.0.0.1 for the API judges' tests: start one handler class, reply JSON."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import ThreadingHTTPServer


def reply_json(handler, status: int, headers: dict, payload) -> None:
    """Send ``payload`` (bytes as is, anything else as JSON) with ``status`` and extra ``headers``."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextmanager
def serving(handler_class, watchdog_s: float | None = None):
    """Run ``handler_class`` on a free local port; yields ``http://127.0.0.1:PORT``. ``watchdog_s``
    shuts the server down after that long even if a test hangs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(watchdog_s, server.shutdown) if watchdog_s else None
    thread.start()
    if watchdog:
        watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if watchdog:
            watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
