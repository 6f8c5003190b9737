"""The ASGI app: create_app, the edge every callback passes, and the service routes.

A request for a configured channel goes from the app's front door (:class:`_FrontDoor`,
which skips Starlette's router for speed) to :meth:`Edge.serve`: trusted proxy headers,
the request id, :meth:`receiver.endpoint.CallbackEndpoint.handle` (the callback itself,
top to bottom), then the answer, its log line and its metrics. Everything else
(``/healthz``, ``/readyz``, ``/metrics``, unknown paths) takes Starlette's usual way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from receiver.asgi import ClientGone, Receive, Scope, Send, header_index
from receiver.config import Config, load_config, replace_config
from receiver.endpoint import Answer, BoundChannel, CallbackEndpoint
from receiver.errors import Outcome
from receiver.journal import Journal
from receiver.logs import bounded, get_logger, stdlib_logger
from receiver.metrics import CONTENT_TYPE_LATEST, Metrics
from receiver.middleware import (
    FORWARDING_HEADERS,
    ProxyHeaders,
    ProxyHeadersMiddleware,
    RequestIdMiddleware,
    RequestIds,
)
from receiver.plugins import PluginManager
from receiver.redelivery import Redelivery

__all__ = ["Edge", "ReceiverApp", "create_app", "log_answer"]

log = get_logger(__name__)

_EMPTY_LENGTH = (b"content-length", b"0")


class Edge:
    """Where a callback request meets the app: proxy headers, request id, the answer.

    As an ASGI app it is the ``/{channel}`` route Starlette's router calls (when user
    middleware wraps the app, and the proxy-header and request-id middleware have run);
    the front door calls :meth:`serve` directly.
    """

    def __init__(self, endpoint: CallbackEndpoint, metrics: Metrics | None) -> None:
        self.endpoint = endpoint
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path_params"]["channel"]
        await self.serve(scope, receive, send, self.endpoint.channels.get(name), name)

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        bound: BoundChannel | None,
        name: str,
        ids: RequestIds | None = None,
        proxies: ProxyHeaders | None = None,
    ) -> None:
        """Answer one request for channel ``name`` (``bound`` None: no such channel).

        With ``ids`` and ``proxies`` (the front door calls it so), the request-id and
        proxy-header work is done here, in the one pass over the headers made anyway,
        instead of two middleware layers.
        """
        started = time.perf_counter()
        headers = header_index(scope["headers"])
        if proxies is not None and not FORWARDING_HEADERS.isdisjoint(headers):
            changed = proxies.apply(scope)
            if changed is not scope:
                scope, headers = changed, header_index(changed["headers"])
        extra: list[tuple[bytes, bytes]] = []
        token = None
        if ids is not None:
            request_id = ids.pick(headers.get(b"x-request-id"))
            extra.append((b"x-request-id", request_id.encode()))
            token = ids.var.set(request_id)
        try:
            try:
                answer = await self.endpoint.handle(scope, receive, bound, name, headers)
            except ClientGone:
                log.info("client disconnected", channel=bounded(name))
                return
            log_answer(scope, name, bound, answer, _elapsed_ms(started))
            body = answer.body
            length = (b"content-length", str(len(body)).encode()) if body else _EMPTY_LENGTH
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status,
                    "headers": [*answer.headers, *extra, length],
                }
            )
            await send(
                {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
            )
        finally:
            if token is not None and ids is not None:
                ids.var.reset(token)
        if self.metrics is not None and bound is not None:
            event = answer.event
            self.metrics.observe(
                bound.name,
                bound.provider.name,
                event.type.value if event is not None else "none",
                answer.outcome,
                time.perf_counter() - started,
                answer.replied,
            )


def _logger(bound: BoundChannel) -> Any:
    """``bound``'s logger for callback lines.

    structlog configured with ``cache_logger_on_first_use`` (``receiver serve``): its lazy
    proxy is resolved here once, as structlog itself would at first use, which takes a
    fifth off each line's cost, and kept in ``bound.logger``, which the edge then uses
    without calling here again. Otherwise (structlog's proxy, which reads the
    configuration at every line; not configured: a logger to the standard library's
    ``receiver.app``, :func:`receiver.logs.stdlib_logger`) it is kept in
    ``bound.logger_made`` and made again when ``structlog.is_configured()`` changes (an
    application that configures structlog after its first callback, or a test that
    captures logs): this is called at every line, and costs a call and a check.
    """
    configured = structlog.is_configured()
    made = bound.logger_made
    if made is not None and made[1] is configured:
        return made[0]
    context = {"channel": bound.name, "provider": bound.provider.name}
    if not configured:
        logger = stdlib_logger(__name__, **context)
    else:
        logger = structlog.get_logger(__name__, **context)
        if structlog.get_config()["cache_logger_on_first_use"]:
            logger = bound.logger = logger.bind()
            return logger
    bound.logger_made = (logger, configured)
    return logger


def log_answer(
    scope: Scope, name: str, bound: BoundChannel | None, answer: Answer, duration_ms: float
) -> None:
    """The one log line per request. Never a key, signature, query or header; what the
    request chose (an unknown channel's name, the method, a message id, a forwarded client
    address) cut and escaped by :func:`bounded`."""
    client = scope.get("client")
    address = client[0] if client else None
    if address is not None and not (len(address) <= 64 and address.isprintable()):
        address = bounded(address, 64)  # a forwarded address: whatever the proxy was sent
    event = answer.event
    if answer.reason is None:
        assert bound is not None  # answered: the channel exists
        logger = bound.logger or _logger(bound)
        if event is None:  # a URL check
            logger.info(
                "callback",
                client=address,
                status=answer.status,
                duration_ms=duration_ms,
            )
            return
        # Two calls, not one with **extra: unpacking a dict into the call cost 4k
        # instructions per callback (bench/instructions.py, whispir_json).
        # A message id is shown as is when short and printable, checked inline (a call to
        # bounded() on every line cost about 1k instructions); else bounded.
        message_id = event.message_id
        if message_id is not None and not (len(message_id) <= 64 and message_id.isprintable()):
            message_id = bounded(message_id, 64)
        if answer.outcome is Outcome.accepted:
            logger.info(
                "callback",
                client=address,
                type=event.type,
                message_id=message_id,
                event_id=event.id,
                status=answer.status,
                duration_ms=duration_ms,
            )
            return
        # Answered 200 but not plainly accepted (a duplicate; handlers failed, to be
        # retried): the line says which.
        logger.info(
            "callback",
            client=address,
            type=event.type,
            message_id=message_id,
            event_id=event.id,
            status=answer.status,
            duration_ms=duration_ms,
            outcome=answer.outcome.value,
        )
        return
    fields: dict[str, Any] = {
        "channel": name if bound is not None else bounded(name),
        "provider": bound.provider.name if bound is not None else None,
        "status": answer.status,
        "duration_ms": duration_ms,
        "method": bounded(scope["method"]),
        "client": address,
        "reason": answer.reason,
        "outcome": answer.outcome.value,
    }
    if event is not None:
        fields["type"] = event.type.value
        fields["message_id"] = bounded(event.message_id, 64)
        fields["event_id"] = event.id
    if answer.status >= 500:
        log.error("callback", **fields)
    else:
        log.warning("callback", **fields)


def _elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (``perf_counter``), to the microsecond: whole
    microseconds divided by 1000, at half the cost of ``round(..., 3)``."""
    return int((time.perf_counter() - started) * 1_000_000) / 1000


