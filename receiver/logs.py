"""Logging set-up for the command line (library code never configures logging),
:func:`get_logger`, which gives every receiver module its logger, and :func:`bounded`,
which every log line uses for a value taken from a request.

Where receiver's lines go:

* structlog configured (by ``receiver serve``'s :func:`configure_logging`, or by the
  application receiver is mounted in): through that configuration, as any structlog line;
* structlog not configured (an application that set up only the standard library's
  ``logging``, or nothing): to ``logging``, on the logger named after the module that
  logs (``receiver.app``, ``receiver.endpoint``, ... children of ``receiver``), at the
  line's level, with the message as the record's message (``"callback"``) and each field
  as an attribute of the record (``record.event_id``), as ``extra=`` puts them. They then
  follow the application's handlers, formatters and levels; a line below the logger's
  effective level costs one level check.

Nothing here configures anything process-wide unless the command line calls
:func:`configure_logging`.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import IO, Any, Literal, TypeVar, overload

import msgspec
import structlog

__all__ = [
    "BatchedWriter",
    "bounded",
    "configure_logging",
    "encodable",
    "flush_logs",
    "get_logger",
]

LogFormat = Literal["json", "console"]
_V = TypeVar("_V")

SHOWN = 40
"""How many characters of a value taken from a request a log line shows (:func:`bounded`)."""


@overload
def bounded(value: None, limit: int = SHOWN) -> None: ...
@overload
def bounded(value: str | bytes, limit: int = SHOWN) -> str: ...
def bounded(value: str | bytes | None, limit: int = SHOWN) -> str | None:
    """``value``, taken from a request, as a log line may show it.

    At most ``limit`` characters of it (``...(+N)`` says how many more there were), and
    every character that is not printable ASCII, and the backslash, escaped as Python
    writes them (``\\n``, ``\\x00``, ``\\u202e``, ``\\\\``): a sender cannot
    make a log line long, break it in two, or hide text in it. Bytes are read as Latin-1.
    None stays None. Every log line that shows a field value, a header, a charset, a
    content type or coding, a path or a channel name a request chose goes through here.
    """
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if len(text) <= limit and text.isascii() and text.isprintable() and "\\" not in text:
        return text
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown if len(text) <= limit else f"{shown}...(+{len(text) - limit})"


_encode_fast = msgspec.json.Encoder(enc_hook=repr).encode


def encodable(value: _V) -> _V:
    """``value`` (a str, or a dict, list or tuple holding some) with each lone surrogate
    in its text (which UTF-8 cannot carry: an exception's message about bytes decoded
    with ``surrogateescape``, a plugin's text, what UTF-7 or UTF-16 decodes to) replaced
    by U+FFFD, dict keys too; a high and a low surrogate in a row become the one character
    they make together. Anything else is returned as it is."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # type: ignore[return-value]
        return value
    if isinstance(value, dict):
        return {encodable(key): encodable(item) for key, item in value.items()}  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(encodable(item) for item in value)  # type: ignore[return-value]
    if isinstance(value, list | set | frozenset):
        return [encodable(item) for item in value]  # type: ignore[return-value]
    return value


def _encode(line: Any) -> bytes:
    """``line`` as JSON; text with lone surrogates (a plugin's exception message about
    bytes decoded with ``surrogateescape``), which UTF-8 cannot carry, with each one as
    U+FFFD: a log line must never fail the code that logs it."""
    try:
        return _encode_fast(line)
    except UnicodeEncodeError:
        pass
    try:
        return _encode_scrubbed(encodable(line))
    except UnicodeEncodeError:  # inside an object msgspec encodes itself (a Struct)
        return _encode_fast({encodable(str(key)): ascii(value) for key, value in line.items()})


_encode_scrubbed = msgspec.json.Encoder(enc_hook=lambda value: encodable(repr(value))).encode


def _json_text(event: dict[str, Any], **_: Any) -> str:
    return _encode(event).decode()


def _timestamp(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["timestamp"] = _stamp()
    return event


def _stamp() -> str:
    """Now, ISO-8601 UTC with milliseconds; the seconds part is formatted once per second
    and the milliseconds come from a table (formatting them costs more than the rest)."""
    global _stamp_state
    milliseconds = _time_ns() // 1_000_000
    second = milliseconds // 1000
    state = _stamp_state  # (second, its text), replaced whole: safe from any thread
    if state[0] != second:
        state = _stamp_state = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return state[1] + _MILLISECONDS[milliseconds - second * 1000]


_time_ns = time.time_ns
_MILLISECONDS = [f".{millisecond:03d}Z" for millisecond in range(1000)]
_stamp_state = (-1, "")
_LEVELS = {"warn": "warning", "exception": "error"}


def _json_line(logger: Any, method: str, event: MutableMapping[str, Any]) -> bytes:
    """All of the JSON chain in one processor: context variables, level, timestamp,
    traceback, and the line itself (by msgspec, several times faster than json.dumps).

    The same as structlog's ``merge_contextvars``, ``add_log_level``, ``_timestamp``,
    ``format_exc_info`` and ``JSONRenderer`` in a row, for a fifth of the calls.
    """
    event = structlog.contextvars.merge_contextvars(logger, method, event)
    event["level"] = _LEVELS.get(method, method)
    event["timestamp"] = _stamp()
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(logger, method, event)
    return _encode(event)


_JSON_CHAIN: list[structlog.typing.Processor] = [_json_line]
"""The JSON configuration's chain, to compare with; structlog gets a copy (see below)."""
_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_PREFIX_LENGTH = len(_PREFIX)
_LEVEL_NUMBERS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_ALIASES = {"warn": "warning", "fatal": "critical", "msg": "info"}


def _json_method(name: str, slow: Callable[..., Any]) -> Callable[..., Any]:
    """A bound logger's ``name`` method that renders the JSON line itself.

    It makes the line :func:`_json_line` would, in one call instead of structlog's
    five (method, proxy, event processing, processor, logger method), each copying the
    keyword arguments: that chain cost more than all the rest of a callback's work in
    receiver. Anything else (positional arguments to interpolate, a traceback to
    format, processors changed since) takes structlog's own way, ``slow``.
    """

    def method(self: Any, event: str, *args: Any, **kw: Any) -> Any:
        # The chain's contents, not only its identity: structlog.testing.capture_logs()
        # changes the configured list in place.
        if args or self._processors != _JSON_CHAIN:
            return slow(self, event, *args, **kw)
        line = {**self._context, **kw}
        if event is not None:  # (as structlog: no "event" key for None)
            line["event"] = event
        for var, value in contextvars.copy_context().items():
            if value is not Ellipsis and var.name.startswith(_PREFIX):
                line.setdefault(var.name[_PREFIX_LENGTH:], value)
        if "exc_info" in line:  # a traceback to format, from any of the three sources
            return slow(self, event, **kw)
        line["level"] = name
        line["timestamp"] = _stamp()
        try:
            data = _encode_fast(line)
        except UnicodeEncodeError:  # (the rare case, kept off the common one's path)
            data = _encode(line)
        return getattr(self._logger, name)(data)

    method.__name__ = name
    return method


def _json_bound_logger(level: int) -> type[Any]:
    """structlog's filtering bound logger at ``level``, with :func:`_json_method`'s
    methods for the levels it lets through."""
    base = structlog.make_filtering_bound_logger(level)
    methods: dict[str, Any] = {
        name: _json_method(name, getattr(base, name))
        for name, number in _LEVEL_NUMBERS.items()
        if number >= level
    }
    for alias, name in _ALIASES.items():
        if name in methods:
            methods[alias] = methods[name]
    return type(f"JsonLine{base.__name__}", (base,), methods)


class BatchedWriter:
    """A line sink that writes what accumulated every ``interval`` seconds, in one write.

    One ``write`` system call per log line costs more than the rest of a callback's log
    line; batching makes it one per interval. Lines still in memory when the process is
    killed with SIGKILL are lost (at most ``interval`` seconds of them); a normal exit
    and SIGTERM flush them.
    """

    def __init__(self, stream: IO[bytes], interval: float = 0.1) -> None:
        self.stream = stream
        self.interval = interval
        self._lines: collections.deque[bytes] = collections.deque()
        self.write: Callable[[bytes], None] = self._lines.append
        """Queue one line (bytes, without its newline). It is the queue's own ``append``
        (atomic, so no lock, and no Python call on the request path)."""
        self._lock = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="receiver-log-writer", daemon=True).start()
        atexit.register(self.flush)

    def flush(self) -> None:
        with self._lock:
            pending = self._lines
            count = len(pending)
            if count:
                lines = [pending.popleft() for _ in range(count)]
                lines.append(b"")
                try:
                    data = b"\n".join(lines)
                except TypeError:  # a str line (a processor chain changed since): keep it
                    data = b"\n".join(
                        line if isinstance(line, bytes) else str(line).encode() for line in lines
                    )
                self.stream.write(data)
                self.stream.flush()

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            self.flush()


class _BatchedLogger:
    """structlog logger queueing rendered JSON lines (bytes) on a :class:`BatchedWriter`.

    Every method is the writer's ``write`` itself.
    """

    def __init__(self, writer: BatchedWriter) -> None:
        self.msg = self.log = self.debug = self.info = self.warn = self.warning = writer.write
        self.error = self.critical = self.exception = self.fatal = writer.write


def configure_logging(log_format: LogFormat | None = None, level: str = "info") -> LogFormat:
    """Send structlog and standard-library logs (uvicorn's) to stderr, one line each;
    return the format chosen.

    ``log_format`` None picks console output on a terminal and JSON lines otherwise.
    Console lines are written at once; JSON lines in batches (see :class:`BatchedWriter`).
    """
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    # Colour only on a terminal: escape codes in a file or a pipe are noise. Plain
    # tracebacks: with rich installed, structlog's default shows every frame's locals (a
    # request's scope, its query string with a key, its Authorization header).
    console = structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        # A copy: structlog.testing.capture_logs() edits the configured list in place.
        processors=[*_JSON_CHAIN] if log_format == "json" else [*shared, console],
        wrapper_class=(
            _json_bound_logger(numeric)
            if log_format == "json"
            else structlog.make_filtering_bound_logger(numeric)
        ),
        logger_factory=(
            _batched_factory() if log_format == "json" else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=True,
    )
    # Standard-library records (uvicorn's) go the same way as structlog's, in order.
    handler: logging.Handler = (
        _BatchedHandler(_shared_writer()) if log_format == "json" else logging.StreamHandler()
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(serializer=_json_text)
                if log_format == "json"
                else console,
            ],
            foreign_pre_chain=[
                *shared,
                *([structlog.processors.format_exc_info] if log_format == "json" else []),
                structlog.stdlib.add_logger_name,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    return log_format


_writer: BatchedWriter | None = None


def _shared_writer() -> BatchedWriter:
    global _writer
    if _writer is None:
        _writer = BatchedWriter(sys.stderr.buffer)
    return _writer


def _batched_factory() -> Callable[..., _BatchedLogger]:
    writer = _shared_writer()
    return lambda *args: _BatchedLogger(writer)


class _BatchedHandler(logging.Handler):
    """A logging handler writing formatted records to a :class:`BatchedWriter`."""

    def __init__(self, writer: BatchedWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record).encode())
        except Exception:
            self.handleError(record)


def flush_logs() -> None:
    """Write out batched log lines now (before exiting, or before reading the log)."""
    if _writer is not None:
        _writer.flush()


# -- receiver's loggers -------------------------------------------------------------------

_RECORD_ATTRIBUTES = (frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}) - set(
    structlog.stdlib.LOG_KWARG_NAMES
)
"""A LogRecord's own attributes, which ``extra`` may not name (``logging`` raises),
but for ``exc_info`` and ``stack_info``, which go to ``logging`` as such."""


