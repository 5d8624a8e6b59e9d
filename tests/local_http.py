"""A real HTTP server on 127.0.0.1 for the API judges' tests: start one handler class, read a chat request,
reply JSON or a chat completion."""

from __future__ import annotations

import json
import threading
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


def read_prompt(handler) -> str:
    """The last message of a chat-completions request: what the judge asks."""
    body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))))
    return body["messages"][-1]["content"]


def reply_chat(handler, content: str) -> None:
    """A 200 chat completion whose one choice says ``content``."""
    message = {"role": "assistant", "content": content}
    reply_json(handler, 200, {}, {"object": "chat.completion", "choices": [{"index": 0, "message": message}]})


def crc32_verdict(prompt: str) -> str:
    """A fixed verdict per prompt (crc32 parity): a restarted endpoint gives the same ones, and a test can
    compute them."""
    return "unsafe" if zlib.crc32(prompt.encode("utf-8")) % 2 else "safe"


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean."""

    def log_message(self, *args):
        pass


class LocalServer:
    """``handler_class`` served on 127.0.0.1 (a free port unless ``port``) until ``stop()``, which closes the
    port so that later requests are refused. ``stop()`` may be called twice, and from a handler's thread."""

    def __init__(self, handler_class, port: int = 0, backlog: int | None = None):
        server_class = ThreadingHTTPServer
        if backlog:  # a class attribute: it is read when the socket starts listening, inside the constructor
            server_class = type("BackloggedServer", (ThreadingHTTPServer,), {"request_queue_size": backlog})
        self.server = server_class(("127.0.0.1", port), handler_class)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.server.shutdown()
        self.server.server_close()


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
