"""The ASGI app: one endpoint per channel, and the path each callback takes through it.

The request path reads top to bottom in :meth:`CallbackEndpoint.handle`: method ->
channel -> client address -> (a GET with no callback is a URL check: 200) -> body, read
once and bounded -> authenticate on the raw bytes -> parse and normalize -> dispatch to
the plugins -> answer. Every failure is an exception whose HTTP status comes from
:data:`receiver.errors.STATUS`; nothing else decides a status.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.auth import Authenticator, Request, build_authenticator
from receiver.config import Channel, Config, load_config
from receiver.errors import (
    BodyTooLarge,
    CallbackError,
    ConfigError,
    HandlerTimeout,
    MethodNotAllowed,
    NotAuthenticated,
    UnknownChannel,
    classify,
)
from receiver.metrics import CONTENT_TYPE_LATEST, Metrics
from receiver.middleware import ProxyHeadersMiddleware, RequestIdMiddleware
from receiver.plugins import Dispatcher, PluginManager, make_plugin_manager, provider_classes
from receiver.providers.base import Provider
from receiver.types import Event, PayloadError

__all__ = ["CallbackEndpoint", "create_app"]

log = structlog.get_logger()

_METHODS = frozenset({"GET", "HEAD", "POST"})
_ALLOW = [(b"allow", b"GET, HEAD, POST")]
_JSON_TYPE = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode

Scope = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Route:
    """One channel, ready to serve: its provider, authenticator and allowed networks."""

    name: str
    channel: Channel
    provider: Provider
    authenticator: Authenticator
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class _Trace:
    """What is known of a callback so far, for its log line whatever happens."""

    __slots__ = ("event", "replied", "route")

    def __init__(self) -> None:
        self.route: _Route | None = None
        self.event: Event | None = None
        self.replied = False


class _ClientGone(Exception):
    """The client disconnected before sending the whole body."""


class CallbackEndpoint:
    """The pure-ASGI endpoint serving ``/{channel}``."""

    def __init__(
        self, config: Config, manager: PluginManager, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.dispatcher = Dispatcher(manager)
        providers = provider_classes(manager)
        self.routes: dict[str, _Route] = {}
        for name, channel in config.channels.items():
            cls = providers.get(channel.provider)
            if cls is None:
                known = ", ".join(sorted(providers))
                raise ConfigError(
                    f"channels.{name}.provider: unknown provider {channel.provider!r} "
                    f"(known: {known})"
                )
            try:
                provider = cls.from_channel(channel)
            except ConfigError as exc:
                raise ConfigError(f"channels.{name}: {exc}") from None
            if channel.auth == "none":
                log.warning("channel accepts callbacks without authentication", channel=name)
            self.routes[name] = _Route(
                name,
                channel,
                provider,
                build_authenticator(channel, name),
                tuple(ipaddress.ip_network(n, strict=False) for n in channel.allow_ips),
            )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        trace = _Trace()
        outcome = "accepted"
        try:
            status, body, headers = await self.handle(scope, receive, trace)
        except _ClientGone:
            log.info("client disconnected", path=scope["path"])
            return
        except Exception as exc:
            status, outcome = classify(exc)
            if isinstance(exc, CallbackError | PayloadError):
                reason = str(exc)
            else:
                log.exception("unexpected error", path=scope["path"])
                reason = "internal error"
            body, headers = _encode({"error": reason}), [_JSON_TYPE]
            if isinstance(exc, MethodNotAllowed):
                headers.extend(_ALLOW)
            _log_callback(scope, trace, status, started, reason)
        else:
            _log_callback(scope, trace, status, started, None)
        await _respond(send, status, body, headers, head=scope["method"] == "HEAD")
        if self.metrics is not None and trace.route is not None:
            event = trace.event
            self.metrics.observe(
                trace.route.name,
                trace.route.provider.name,
                event.type.value if event is not None else "none",
                outcome,
                time.perf_counter() - started,
                trace.replied,
            )

    async def handle(
        self, scope: Scope, receive: Any, trace: _Trace
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Take one request from method check to answer; raise on any failure.

        Returns the status, body and headers of the answer; records the channel and
        event in ``trace`` as they become known.
        """
        received_at = datetime.now(UTC)
        method = scope["method"]
        if method not in _METHODS:
            raise MethodNotAllowed(f"method {method} not allowed: use POST (or GET)")
        name = scope["path_params"]["channel"]
        route = self.routes.get(name)
        if route is None:
            raise UnknownChannel(f"no channel named {name!r}")
        trace.route = route
        if route.networks and not _client_allowed(scope, route.networks):
            raise NotAuthenticated("client address not allowed")
        query = scope.get("query_string", b"").decode("latin-1")
        if method != "POST" and not route.provider.has_callback_fields(query):
            return 200, b"", []  # a URL check: Whispir wants exactly 200
        body = await _read_body(scope, receive, self.config.max_body_bytes)
        route.authenticator.check(Request(scope, body))
        event = route.provider.parse(
            body,
            content_type=_header(scope, b"content-type"),
            query=query,
            channel=route.name,
            received_at=received_at,
        )
        trace.event = event
        respond = event.type.is_response_type
        timeout = self.config.reply_timeout if respond else self.config.handler_timeout
        try:
            with anyio.fail_after(timeout):
                reply = await self.dispatcher.dispatch(event)
        except TimeoutError:
            raise HandlerTimeout(f"handlers took longer than {timeout:g} s") from None
        if reply is None:
            return 200, b"", []
        rendered = route.provider.render_reply(event, reply)
        if rendered is not None:
            trace.replied = True
            return 200, rendered, [_JSON_TYPE]
        trace.replied = await self.dispatcher.send_reply(event, reply)
        if not trace.replied:
            log.warning(
                "reply dropped: no send_reply plugin took it",
                channel=route.name,
                provider=route.provider.name,
                event_id=event.id,
            )
        return 200, b"", []


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _client_allowed(
    scope: Scope, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in networks)


