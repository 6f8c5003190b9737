"""A real HTTP server on 127.0.0.1 that records what is POSTed to it: the tests' target
for the ``forward`` plugin (imported as ``from sink import Sink, running_sink``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


class Posted(NamedTuple):
    """One request as received: path, headers, body, and its whole head as bytes."""

    path: str
    headers: dict[str, str]
    body: bytes
    head: bytes


class Sink:
    """Answers each POST with :attr:`status` after :attr:`delay` seconds (a 3xx with a
    ``Location``) and keeps it in :attr:`requests`. Serve it with :func:`running_sink`.

    :attr:`statuses`, when not empty, answers the next requests first, one each, in
    order; :attr:`headers` are added to every answer."""

    def __init__(self) -> None:
        self.requests: list[Posted] = []
        self.status = 204
        self.delay = 0.0
        self.statuses: list[int] = []
        self.headers: dict[str, str] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                head = f"{self.requestline}\n{self.headers}".encode("latin-1")
                body = self.rfile.read(length)
                sink.requests.append(Posted(self.path, dict(self.headers), body, head))
                time.sleep(sink.delay)
                status = sink.statuses.pop(0) if sink.statuses else sink.status
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                for name, value in sink.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"


@contextmanager
def running_sink() -> Iterator[Sink]:
    """A :class:`Sink` serving in a thread until the block ends."""
    sink = Sink()
    thread = threading.Thread(target=sink.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
