"""The ASGI app: one endpoint per channel, and the path each callback takes through it.

A callback for a configured channel goes from the app's front door (:class:`_FrontDoor`)
to :meth:`CallbackEndpoint.serve` (trusted proxy headers, request id, the answer and its
log line), whose :meth:`CallbackEndpoint.handle` reads top to bottom: method -> channel
-> client address -> (a HEAD, or a GET with no callback, is a URL check: 200) -> body,
read once and bounded -> authenticate on the raw bytes -> undo any Content-Encoding ->
parse and normalize -> dispatch to the plugins -> answer. Every failure is an exception
whose HTTP status comes from :data:`receiver.errors.RESPONSES`; nothing else decides a
status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.auth import Authenticator, Request, build_authenticator, header_index
from receiver.codings import decode_content
from receiver.config import Channel, Config, load_config
from receiver.errors import (
    BodyTooLarge,
    CallbackError,
    ConfigError,
    HandlerError,
    HandlerTimeout,
    MethodNotAllowed,
    NotAuthenticated,
    Outcome,
    PayloadError,
    UnknownChannel,
    classify,
)
from receiver.events import Event, Reply
from receiver.journal import Entry, Journal, Recorded, open_journal
from receiver.metrics import CONTENT_TYPE_LATEST, Metrics
from receiver.middleware import (
    FORWARDING_HEADERS,
    Networks,
    ProxyHeaders,
    ProxyHeadersMiddleware,
    RequestIdMiddleware,
    RequestIds,
)
from receiver.plugins import Dispatcher, PluginManager, make_plugin_manager, provider_classes
from receiver.providers.base import Provider

__all__ = ["CallbackEndpoint", "create_app"]

log = structlog.get_logger()

_METHODS = frozenset({"GET", "HEAD", "POST"})
_ALLOW = [(b"allow", b"GET, HEAD, POST")]
_JSON_TYPE = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode

Scope = dict[str, Any]


@dataclass(slots=True)
class _Route:
    """One channel, ready to serve: its provider, authenticator and allowed networks."""

    name: str
    channel: Channel
    provider: Provider
    authenticator: Authenticator
    allowed: Networks | None
    """The networks ``allow_ips`` admits; None when the channel admits every address."""
    secret_param: str | None = None
    """The query parameter holding the key (``auth = "query"``), lowercase: redacted from
    everything kept or dispatched."""
    logger: Any = None
    """The callback lines' logger, with channel and provider bound (see :func:`_logger`)."""


def _logger(route: _Route) -> Any:
    """``route``'s logger for callback lines, made at its first callback.

    structlog's lazy proxy re-reads the configuration on every call unless
    ``cache_logger_on_first_use`` is set; when it is (``receiver serve`` sets it), the
    proxy is resolved here once, as structlog itself would at first use, which takes a
    fifth off each line's cost.
    """
    proxy = structlog.get_logger(channel=route.name, provider=route.provider.name)
    logger = proxy.bind() if structlog.get_config()["cache_logger_on_first_use"] else proxy
    route.logger = logger
    return logger


class _Trace:
    """What is known of a callback so far, for its log line whatever happens."""

    __slots__ = ("event", "outcome", "replied", "route")

    def __init__(self, route: _Route | None) -> None:
        self.route = route
        self.event: Event | None = None
        self.replied = False
        self.outcome = Outcome.accepted


class _ClientGone(Exception):
    """The client disconnected before sending the whole body."""


