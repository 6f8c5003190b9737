"""One callback, top to bottom.

:meth:`CallbackEndpoint.handle` takes a request for a channel and returns an
:class:`Answer`: method -> channel -> client address -> (a HEAD, or a GET with no
callback, is a URL check: 200) -> body, read once and bounded -> authenticate on the raw
bytes -> undo any Content-Encoding -> parse and normalize -> journal -> dispatch to the
plugins -> answer. Every failure is an exception whose HTTP status and outcome come from
:data:`receiver.errors.RESPONSES`; nothing else decides a status. The edge (proxy
headers, request id, sending the answer) is :mod:`receiver.app`; what happens to a stored
event after its answer is :mod:`receiver.redelivery`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from receiver.asgi import ClientGone, Receive, Scope, read_body
from receiver.auth import Authenticator, CallbackRequest, build_authenticator, without_key_param
from receiver.codings import decode_content
from receiver.config import Channel, Config
from receiver.contrib import FIRST_PARTY
from receiver.dispatch import Dispatcher
from receiver.errors import (
    CallbackError,
    ConfigError,
    HandlerError,
    HandlerTimeout,
    JournalUnavailable,
    MethodNotAllowed,
    NotAuthenticated,
    Outcome,
    PayloadError,
    ShuttingDown,
    UnknownChannel,
    classify,
)
from receiver.events import Event, Reply
from receiver.journal import Journal, Recorded, open_journal
from receiver.logs import bounded, get_logger
from receiver.middleware import Networks
from receiver.plugins import (
    PluginManager,
    check_settings,
    make_plugin_manager,
    provider_classes,
    typed_settings,
)
from receiver.providers.base import Provider
from receiver.redelivery import Observer, Redelivery

__all__ = ["DUPLICATE_HEADER", "Answer", "BoundChannel", "CallbackEndpoint", "bind_channels"]

log = get_logger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST"})
_ALLOW = (b"allow", b"GET, HEAD, POST")
_JSON_TYPE = (b"content-type", b"application/json")
DUPLICATE_HEADER = b"x-receiver-duplicate"
"""The response header of a duplicate's answer: the id of the original event."""
_encode = msgspec.json.Encoder().encode
_KEPT_HEADERS = (b"content-type", b"user-agent", b"x-request-id", b"x-forwarded-for")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class BoundChannel:
    """One configured channel, ready to serve: its provider, authenticator and networks."""

    name: str
    channel: Channel
    provider: Provider
    authenticator: Authenticator
    allowed: Networks | None
    """The networks ``allow_ips`` admits; None when the channel admits every address."""
    secret_param: str | None = None
    """The query parameter holding the key (``auth = "query"``), lowercase: removed from
    the query before anything keeps, parses or dispatches it
    (:func:`receiver.auth.without_key_param`)."""
    secret_header: bytes | None = None
    """The header holding the key (``auth = "header"``), lowercase: never kept in the
    journal's meta, whatever its name."""
    logger: Any = None
    """The callback lines' logger, with channel and provider bound (made by the edge,
    :func:`receiver.app.log_answer`, at the channel's first callback) when it is
    ``receiver serve``'s: set once, kept. Any other (a mounted app's) is kept in
    :attr:`logger_made` instead, and checked at every line."""
    logger_made: tuple[Any, bool] | None = None
    """A callback logger that is not :attr:`logger`, and what ``structlog.is_configured()``
    said when it was made: it is made again when that changes."""


class Answer(NamedTuple):
    """What became of one request: the HTTP answer, and what its log line and metrics say.

    Attributes:
        status: The HTTP status.
        body: The response body (a rendered reply, an error, or empty).
        headers: Response headers besides Content-Length and X-Request-ID.
        outcome: The callback's fate (:class:`Outcome`).
        event: The event, once parsed (None before, or for a URL check).
        replied: A reply went back (in the body, or through ``send_reply``).
        reason: The one-line public reason of a failure; None when answered normally.
    """

    status: int
    body: bytes
    headers: Headers
    outcome: Outcome
    event: Event | None = None
    replied: bool = False
    reason: str | None = None


