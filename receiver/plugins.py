"""Plugin managers (one per app) and the dispatcher that calls plugins for each event."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, TypeVar

import anyio.to_thread
import pluggy
import structlog

from receiver import builtin, hookspecs
from receiver.errors import ConfigError, HandlerError
from receiver.events import Event, EventType, Reply
from receiver.providers.base import Provider

__all__ = ["Dispatcher", "PluginManager", "blocking", "make_plugin_manager"]

log = structlog.get_logger()

_F = TypeVar("_F", bound=Callable[..., Any])


def blocking(function: _F) -> _F:
    """Mark a plain (sync) hook implementation as blocking: it then runs in a thread.

    Unmarked sync implementations run on the event loop, which costs nothing but stalls
    every other request while they run: mark anything that does I/O or takes long::

        @receiver.hookimpl
        @receiver.blocking
        def on_message(event): ...
    """
    function.__receiver_blocking__ = True  # type: ignore[attr-defined]
    return function


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting registrations so the dispatcher knows when to re-read."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.generation = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        self.generation += 1
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        removed = super().unregister(plugin, name)
        self.generation += 1
        return removed


ENTRY_POINT_GROUP = "receiver"
DISABLE_AUTOLOAD = "RECEIVER_DISABLE_PLUGIN_AUTOLOAD"


def make_plugin_manager(
    plugins: Iterable[object] = (),
    *,
    modules: Iterable[str] = (),
    plugins_dir: str | os.PathLike[str] | None = None,
) -> PluginManager:
    """A new manager with receiver's hookspecs, the built-in providers and the plugins.

    Plugins are registered in this order: ``plugins`` (objects or modules); installed
    packages' entry points in the group ``receiver`` (unless
    ``RECEIVER_DISABLE_PLUGIN_AUTOLOAD=1``); the dotted ``modules``; each ``*.py`` file
    in ``plugins_dir``, by name.

    Raises:
        ConfigError: a plugin failed to load (its name and the error are in the message).
    """
    manager = PluginManager()
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name="receiver.builtin")
    for plugin in plugins:
        _register(manager, plugin, None)
    if os.environ.get(DISABLE_AUTOLOAD, "") not in ("1", "true", "yes"):
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if manager.get_plugin(entry_point.name) is None:
                plugin = _load(f"entry point {entry_point.name!r}", entry_point.load)
                _register(manager, plugin, entry_point.name)
    for dotted in modules:
        _register(manager, _load(f"plugin {dotted!r}", importlib.import_module, dotted), dotted)
    if plugins_dir is not None:
        folder = Path(plugins_dir)
        if not folder.is_dir():
            raise ConfigError(f"plugins_dir: {folder} is not a folder")
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                _register(manager, _load(f"plugin {str(path)!r}", _import_file, path), path.stem)
    return manager


def _load(what: str, loader: Callable[..., Any], *args: Any) -> Any:
    try:
        return loader(*args)
    except Exception as exc:
        raise ConfigError(f"{what} failed to load: {type(exc).__name__}: {exc}") from exc


def _register(manager: PluginManager, plugin: object, name: str | None) -> None:
    if manager.is_registered(plugin):  # e.g. passed to create_app and also installed
        return
    try:
        manager.register(plugin, name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"plugin {name or plugin!r} cannot be registered: {exc}") from exc


def _import_file(path: Path) -> ModuleType:
    """Import one plugin file as module ``receiver_plugins.<stem>`` (fresh each time)."""
    name = f"receiver_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def describe(manager: pluggy.PluginManager) -> list[tuple[str, list[str]]]:
    """Every registered plugin's name and the hooks it implements (``receiver plugins``)."""
    rows = []
    for name, plugin in manager.list_name_plugin():
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        rows.append((name, hooks))
    return rows


def provider_classes(manager: pluggy.PluginManager) -> dict[str, type[Provider]]:
    """Every provider registered through ``register_providers``, by name."""
    found: dict[str, type[Provider]] = {}
    for batch in manager.hook.register_providers():
        for cls in batch:
            if cls.name in found and found[cls.name] is not cls:
                raise ConfigError(f"two providers are named {cls.name!r}")
            found[cls.name] = cls
    return found


class _Impl(NamedTuple):
    plugin: str
    function: Callable[..., Any]
    argnames: tuple[str, ...]
    blocking: bool
    is_async: bool


class _Plan(NamedTuple):
    """What to call for one event type: its type hook's implementations, then on_event's."""

    type_hook: str
    type_impls: list[_Impl]
    event_impls: list[_Impl]
    may_wait: bool
    """Whether any implementation is async or blocking (only those can be timed out)."""
    respond: bool
    """Whether the type hook may answer with a reply (Message, Keyword)."""
    inline: tuple[Callable[[Event], Any], ...] | None
    """When every implementation is a plain function taking only ``event``: the functions
    of the type hook, then of on_event, to call in a row (the fast path)."""


