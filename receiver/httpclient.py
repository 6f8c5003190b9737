"""receiver's own HTTP requests (first-party plugins; ``receiver send``): one POST with a
deadline for the whole exchange, no redirects, and reasons and URLs safe to log.

Standard library (``urllib.request``: proxies from the environment, TLS as Python sets it
up): these requests are few and run in worker threads, and it keeps the dependencies to
the foundation. urllib's own ``timeout`` bounds each socket operation, not the exchange:
an answer that trickles in a byte at a time would hold the caller for ever. Here a timer
shuts the connection's socket down at the deadline (a safety need, so hand-written).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Answer", "NoAnswer", "Unsendable", "post", "redact"]


@dataclass(frozen=True)
class Answer:
    """What the server answered: status, headers (lower-case names), at most
    ``max_bytes`` of the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class NoAnswer(Exception):
    """No whole HTTP answer within the deadline: refused, reset, timed out (an answer
    cut off at the deadline too), a broken answer, or a request that could not be sent.
    ``str()`` is safe to log: it never holds a header value, the body or a credential
    of the URL."""


class Unsendable(NoAnswer):
    """The request could not be built (a header value with a line break, a URL that
    is not one): nothing was sent."""


def redact(url: str) -> str:
    """``url`` as it may be logged: scheme, host, port and path; no user, password,
    query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    method: str = "POST",
    max_bytes: int = 64 * 1024,
) -> Answer:
    """Send one request and read its answer, all within ``timeout`` seconds.

    Redirects are not followed (a 3xx is an :class:`Answer`, as is any other status).

    Raises:
        NoAnswer: see the class; its message says why without echoing a value.
    """
    request = urllib.request.Request(url, data=body or None, headers=headers, method=method)
    watch = _Watch()
    timer = threading.Timer(timeout, watch.expire)
    timer.daemon = True
    _local.watch = watch
    timer.start()
    try:
        answer = _exchange(request, timeout, max_bytes)
        cut = watch.finish()  # True: the deadline passed first and cut the answer short
    except ValueError as exc:
        if watch.expired:
            raise NoAnswer(f"timed out: no whole answer within {timeout:g} s") from None
        raise Unsendable(_reason(exc)) from None
    except (OSError, http.client.HTTPException) as exc:
        if watch.expired:
            raise NoAnswer(f"timed out: no whole answer within {timeout:g} s") from None
        raise NoAnswer(_reason(exc)) from None
    finally:
        timer.cancel()
        _local.watch = None
    if cut:  # a read cut short by the shutdown returns what had come, without an error
        raise NoAnswer(f"timed out: no whole answer within {timeout:g} s")
    return answer


def _exchange(request: urllib.request.Request, timeout: float, max_bytes: int) -> Answer:
    try:
        with _opener.open(request, timeout=timeout) as response:
            return Answer(response.status, _headers(response.headers), response.read(max_bytes))
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                content = exc.read(max_bytes)
            except (OSError, http.client.HTTPException):
                content = b""
            return Answer(exc.code, _headers(exc.headers), content)


def _reason(exc: BaseException) -> str:
    """Why a request failed, in words safe to log: http.client's messages about an
    invalid header quote the value (a secret, with a stray newline), so a ValueError is
    named only by its type."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, ValueError):
        return f"{type(exc).__name__}: the request could not be built (a header or URL value)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "TimeoutError: timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    if isinstance(exc, urllib.error.URLError):
        return f"URLError: {exc.reason}"
    return type(exc).__name__


def _headers(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()} if headers else {}


class _Watch:
    """The sockets of one request, shut down when its deadline passes."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.finished = False
        self._lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.sockets.append(sock)

    def finish(self) -> bool:
        """The exchange is over: no later deadline touches it. Whether it had passed."""
        with self._lock:
            finished_late = self.expired
            self.finished = True
            return finished_late

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once


_local = threading.local()


def _watched(connection: http.client.HTTPConnection) -> None:
    watch: _Watch | None = getattr(_local, "watch", None)
    if watch is not None and connection.sock is not None:
        watch.add(connection.sock)


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watched(self)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watched(self)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=self._context)  # type: ignore[attr-defined]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would turn a redirected POST into a GET without the body: refuse instead
    (a 3xx answer is then an ``HTTPError``, returned as an :class:`Answer`)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_HTTPHandler(), _HTTPSHandler(), _NoRedirects())