class _Pending:
    """An event being handled, for duplicates that arrive meanwhile to wait on."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.reply: Reply | None = None


class CallbackEndpoint:
    """Every configured channel, and the path one callback takes through it.

    Args:
        config: The validated configuration.
        manager: The app's plugin manager (its providers and hooks).
        journal: Where callbacks are kept before they are answered (None: off).

    Raises:
        ConfigError: a channel names an unknown provider, its options are invalid, or a
            plugin implements a callback hook as a wrapper.
    """

    def __init__(
        self, config: Config, manager: PluginManager, journal: Journal | None = None
    ) -> None:
        self.config = config
        self.manager = manager
        self.journal = journal
        self.max_body = config.max_body_bytes
        self.dispatcher = Dispatcher(
            manager,
            reply_timeout=config.reply_timeout,
            handler_timeout=config.handler_timeout,
            blocking_threads=config.blocking_threads,
        )
        self.dispatcher.check()
        self.redelivery = (
            Redelivery(
                journal, self.dispatcher, config.retry_delays, retention=config.retention_seconds
            )
            if journal
            else None
        )
        self.observer: Observer | None = None
        self._pending: dict[str, _Pending] = {}
        if self.redelivery is not None:
            pending = self._pending
            self.redelivery.handling = lambda: len(pending)
        self.channels = bind_channels(config, manager)

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` (the app's metrics) of undelivered replies, retries, dead
        letters, the backlog and the journal's commit times."""
        self.observer = observer
        if self.redelivery is not None:
            self.redelivery.observer = observer
        if self.journal is not None:
            self.journal.on_commit = observer.journal_commit

    @classmethod
    def from_config(cls, config: Config, plugins: Iterable[object] = ()) -> CallbackEndpoint:
        """The endpoint of ``config``, with its own plugin manager and journal (not started).

        What :func:`receiver.create_app` serves, and what the operator commands use
        without an ASGI app. The plugin manager is :attr:`manager`.

        Raises:
            ConfigError: the configuration is invalid or a plugin failed to load.
        """
        config.validate(config.source)
        manager = make_plugin_manager(
            plugins,
            modules=config.plugins,
            plugins_dir=config.plugins_dir,
            autoload=config.autoload_plugins,
            disabled=config.disabled_plugins,
            first_party=[name for name in FIRST_PARTY if name in config.settings],
        )
        config = typed_settings(manager, config)
        try:
            manager.hook.configure(config=config, manager=manager)
        except ConfigError:
            raise
        except Exception as exc:  # one line for check-config and serve, not a traceback
            log.exception("plugin configure failed")
            raise ConfigError(
                f"{config.source}: a plugin's configure hook failed: {type(exc).__name__} "
                "(the traceback is in the log)"
            ) from None
        check_settings(manager, config.settings)
        journal = open_journal(
            config.journal,
            duplicate_window=config.duplicate_window,
            body_window=config.duplicate_body_window,
            max_body_bytes=config.max_body_bytes,
            lease=config.journal_lease,
        )
        return cls(config, manager, journal)

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        bound: BoundChannel | None,
        name: str,
        headers: dict[bytes, bytes],
    ) -> Answer:
        """Take one request for channel ``name`` (``bound`` None: no such channel) from
        method check to answer. ``headers`` are the request's, first value of each name.

        Raises:
            ClientGone: the client disconnected before its body arrived (nothing to
                answer). Every other failure is an :class:`Answer` with its ``reason``.
        """
        event: Event | None = None
        try:
            received_at = datetime.now(UTC)
            method = scope["method"]
            if method not in _METHODS:
                raise MethodNotAllowed("method not allowed: use POST (or GET)")
            if bound is None:
                raise UnknownChannel("no such channel")
            if bound.allowed is not None:
                client = scope.get("client")
                if not (client and client[0] in bound.allowed):
                    raise NotAuthenticated("client address not allowed")
            query: bytes = scope.get("query_string", b"")
            if method == "HEAD" or (
                method == "GET" and not bound.provider.has_callback_fields(query.decode("latin-1"))
            ):
                return Answer(200, b"", [], Outcome.url_check)  # Whispir wants exactly 200
            body = await read_body(receive, headers.get(b"content-length"), self.max_body)
            bound.authenticator.check(CallbackRequest(scope, body, headers))
            if bound.secret_param is not None and query:  # the key is no callback field
                query = without_key_param(query.decode("latin-1"), bound.secret_param).encode(
                    "latin-1"
                )
            coding = headers.get(b"content-encoding")
            try:
                if coding is not None:  # authenticated as sent, parsed as meant
                    body = decode_content(body, coding, self.max_body)
                    coding = None  # what is kept from here on is the decoded body
                event = _parse(bound, body, query, headers, received_at)
            except PayloadError as exc:
                await self._reject(scope, bound, query, body, coding, exc)
                raise
            if self.journal is not None:
                return await self._journaled(scope, bound, query, event)
            reply = await self.dispatcher.dispatch(event)
            if reply is None:
                return Answer(200, b"", [], Outcome.accepted, event)
            return await self._answer(bound, event, reply, Outcome.accepted)
        except ClientGone:
            raise
        except Exception as exc:
            return _failure(exc, name, event)
        except asyncio.CancelledError:
            # The server gave up on this callback (uvicorn cancels what still runs when
            # --shutdown-timeout expires, and would answer 500): answer 503 instead. With
            # a journal the event stays received, and is handled at the next start.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return _failure(ShuttingDown("shutting down; send it again"), name, event)

    async def _reject(
        self,
        scope: Scope,
        bound: BoundChannel,
        query: bytes,
        body: bytes,
        coding: bytes | None,
        error: PayloadError,
    ) -> None:
        """Keep an authenticated body that cannot be read as ``rejected`` (journal on), for
        an operator to inspect and ``receiver replay --rejected`` to recover. ``query`` is
        the query string without the key parameter."""
        if self.journal is None:
            return
        meta = _meta(scope, bound, query)
        if coding is not None:  # kept still encoded: say how, for a replay
            meta["content-encoding"] = coding.decode("latin-1")
        await self.journal.reject(bound.name, bound.provider.name, body, meta, str(error))

    async def _journaled(
        self, scope: Scope, bound: BoundChannel, query: bytes, event: Event
    ) -> Answer:
        """Store ``event`` durably, then dispatch it: a handler failure is recorded for a
        retry and answered 200 (the event is safe); a re-send is answered as its original.
        ``query`` is the query string without the key parameter."""
        journal, redelivery = self.journal, self.redelivery
        assert journal is not None and redelivery is not None
        key = bound.provider.dedupe_key(event)
        try:
            recorded = await journal.record(event, _meta(scope, bound, query), key)
        except JournalUnavailable:
            # Answered 503; whether it was stored may be unknown (a commit whose answer
            # was lost): the worker looks again once the journal answers.
            redelivery.recheck(event.id)
            raise
        if recorded.duplicate_of is not None:
            return await self._duplicate(bound, event, recorded)
        event = recorded.event
        redelivery.start()
        pending = self._pending[event.id] = _Pending()
        event_id, waiting = event.id, self._pending

        def release() -> None:  # duplicates stop waiting once the handlers are done
            pending.done.set()
            waiting.pop(event_id, None)

        late = False
        try:
            try:
                reply = await redelivery.dispatch(event, attempt=1, after=release)
            except HandlerTimeout:
                # The handlers go on; their outcome is recorded when they finish (a reply
                # then goes to send_reply). The event is safe: 200.
                late = True
                return Answer(200, b"", [], Outcome.reply_timeout, event)
            except HandlerError as exc:
                # Only the plugins that raised are retried; a reply the others gave still goes
                # out: in the answer when the provider takes it there, else to send_reply (kept
                # with the entry for a retry if that raises too).
                reply = exc.reply if isinstance(exc.reply, Reply) else None
                rendered = bound.provider.render_reply(event, reply) if reply is not None else None
                if rendered is None:
                    replied = await redelivery.partly_failed(event, exc, attempt=1)
                    return Answer(200, b"", [], Outcome.handler_error, event, replied)
                pending.reply = reply  # a re-sent callback is answered with it, as when all succeed
                await redelivery.failed(
                    event,
                    str(exc),
                    exc.plugins,
                    attempt=1,
                    failures=exc.failures,
                    reply=reply,
                    delivered=True,
                )
                return Answer(200, rendered, [_JSON_TYPE], Outcome.handler_error, event, True)
            else:
                rendered = bound.provider.render_reply(event, reply) if reply is not None else None
                if reply is None or rendered is not None:
                    await journal.complete(event.id, reply)
                    pending.reply = reply  # before done is set: a waiting duplicate answers with it
                    if rendered is None:
                        return Answer(200, b"", [], Outcome.accepted, event)
                    return Answer(200, rendered, [_JSON_TYPE], Outcome.accepted, event, True)
                try:
                    replied = await self.dispatcher.send_reply(event, reply)
                except HandlerError as exc:  # kept with the event; only its delivery is retried
                    await redelivery.undelivered(
                        event, reply, str(exc), attempt=1, failures=exc.failures
                    )
                    return Answer(200, b"", [], Outcome.handler_error, event)
                await journal.complete(event.id, reply)
                if not replied:
                    _dropped(bound, event)
                return Answer(200, b"", [], Outcome.accepted, event, replied)
            finally:
                if not late:
                    release()
        except BaseException:
            # Its outcome could not be recorded (a journal operation raised): it stays
            # received, under this live process. The worker looks at it again.
            redelivery.recheck(event.id)
            raise

    async def _answer(
        self, bound: BoundChannel, event: Event, reply: Reply | None, outcome: Outcome
    ) -> Answer:
        """200, with ``reply`` in the body when the provider takes it there, else handed to
        ``send_reply``."""
        if reply is None:
            return Answer(200, b"", [], outcome, event)
        rendered = bound.provider.render_reply(event, reply)
        if rendered is not None:
            return Answer(200, rendered, [_JSON_TYPE], outcome, event, True)
        try:
            replied = await self.dispatcher.send_reply(event, reply)
        except HandlerError:
            # The handlers ran: a 5xx would have the provider send it again and run them
            # again. Without a journal to keep the reply for a retry, it is lost (logged).
            log.error(
                "reply lost: send_reply failed, and this reply is not kept for a retry",
                channel=bound.name,
                provider=bound.provider.name,
                event_id=event.id,
            )
            if self.observer is not None:
                self.observer.reply_undelivered(bound.name)
            return Answer(200, b"", [], Outcome.handler_error, event)
        if not replied:
            _dropped(bound, event)
        return Answer(200, b"", [], outcome, event, replied)

    async def _duplicate(self, bound: BoundChannel, event: Event, recorded: Recorded) -> Answer:
        """Answer a re-sent callback as its original was answered; dispatch nothing."""
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
        elif recorded.state == "received" and event.type.is_response_type:
            # Being handled by another process sharing the journal: its reply is what
            # this re-send is answered with, once stored.
            reply = await self._reply_of(original)
        log.info("duplicate", event_id=event.id, original=original, channel=bound.name)
        marker = (DUPLICATE_HEADER, original.encode())
        if reply is None or not event.type.is_response_type:
            return Answer(200, b"", [marker], Outcome.duplicate, event)
        rendered = bound.provider.render_reply(event, reply)
        if rendered is None:
            return Answer(200, b"", [marker], Outcome.duplicate, event)
        return Answer(200, rendered, [_JSON_TYPE, marker], Outcome.duplicate, event, True)

    async def _reply_of(self, original: str) -> Reply | None:
        """Wait for another process to finish handling ``original`` (polling the journal:
        10 ms, doubling to 50 ms) and return its stored reply.

        Raises:
            HandlerTimeout: still being handled after ``reply_timeout`` (503: the provider
                may send it again; the original is stored either way).
        """
        journal = self.journal
        assert journal is not None
        delay = 0.01
        try:
            async with asyncio.timeout(self.config.reply_timeout):
                while True:
                    await asyncio.sleep(delay)
                    found = await journal.outcome(original)
                    if found is None or found[0] != "received":
                        return found[1] if found is not None else None
                    delay = min(delay * 2, 0.05)
        except TimeoutError:
            raise HandlerTimeout("the original of this duplicate is still being handled") from None