class Dispatcher:
    """Calls the plugins for an event: ``on_<type>`` first, then ``on_event``.

    Implementations are called in pluggy's order (last registered first, honouring
    ``tryfirst``/``trylast``). For ``on_message`` and ``on_keyword`` the first non-None
    result is the reply, also when it comes from an ``async def`` implementation (which
    pluggy's own firstresult cannot see through). Wrappers are not called.

    The lists are read from pluggy once and cached until a plugin is (un)registered.
    Plain sync implementations are called directly, with no coroutine or thread per call.
    """

    def __init__(self, manager: PluginManager) -> None:
        self.manager = manager
        self._generation = -1
        self._table: dict[str, list[_Impl]] = {}
        self._plans: dict[EventType, _Plan] = {}

    def _fresh(self) -> None:
        if self._generation != self.manager.generation:
            self._table = {}
            self._plans = {}
            self._generation = self.manager.generation

    def implementations(self, hook: str) -> list[_Impl]:
        """The implementations of ``hook`` in call order (cached until plugins change)."""
        self._fresh()
        impls = self._table.get(hook)
        if impls is None:
            caller: pluggy.HookCaller = getattr(self.manager.hook, hook)
            impls = self._table[hook] = [
                _Impl(
                    impl.plugin_name,
                    impl.function,
                    tuple(impl.argnames),
                    getattr(impl.function, "__receiver_blocking__", False),
                    inspect.iscoroutinefunction(impl.function),
                )
                for impl in reversed(caller.get_hookimpls())
                if not (impl.hookwrapper or impl.wrapper)
            ]
        return impls

    def plan(self, event_type: EventType) -> _Plan:
        """The implementations to call for events of ``event_type``."""
        if self._generation == self.manager.generation:
            plan = self._plans.get(event_type)
            if plan is not None:
                return plan
        self._fresh()
        hook = "on_" + event_type.value
        type_impls = self.implementations(hook)
        event_impls = self.implementations("on_event")
        every = (*type_impls, *event_impls)
        may_wait = any(i.blocking or i.is_async for i in every)
        simple = not may_wait and all(i.argnames == ("event",) for i in every)
        plan = self._plans[event_type] = _Plan(
            hook,
            type_impls,
            event_impls,
            may_wait,
            event_type.is_response_type,
            tuple(i.function for i in every) if simple else None,
        )
        return plan

    async def dispatch(self, event: Event, only: Collection[str] | None = None) -> Reply | None:
        """Run every hook for ``event``; return the reply, if a response hook gave one.

        ``only`` limits the call to the plugins of those names (a retry calls only the
        plugins that failed).

        Raises:
            HandlerError: an implementation raised (logged with its traceback); the
                others still ran.
        """
        plan = self.plan(event.type)
        if plan.inline is None or only is not None:
            return await self._dispatch_each(plan, event, only)
        # The fast path: plain functions of ``event``, called in a row.
        answering = len(plan.type_impls) if plan.respond else 0
        reply: Reply | None = None
        failed: list[str] | None = None
        for position, function in enumerate(plan.inline):
            if reply is not None and position < answering:
                continue  # firstresult: the rest of the type hook is not called
            try:
                result = function(event)
                if result is not None and type(result) is not str and inspect.isawaitable(result):
                    result = await result
            except Exception:
                impl = (plan.type_impls + plan.event_impls)[position]
                hook = plan.type_hook if position < len(plan.type_impls) else "on_event"
                log.exception("handler failed", hook=hook, plugin=impl.plugin, event_id=event.id)
                failed = [*(failed or ()), impl.plugin]
                continue
            if result is not None and position < answering:
                reply = _as_reply(result, plan.type_impls[position])
        if failed:
            raise HandlerError(
                f"{len(failed)} handler(s) failed; see the log for event {event.id}", failed
            )
        return reply

    async def _dispatch_each(
        self, plan: _Plan, event: Event, only: Collection[str] | None
    ) -> Reply | None:
        failed: list[str] = []
        reply: Reply | None = None
        respond = plan.respond
        for hook, impls in ((plan.type_hook, plan.type_impls), ("on_event", plan.event_impls)):
            for impl in impls:
                if only is not None and impl.plugin not in only:
                    continue
                try:
                    if impl.blocking or impl.is_async:
                        result = await _call(impl, event)
                    else:
                        result = _call_sync(impl, event)
                        if inspect.isawaitable(result):
                            result = await result
                except Exception:
                    log.exception(
                        "handler failed", hook=hook, plugin=impl.plugin, event_id=event.id
                    )
                    failed.append(impl.plugin)
                    continue
                if respond and result is not None and impls is plan.type_impls:
                    reply = _as_reply(result, impl)
                    if reply is not None:
                        break  # firstresult: the rest of the type hook is not called
        if failed:
            raise HandlerError(
                f"{len(failed)} handler(s) failed; see the log for event {event.id}", failed
            )
        return reply

    async def send_reply(self, event: Event, reply: Reply) -> bool:
        """Hand ``reply`` to the ``send_reply`` hook; False when no plugin took it."""
        for impl in self.implementations("send_reply"):
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


def _arguments(impl: _Impl, event: Event, reply: Reply | None) -> list[Any]:
    if impl.argnames == ("event",):
        return [event]
    given = {"event": event, "reply": reply}
    return [given[name] for name in impl.argnames]


def _call_sync(impl: _Impl, event: Event, reply: Reply | None = None) -> Any:
    return impl.function(*_arguments(impl, event, reply))


async def _call(impl: _Impl, event: Event, reply: Reply | None = None) -> Any:
    args = _arguments(impl, event, reply)
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
