"""ASGI types and the helpers the request path shares: reading a body within a limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from receiver.errors import BodyTooLarge

__all__ = ["ClientGone", "Message", "Receive", "Scope", "Send", "read_body"]

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before sending the whole body."""


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes while reading.

    A Content-Length (``declared``) over the limit is refused before reading anything;
    a lying (or absent) Content-Length does not matter, because the count is of bytes
    received.

    Raises:
        BodyTooLarge: more than ``limit`` bytes (413).
        ClientGone: the client disconnected first.
    """
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