def _dropped(bound: BoundChannel, event: Event) -> None:
    log.warning(
        "reply dropped: no send_reply plugin took it",
        channel=bound.name,
        provider=bound.provider.name,
        event_id=event.id,
    )


def bind_channels(config: Config, manager: PluginManager) -> dict[str, BoundChannel]:
    """Every configured channel bound to its provider (with its options), authenticator
    and allowed networks, by name.

    Raises:
        ConfigError: a channel names an unknown provider or its options are invalid (the
            message names the channel).
    """
    providers = provider_classes(manager)
    channels: dict[str, BoundChannel] = {}
    for name, channel in config.channels.items():
        cls = providers.get(channel.provider)
        if cls is None:
            known = ", ".join(sorted(providers))
            raise ConfigError(
                f"channels.{name}.provider: unknown provider {channel.provider!r} (known: {known})"
            )
        options = cls.read_options(channel, name)
        try:
            provider = cls.from_channel(channel, options)
        except ConfigError as exc:
            raise ConfigError(f"channels.{name}: {exc}") from None
        if channel.auth == "none":
            log.warning("channel accepts callbacks without authentication", channel=name)
        header = (channel.header or cls.key_header) if channel.auth == "header" else None
        channels[name] = BoundChannel(
            name,
            channel,
            provider,
            build_authenticator(channel, name, cls, options),
            Networks(channel.allow_ips) if channel.allow_ips else None,
            channel.param.lower() if channel.auth == "query" else None,
            header.lower().encode("latin-1") if header else None,
        )
    return channels


