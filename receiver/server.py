"""The HTTP server's defences for ``receiver serve``: slow, idle and greedy clients.

uvicorn with httptools bounds neither the size of a request's head nor the time a client
may take to send it (its keep-alive timeout starts only after a response and every byte
resets it), and it accepts connections until the descriptors run out. This module holds:

* :class:`HttpProtocol`, uvicorn's httptools protocol with the ``[server]`` limits
  (:class:`receiver.config.ServerLimits`): the request line and headers are held to
  ``max_header_bytes`` (431), the head to ``header_timeout`` from the connection's
  opening or the previous response (idle: closed; partly sent: 408), the body to
  ``body_timeout`` from the end of the head (408, or closed if answered already), and
  connections to ``max_connections`` (the one waiting longest for a request is closed
  to make room; 503 when none is waiting), and a chunked body to ``max_body_bytes`` of
  data, 64 bytes of framing per chunk and ``max_header_bytes`` of trailers (httptools
  holds a trailer whole, as it does a header; 413). A head is charged by the reads that
  bring it; one beginning in the read that ended the previous request is also sized once
  whole (431). A parse error is answered 400 (uvicorn's), after any due responses. Only
  receiving is timed: a handler that is running is never cut off, and uvicorn's keep-alive
  timer is replaced by the head deadline. A pipelined request (sent while an earlier one
  is handled; uvicorn queues it and stops reading) is timed from its turn: its body
  deadline starts when uvicorn starts its cycle, and the head deadline of one not yet
  whole from the end of the response before it. A limit that trips while a response is due
  on the connection (being answered, or a complete request queued) stops reading and
  closes it once that is answered; such a connection is never closed to make room.
* :func:`raise_descriptor_limit`: the soft RLIMIT_NOFILE raised to the hard limit.
* :class:`Throttle`: the warning each limit logs when it trips, at most one line per
  limit per 10 s with the count of those suppressed; no line holds request bytes.

The limits are class attributes, set by :func:`use_limits` in each process that serves
(``receiver serve`` and each ``--workers`` worker), so uvicorn can import the class by
name: ``http="receiver.server:HttpProtocol"``.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from receiver.config import DEFAULT_MAX_BODY_BYTES, ServerLimits
from receiver.logs import get_logger

__all__ = [
    "DESCRIPTOR_RESERVE",
    "HttpProtocol",
    "Throttle",
    "connection_cap",
    "raise_descriptor_limit",
    "use_limits",
]

log = get_logger(__name__)

DESCRIPTOR_RESERVE = 100
"""Descriptors kept free of connections: the journal, log files, plugins' own sockets."""

WARNING_INTERVAL = 10.0
"""Seconds between two warning lines of one limit."""


