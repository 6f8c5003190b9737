"""Calling the plugins for an event: one loop, timeouts, ``@blocking``, the first reply.

pluggy has no async calling, so receiver calls the implementations pluggy lists itself,
honouring what the hookspecs declare (``firstresult`` for ``on_message``, ``on_keyword``
and ``send_reply``) and refusing what it does not support: a hook wrapper on a callback
hook is a :class:`ConfigError` (it would be silently skipped otherwise).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import anyio.to_thread
import pluggy
import structlog

from receiver.errors import ConfigError, HandlerError, HandlerTimeout
from receiver.events import Event, EventType, Reply
from receiver.plugins import PluginManager

__all__ = ["Dispatcher"]

log = structlog.get_logger()


class _Impl(NamedTuple):
    """One hook implementation, as the loop calls it."""

    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    blocking: bool
    is_async: bool
    hook: str
    answers: bool
    """Its result is the reply (a firstresult response hook: ``on_message``/``on_keyword``)."""
    simple: bool
    """A plain function of ``event`` alone: called directly, with nothing around it."""


class _Plan(NamedTuple):
    """What to call for one event type: its type hook's implementations, then on_event's."""

    impls: tuple[_Impl, ...]
    may_wait: bool
    """Whether any implementation is async or blocking (only those can be timed out)."""


class Dispatcher:
    """Calls the plugins for an event: ``on_<type>`` first, then ``on_event``.

    Implementations are called in pluggy's order (last registered first, honouring
    ``tryfirst``/``trylast``). For ``on_message`` and ``on_keyword`` the first non-None
    result is the reply, also when it comes from an ``async def`` implementation (which
    pluggy's own firstresult cannot see through).

    Args:
        manager: The app's plugin manager; the lists are read from it once and cached
            until a plugin is (un)registered.
        reply_timeout: Seconds the plugins get for a response type (Message, Keyword).
        handler_timeout: Seconds they get for any other type.

    Plain sync implementations run on the event loop with no coroutine or thread per call
    (and, when every implementation is one, no timer is set: there would be nothing to
    interrupt); ``@blocking`` ones run in a thread, async ones are awaited.
    """

    def __init__(
        self,
        manager: PluginManager,
        *,
        reply_timeout: float = 10.0,
        handler_timeout: float = 25.0,
    ) -> None:
        self.manager = manager
        self.reply_timeout = reply_timeout
        self.handler_timeout = handler_timeout
        self._generation = -1
        self._plans: dict[EventType, _Plan] = {}
        self._senders: list[_Impl] | None = None

    def _fresh(self) -> bool:
        """Whether the cached plans are current; forget them when plugins changed."""
        if self._generation == self.manager.generation:
            return True
        self._plans, self._senders = {}, None
        self._generation = self.manager.generation
        return False

    def implementations(self, hook: str, *, answers: bool = False) -> list[_Impl]:
        """The implementations of ``hook`` in call order.

        Raises:
            ConfigError: a plugin implements ``hook`` as a wrapper.
        """
        caller: pluggy.HookCaller = getattr(self.manager.hook, hook)
        impls = []
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                raise ConfigError(
                    f"plugin {impl.plugin_name}: {hook} is implemented as a wrapper, "
                    "which receiver does not call; write a plain implementation"
                )
            argnames = tuple(impl.argnames)
            is_blocking = getattr(impl.function, "__receiver_blocking__", False)
            is_async = inspect.iscoroutinefunction(impl.function)
            simple = argnames == ("event",) and not (is_blocking or is_async)
            impls.append(
                _Impl(
                    impl.plugin_name,
                    impl.function,
                    argnames,
                    is_blocking,
                    is_async,
                    hook,
                    answers,
                    simple,
                )
            )
        return impls

    def plan(self, event_type: EventType) -> _Plan:
        """The implementations to call for events of ``event_type`` (cached)."""
        if self._generation == self.manager.generation or self._fresh():
            plan = self._plans.get(event_type)
            if plan is not None:
                return plan
        impls = (
            *self.implementations("on_" + event_type.value, answers=event_type.is_response_type),
            *self.implementations("on_event"),
        )
        plan = self._plans[event_type] = _Plan(impls, any(not i.simple for i in impls))
        return plan

    def check(self) -> None:
        """Build every plan now, so that a plugin mistake is a start-up error.

        Raises:
            ConfigError: a plugin implements a callback hook as a wrapper.
        """
        for event_type in EventType:
            self.plan(event_type)
        self.implementations("send_reply")

    async def dispatch(
        self, event: Event, only: Collection[str] | None = None, *, timed: bool = False
    ) -> Reply | None:
        """Run every hook for ``event`` within its timeout; return the reply, if any.

        ``only`` limits the call to the plugins of those names (a retry calls only the
        plugins that failed). ``timed`` (internal) says the timeout is already running.

        Raises:
            HandlerError: an implementation raised (logged with its traceback); the
                others still ran.
            HandlerTimeout: async or ``@blocking`` implementations took longer than the
                event type's timeout.
        """
        plan = self.plan(event.type)
        if plan.may_wait and not timed:
            timeout = self.reply_timeout if event.type.is_response_type else self.handler_timeout
            try:
                async with asyncio.timeout(timeout):
                    return await self.dispatch(event, only, timed=True)
            except TimeoutError:
                raise HandlerTimeout(f"handlers took longer than {timeout:g} s") from None
        # The one loop (no timer when every implementation is a plain function: there
        # would be nothing it could interrupt).
        reply: Reply | None = None
        failed: list[str] | None = None
        for impl in plan.impls:
            if impl.answers and reply is not None:
                continue  # firstresult: the rest of the type hook is not called
            if only is not None and impl.plugin not in only:
                continue
            try:
                if impl.simple:
                    result = impl.function(event)
                    if (
                        result is not None
                        and type(result) is not str
                        and inspect.isawaitable(result)
                    ):
                        result = await result
                else:
                    result = await _call(impl, event)
            except Exception:
                log.exception(
                    "handler failed", hook=impl.hook, plugin=impl.plugin, event_id=event.id
                )
                failed = [*(failed or ()), impl.plugin]
                continue
            if impl.answers and result is not None:
                reply = _as_reply(result, impl)
        if failed:
            raise HandlerError(
                f"{len(failed)} handler(s) failed; see the log for event {event.id}", failed
            )
        return reply

    async def send_reply(self, event: Event, reply: Reply) -> bool:
        """Hand ``reply`` to the ``send_reply`` hook; False when no plugin took it.

        Raises:
            HandlerError: a ``send_reply`` implementation raised.
        """
        if not self._fresh() or self._senders is None:
            self._senders = self.implementations("send_reply")
        for impl in self._senders:
            try:
                taken = await _call(impl, event, reply)
            except Exception:
                log.exception(
                    "handler failed", hook="send_reply", plugin=impl.plugin, event_id=event.id
                )
                raise HandlerError(f"send_reply failed; see the log for event {event.id}") from None
            if taken is not None:
                return True
        return False


async def _call(impl: _Impl, event: Event, reply: Reply | None = None) -> Any:
    """Call ``impl`` with the arguments it names: in a thread when ``@blocking``."""
    given = {"event": event, "reply": reply}
    args = [given[name] for name in impl.argnames]
    if impl.blocking:
        return await anyio.to_thread.run_sync(
            functools.partial(impl.function, *args), abandon_on_cancel=True
        )
    result = impl.function(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _as_reply(result: object, impl: _Impl) -> Reply | None:
    if isinstance(result, Reply):
        return result
    if isinstance(result, str):
        return Reply(text=result)
    log.error(
        "reply of the wrong type ignored",
        plugin=impl.plugin,
        got=type(result).__name__,
        expected="Reply | str | None",
    )
    return None
