"""An example plugin file: answer the people on a VIP list by name.

``examples/receiver.toml`` loads it through ``plugins_dir = "plugins"``; its settings
are the ``[settings.vip]`` table (the file's stem is the plugin's name)::

    [settings.vip]
    numbers = { "447700900123" = "Ada" }
    greeting = "Hello {name}, someone will call you back today."

A file in ``plugins_dir`` is imported afresh for every app, so its module globals belong
to one app. A plugin shipped as a package is better written as a class (one instance per
app): see README's "Writing a plugin".
"""

from __future__ import annotations

import msgspec

from receiver import Config, ConfigError, Event, Reply, get_logger, hookimpl

log = get_logger(__name__)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[settings.vip]``: checked by receiver (wrong types and unknown keys are errors
    naming the key, e.g. ``receiver.toml: settings.vip.numbers: Expected `object`...``).

    Attributes:
        numbers: The person's number (as the provider sends it, without ``+``) -> name.
        greeting: The reply; ``{name}`` is replaced by the person's name.
    """

    numbers: dict[str, str]
    greeting: str = "Hello {name}, someone will call you back today."


_settings: Settings | None = None


@hookimpl
def configure(config: Config) -> None:
    """Keep this app's settings (None without a table: the plugin then does nothing)."""
    global _settings
    _settings = config.settings.get("vip")
    if _settings is not None and "{name}" not in _settings.greeting:
        raise ConfigError(f"{config.source}: settings.vip.greeting: must contain {{name}}")


@hookimpl
def on_message(event: Event) -> Reply | None:
    """Greet a VIP by name; anyone else is left to the other plugins (None)."""
    if _settings is None or not event.source:
        return None
    name = _settings.numbers.get(event.source.removeprefix("+"))
    if name is None:
        return None
    log.info("vip reply", plugin="vip", event_id=event.id)
    return Reply(text=_settings.greeting.format(name=name))
