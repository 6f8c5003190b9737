"""Answer inbound Keyword and Message callbacks from a table of canned replies.

Off unless the configuration has its table::

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
reply and the next plugin may answer.
"""

from __future__ import annotations

import re
from typing import Any

import structlog

from receiver import Config, ConfigError, Event, EventType, hookimpl

log = structlog.get_logger()

NAME = "keyword_replies"
_KNOWN = frozenset({"keywords", "default", "help", "channels"})
_FIRST_WORD = re.compile(r"\s*([^\s,;:]+)")

_keywords: dict[str, str] = {}
_default: str | None = None
_help: str | None = None
_channels: frozenset[str] | None = None
_active = False


def first_word(text: str | None) -> str:
    """The keyword of ``text``: its first word, casefolded, trailing ``.!?`` dropped."""
    match = _FIRST_WORD.match(text or "")
    return match[1].rstrip(".!?").casefold() if match else ""


def _text(settings: dict[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"settings.{NAME}.{key}: must be a non-empty string")
    return value


@hookimpl
def configure(config: Config) -> None:
    global _keywords, _default, _help, _channels, _active
    _keywords, _default, _help, _channels, _active = {}, None, None, None, False
    settings = config.settings.get(NAME)
    if settings is None:
        log.info("plugin off: no settings table", plugin=NAME, table=f"settings.{NAME}")
        return
    unknown = sorted(set(settings) - _KNOWN)
    if unknown:
        raise ConfigError(f"settings.{NAME}: unknown key(s) {', '.join(unknown)}")
    table = settings.get("keywords", {})
    where = f"settings.{NAME}.keywords"
    if not isinstance(table, dict):
        raise ConfigError(f'{where}: must be a table of KEYWORD = "reply"')
    keywords: dict[str, str] = {}
    for keyword, reply in table.items():
        if not isinstance(reply, str) or not reply.strip():
            raise ConfigError(f"{where}.{keyword}: the reply must be a non-empty string")
        key = first_word(keyword)
        if not key or key != keyword.strip().casefold():
            raise ConfigError(f"{where}.{keyword}: a keyword is one word")
        if key in keywords:
            raise ConfigError(f"{where}.{keyword}: listed twice (keywords ignore case)")
        keywords[key] = reply
    channels = settings.get("channels")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise ConfigError(f"settings.{NAME}.channels: must be a list of channel names")
    _keywords, _default, _help = keywords, _text(settings, "default"), _text(settings, "help")
    _channels = frozenset(channels) if channels is not None else None
    _active = True
    log.info(
        "plugin on",
        plugin=NAME,
        keywords=sorted(k.upper() for k in keywords),
        default=_default is not None,
        help=_help is not None,
        channels=sorted(_channels) if _channels is not None else "all",
    )


def reply_for(event: Event) -> str | None:
    """The canned reply to ``event``, or None."""
    if not _active or event.type not in (EventType.message, EventType.keyword):
        return None
    if _channels is not None and event.channel not in _channels:
        return None
    word = first_word(event.text)
    if word in _keywords:
        matched, reply = word.upper(), _keywords[word]
    elif word == "help" and _help is not None:
        matched, reply = "HELP", _help
    elif _default is not None:
        matched, reply = "(default)", _default  # never log what the person wrote
    else:
        return None
    log.info("keyword reply", plugin=NAME, event_id=event.id, matched=matched)
    return reply


@hookimpl
def on_keyword(event: Event) -> str | None:
    return reply_for(event)


@hookimpl
def on_message(event: Event) -> str | None:
    return reply_for(event)
