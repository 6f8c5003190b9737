"""An example receiver plugin, installed as a package with a ``receiver`` entry point.

It records the numbers that texted STOP and answers the ``JOIN`` keyword. Its settings,
all optional, are a ``[settings.stop_and_keyword]`` table (the plugin's name)::

    [settings.stop_and_keyword]
    join_reply = "Welcome! Reply STOP to opt out."
    crm_token = "${CRM_TOKEN}"     # a secret: from the environment (or file:/path)
"""

from __future__ import annotations

import msgspec

from receiver import Config, ConfigError, Event, Reply, Secret, get_logger, hookimpl

log = get_logger(__name__)  # never configure logging in a plugin

DEFAULT_JOIN_REPLY = "Welcome! Reply STOP to opt out."


class StopAndKeyword:
    """The plugin: the entry point names this class, so every app gets its own instance
    (two apps in one process share nothing)."""

    name = "stop_and_keyword"  # in logs, metrics, the journal, `receiver plugins`

    class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        """``[settings.stop_and_keyword]``, checked by receiver before ``configure``.

        Attributes:
            join_reply: The answer to JOIN.
            crm_token: A token for your CRM (unused here: it shows a secret field);
                written ``"${VAR}"`` or ``"file:/path"``, expanded by receiver.
        """

        join_reply: str = DEFAULT_JOIN_REPLY
        crm_token: Secret | None = None

    def __init__(self) -> None:
        self.settings = self.Settings()
        self.stopped: list[str] = []
        """The numbers that texted STOP since the app was built (a real plugin stores them)."""

    @hookimpl
    def configure(self, config: Config) -> None:
        """Take this app's settings (defaults without a table)."""
        self.settings = config.settings.get(self.name) or self.Settings()
        if not self.settings.join_reply.strip():
            where = f"{config.source}: settings.{self.name}.join_reply"
            raise ConfigError(f"{where}: must not be empty")

    @hookimpl
    def on_stop(self, event: Event) -> None:
        """Record who texted STOP (``event.source`` is the person on OnePoint/DIY)."""
        if event.source:
            self.stopped.append(event.source)
        log.info("stop recorded", plugin=self.name, event_id=event.id, channel=event.channel)

    @hookimpl
    def on_keyword(self, event: Event) -> Reply | None:
        """Answer a message whose first word is JOIN (any case); leave others alone."""
        words = (event.text or "").split()
        if words and words[0].upper() == "JOIN":
            return Reply(text=self.settings.join_reply)
        return None