class CallbackEndpoint:
    """The pure-ASGI endpoint serving ``/{channel}``."""

    def __init__(
        self,
        config: Config,
        manager: PluginManager,
        metrics: Metrics | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.journal = journal
        self.dispatcher = Dispatcher(manager)
        self._pending: dict[str, _Pending] = {}
        self._worker: asyncio.Task[None] | None = None
        self.max_body = config.max_body_bytes
        self.started = time.time()
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
            options = cls.read_options(channel, name)
            try:
                provider = cls.from_channel(channel, options)
            except ConfigError as exc:
                raise ConfigError(f"channels.{name}: {exc}") from None
            if channel.auth == "none":
                log.warning("channel accepts callbacks without authentication", channel=name)
            self.routes[name] = _Route(
                name,
                channel,
                provider,
                build_authenticator(channel, name, cls, options),
                Networks(channel.allow_ips) if channel.allow_ips else None,
                channel.param.lower() if channel.auth == "query" else None,
            )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """ASGI entry through Starlette's router (when user middleware wraps the app).

        The proxy-header and request-id middleware have run already; see :meth:`serve`.
        """
        name = scope["path_params"]["channel"]
        await self.serve(scope, receive, send, self.routes.get(name), name)

    async def serve(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        route: _Route | None,
        name: str,
        ids: RequestIds | None = None,
        proxies: ProxyHeaders | None = None,
    ) -> None:
        """Answer one request for channel ``name`` (``route`` None: no such channel).

        With ``ids`` and ``proxies`` (the app's front door calls it so), the endpoint does
        the request-id and proxy-header work itself, in the one pass over the headers it
        makes anyway, instead of two middleware layers.
        """
        started = time.perf_counter()
        headers = header_index(scope["headers"])
        if proxies is not None and not FORWARDING_HEADERS.isdisjoint(headers):
            changed = proxies.apply(scope)
            if changed is not scope:
                scope, headers = changed, header_index(changed["headers"])
        extra: list[tuple[bytes, bytes]] = []
        bound = None
        if ids is not None:
            request_id = ids.pick(headers.get(b"x-request-id"))
            extra.append((b"x-request-id", request_id.encode()))
            bound = ids.var, ids.var.set(request_id)
        trace = _Trace(route)
        try:
            try:
                status, body, out = await self.handle(scope, receive, route, name, headers, trace)
            except _ClientGone:
                log.info("client disconnected", channel=name)
                return
            except Exception as exc:
                status, trace.outcome = classify(exc)
                if isinstance(exc, CallbackError | PayloadError):
                    reason = str(exc)
                else:
                    log.exception("unexpected error", channel=name)
                    reason = "internal error"
                body, out = _encode({"error": reason}), [_JSON_TYPE]
                if isinstance(exc, MethodNotAllowed):
                    out.extend(_ALLOW)
                _log_failure(scope, name, trace, status, started, reason)
            else:
                _log_callback(scope, name, trace, status, started)
            length = (b"content-length", str(len(body)).encode()) if body else _EMPTY_LENGTH
            await send(
                {"type": "http.response.start", "status": status, "headers": [*out, *extra, length]}
            )
            await send(
                {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
            )
        finally:
            if bound is not None:
                bound[0].reset(bound[1])
        if self.metrics is not None and route is not None:
            event = trace.event
            self.metrics.observe(
                route.name,
                route.provider.name,
                event.type.value if event is not None else "none",
                trace.outcome,
                time.perf_counter() - started,
                trace.replied,
            )

    async def handle(
        self,
        scope: Scope,
        receive: Any,
        route: _Route | None,
        name: str,
        headers: dict[bytes, bytes],
        trace: _Trace,
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Take one request from method check to answer; raise on any failure.

        ``headers`` are the request's, first value of each name. Returns the status,
        body and headers of the answer; records the event in ``trace`` once known.
        """
        received_at = datetime.now(UTC)
        method = scope["method"]
        if method not in _METHODS:
            raise MethodNotAllowed(f"method {method} not allowed: use POST (or GET)")
        if route is None:
            raise UnknownChannel(f"no channel named {name!r}")
        if route.allowed is not None:
            client = scope.get("client")
            if not (client and client[0] in route.allowed):
                raise NotAuthenticated("client address not allowed")
        query: bytes = scope.get("query_string", b"")
        if method == "HEAD" or (
            method == "GET" and not route.provider.has_callback_fields(query.decode("latin-1"))
        ):
            trace.outcome = Outcome.url_check
            return 200, b"", []  # a URL check: Whispir wants exactly 200
        body = await _read_body(receive, headers.get(b"content-length"), self.max_body)
        route.authenticator.check(Request(scope, body, headers))
        content_type = headers.get(b"content-type")
        coding = headers.get(b"content-encoding")
        try:
            if coding is not None:  # authenticated as sent, parsed as meant
                body = decode_content(body, coding, self.max_body)
                coding = None  # what is kept from here on is the decoded body
            if route.secret_param is not None and query:  # the key is no callback field
                query = _redacted(query.decode("latin-1"), route.secret_param).encode("latin-1")
            event = route.provider.parse(
                body,
                content_type=content_type.decode("latin-1") if content_type else None,
                query=query,
                channel=route.name,
                received_at=received_at,
            )
        except PayloadError as exc:
            if self.journal is not None:  # authenticated: keep it for an operator to inspect
                meta = _meta(scope, route)
                if coding is not None:  # kept still encoded: say how, for a replay
                    meta["content-encoding"] = coding.decode("latin-1")
                await self.journal.reject(route.name, route.provider.name, body, meta, str(exc))
            raise
        trace.event = event
        if self.journal is None:
            reply = await self._dispatch(event)
        else:
            recorded = await self.journal.record(
                event, _meta(scope, route), route.provider.dedupe_key(event)
            )
            if recorded.duplicate_of is not None:
                return await self._duplicate(route, event, recorded, trace)
            trace.event = event = recorded.event
            self.start_worker()
            reply = await self._dispatch_journaled(event, trace)
        if reply is None:
            return 200, b"", []
        return await self._answer(route, event, reply, trace)

    async def _dispatch(self, event: Event, only: Collection[str] | None = None) -> Reply | None:
        """Run the plugins for ``event`` within its timeout.

        Only async and ``@blocking`` implementations can be interrupted; when every
        implementation is a plain function there is nothing to time out, and no timer
        is set (it would cost more than the rest of the callback).
        """
        if not self.dispatcher.plan(event.type).may_wait:
            return await self.dispatcher.dispatch(event, only)
        timeout = (
            self.config.reply_timeout
            if event.type.is_response_type
            else self.config.handler_timeout
        )
        try:
            async with asyncio.timeout(timeout):
                return await self.dispatcher.dispatch(event, only)
        except TimeoutError:
            raise HandlerTimeout(f"handlers took longer than {timeout:g} s") from None

    async def _dispatch_journaled(self, event: Event, trace: _Trace) -> Reply | None:
        """Dispatch a stored event: a failure is recorded for retry, and answered 200."""
        pending = self._pending[event.id] = _Pending()
        try:
            reply = await self._dispatch(event)
        except HandlerTimeout as exc:
            await self._failed(event, str(exc), None, attempt=1)
            raise
        except HandlerError as exc:
            await self._failed(event, str(exc), exc.plugins, attempt=1)
            trace.outcome = Outcome.handler_error
            return None  # the event is safe in the journal: answer 200, retry later
        else:
            assert self.journal is not None
            await self.journal.complete(event.id, reply)
            pending.reply = reply
            return reply
        finally:
            pending.done.set()
            del self._pending[event.id]

    async def _failed(
        self, event: Event, error: str, plugins: Collection[str] | None, *, attempt: int
    ) -> None:
        delays = self.config.retry_delays
        retry_at = time.time() + delays[attempt - 1] if attempt <= len(delays) else None
        assert self.journal is not None
        await self.journal.fail(event.id, error, list(plugins) if plugins else None, retry_at)
        if retry_at is None:
            log.error("dead letter: out of attempts", event_id=event.id, attempts=attempt)

    async def _answer(
        self, route: _Route, event: Event, reply: Reply | None, trace: _Trace
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
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

    async def _duplicate(
        self, route: _Route, event: Event, recorded: Recorded, trace: _Trace
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Answer a re-sent callback as its original was answered; dispatch nothing."""
        trace.outcome = Outcome.duplicate
        reply = recorded.reply
        original = recorded.duplicate_of or ""
        pending = self._pending.get(original)
        if pending is not None:  # the original is still being handled: wait for its reply
            try:
                async with asyncio.timeout(self.config.reply_timeout):
                    await pending.done.wait()
            except TimeoutError:
                raise HandlerTimeout(
                    "the original of this duplicate is still being handled"
                ) from None
            reply = pending.reply
        log.info("duplicate", event_id=event.id, original=original, channel=route.name)
        if reply is None or not event.type.is_response_type:
            return 200, b"", []
        rendered = route.provider.render_reply(event, reply)
        return (200, rendered, [_JSON_TYPE]) if rendered is not None else (200, b"", [])

    # -- background work: resume after a restart, retries with backoff ------------------

    def start_worker(self) -> None:
        """Start the retry worker once (at start-up, or at the first callback when mounted)."""
        if self.journal is not None and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _work(self) -> None:
        journal = self.journal
        assert journal is not None
        try:
            # Resume what a previous process committed but never handled. Only entries
            # received before this endpoint existed: later ones belong to live requests.
            while batch := await journal.unfinished(before=self.started):
                for entry in batch:
                    await self.retry(entry)
            while True:
                for entry in await journal.due(time.time()):
                    await self.retry(entry)
                await asyncio.sleep(self.poll_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("journal worker stopped")

    poll_interval = 1.0
    """Seconds between looks for due retries."""

    async def retry(self, entry: Entry, *, all_plugins: bool = False) -> bool:
        """Dispatch a journal entry again (resume, retry or replay); True when it succeeded.

        A retry calls only the plugins that failed, unless ``all_plugins``. A reply that
        comes now cannot go back in the HTTP response any more: it goes to ``send_reply``.
        """
        event = entry.event
        journal = self.journal
        if event is None or journal is None:
            return False
        only = None if all_plugins else entry.failed_plugins
        try:
            reply = await self._dispatch(event, only)
        except (HandlerError, HandlerTimeout) as exc:
            plugins = exc.plugins if isinstance(exc, HandlerError) else only
            await self._failed(event, str(exc), plugins, attempt=entry.attempts + 1)
            return False
        await journal.complete(event.id, reply)
        if reply is not None and not await self.dispatcher.send_reply(event, reply):
            log.warning("late reply dropped: no send_reply plugin took it", event_id=event.id)
        log.info("retried", event_id=event.id, attempt=entry.attempts + 1)
        return True


class _Pending:
    """An event being handled, for duplicates that arrive meanwhile to wait on."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.reply: Reply | None = None


_KEPT_HEADERS = (b"content-type", b"user-agent", b"x-request-id", b"x-forwarded-for")


def _meta(scope: Scope, route: _Route) -> dict[str, str]:
    """What the journal keeps of a request besides the body: never a credential."""
    meta = {"method": scope["method"], "path": scope["path"]}
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        meta["query"] = _redacted(query, route.secret_param) if route.secret_param else query
    client = scope.get("client")
    if client:
        meta["client"] = client[0]
    for key, value in scope["headers"]:
        if key in _KEPT_HEADERS:
            meta[key.decode()] = value.decode("latin-1")
    return meta


def _redacted(query: str, secret: str) -> str:
    """``query`` with the value of every ``secret`` parameter (its name percent-decoded and
    matched ignoring case, as authentication reads it) replaced by ``REDACTED``."""
    return "&".join(
        f"{name}=REDACTED" if unquote_plus(name).lower() == secret else pair
        for pair in query.split("&")
        for name in (pair.partition("=")[0],)
    )


async def _read_body(receive: Any, declared: bytes | None, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes while reading.

    A Content-Length (``declared``) over the limit is refused before reading anything;
    a lying (or absent) Content-Length does not matter, because the count is of bytes
    received.
    """
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


_EMPTY_LENGTH = (b"content-length", b"0")


def _elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (``perf_counter``), to the microsecond: whole
    microseconds divided by 1000, at half the cost of ``round(..., 3)``."""
    return int((time.perf_counter() - started) * 1_000_000) / 1000


def _log_callback(scope: Scope, name: str, trace: _Trace, status: int, started: float) -> None:
    """The one log line per answered callback. Never a key, signature, query or header."""
    route, event = trace.route, trace.event
    assert route is not None  # answered: the channel exists
    logger = route.logger or _logger(route)
    client = scope.get("client")
    duration_ms = _elapsed_ms(started)
    if event is None:  # a GET URL check
        logger.info(
            "callback",
            client=client[0] if client else None,
            status=status,
            duration_ms=duration_ms,
        )
        return
    logger.info(
        "callback",
        client=client[0] if client else None,
        type=event.type,
        message_id=event.message_id,
        event_id=event.id,
        status=status,
        duration_ms=duration_ms,
    )


def _log_failure(
    scope: Scope, name: str, trace: _Trace, status: int, started: float, reason: str
) -> None:
    """The one log line per refused or failed callback, with who sent it and why."""
    route, event = trace.route, trace.event
    client = scope.get("client")
    fields: dict[str, Any] = {
        "channel": name,
        "provider": route.provider.name if route is not None else None,
        "status": status,
        "duration_ms": _elapsed_ms(started),
        "method": scope["method"],
        "client": client[0] if client else None,
        "reason": reason,
        "outcome": trace.outcome.value,
    }
    if event is not None:
        fields["type"] = event.type.value
        fields["message_id"] = event.message_id
        fields["event_id"] = event.id
    if status >= 500:
        log.error("callback", **fields)
    else:
        log.warning("callback", **fields)


async def _healthz(request: StarletteRequest) -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


async def _readyz(request: StarletteRequest) -> Response:
    """Plugins are loaded and each says it can take callbacks (``check_ready``)."""
    manager: PluginManager = request.app.state.plugin_manager
    problems = [problem for problem in manager.hook.check_ready() if problem]
    journal: Journal | None = request.app.state.journal
    if journal is not None and (problem := journal.check()) is not None:
        problems.append(problem)
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
    journal = open_journal(
        config.journal,
        duplicate_window=config.duplicate_window,
        body_window=config.duplicate_body_window,
    )
    endpoint = CallbackEndpoint(config, manager, metrics, journal)
    routes = [
        Route("/healthz", _healthz, methods=["GET", "HEAD"]),
        Route("/readyz", _readyz, methods=["GET", "HEAD"]),
    ]
    if metrics is not None:
        routes.append(Route("/metrics", _metrics, methods=["GET"]))
    routes.append(Route("/{channel}", endpoint))
    app = ReceiverApp(endpoint, config, routes=routes, lifespan=_lifespan)
    app.state.config = config
    app.state.plugin_manager = manager
    app.state.endpoint = endpoint
    app.state.metrics = metrics
    app.state.journal = journal
    return app


class ReceiverApp(Starlette):
    """The Starlette app :func:`create_app` returns, with a short path for callbacks.

    A request for a configured channel goes straight to the endpoint, which applies
    trusted proxy headers and the request id itself and answers every error itself;
    anything else passes the proxy-header and request-id middleware, then Starlette's
    usual way (error middleware, router). Middleware added with ``add_middleware`` wraps
    everything, callbacks included (they then take the router's way too).
    """

    def __init__(self, endpoint: CallbackEndpoint, config: Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.trusted_proxies = config.trusted_proxies

    def build_middleware_stack(self) -> Any:
        stack: Any = super().build_middleware_stack()
        ids = RequestIds()
        wrapped = ProxyHeadersMiddleware(RequestIdMiddleware(stack, ids), self.trusted_proxies)
        if self.user_middleware:
            return wrapped
        return _FrontDoor(self.endpoint, wrapped, ids, wrapped.proxies)


class _FrontDoor:
    """Send ``/<configured channel>`` to the endpoint, everything else to ``fallback``."""

    def __init__(
        self, endpoint: CallbackEndpoint, fallback: Any, ids: RequestIds, proxies: ProxyHeaders
    ) -> None:
        self.routes = endpoint.routes
        self.serve = endpoint.serve
        self.fallback = fallback
        self.ids = ids
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            name = path[1:]
            route = self.routes.get(name)
            if route is not None:
                await self.serve(scope, receive, send, route, name, self.ids, self.proxies)
                return
        await self.fallback(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open the journal and resume unfinished work at start-up; close it at shutdown.

    (A mounted app gets no lifespan events: it starts these at its first callback.)
    """
    endpoint: CallbackEndpoint = app.state.endpoint
    if endpoint.journal is not None:
        await endpoint.journal.start()
        endpoint.start_worker()
    try:
        yield
    finally:
        await endpoint.stop_worker()
        if endpoint.journal is not None:
            await endpoint.journal.stop()
