"""Plugin managers, one per app: loading plugins, naming them, and the providers they bring.

Calling the plugins for an event is :mod:`receiver.dispatch`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import msgspec
import pluggy

from receiver import builtin, contrib, hookspecs
from receiver.config import Config, convert, expand_declared, replace_config
from receiver.errors import ConfigError
from receiver.logs import get_logger
from receiver.providers.base import Provider

__all__ = [
    "PluginManager",
    "blocking",
    "describe",
    "known_channels",
    "make_plugin_manager",
    "provider_classes",
    "typed_settings",
]

log = get_logger(__name__)

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
        self.origins: dict[str, str] = {}
        """Plugin name -> where it came from (``receiver plugins`` prints it)."""

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
    autoload: bool = True,
    disabled: Iterable[str] = (),
    first_party: Iterable[str] = (),
) -> PluginManager:
    """A new manager with receiver's hookspecs, the built-in providers and the plugins.

    Plugins are registered in this order: a new instance of each first-party plugin
    named in ``first_party`` (:data:`receiver.contrib.FIRST_PARTY`; an app turns one on
    with its ``[settings.<name>]`` table); ``plugins`` (objects or modules); installed
    packages' entry points in the group ``receiver`` (unless
    ``RECEIVER_DISABLE_PLUGIN_AUTOLOAD=1``); the dotted ``modules`` (``pkg.module``, or
    ``pkg.module:Class`` named by its ``name`` attribute); each ``*.py`` file
    in ``plugins_dir``, by name. ``autoload`` False skips the entry points for this
    manager alone; a plugin whose name is in ``disabled`` is not registered, wherever it
    comes from (pytest's ``-p no:name``). A plugin given as a class (an entry point
    ``pkg.module:Class`` too) is instantiated, without arguments, for each manager: each
    app then has its own state. pluggy calls the plugins registered last
    first: a reply from your own ``on_message`` wins over a first-party one.

    Raises:
        ConfigError: a plugin failed to load (its name and the error are in the message).
    """
    manager = PluginManager()
    manager.add_hookspecs(hookspecs)
    blocked = set(disabled)
    for name in blocked:
        manager.set_blocked(name)  # pluggy then refuses (skips) a plugin of that name
    manager.register(builtin, name="receiver.builtin")
    for name in first_party:
        _register(manager, contrib.make(name), name, "receiver (first-party)")
    for plugin in plugins:
        if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
            _register(manager, plugin[1], plugin[0], "argument")  # a (name, plugin) pair
        else:
            _register(manager, plugin, stable_name(plugin), "argument")
    if autoload and os.environ.get(DISABLE_AUTOLOAD, "") not in ("1", "true", "yes"):
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in blocked:
                continue  # not even imported
            plugin = _load(f"entry point {entry_point.name!r}", entry_point.load)
            dist = entry_point.dist
            origin = f"entry point of {dist.name} {dist.version}" if dist else "entry point"
            _register(manager, plugin, entry_point.name, origin)  # passed too: skipped
    for dotted in modules:  # "pkg.module", or "pkg.module:Class" (an object in it)
        module_name, _, attribute = dotted.partition(":")
        plugin = _load(f"plugin {dotted!r}", importlib.import_module, module_name)
        name = dotted
        if attribute:
            plugin = _load(f"plugin {dotted!r}", getattr, plugin, attribute)
            own = getattr(plugin, "name", None)
            name = own if isinstance(own, str) and own else dotted
        _register(manager, plugin, name, "plugins (module)")
    if plugins_dir is not None:
        folder = Path(plugins_dir)
        if not folder.is_dir():
            raise ConfigError(f"plugins_dir: {folder} is not a folder")
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                module = _load(f"plugin {str(path)!r}", _import_file, path)
                _register(manager, module, path.stem, f"plugins_dir ({path})")
    check_hooks(manager)
    return manager


def check_hooks(manager: pluggy.PluginManager) -> None:
    """Refuse an implementation of a hook receiver does not have (``def on_mesage``
    would load and never be called), as pytest does with ``check_pending``; an
    ``optionalhook=True`` implementation is let through.

    Raises:
        ConfigError: naming the plugin, the hook and the closest known hook.
    """
    known = sorted(
        name
        for name, caller in vars(manager.hook).items()
        if isinstance(caller, pluggy.HookCaller) and caller.spec is not None
    )
    for name, caller in vars(manager.hook).items():
        if not isinstance(caller, pluggy.HookCaller) or caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"plugin {impl.plugin_name}: {name!r} is not a receiver hook{hint} "
                "(receiver plugins lists the hooks; optionalhook=True allows it)"
            )


def check_settings(manager: pluggy.PluginManager, settings: dict[str, Any]) -> list[str]:
    """The ``[settings.<name>]`` tables that name no loaded plugin (a typo, or a plugin
    not installed here), each as ``settings.<name>``; logged as a warning, one line each.
    A table matches a plugin by its whole name or its last dotted part."""
    names: set[str] = set()
    for name, plugin in manager.list_name_plugin():
        if plugin is None:  # blocked (disabled_plugins)
            continue
        names.add(name)
        names.add(name.rpartition(".")[2])
    unknown = [f"settings.{table}" for table in settings if table not in names]
    candidates = sorted(names | set(contrib.FIRST_PARTY))  # a first-party table misspelt
    for table in unknown:
        close = difflib.get_close_matches(table.partition(".")[2], candidates, n=1)
        log.warning(
            "settings table for no loaded plugin: it is ignored",
            table=table,
            closest_plugin=close[0] if close else None,
        )
    return unknown


def typed_settings(manager: pluggy.PluginManager, config: Config) -> Config:
    """``config`` with each plugin's settings table converted to the plugin's
    ``Settings`` type, when it declares one (a ``msgspec.Struct``, as a class or module
    attribute), its :data:`~receiver.config.Secret` fields expanded first. The table of
    a plugin is ``[settings.<name>]``, or ``[settings.<last dotted part of name>]``.

    Raises:
        ConfigError: ``"<source>: settings.<table>.<path>: <reason>"``: a value of the
            wrong type, an unknown key (if the struct forbids them), a secret whose
            variable is not set.
    """
    settings = dict(config.settings)
    for name, plugin in manager.list_name_plugin():
        kind = getattr(plugin, "Settings", None)
        if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
            continue
        table = name if name in settings else name.rpartition(".")[2]
        value = settings.get(table)
        if value is None or isinstance(value, kind):
            continue
        where = f"settings.{table}"
        unset: list[str] | None = [] if config.secrets_optional else None
        value = expand_declared(value, kind, config.source, where, unset)
        if unset:
            log.warning(
                "plugin secrets not set here: fine for reading the journal, serve needs them",
                source=config.source,
                keys=unset,
            )
        try:
            settings[table] = convert(value, kind, where)
        except ConfigError as exc:
            raise ConfigError(f"{config.source}: {exc}") from None
    return replace_config(config, settings=settings)


def known_channels(config: Config, names: list[str] | None, where: str) -> frozenset[str] | None:
    """``names`` (a plugin's ``channels`` setting) as a set, None for all.

    Raises:
        ConfigError: a name that is no ``[channels.<name>]`` of ``config`` (a typo would
            leave the plugin silently idle), naming ``where`` and the channels there are.
    """
    if names is None:
        return None
    unknown = [name for name in names if name not in config.channels]
    if unknown:
        raise ConfigError(
            f"{where}: no channel named {', '.join(map(repr, unknown))} "
            f"(channels: {', '.join(sorted(config.channels)) or 'none'})"
        )
    return frozenset(names)


def stable_name(plugin: object) -> str:
    """The name of a plugin given as an object: its ``name`` attribute when that is a
    string, else its module's name (a module) or its class's qualified name, with the
    module (``myapp.hooks.CrmSync``). The same in every process, unlike pluggy's default
    (``id(plugin)``): retries after a restart find the plugin that failed by it. Two
    plugins under one name are a :class:`ConfigError` (give instances their own names)."""
    name = getattr(plugin, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def _load(what: str, loader: Callable[..., Any], *args: Any) -> Any:
    try:
        return loader(*args)
    except Exception as exc:
        raise ConfigError(f"{what} failed to load: {type(exc).__name__}: {exc}") from exc


def _register(manager: PluginManager, plugin: object, name: str | None, origin: str) -> None:
    if isinstance(plugin, type):  # a class: this app gets its own instance
        if any(type(registered) is plugin for registered in manager.get_plugins()):
            return  # e.g. passed to create_app and also installed (an entry point)
        plugin = _load(f"plugin {name!r}", plugin)
    if manager.is_registered(plugin):  # e.g. passed to create_app and also installed
        return
    if name is not None and manager.is_blocked(name):
        log.info("plugin disabled", plugin=name)
        return
    if name is not None and manager.has_plugin(name):
        # Two plugins under one name: a retry looks the failed one up by it, so it must
        # name one plugin only (two instances of a class, or an object named like an
        # installed plugin or a file in plugins_dir).
        raise ConfigError(
            f"two plugins are named {name!r}: give each its own name (a name attribute, "
            "or pass ('name', plugin) pairs)"
        )
    try:
        registered = manager.register(plugin, name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise ConfigError(f"plugin {name or plugin!r} cannot be registered: {exc}") from exc
    if registered is not None:
        manager.origins[registered] = origin
        if isinstance(plugin, ModuleType) and hasattr(plugin, "configure"):
            _warn_if_shared(manager, plugin, registered)


_MODULE_MANAGERS: weakref.WeakKeyDictionary[ModuleType, weakref.WeakSet[PluginManager]] = (
    weakref.WeakKeyDictionary()
)


def _warn_if_shared(manager: PluginManager, module: ModuleType, name: str) -> None:
    """A module is one object per process: a module plugin that keeps settings from its
    ``configure`` in module globals, loaded by two live apps, answers both with the
    settings of the one built last. Warn then (a class plugin gets an instance per app;
    a ``plugins_dir`` file is imported afresh per app, so it never shares)."""
    managers = _MODULE_MANAGERS.setdefault(module, weakref.WeakSet())
    if any(other is not manager for other in managers):
        log.warning(
            "module plugin shared by two apps in this process: module-level state (its "
            "settings) is shared too; write it as a class (an instance per app)",
            plugin=name,
            module=module.__name__,
        )
    managers.add(manager)


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


def describe(manager: pluggy.PluginManager) -> list[tuple[str, list[str], str]]:
    """Every registered plugin's name, the hooks it implements and where it came from
    (``argument``, ``entry point of DIST VERSION``, ``plugins (module)``,
    ``plugins_dir (PATH)``; receiver's own: ``receiver``), for ``receiver plugins``."""
    origins: dict[str, str] = getattr(manager, "origins", {})
    rows = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None:  # blocked (disabled_plugins)
            continue
        hooks = sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])
        rows.append((name, hooks, origins.get(name, "receiver")))
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
