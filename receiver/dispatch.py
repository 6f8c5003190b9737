"""Calling the plugins for an event: one loop, timeouts, ``@blocking``, the first reply.

Timeouts: a handler's clock stops while a ``@blocking`` implementation waits for a free
thread (``blocking_threads`` of them), and restarts when its thread starts.
:meth:`Dispatcher.dispatch` interrupts the handlers when the time is up (without a
journal: 503); :meth:`Dispatcher.start` does not: the caller stops waiting, and the
handlers go on in their task to finish and have their outcome recorded (with a journal).

pluggy has no async calling, so receiver calls the implementations pluggy lists itself,
honouring what the hookspecs declare (``firstresult`` for ``on_message``, ``on_keyword``
and ``send_reply``) and refusing what it does not support: a hook wrapper on a callback
hook is a :class:`ConfigError` (it would be silently skipped otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any, NamedTuple, Protocol

import anyio
import anyio.to_thread
import msgspec
import pluggy

from receiver.errors import ConfigError, Failure, HandlerError, HandlerTimeout
from receiver.events import Event, EventType, Reply
from receiver.logs import encodable, get_logger
from receiver.plugins import PluginManager

__all__ = ["Dispatcher", "Running"]

log = get_logger(__name__)


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
        blocking_threads: Most ``@blocking`` implementations running at once (threads);
            time spent waiting for one does not count towards the timeouts.

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
        blocking_threads: int = 40,
    ) -> None:
        self.manager = manager
        self.reply_timeout = reply_timeout
        self.handler_timeout = handler_timeout
        self.blocking_threads = blocking_threads
        self._limiters: dict[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = {}
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

    def implementations(self, hook: str) -> list[_Impl]:
        """The implementations of ``hook`` in call order; each ``answers`` as the hook's
        spec declares (``firstresult``: its first non-None result is the reply).

        Raises:
            ConfigError: a plugin implements ``hook`` as a wrapper.
        """
        caller: pluggy.HookCaller = getattr(self.manager.hook, hook)
        answers = bool(caller.spec is not None and caller.spec.opts.get("firstresult"))
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
            *self.implementations("on_" + event_type.value),
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

    def missing(self, plugins: Collection[str] | None, reply_pending: bool) -> list[str]:
        """What a retry of an entry needs and is not loaded: those of ``plugins`` (the ones
        that failed) not registered, and ``send_reply`` when a reply is to be delivered
        and no plugin implements it. Retrying without them would mark the entry done with
        its failed work never redone."""
        loaded = {name for name, plugin in self.manager.list_name_plugin() if plugin is not None}
        missing = sorted(set(plugins or ()) - loaded)
        if reply_pending and not self.implementations("send_reply"):
            missing.append("send_reply (no plugin implements it)")
        return missing

    def timeout(self, event: Event) -> float:
        """Seconds the handlers of ``event`` get."""
        return self.reply_timeout if event.type.is_response_type else self.handler_timeout

    def limiter(self) -> anyio.CapacityLimiter:
        """The ``@blocking`` threads of the running event loop (``blocking_threads``)."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            for old in [old for old in self._limiters if old.is_closed()]:
                del self._limiters[old]
            limiter = self._limiters[loop] = anyio.CapacityLimiter(self.blocking_threads)
        return limiter

    async def dispatch(self, event: Event, only: Collection[str] | None = None) -> Reply | None:
        """Run every hook for ``event`` within its timeout; return the reply, if any.

        ``only`` limits the call to the plugins of those names (a retry calls only the
        plugins that failed). When the time is up the handlers are interrupted (a
        ``@blocking`` one cannot be: its thread runs on, unobserved); :meth:`start` lets
        them finish instead.

        Raises:
            HandlerError: an implementation raised (logged with its traceback); the
                others still ran.
            HandlerTimeout: async or ``@blocking`` implementations took longer than the
                event type's timeout (not counting waits for a thread).
        """
        plan = self.plan(event.type)
        if not plan.may_wait:
            # No timer when every implementation is a plain function: there would be
            # nothing it could interrupt.
            return await self._run(plan, event, only, None)
        timeout = self.timeout(event)
        try:
            async with asyncio.timeout(timeout) as timer:
                return await self._run(plan, event, only, _Timer(timer))
        except TimeoutError:
            raise HandlerTimeout(f"handlers took longer than {timeout:g} s") from None

    def start(self, event: Event, only: Collection[str] | None = None) -> Running:
        """Run every hook for ``event`` in a task of its own, which no timeout interrupts:
        :meth:`Running.wait` waits for it, up to the timeout."""
        return Running(self, event, only)

    async def _run(
        self, plan: _Plan, event: Event, only: Collection[str] | None, clock: _Clock | None
    ) -> Reply | None:
        """The one loop (``clock``: the timeout, stopped while waiting for a thread)."""
        reply: Reply | None = None
        failed: list[str] | None = None
        failures: list[Failure] | None = None
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
                    result = await self._call(impl, event, None, clock)
                if impl.answers and result is not None:
                    reply = _as_reply(result, impl)
            except Exception as exc:
                log.exception(
                    "handler failed", hook=impl.hook, plugin=impl.plugin, event_id=event.id
                )
                failed = [*(failed or ()), impl.plugin]
                failures = [*(failures or ()), Failure.of(exc, plugin=impl.plugin, hook=impl.hook)]
        if failed:
            raise HandlerError(
                f"{len(failed)} handler(s) failed; see the log for event {event.id}",
                failed,
                reply,
                failures,
            )
        return reply

    async def send_reply(self, event: Event, reply: Reply) -> bool:
        """Hand ``reply`` to the ``send_reply`` hook; False when no plugin took it.

        Each implementation gets ``reply_timeout`` seconds (not counting a wait for a
        thread); past it the delivery has failed (a ``@blocking`` one runs on in its
        thread, unobserved), as when it raises.

        Raises:
            HandlerError: a ``send_reply`` implementation raised or took too long.
        """
        if not self._fresh() or self._senders is None:
            self._senders = self.implementations("send_reply")
        for impl in self._senders:
            timer: asyncio.Timeout | None = None
            try:
                async with asyncio.timeout(self.reply_timeout) as timer:
                    taken = await self._call(impl, event, reply, _Timer(timer))
            except Exception as raised:
                error: BaseException = raised
                if timer is not None and timer.expired():
                    # A @blocking one runs on in its thread: it may still deliver, so an
                    # implementation must be safe to call again for the same reply.
                    error = TimeoutError(f"send_reply took longer than {self.reply_timeout:g} s")
                    log.error(
                        "handler timed out",
                        hook="send_reply",
                        plugin=impl.plugin,
                        event_id=event.id,
                        timeout=self.reply_timeout,
                    )
                else:
                    log.exception(
                        "handler failed", hook="send_reply", plugin=impl.plugin, event_id=event.id
                    )
                raise HandlerError(
                    f"send_reply failed; see the log for event {event.id}",
                    failures=[Failure.of(error, plugin=impl.plugin, hook="send_reply")],
                ) from None
            if taken is not None:
                return True
        return False

    async def _call(
        self, impl: _Impl, event: Event, reply: Reply | None = None, clock: _Clock | None = None
    ) -> Any:
        """Call ``impl`` with the arguments it names: in a thread when ``@blocking`` (the
        ``clock`` stopped until the thread starts)."""
        given = {"event": event, "reply": reply}
        args = [given[name] for name in impl.argnames]
        if impl.blocking:
            function: Callable[[], Any] = functools.partial(impl.function, *args)
            if clock is not None:
                clock.pause()
                loop = asyncio.get_running_loop()
                resume = clock.resume

                def started() -> Any:
                    with contextlib.suppress(RuntimeError):  # the loop is closing
                        loop.call_soon_threadsafe(resume)
                    return impl.function(*args)

                function = started
            return await anyio.to_thread.run_sync(
                function, abandon_on_cancel=True, limiter=self.limiter()
            )
        result = impl.function(*args)
        if inspect.isawaitable(result):
            result = await result
        return result


