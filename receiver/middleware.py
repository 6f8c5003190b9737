"""Proxy headers from trusted peers and a request id per request, as pure-ASGI middleware
(for everything but callbacks) and as parts the callback endpoint uses inline."""

from __future__ import annotations

import contextvars
import ipaddress
import itertools
import random
import re
from collections.abc import Iterable
from typing import Any

import structlog

__all__ = [
    "FORWARDING_HEADERS",
    "Networks",
    "ProxyHeaders",
    "ProxyHeadersMiddleware",
    "RequestIdMiddleware",
    "RequestIds",
]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FORWARDED_PAIR = re.compile(r'\s*([a-zA-Z]+)\s*=\s*("[^"]*"|[^;,\s]*)')
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Networks:
    """A set of IP networks (``"*"``: every address), asked per address with a cache.

    Used for trusted proxies and for a channel's ``allow_ips``: callbacks come from few
    addresses, so each is parsed once, not on every request.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        networks = list(networks)
        self.everything = "*" in networks
        self.networks: list[_Network] = [
            ipaddress.ip_network(item, strict=False) for item in networks if item != "*"
        ]
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self.everything or bool(self.networks)

    def __contains__(self, address: str) -> bool:
        if self.everything:
            return True
        known = self._known.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
                known = any(ip in network for network in self.networks)
            except ValueError:  # not an IP address (e.g. a test client's name)
                known = False
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[address] = known
        return known


FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
    }
)
"""The request headers :class:`ProxyHeaders` reads (lowercase, as in an ASGI scope)."""


class ProxyHeaders:
    """Believe ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and ``Forwarded`` from
    trusted peers.

    Only when the direct peer is in ``trusted`` are the headers read; the client address
    is then the right-most address in the chain that is not itself a trusted proxy (a
    client cannot forge its way past the proxy that appended the real address). The
    scheme, host and port come from the nearest proxy's values. A port written in the
    host (``X-Forwarded-Host``, ``Forwarded: host=``, or the Host header when neither is
    sent) wins over ``X-Forwarded-Port``: it is what the caller put in its URL, while the
    port header is where the proxy listened (they differ behind a port mapping); the
    port header only adds a port to a host without one, and is ignored unless it is a
    number from 1 to 65535. From any other peer the headers are ignored: a forged
    X-Forwarded-For changes nothing.
    """

    def __init__(self, trusted: Iterable[str] = ("127.0.0.1",)) -> None:
        self.trusted = Networks(trusted)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is a trusted proxy."""
        return address in self.trusted

    def apply(self, scope: dict[str, Any]) -> dict[str, Any]:
        """``scope`` as the client sent it through trusted proxies (a copy when changed)."""
        client = scope.get("client")
        if client and self.trusts(client[0]):
            return self.rewrite(scope, client)
        return scope

    def rewrite(self, scope: dict[str, Any], client: tuple[str, int]) -> dict[str, Any]:
        chain: list[str] = []
        proto = host = port = None
        for name, value in scope["headers"]:
            if name == b"forwarded":
                for element in value.decode("latin-1").split(","):
                    pairs = {k.lower(): v.strip('"') for k, v in _FORWARDED_PAIR.findall(element)}
                    if "for" in pairs:
                        chain.append(_strip_port(pairs["for"]))
                    proto = pairs.get("proto", proto)
                    host = pairs.get("host", host)
            elif name == b"x-forwarded-for":
                chain.extend(a.strip() for a in value.decode("latin-1").split(",") if a.strip())
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").split(",")[-1].strip()
            elif name == b"x-forwarded-host":
                host = value.decode("latin-1").split(",")[-1].strip()
            elif name == b"x-forwarded-port":
                port = _port(value)
        if port is not None:
            host = _with_port(host, port, scope["headers"])
        if not (chain or proto or host):
            return scope
        scope = dict(scope)
        if chain:
            address = chain[0]
            for hop in reversed(chain):
                address = hop
                if not self.trusts(hop):
                    break
            scope["client"] = (address, client[1])
        if proto in ("http", "https"):
            scope["scheme"] = proto
        if host:
            headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
            headers.append((b"host", host.encode("latin-1")))
            scope["headers"] = headers
        return scope


def _port(value: bytes) -> str | None:
    """The nearest proxy's ``X-Forwarded-Port`` (``"08443"`` -> ``"8443"``), or None
    when it is not a port number."""
    text = value.decode("latin-1").rpartition(",")[2].strip()
    if len(text) <= 5 and text.isascii() and text.isdigit() and 0 < int(text) <= 65535:
        return str(int(text))
    return None


def _with_port(forwarded: str | None, port: str, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The host to use: the forwarded host, else the Host header, with ``port`` added when
    it has no port of its own (None: keep the Host header as it is)."""
    host = forwarded
    if not host:
        host = next((v.decode("latin-1") for k, v in headers if k == b"host"), None)
        if not host:
            return forwarded
    has_port = "]:" in host if host.startswith("[") else ":" in host
    return forwarded if has_port else f"{host}:{port}"


def _strip_port(node: str) -> str:
    """A ``Forwarded: for=`` node without its port: ``"[2001:db8::1]:4711"`` -> the address."""
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node


class ProxyHeadersMiddleware:
    """Pure-ASGI middleware applying :class:`ProxyHeaders` to every HTTP request."""

    def __init__(self, app: Any, trusted: Iterable[str] = ("127.0.0.1",)) -> None:
        self.app = app
        self.proxies = ProxyHeaders(trusted)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = self.proxies.apply(scope)
        await self.app(scope, receive, send)


class RequestIds:
    """Request ids: a sane incoming ``X-Request-ID`` (from a proxy) is kept; otherwise the
    id is this process's random prefix and a counter: unique, and free to make.

    :attr:`var` is the context variable that structlog's ``bind_contextvars`` uses for
    ``request_id``: setting it puts the id on every log line of the request (plugins'
    included) through ``structlog.contextvars.merge_contextvars``.
    """

    def __init__(self) -> None:
        self._prefix = f"{random.getrandbits(48):012x}-"
        self._counter = itertools.count(1)
        tokens = structlog.contextvars.bind_contextvars(request_id=None)
        token = tokens["request_id"]
        self.var: contextvars.ContextVar[Any] = token.var
        self.var.reset(token)

    def pick(self, incoming: bytes | None) -> str:
        """The id of a request whose ``X-Request-ID`` header is ``incoming`` (or absent)."""
        if incoming is not None:
            candidate = incoming.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
        return f"{self._prefix}{next(self._counter)}"


class RequestIdMiddleware:
    """Bind a request id (see :class:`RequestIds`) to the logging context and echo it as
    ``X-Request-ID``."""

    def __init__(self, app: Any, ids: RequestIds | None = None) -> None:
        self.app = app
        self.ids = ids or RequestIds()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
                break
        request_id = self.ids.pick(incoming)
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = self.ids.var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.ids.var.reset(token)
