"""Every error a callback can meet, and the one table that maps each to an HTTP status."""

from __future__ import annotations

from receiver.types import PayloadError, UnsupportedPayload

__all__ = [
    "BodyTooLarge",
    "ConfigError",
    "HandlerError",
    "HandlerTimeout",
    "MethodNotAllowed",
    "NotAuthenticated",
    "UnknownChannel",
    "classify",
]


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
    """

    def __init__(self, reason: str, plugins: list[str] | None = None) -> None:
        super().__init__(reason)
        self.plugins = plugins or []


class HandlerTimeout(CallbackError):
    """The plugins did not finish within the timeout; the provider may retry."""


RESPONSES: dict[type[Exception], tuple[int, str]] = {
    UnknownChannel: (404, "unknown_channel"),
    MethodNotAllowed: (405, "method_not_allowed"),
    NotAuthenticated: (401, "rejected_auth"),
    BodyTooLarge: (413, "too_large"),
    UnsupportedPayload: (415, "rejected_payload"),
    PayloadError: (400, "rejected_payload"),
    HandlerError: (500, "handler_error"),
    HandlerTimeout: (503, "reply_timeout"),
}
"""Error -> (HTTP status, metrics outcome): the only place that says what an error answers."""

_UNEXPECTED = (500, "handler_error")


def classify(error: Exception) -> tuple[int, str]:
    """The HTTP status and outcome for ``error`` (its most specific class listed)."""
    for cls in type(error).__mro__:
        found = RESPONSES.get(cls)
        if found is not None:
            return found
    return _UNEXPECTED
