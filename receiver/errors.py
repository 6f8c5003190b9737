"""Every error a callback can meet, and the one table that maps each to an HTTP status."""

from __future__ import annotations

import enum

__all__ = [
    "RESPONSES",
    "BodyTooLarge",
    "CallbackError",
    "ConfigError",
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


class HandlerError(CallbackError):
    """A plugin's hook raised; the provider should retry.

    Attributes:
        plugins: The names of the plugins whose hooks raised (retries call only these).
        reply: The reply another plugin gave for the same event (a
            :class:`receiver.events.Reply`), or None: it is still answered.
    """

    def __init__(
        self, reason: str, plugins: list[str] | None = None, reply: object | None = None
    ) -> None:
        super().__init__(reason)
        self.plugins = plugins or []
        self.reply = reply


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