class _Clock(Protocol):
    """A timeout that can stop while a ``@blocking`` handler waits for a thread."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class _Timer:
    """An ``asyncio.timeout`` as a :class:`_Clock`."""

    __slots__ = ("_left", "_timer")

    def __init__(self, timer: asyncio.Timeout) -> None:
        self._timer = timer
        self._left: float | None = None

    def pause(self) -> None:
        when = self._timer.when()
        if when is None or self._timer.expired():
            return
        self._left = when - asyncio.get_running_loop().time()
        self._timer.reschedule(None)

    def resume(self) -> None:
        left, self._left = self._left, None
        if left is not None:
            with contextlib.suppress(RuntimeError):  # the timeout is over already
                self._timer.reschedule(asyncio.get_running_loop().time() + left)


class Running:
    """Handlers dispatched by :meth:`Dispatcher.start`: their :attr:`task`, which no
    timeout interrupts, and a clock of their timeout (stopped while a ``@blocking``
    handler waits for a thread)."""

    __slots__ = ("_handle", "_left", "_loop", "_waiter", "task", "timeout")

    def __init__(self, dispatcher: Dispatcher, event: Event, only: Collection[str] | None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.timeout = dispatcher.timeout(event)
        self._left: float | None = self.timeout
        self._handle: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] = loop.create_future()
        self.resume()
        plan = dispatcher.plan(event.type)
        self.task: asyncio.Task[Reply | None] = loop.create_task(
            dispatcher._run(plan, event, only, self)
        )
        self.task.add_done_callback(self._wake)

    def _wake(self, _: object = None) -> None:
        if not self._waiter.done():
            self._waiter.set_result(None)

    def pause(self) -> None:
        handle = self._handle
        if handle is not None:
            self._left = handle.when() - self._loop.time()
            handle.cancel()
            self._handle = None

    def resume(self) -> None:
        left, self._left = self._left, None
        if left is not None and not self._waiter.done():
            self._handle = self._loop.call_at(self._loop.time() + left, self._wake)

    async def wait(self) -> Reply | None:
        """The reply, once the handlers finished within the timeout (cancelling the
        caller leaves the task running).

        Raises:
            HandlerError: an implementation raised.
            HandlerTimeout: the time is up; the handlers go on in :attr:`task`.
        """
        task = self.task
        if not task.done():
            await self._waiter
            if not task.done():
                raise HandlerTimeout(f"handlers took longer than {self.timeout:g} s")
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        return task.result()


_encode_reply = msgspec.msgpack.Encoder().encode
_decode_reply = msgspec.msgpack.Decoder(Reply).decode


def _as_reply(result: object, impl: _Impl) -> Reply | None:
    """A handler's result as the :class:`Reply` that is sent and journaled: checked
    against the Reply's types, its text made encodable (:func:`~receiver.logs.encodable`);
    None, logged, for a result of another type.

    Raises:
        TypeError: a Reply that cannot be sent (a field of the wrong type, a value with no
            JSON form): the handler failed, as if it had raised.
    """
    if isinstance(result, str):
        return Reply(text=encodable(str(result)))
    if isinstance(result, Reply):
        try:
            try:
                return _decode_reply(_encode_reply(result))
            except UnicodeEncodeError:
                return msgspec.convert(encodable(msgspec.to_builtins(result)), Reply)
        except (TypeError, ValueError, msgspec.MsgspecError) as exc:
            # msgspec's messages name the field and the types, never the value.
            raise TypeError(f"the reply cannot be sent: {exc}") from None
    log.error(
        "reply of the wrong type ignored",
        plugin=impl.plugin,
        got=type(result).__name__,
        expected="Reply | str | None",
    )
    return None