class Throttle:
    """Warnings logged at most once per ``interval`` seconds per kind.

    A warning that comes too soon after the last one of its kind is counted, not logged;
    the next line of that kind carries the count as ``suppressed``.
    """

    def __init__(
        self, interval: float = WARNING_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, **fields: Any) -> bool:
        """Log ``message`` with ``limit=kind`` and ``fields`` unless one of ``kind`` was
        logged within the interval; True if logged."""
        now = self.clock()
        if now < self._next.get(kind, -1.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        self._next[kind] = now + self.interval
        suppressed = self._suppressed.pop(kind, 0)
        log.warning(message, limit=kind, suppressed=suppressed, **fields)
        return True


def raise_descriptor_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (soft before, soft now, hard).

    An unlimited hard limit is not a value the kernel takes for the soft one: the soft
    limit is then raised to ``/proc/sys/fs/nr_open`` (Linux's ceiling), if readable.
    A refusal leaves the soft limit as it was and is logged.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as ceiling:
                target = int(ceiling.read())
        except (OSError, ValueError):
            target = soft
    if target != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the descriptor limit", soft=soft, hard=hard, error=str(exc))
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft, now, hard


def connection_cap(limits: ServerLimits, descriptors: int) -> int:
    """``limits.max_connections``, lowered to fit ``descriptors`` (the soft limit) less
    :data:`DESCRIPTOR_RESERVE`, and at least 1."""
    if descriptors == resource.RLIM_INFINITY or descriptors <= 0:
        return limits.max_connections
    return max(1, min(limits.max_connections, descriptors - DESCRIPTOR_RESERVE))


def use_limits(
    limits: ServerLimits,
    max_connections: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> None:
    """Make :class:`HttpProtocol` apply ``limits`` in this process (``max_connections``:
    the cap actually applied, if lowered by :func:`connection_cap`; ``max_body_bytes``:
    the app's, which bounds a chunked body's data)."""
    cls = HttpProtocol
    cls.max_body = max_body_bytes
    cls.max_head = limits.max_header_bytes
    cls.header_timeout = limits.header_timeout
    cls.body_timeout = limits.body_timeout
    cls.max_connections = max_connections or limits.max_connections


def _fixed_response(status: bytes, error: str, *, headers: bytes = b"") -> bytes:
    body = b'{"error": "' + error.encode() + b'"}'
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + headers
        + b"\r\n"
        + body
    )


TOO_LARGE = _fixed_response(b"431 Request Header Fields Too Large", "request head too large")
CHUNKED_TOO_LARGE = _fixed_response(b"413 Content Too Large", "chunked body too large")
TIMED_OUT = _fixed_response(b"408 Request Timeout", "request not received in time")
BUSY = _fixed_response(
    b"503 Service Unavailable", "too many connections", headers=b"retry-after: 1\r\n"
)


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing: the head is refused (431)."""


_Base = HttpToolsProtocol  # its methods called directly: cheaper than super() per request

# What the connection is receiving: a request line and headers (or waiting for one), a
# body, or a chunked body (whose trailers httptools buffers like headers); or nothing
# more: a limit tripped while a response was due, closed once answered (_end_when_answered).
_HEAD, _BODY, _CHUNKED, _CLOSING = 0, 1, 2, 3
CHUNK_FRAMING = 64
"""Bytes allowed per chunk of a chunked body for its size line and CRLFs."""


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the ``[server]`` limits (see the module).

    Deadlines are kept as numbers, updated at each step of a request; one timer per
    connection fires at the earliest and, if the deadline has moved on meanwhile, is set
    again for it. So a keep-alive connection serving many requests sets a timer about once
    per ``header_timeout``, not once per request.
    """

    max_head: ClassVar[int] = ServerLimits().max_header_bytes
    header_timeout: ClassVar[float] = ServerLimits().header_timeout
    body_timeout: ClassVar[float] = ServerLimits().body_timeout
    max_connections: ClassVar[int] = ServerLimits().max_connections
    max_body: ClassVar[int] = DEFAULT_MAX_BODY_BYTES
    throttle: ClassVar[Throttle] = Throttle()
    waiting: ClassVar[dict[HttpProtocol, None]] = {}
    """Connections waiting for a request (idle, or sending a head), oldest first: the
    ones closed to make room when ``max_connections`` is reached."""

    _phase = _HEAD
    _head_room = 0  # bytes this request's head may still send
    _chunked_room = 0  # bytes this request's chunked body may still send
    _heads = 0  # request heads received whole on this connection
    _deadline: float | None = None
    _timer: asyncio.TimerHandle | None = None
    _timer_at = 0.0
    _last_word: bytes | None = None  # _CLOSING: written once the due responses are out
    _charging = False  # the bytes being parsed were charged to _head_room
    _head_charged = True  # this request's head was charged from its start (else sized whole)
    _last_request = False  # shutting down: the request coming is answered, then closed

    # -- uvicorn's protocol, extended -----------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_room = self.max_head
        self._await_head()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.waiting.pop(self, None)
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == _HEAD:
            self._charging = True  # a head begun in this read is charged from its start
            room = self._head_room
            if len(data) > room:
                self._head_over(data, room)
                return
            self._head_room = room - len(data)
        elif phase == _CHUNKED:
            self._charging = False
            self._chunked_room -= len(data)
            if self._chunked_room < 0:
                self._chunked_over()
                return
        elif phase == _CLOSING:  # nothing more is read: dropped
            return
        else:  # _BODY
            self._charging = False
        if self._feed(data) and (
            self._phase != _HEAD and self._deadline is None and not self.pipeline
        ):
            self._set_deadline(self.body_timeout)  # a body still to come, and its turn

    def _feed(self, data: bytes) -> bool:
        """uvicorn's data_received, but for its keep-alive timer (never set here), and
        with nothing answered before the due responses: a parse error (400), a head found
        too large once whole (431) or a WebSocket upgrade behind unanswered requests end
        the connection after them. False if the connection ends."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._phase == _CLOSING:  # on_headers_complete: a head too large
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self._bad_request(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                if self._busy():  # switching now would answer before the due responses
                    msg = "Upgrade request pipelined behind unanswered requests."
                    self.logger.warning(msg)
                    self._end_when_answered(self._response_400(msg))
                    return False
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        return True

    def on_message_begin(self) -> None:
        self._head_charged = self._charging
        _Base.on_message_begin(self)

    def on_headers_complete(self) -> None:
        if not self._head_charged and self._head_size() > self.max_head:
            self._head_too_large()
            raise _HeadTooLarge  # parsing stops: feed_data raises HttpParserCallbackError
        self._heads += 1
        self._phase = _BODY
        self._deadline = None  # the body's is set once this read is parsed, if still due
        self.waiting.pop(self, None)
        _Base.on_headers_complete(self)
        if self._last_request and self.cycle is not None:
            self.cycle.keep_alive = False  # see shutdown()

    def on_chunk_header(self) -> None:
        """A chunked body: held to max_body_bytes of data, CHUNK_FRAMING bytes of framing
        per chunk and max_header_bytes of trailers (httptools holds trailers whole)."""
        if self._phase == _BODY:
            self._phase = _CHUNKED
            self._chunked_room = self.max_body + self.max_head
        self._chunked_room += CHUNK_FRAMING

    def on_message_complete(self) -> None:
        _Base.on_message_complete(self)
        self._charging = False  # the rest of this read is not charged: see on_message_begin
        self._phase = _HEAD
        self._head_room = self.max_head
        self._deadline = None  # the handler runs: no deadline until it has answered
        if self.cycle.response_complete:  # it answered before the body was in
            self._await_head()

    def on_response_complete(self) -> None:
        """uvicorn's, with the head deadline in place of its keep-alive timer (which
        every byte resets; the head deadline does its job)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # requests that came in while this one was handled
            self._next_in_pipeline()
        elif self._phase == _HEAD:  # _await_head(), inlined: this runs for every request
            waiting = self.waiting
            waiting.pop(self, None)
            waiting[self] = None
            at = self._deadline = self.loop.time() + self.header_timeout
            if self._timer is None or at < self._timer_at:
                self._set_deadline(self.header_timeout)
        elif self._phase == _CLOSING:  # a limit tripped while this was answered
            self._end(self._last_word)
        # else an answer before the whole body: the body deadline runs on

    def shutdown(self) -> None:
        """The server is stopping (SIGTERM): uvicorn's closes every connection with no
        request in progress. A connection that has not sent a whole request yet, and
        either is new (has sent none before) or has begun its next one, is not idle: its
        client connected or wrote to send a request, which may already be in the socket
        unread, and closing it would drop that callback unanswered (a restart on an
        inherited socket would refuse it). Such a connection gets its request answered
        with ``Connection: close`` (its head within ``header_timeout``, as ever, so it
        holds the shutdown up no longer than that). An idle keep-alive connection is
        closed, as uvicorn does: a client writing its next request on it at that moment
        cannot be helped by any server (a new connection per request can)."""
        if (
            self._phase == _HEAD
            and not self._busy()
            and (self._heads == 0 or self._head_room < self.max_head)
            and not self.transport.is_closing()
        ):
            self._last_request = True
            return
        _Base.shutdown(self)

    def _next_in_pipeline(self) -> None:
        """Start the oldest queued request's cycle: its turn, so its body deadline starts
        now if its body is still to come. When closing, only a whole request is started;
        the one a limit cut short is not (its answer, if any, is written instead)."""
        cycle, app = self.pipeline.pop()
        phase = self._phase
        if phase == _CLOSING and cycle.more_body:  # cut short while queued
            self._end(self._last_word)
            return
        self._start_asgi_task(cycle, app)
        if cycle is self.cycle and phase in (_BODY, _CHUNKED):
            self._set_deadline(self.body_timeout)

    # -- the limits -----------------------------------------------------------------------

    def _busy(self) -> bool:
        """A request of this connection is being handled or answered, or waits its turn."""
        cycle = self.cycle
        return (cycle is not None and not cycle.response_complete) or bool(self.pipeline)

    def _end_when_answered(self, response: bytes | None) -> None:
        """A limit tripped: end now if no response is due (see :meth:`_end`); else read
        no more and end once the due responses are out (the requests queued whole are
        answered first), then writing ``response``. The connection is not waiting."""
        if not self._busy():
            self._end(response)
            return
        self.waiting.pop(self, None)
        self._deadline = None
        self._phase = _CLOSING
        self._last_word = response
        self.flow.pause_reading()  # a running handler's receive() may resume it: dropped

    def _await_head(self) -> None:
        """Nothing in progress: the next request's head is due within header_timeout."""
        waiting = self.waiting
        waiting.pop(self, None)
        waiting[self] = None  # the newest
        self._set_deadline(self.header_timeout)

    def _set_deadline(self, seconds: float) -> None:
        """The current step must end within ``seconds``; the timer is set only if it
        would fire too late (or is not set)."""
        at = self.loop.time() + seconds
        self._deadline = at
        if self._timer is None or at < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._on_timer)
            self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = None
        at = self._deadline
        if at is None or self.transport.is_closing():
            return
        if self.loop.time() < at:  # the deadline moved on since the timer was set
            self._timer = self.loop.call_at(at, self._on_timer)
            self._timer_at = at
            return
        self._deadline = None
        phase = self._phase
        if phase == _HEAD:
            # set only when no response is due (_busy() is False), cleared by a whole head
            started = self._head_room < self.max_head
            if started or not self._heads:  # an idle keep-alive connection is no news
                self._warn(
                    "header_timeout",
                    "request head not received in time",
                    "server.header_timeout",
                    self.header_timeout,
                    "408" if started else "closed",
                )
            self._end_when_answered(TIMED_OUT if started else None)
        elif phase in (_BODY, _CHUNKED):
            cycle = self.cycle
            if self.pipeline:  # queued: not its turn (never set then; restarted at its turn)
                return
            if self.flow.read_paused:  # the handler has not taken what was read: not late
                self._set_deadline(self.body_timeout)
                return
            answerable = cycle is not None and not cycle.response_started
            answering = not answerable and cycle is not None and not cycle.response_complete
            self._warn(
                "body_timeout",
                "request body not received in time",
                "server.body_timeout",
                self.body_timeout,
                "408" if answerable else "closed after the response" if answering else "closed",
            )
            if answering:  # never cut off: closed once answered
                self._end_when_answered(None)
            else:
                self._end(TIMED_OUT if answerable else None)

    def _head_size(self) -> int:
        """The parsed head's bytes (a lower bound of what was sent: the request line's
        method and version, and whitespace around header values, are not counted)."""
        size = len(self.url) + 13  # " HTTP/1.1\r\n" and the blank line
        for name, value in self.headers:
            size += len(name) + len(value) + 4  # ": " and "\r\n"
        return size

    def _head_too_large(self) -> None:
        busy = self._busy()
        self._warn(
            "header_size",
            "request head too large",
            "server.max_header_bytes",
            self.max_head,
            "431 after the due responses" if busy else "431",
        )
        self._end_when_answered(TOO_LARGE)
        self._phase = _CLOSING  # read no more, whether ended or not (_feed)

    def _response_400(self, msg: str) -> bytes:
        """uvicorn's send_400_response, as bytes."""
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                msg.encode("ascii"),
            ]
        )
        return b"".join(content)

    def _bad_request(self, msg: str) -> None:
        """A parse error. In a head (or a queued request's body), it is answered 400 after
        the due responses (a queued request cut short is not started: the 400 is its
        answer). In the body of the request being handled: 400 if not answered yet, else
        closed once answered (like a chunked body too large)."""
        if self._phase == _HEAD or self.pipeline:
            if self._busy():
                self._end_when_answered(self._response_400(msg))
            else:
                self.send_400_response(msg)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._end(self._response_400(msg))
        elif cycle is not None and not cycle.response_complete:
            self._end_when_answered(None)
        else:
            self._end(None)

    def _head_over(self, data: bytes, room: int) -> None:
        """``data`` takes the head past max_head: parse what fits; if the head is still
        not whole, refuse it (431, or closed if a response is under way)."""
        heads = self._heads
        self._head_room = 0
        if room > 0:
            if not self._feed(data[:room]) or self.transport.is_closing():
                return
            if self._heads != heads:  # the head ended within the limit: go on
                self.data_received(data[room:])
                return
        self._head_too_large()

    def _chunked_over(self) -> None:
        """A chunked body past its allowance: 413 if nothing was answered (after the due
        responses if it is queued), closed once answered if its answer is being written,
        else closed."""
        cycle = self.cycle
        queued = bool(self.pipeline)
        answerable = queued or (cycle is not None and not cycle.response_started)
        answering = cycle is not None and not cycle.response_complete and not answerable
        if queued:
            action = "413 after the due responses"
        elif answerable:
            action = "413"
        else:
            action = "closed after the response" if answering else "closed"
        self._warn(
            "chunked_size",
            "chunked body, framing or trailers too large",
            "max_body_bytes + server.max_header_bytes",
            self.max_body + self.max_head,
            action,
        )
        if queued or answering:
            self._end_when_answered(CHUNKED_TOO_LARGE if queued else None)
        else:
            self._end(CHUNKED_TOO_LARGE if answerable else None)

    def _make_room(self) -> None:
        """Over max_connections: close the connection waiting longest for a request;
        if every other one is busy, refuse this one (503). Only a connection with no
        response due is in ``waiting`` (this one is); the check keeps it so."""
        victim = next(v for v in self.waiting if v is self or not v._busy())
        if victim is self:
            self._warn(
                "max_connections",
                "too many connections",
                "server.max_connections",
                self.max_connections,
                "503",
            )
            self.connections.discard(self)  # counted no more: it is closing
            self._end(BUSY)
            return
        self._warn(
            "max_connections",
            "too many connections: closed the longest waiting",
            "server.max_connections",
            self.max_connections,
            "closed an idle one",
        )
        self.connections.discard(victim)
        victim._end(None)

    def _end(self, response: bytes | None) -> None:
        """Answer ``response`` (if any, and if it can be written now) and close."""
        self.waiting.pop(self, None)
        self._deadline = None
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the handler's receive() sees a disconnect
            cycle.message_event.set()
        if response is not None and not self.flow.write_paused:
            transport.write(response)
        if transport.get_write_buffer_size():
            transport.abort()  # not reading what we send: no waiting for it
        else:
            transport.close()

    def _warn(self, kind: str, message: str, setting: str, value: float, action: str) -> None:
        client = self.client[0] if self.client else None
        self.throttle.warn(
            kind, message, setting=setting, value=value, action=action, client=client
        )