async def _healthz(request: StarletteRequest) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def _readyz(request: StarletteRequest) -> Response:
    """Plugins are loaded and each says it can take callbacks (``check_ready``)."""
    manager: PluginManager = request.app.state.plugin_manager
    problems = [problem for problem in manager.hook.check_ready() if problem]
    journal: Journal | None = request.app.state.journal
    if journal is not None and (problem := await journal.check()) is not None:
        problems.append(problem)
    redelivery: Redelivery | None = request.app.state.redelivery
    if redelivery is not None and (stopped := redelivery.problem()) is not None:
        problems.append(stopped)
    plugins = [name for name, plugin in manager.list_name_plugin() if plugin is not None]
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready", "plugins": plugins})


async def _metrics(request: StarletteRequest) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    config: Config | str | os.PathLike[str] | None = None,
    *,
    plugins: Iterable[object] = (),
    autoload: bool | None = None,
) -> Starlette:
    """Build a receiver ASGI app.

    Args:
        config: A :class:`Config`, a path to a TOML file, or None (then
            ``$RECEIVER_CONFIG``, then ``./receiver.toml``).
        plugins: Plugin objects or modules to register on this app's own plugin manager,
            before the installed (entry point), configured and folder plugins.
        autoload: Load installed packages' plugins into this app (None: the
            configuration's ``autoload_plugins``, default True). False for an app that
            passes its plugins explicitly.

    The app serves ``GET|HEAD|POST /{channel}`` relative to where it is mounted,
    ``GET /healthz``, ``GET /readyz``, when ``config.metrics`` is on ``GET /metrics``, and
    with a ``[console]`` table the operator console under ``/console/``.
    Its plugin manager is ``app.state.plugin_manager``.

    Raises:
        ConfigError: the configuration is invalid or a plugin failed to load (the
            message names the key or the plugin).
    """
    if not isinstance(config, Config):
        config = load_config(config)
    if autoload is not None:
        config = replace_config(config, autoload_plugins=autoload)
    endpoint = CallbackEndpoint.from_config(config, plugins)
    metrics = Metrics() if config.metrics else None
    if metrics is not None:
        endpoint.observe(metrics)
    edge = Edge(endpoint, metrics)
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET", "HEAD"]),
        Route("/readyz", _readyz, methods=["GET", "HEAD"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", _metrics, methods=["GET"]))
    console = None
    if config.console is not None:  # off: nothing of it is imported or built
        from receiver.console import mount

        console, console_route = mount(config.console, endpoint)
        routes.append(console_route)
    routes.append(Route("/{channel}", edge))
    app = ReceiverApp(edge, config, routes=routes, lifespan=_lifespan)
    app.state.config = endpoint.config  # plugin settings typed
    app.state.plugin_manager = endpoint.manager
    app.state.endpoint = endpoint
    app.state.redelivery = endpoint.redelivery
    app.state.metrics = metrics
    app.state.journal = endpoint.journal
    app.state.console = console
    return app


class ReceiverApp(Starlette):
    """The Starlette app :func:`create_app` returns, with a short path for callbacks.

    A request for a configured channel goes straight to the endpoint, which applies
    trusted proxy headers and the request id itself and answers every error itself;
    anything else passes the proxy-header and request-id middleware, then Starlette's
    usual way (error middleware, router). Middleware added with ``add_middleware`` wraps
    everything, callbacks included (they then take the router's way too).
    """

    def __init__(self, edge: Edge, config: Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edge = edge
        self.trusted_proxies = config.trusted_proxies

    def build_middleware_stack(self) -> Any:
        stack: Any = super().build_middleware_stack()
        ids = RequestIds()
        wrapped = ProxyHeadersMiddleware(RequestIdMiddleware(stack, ids), self.trusted_proxies)
        if self.user_middleware:
            return wrapped
        return _FrontDoor(self.edge, wrapped, ids, wrapped.proxies)


class _FrontDoor:
    """Send ``/<configured channel>`` to the endpoint, everything else to ``fallback``."""

    def __init__(self, edge: Edge, fallback: Any, ids: RequestIds, proxies: ProxyHeaders) -> None:
        self.channels = edge.endpoint.channels
        self.serve = edge.serve
        self.fallback = fallback
        self.ids = ids
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            name = path[1:]
            bound = self.channels.get(name)
            if bound is not None:
                await self.serve(scope, receive, send, bound, name, self.ids, self.proxies)
                return
        await self.fallback(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open the journal and resume unfinished work at start-up; close it at shutdown,
    after handlers still running past their timeout have had one more timeout to finish.

    (A mounted app gets no lifespan events: it starts these at its first callback.)
    """
    journal: Journal | None = app.state.journal
    redelivery: Redelivery | None = app.state.redelivery
    if journal is not None and redelivery is not None:
        await journal.start()
        redelivery.start()
    try:
        yield
    finally:
        if journal is not None and redelivery is not None:
            config: Config = app.state.config
            await redelivery.stop(grace=max(config.reply_timeout, config.handler_timeout))
            await journal.stop()
