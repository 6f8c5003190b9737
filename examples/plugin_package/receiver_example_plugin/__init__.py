"""An example receiver plugin, installed as a package with a ``receiver`` entry point.

It records the numbers that texted STOP and answers the ``JOIN`` keyword. Its settings,
all optional, are a ``[settings.stop_and_keyword]`` table (the entry point's name)::

    [settings.stop_and_keyword]
    join_reply = "Welcome! Reply STOP to opt out."
"""

from __future__ import annotations

import structlog

from receiver import Config, ConfigError, Event, Reply, hookimpl

log = structlog.get_logger()

NAME = "stop_and_keyword"
DEFAULT_JOIN_REPLY = "Welcome! Reply STOP to opt out."

#: The numbers that texted STOP since the app was built (a real plugin would store them).
stopped: list[str] = []
_join_reply = DEFAULT_JOIN_REPLY


@hookimpl
def configure(config: Config) -> None:
    """Read ``[settings.stop_and_keyword]``; start with an empty record."""
    global _join_reply
    settings = config.settings.get(NAME, {})
    reply = settings.get("join_reply", DEFAULT_JOIN_REPLY)
    if not isinstance(reply, str) or not reply:
        raise ConfigError(f"settings.{NAME}.join_reply: must be a non-empty string")
    _join_reply = reply
    stopped.clear()


@hookimpl
def on_stop(event: Event) -> None:
    """Record who texted STOP (``event.source`` is the person on OnePoint/DIY)."""
    if event.source:
        stopped.append(event.source)
    log.info("stop recorded", plugin=NAME, event_id=event.id, channel=event.channel)


@hookimpl
def on_keyword(event: Event) -> Reply | None:
    """Answer a message whose first word is JOIN (any case); leave others to other plugins."""
    words = (event.text or "").split()
    if words and words[0].upper() == "JOIN":
        return Reply(text=_join_reply)
    return None
