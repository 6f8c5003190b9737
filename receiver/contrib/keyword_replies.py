"""Answer inbound Keyword and Message callbacks from a table of canned replies.

On in an app whose configuration has its table::

    [settings.keyword_replies]
    keywords = { HOURS = "We are open 9-5", PRICE = "Plans start at 5 GBP a month" }
    default = "Thanks, we got your message."   # optional: any other message
    help = "Reply HOURS or PRICE. Reply STOP to opt out."   # optional: first word HELP
    channels = ["sms"]                          # optional: only these channels

Matching follows RapidSMS's ``KeywordHandler``: the keyword is the first word of the
message, ignoring case and surrounding or repeated whitespace, so ``"  hours please"``
matches ``HOURS``. A word ends at whitespace or at ``,`` ``;`` ``:``; trailing ``.!?`` is
ignored (``"Hours?"`` matches too). A ``keywords`` entry wins over ``help``, which wins
over ``default``. Only Message and Keyword events are answered (the platform has already
answered its own ``Help`` type); without a match and without ``default`` there is no
reply and the next plugin may answer. Reply texts are taken as written (``${NAME}`` and
``file:`` mean nothing here).
"""

from __future__ import annotations

import re

import msgspec

from receiver.config import Config
from receiver.errors import ConfigError
from receiver.events import Event, EventType
from receiver.hookspecs import hookimpl
from receiver.logs import get_logger
from receiver.plugins import known_channels

__all__ = ["KeywordReplies", "first_word"]

log = get_logger(__name__)

_FIRST_WORD = re.compile(r"\s*([^\s,;:]+)")


def first_word(text: str | None) -> str:
    """The keyword of ``text``: its first word, casefolded, trailing ``.!?`` dropped."""
    match = _FIRST_WORD.match(text or "")
    return match[1].rstrip(".!?").casefold() if match else ""


class KeywordReplies:
    """The ``keyword_replies`` plugin: one instance per app (see the module's docstring)."""

    name = "keyword_replies"

    class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        """``[settings.keyword_replies]``.

        Attributes:
            keywords: KEYWORD -> reply text; a keyword is one word, matched ignoring case.
            default: The reply to any other Message/Keyword (none: no reply).
            help: The reply when the first word is HELP and ``keywords`` has no HELP.
            channels: Only events of these channels are answered (unset: all).
        """

        keywords: dict[str, str] = {}
        default: str | None = None
        help: str | None = None
        channels: list[str] | None = None

    def __init__(self) -> None:
        self.keywords: dict[str, str] = {}
        self.default: str | None = None
        self.help: str | None = None
        self.channels: frozenset[str] | None = None

    @hookimpl
    def configure(self, config: Config) -> None:
        settings = config.settings.get(self.name)
        if not isinstance(settings, self.Settings):
            return
        where = f"{config.source}: settings.{self.name}"
        keywords: dict[str, str] = {}
        for keyword, reply in settings.keywords.items():
            if not reply.strip():
                raise ConfigError(f"{where}.keywords.{keyword}: the reply must not be empty")
            key = first_word(keyword)
            if not key or key != keyword.strip().casefold():
                raise ConfigError(f"{where}.keywords.{keyword}: a keyword is one word")
            if key in keywords:
                raise ConfigError(
                    f"{where}.keywords.{keyword}: listed twice (keywords ignore case)"
                )
            keywords[key] = reply
        for key in ("default", "help"):
            text = getattr(settings, key)
            if text is not None and not text.strip():
                raise ConfigError(f"{where}.{key}: must not be empty")
        self.keywords, self.default, self.help = keywords, settings.default, settings.help
        self.channels = known_channels(config, settings.channels, f"{where}.channels")
        log.info(
            "plugin on",
            plugin=self.name,
            keywords=sorted(k.upper() for k in keywords),
            default=self.default is not None,
            help=self.help is not None,
            channels=sorted(self.channels) if self.channels is not None else "all",
        )

    def reply_for(self, event: Event) -> str | None:
        """The canned reply to ``event``, or None."""
        if event.type not in (EventType.message, EventType.keyword):
            return None
        if self.channels is not None and event.channel not in self.channels:
            return None
        word = first_word(event.text)
        if word in self.keywords:
            matched, reply = word.upper(), self.keywords[word]
        elif word == "help" and self.help is not None:
            matched, reply = "HELP", self.help
        elif self.default is not None:
            matched, reply = "(default)", self.default  # never log what the person wrote
        else:
            return None
        log.info("keyword reply", plugin=self.name, event_id=event.id, matched=matched)
        return reply

    @hookimpl
    def on_keyword(self, event: Event) -> str | None:
        return self.reply_for(event)

    @hookimpl
    def on_message(self, event: Event) -> str | None:
        return self.reply_for(event)
