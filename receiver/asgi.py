"""ASGI types and the helpers the request path shares: the header index, the URL the
client called, reading a body within a limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from receiver.errors import BodyTooLarge

__all__ = [
    "ClientGone",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "header_index",
    "read_body",
    "request_url",
    "url_of",
]

Scope = dict[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def request_url(scope: Scope) -> str:
    """The full URL the client called, as this process sees it.

    The path is the request target as sent (``raw_path``; a mounted app's ``path``
    already holds its mount prefix), the host is the Host header (after trusted proxy
    headers are applied) or the server address.
    """
    return url_of(scope, header_index(scope["headers"]).get(b"host"))


def header_index(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """ASGI request headers by name, the first value of each (one C-level pass)."""
    return dict(reversed(headers))


# Host header -> the host as the URL has it, per scheme: callers use few hosts.
_HTTP_HOSTS: dict[bytes, str] = {}
_HTTPS_HOSTS: dict[bytes, str] = {}


def _host(host_header: bytes, scheme: str) -> str:
    """A Host header's value in lower case, without ``scheme``'s default port."""
    host = host_header.decode("latin-1").lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is not None and host.endswith(default_port):
        host = host[: -len(default_port)]
    return host


def url_of(scope: Scope, host_header: bytes | None) -> str:
    """:func:`request_url` with the Host header already looked up.

    As .NET's ``Uri.AbsoluteUri`` writes it (what OnePoint/DIY sign): the host in lower
    case and without the scheme's default port.
    """
    scheme = scope.get("scheme", "http")
    if host_header is not None:
        hosts = _HTTPS_HOSTS if scheme == "https" else _HTTP_HOSTS
        host = hosts.get(host_header)
        if host is None:
            host = _host(host_header, scheme)
            if len(hosts) >= 256:
                hosts.clear()
            hosts[host_header] = host
    else:
        server = scope.get("server") or ("localhost", None)
        default = 443 if scheme == "https" else 80
        host = server[0] if server[1] in (None, default) else f"{server[0]}:{server[1]}"
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"")
    url = f"{scheme}://{host}{path}"
    return f"{url}?{query.decode('latin-1')}" if query else url


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