async def _read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes while reading.

    A Content-Length over the limit is refused before reading anything; a lying (or
    absent) Content-Length does not matter, because the count is of bytes received.
    """
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
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
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]], *, head: bool
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


def _log_callback(
    scope: Scope, trace: _Trace, status: int, started: float, reason: str | None
) -> None:
    """The one log line per callback. Never a key, signature, query or header value."""
    route, event = trace.route, trace.event
    client = scope.get("client")
    fields: dict[str, Any] = {
        "method": scope["method"],
        "client": client[0] if client else None,
        "channel": route.name if route else scope.get("path_params", {}).get("channel"),
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if route is not None:
        fields["provider"] = route.provider.name
    if event is not None:
        fields["event_id"] = event.id
        fields["type"] = event.type.value
        fields["message_id"] = event.message_id
    if reason is not None:
        fields["reason"] = reason
    if status >= 500:
        log.error("callback", **fields)
    elif status >= 400:
        log.warning("callback", **fields)
    else:
        log.info("callback", **fields)


async def _healthz(request: StarletteRequest) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def _readyz(request: StarletteRequest) -> Response:
    """Plugins are loaded and each says it can take callbacks (``check_ready``)."""
    manager: PluginManager = request.app.state.plugin_manager
    problems = [problem for problem in manager.hook.check_ready() if problem]
    plugins = [name for name, _ in manager.list_name_plugin()]
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready", "plugins": plugins})


async def _metrics(request: StarletteRequest) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    config: Config | str | os.PathLike[str] | None = None, *, plugins: Iterable[object] = ()
) -> Starlette:
    """Build a receiver ASGI app.

    Args:
        config: A :class:`Config`, a path to a TOML file, or None (then
            ``$RECEIVER_CONFIG``, then ``./receiver.toml``).
        plugins: Plugin objects or modules to register on this app's own plugin manager,
            before the installed (entry point), configured and folder plugins.

    The app serves ``GET|HEAD|POST /{channel}`` relative to where it is mounted,
    ``GET /healthz``, ``GET /readyz`` and, when ``config.metrics`` is on, ``GET /metrics``.
    Its plugin manager is ``app.state.plugin_manager``.

    Raises:
        ConfigError: the configuration is invalid or a plugin failed to load (the
            message names the key or the plugin).
    """
    if not isinstance(config, Config):
        config = load_config(config)
    config.validate()
    manager = make_plugin_manager(plugins, modules=config.plugins, plugins_dir=config.plugins_dir)
    manager.hook.configure(config=config)
    metrics = Metrics() if config.metrics else None
    endpoint = CallbackEndpoint(config, manager, metrics)
    routes = [
        Route("/healthz", _healthz, methods=["GET", "HEAD"]),
        Route("/readyz", _readyz, methods=["GET", "HEAD"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", _metrics, methods=["GET"]))
    routes.append(Route("/{channel}", endpoint))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ProxyHeadersMiddleware, trusted=config.trusted_proxies),
            Middleware(RequestIdMiddleware),
        ],
    )
    app.state.config = config
    app.state.plugin_manager = manager
    app.state.endpoint = endpoint
    app.state.metrics = metrics
    return app
