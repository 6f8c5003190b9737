"""Every error a callback can meet, and the one table that maps each to an HTTP status."""

from __future__ import annotations

import enum
import time
import traceback

import msgspec

__all__ = [
    "RESPONSES",
    "BodyTooLarge",
    "CallbackError",
    "ConfigError",
    "Failure",
    "HandlerError",
    "HandlerTimeout",
    "JournalUnavailable",
    "MethodNotAllowed",
    "NotAuthenticated",
    "Outcome",
    "PayloadError",
    "ShuttingDown",
    "UnknownChannel",
    "UnsupportedPayload",
    "classify",
]


class PayloadError(ValueError):
    """A body that cannot be read as a callback of its provider.

    The message is one line naming the field or path at fault; it never contains the
    body. The HTTP layer answers 400 with it.
    """


class UnsupportedPayload(PayloadError):
    """A body in a format the provider does not send at all (answered 415)."""


class ConfigError(ValueError):
    """The configuration is wrong; the message names the file and key."""


class CallbackError(Exception):
    """A callback that cannot be accepted; the message is its one-line public reason."""


class UnknownChannel(CallbackError):
    """No channel is configured under the requested path."""


class MethodNotAllowed(CallbackError):
    """Callbacks come as GET, HEAD or POST."""


class NotAuthenticated(CallbackError):
    """Missing or wrong credentials, or a client address the channel does not allow.

    The reason says what was missing or wrong, never a key or an expected value.
    """


class BodyTooLarge(CallbackError):
    """The body is larger than ``max_body_bytes``."""


MESSAGE_LIMIT = 1024
"""Most characters of an exception's message kept in the journal (:class:`Failure`)."""
TRACEBACK_LIMIT = 16 * 1024
"""Most characters of a formatted traceback kept in the journal (each line also cut to
:data:`MESSAGE_LIMIT`)."""


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One failure within an attempt at an event, as the journal keeps it.

    Attributes:
        at: When (seconds since the epoch).
        plugin: The plugin whose hook raised; None when no one plugin is at fault (a
            timeout, the retry worker's own error).
        hook: The hook it raised in (``on_receipt``, ``send_reply``, ...), or None.
        error_type: The exception's class name (``HandlerTimeout`` for a timeout).
        message: The exception's message, cut to :data:`MESSAGE_LIMIT` characters.
        traceback: The formatted traceback (no local variables), cut to
            :data:`TRACEBACK_LIMIT` characters; None when there is none.
    """

    at: float
    plugin: str | None
    hook: str | None
    error_type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(
        cls, error: BaseException, *, plugin: str | None = None, hook: str | None = None
    ) -> Failure:
        """The failure ``error`` is (called where it was caught: only on failure)."""
        formatted = "".join(traceback.format_exception(error)) if error.__traceback__ else None
        return cls(
            at=time.time(),
            plugin=plugin,
            hook=hook,
            error_type=type(error).__name__,
            message=_cut(str(error), MESSAGE_LIMIT),
            traceback=_bounded_traceback(formatted) if formatted else None,
        )


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} characters cut]"


def _bounded_traceback(text: str) -> str:
    """Each line cut to :data:`MESSAGE_LIMIT`, then the whole to :data:`TRACEBACK_LIMIT`
    (its first quarter and its last three quarters: the innermost frames and the error)."""
    lines = [_cut(line, MESSAGE_LIMIT) for line in text.splitlines()]
    text = "\n".join(lines)
    if len(text) <= TRACEBACK_LIMIT:
        return text
    head, tail = TRACEBACK_LIMIT // 4, TRACEBACK_LIMIT - TRACEBACK_LIMIT // 4
    cut = len(text) - head - tail
    return f"{text[:head]}\n... [{cut} characters cut] ...\n{text[-tail:]}"


class HandlerError(CallbackError):
    """A plugin's hook raised; the provider should retry.

    Attributes:
        plugins: The names of the plugins whose hooks raised (retries call only these).
        reply: The reply another plugin gave for the same event (a
            :class:`receiver.events.Reply`), or None: it is still answered.
        failures: What each raised (:class:`Failure`: type, message, traceback), for the
            journal to keep with the attempt.
    """

    def __init__(
        self,
        reason: str,
        plugins: list[str] | None = None,
        reply: object | None = None,
        failures: list[Failure] | None = None,
    ) -> None:
        super().__init__(reason)
        self.plugins = plugins or []
        self.reply = reply
        self.failures = failures or []


class HandlerTimeout(CallbackError):
    """The plugins did not finish within the timeout; the provider may retry."""


class ShuttingDown(CallbackError):
    """The server stopped waiting for this callback (``--shutdown-timeout``); with a
    journal it is handled at the next start."""


class JournalUnavailable(CallbackError):
    """The journal cannot store the callback (disk full, file deleted, replaced or made
    unwritable): nothing was dispatched; the provider should re-send (answered 503).

    The message is fixed text; what failed (the path, SQLite's error) is logged and shown
    by ``/readyz``, never the callback.
    """

    def __init__(self, reason: str = "journal unavailable: the callback was not stored") -> None:
        super().__init__(reason)


class Outcome(enum.StrEnum):
    """What became of a callback: one word for the error table, log lines and metrics.

    ``accepted`` (dispatched, or stored for a retry when a handler failed with the
    journal on: see ``handler_error``), ``duplicate`` (a re-send, answered as its
    original), ``url_check`` (a GET or HEAD without a callback), and one per refusal
    or failure below (``journal_unavailable``: not stored, not dispatched).
    ``internal_error`` is a bug of receiver's own, never a plugin's. With the journal on,
    ``reply_timeout`` is answered 200 (the handlers finish later) and a reply
    ``send_reply`` could not deliver is a 200 ``handler_error`` (kept, retried).
    """

    accepted = "accepted"
    duplicate = "duplicate"
    url_check = "url_check"
    unknown_channel = "unknown_channel"
    method_not_allowed = "method_not_allowed"
    rejected_auth = "rejected_auth"
    too_large = "too_large"
    rejected_payload = "rejected_payload"
    handler_error = "handler_error"
    reply_timeout = "reply_timeout"
    shutdown = "shutdown"
    journal_unavailable = "journal_unavailable"
    internal_error = "internal_error"


RESPONSES: dict[type[Exception], tuple[int, Outcome]] = {
    UnknownChannel: (404, Outcome.unknown_channel),
    MethodNotAllowed: (405, Outcome.method_not_allowed),
    NotAuthenticated: (401, Outcome.rejected_auth),
    BodyTooLarge: (413, Outcome.too_large),
    UnsupportedPayload: (415, Outcome.rejected_payload),
    PayloadError: (400, Outcome.rejected_payload),
    HandlerError: (500, Outcome.handler_error),
    HandlerTimeout: (503, Outcome.reply_timeout),
    ShuttingDown: (503, Outcome.shutdown),
    JournalUnavailable: (503, Outcome.journal_unavailable),
}
"""Error -> (HTTP status, outcome): the only place that says what an error answers."""

_UNEXPECTED = (500, Outcome.internal_error)


def classify(error: Exception) -> tuple[int, Outcome]:
    """The HTTP status and outcome for ``error`` (its most specific class listed); any
    other exception is receiver's own bug: 500, ``internal_error``."""
    for cls in type(error).__mro__:
        found = RESPONSES.get(cls)
        if found is not None:
            return found
    return _UNEXPECTED