def _log_kwargs(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog's ``render_to_log_kwargs`` (message, ``extra``, ``exc_info``), a field that
    would overwrite a LogRecord attribute (``name``, ``module``, ...) renamed with a
    trailing underscore: ``logging`` raises KeyError for it, which would fail the request."""
    if not _RECORD_ATTRIBUTES.isdisjoint(event):
        for key in _RECORD_ATTRIBUTES.intersection(event):
            event[f"{key}_"] = event.pop(key)
    return structlog.stdlib.render_to_log_kwargs(logger, method, event)


_STDLIB_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,  # the request id
    _log_kwargs,
]

_STACK = 4
"""``stacklevel`` for a record's caller (``pathname``, ``lineno``, ``funcName``): the
receiver line that logged, past :class:`StdlibLogger`'s method and structlog's two."""


def _checked(name: str, level: int) -> Any:
    """A :class:`StdlibLogger` method: ``level`` checked before anything is built."""

    def method(self: Any, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(level):
            return None
        kw["stacklevel"] = _STACK
        return self._proxy_to_logger(name, event, *args, **kw)

    method.__name__ = name
    return method


class StdlibLogger(structlog.stdlib.BoundLogger):
    """structlog's bound logger for a ``logging.Logger``, which asks the logger whether
    a line's level is enabled before building the line.

    structlog's own ``BoundLogger`` builds the event dict and runs the processors, and
    only ``filter_by_level`` (a processor) or ``logging`` itself drops the line; its
    ``make_filtering_bound_logger`` decides once, at a fixed level, which would not follow
    the application's later ``setLevel``. ``isEnabledFor`` is cached by ``logging``
    itself, so a line below the level costs one call.
    """

    debug = _checked("debug", logging.DEBUG)
    info = _checked("info", logging.INFO)
    warning = warn = _checked("warning", logging.WARNING)
    error = _checked("error", logging.ERROR)
    critical = fatal = _checked("critical", logging.CRITICAL)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.ERROR):
            return None
        kw.setdefault("exc_info", True)
        kw["stacklevel"] = _STACK
        return self._proxy_to_logger("error", event, *args, **kw)


def stdlib_logger(name: str, **context: Any) -> StdlibLogger:
    """A logger whose lines go to ``logging.getLogger(name)`` (see the module's text)."""
    # wrap_logger makes a lazy proxy, which would assemble a new bound logger at every
    # line; bind() assembles it once, now.
    logger: StdlibLogger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=_STDLIB_PROCESSORS,
        wrapper_class=StdlibLogger,
        **context,
    ).bind()
    return logger


class ReceiverLogger:
    """A receiver module's logger (:func:`get_logger`): at every call, structlog's own
    logger when structlog is configured, else :func:`stdlib_logger`'s."""

    __slots__ = ("_context", "_name", "_stdlib", "_structlog")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context
        # structlog's lazy proxy: it reads the configuration when used, not now.
        self._structlog: Any = structlog.get_logger(name, **context)
        self._stdlib: StdlibLogger | None = None

    def resolve(self) -> Any:
        """The logger to use now."""
        if structlog.is_configured():
            return self._structlog
        if self._stdlib is None:
            self._stdlib = stdlib_logger(self._name, **self._context)
        return self._stdlib

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolve(), name)


def get_logger(name: str, **context: Any) -> Any:
    """The logger of receiver's module ``name`` (its ``__name__``), with ``context``
    bound: ``log = get_logger(__name__)`` at the top of every module.

    When structlog is configured, lines go through it (``structlog.get_logger(name)``,
    the name passed on to the configured logger factory); when it is not, to the
    standard library's ``logging.getLogger(name)``. Decided at every line, so an
    application may configure either after importing receiver. Configures nothing.
    """
    return ReceiverLogger(name, context)