def _parse(
    bound: BoundChannel,
    body: bytes,
    query: bytes,
    headers: dict[bytes, bytes],
    received_at: datetime,
) -> Event:
    """The request's event, by the channel's provider (``query`` without the key
    parameter: a GET callback's ``raw`` is this query)."""
    content_type = headers.get(b"content-type")
    return bound.provider.parse(
        body,
        content_type=content_type.decode("latin-1") if content_type else None,
        query=query,
        channel=bound.name,
        received_at=received_at,
    )


def _failure(exc: Exception, name: str, event: Event | None) -> Answer:
    """The answer to a failed request: the error table's status, a one-line reason."""
    status, outcome = classify(exc)
    if isinstance(exc, CallbackError | PayloadError):
        reason = str(exc)
    else:
        log.exception("unexpected error", channel=bounded(name))
        reason = "internal error"
    headers = [_JSON_TYPE, _ALLOW] if isinstance(exc, MethodNotAllowed) else [_JSON_TYPE]
    return Answer(status, _encode({"error": reason}), headers, outcome, event, False, reason)


def _meta(scope: Scope, bound: BoundChannel, query: bytes) -> dict[str, str]:
    """What the journal keeps of a request besides the body: never a credential.

    ``query`` is the query string without the key parameter (kept as ``query`` unless
    nothing else was in it); the key's header, Authorization and every header not in
    :data:`_KEPT_HEADERS` are left out.
    """
    meta = {"method": scope["method"], "path": scope["path"]}
    if query:
        meta["query"] = query.decode("latin-1")
    client = scope.get("client")
    if client:
        meta["client"] = client[0]
    for key, value in scope["headers"]:
        if key in _KEPT_HEADERS and key != bound.secret_header:
            meta[key.decode()] = value.decode("latin-1")
    return meta
