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
    "status_for",
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
    """A plugin's hook raised; the provider should retry."""


class HandlerTimeout(CallbackError):
    """The plugins did not finish within the timeout; the provider may retry."""


STATUS: dict[type[Exception], int] = {
    UnknownChannel: 404,
    MethodNotAllowed: 405,
    NotAuthenticated: 401,
    BodyTooLarge: 413,
    UnsupportedPayload: 415,
    PayloadError: 400,
    HandlerError: 500,
    HandlerTimeout: 503,
}
"""Error -> HTTP status: the only place that says which status an error gets."""


def status_for(error: Exception) -> int:
    """The HTTP status for ``error`` (its most specific class in :data:`STATUS`), else 500."""
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500
