"""Whispir callbacks: replies, undeliverable notices, status changes, report completion.

Whispir sends the same callback as JSON or XML, with spellings that vary between its
own documents (``messageid``/``messageId``, ``messagelocation``/``messageLocation``/
``location``, ``customParameters``/``customParamters``). Keys are matched
case-insensitively and XML namespaces are ignored, so every variant reads the same.

Timestamps (``dd/mm/yy HH:MM``, day first) carry no zone: the provider's ``timezone``
option says which one Whispir's account uses (default UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import msgspec

from receiver.formats import BodyFormat, parse_xml
from receiver.normalize import canonical, parse_dmy_timestamp
from receiver.providers.base import Provider
from receiver.types import Contact, Event, EventType, PayloadError, new_event_id

__all__ = ["STATUSES", "WhispirProvider"]

STATUSES: dict[str, str] = {
    "pend": "pending",
    "pending": "pending",
    "sent": "sent",
    "rcvd": "delivered",
    "received": "delivered",
    "delivrd": "delivered",
    "delivered": "delivered",
    "ack": "acknowledged",
    "ackd": "acknowledged",
    "acknowledged": "acknowledged",
    "acknowleged": "acknowledged",
    "read": "read",
    "undeliv": "failed",
    "undeliverable": "failed",
    "undelivered": "failed",
    "fail": "failed",
    "failed": "failed",
    "failure": "failed",
    "expired": "expired",
}
"""Whispir status spellings (squashed) -> normalized status; others pass through in snake_case."""

_ROOTS = frozenset({"deliveryresponse", "statuscallback", "reportcompletion"})
_CUSTOM_KEYS = ("customparameters", "customparamters", "callbackparameters")
_MEDIA = {"sms": "sms", "email": "email", "voice": "voice", "n/a": None, "": None}
_JSON = msgspec.json.Decoder()
_encode_json = msgspec.json.Encoder().encode


class WhispirProvider(Provider):
    """Parser for Whispir callbacks (JSON and XML).

    Args:
        timezone: Zone of the timestamps in the payload (an IANA name or a tzinfo);
            Whispir sends local times without a zone. Default UTC.
    """

    name: ClassVar[str] = "whispir"
    formats: ClassVar[frozenset[BodyFormat]] = frozenset({BodyFormat.json, BodyFormat.xml})

    def __init__(self, *, timezone: str | tzinfo = UTC) -> None:
        self.timezone: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone

    def parse_as(
        self,
        fmt: BodyFormat,
        raw: bytes,
        *,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        if fmt is BodyFormat.xml:
            root, tree = parse_xml(raw)
            if not isinstance(tree, dict):
                raise PayloadError(f"XML root <{root}> holds no callback fields")
            kind: str | None = root.lower()
        else:
            try:
                tree = _JSON.decode(raw)
            except msgspec.DecodeError as exc:
                raise PayloadError(str(exc)) from None
            if not isinstance(tree, dict):
                raise PayloadError(f"expected a JSON object, got {_kind(tree)}")
            kind = None
        top = _lower(tree)
        if len(top) == 1:  # a JSON body wrapped in its root name, e.g. {"deliveryResponse": {...}}
            (only, inner), = top.items()
            if only in _ROOTS and isinstance(inner, dict):
                kind, top = only, _lower(inner)
        return self._normalize(top, kind, raw, channel, received_at, event_id)

    def _normalize(
        self,
        top: dict[str, Any],
        kind: str | None,
        raw: bytes,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        sender = _contact(top.get("from"))
        common: dict[str, Any] = {
            "id": event_id or new_event_id(),
            "received_at": received_at,
            "channel": channel,
            "provider": self.name,
            "raw": raw,
            "message_id": _text(top, "messageid", "messageId"),
            "location": _text(top, "messagelocation", "messageLocation")
            or _text(top, "location", "location"),
            "sender": sender,
            "custom": _custom(top),
        }
        reply = top.get("responsemessage")
        if reply is not None:
            return self._reply(_section(reply, "responseMessage"), kind, sender, common)
        new = top.get("newstatus")
        if new is not None:
            new_status = _section(new, "newStatus")
            old = top.get("oldstatus")
            old_status = _section(old, "oldStatus") if old is not None else {}
            status = _text(new_status, "status", "newStatus.status")
            previous = _text(old_status, "status", "oldStatus.status")
            stamp = _text(new_status, "timestamp", "newStatus.timestamp")
            return Event(
                type=EventType.receipt,
                provider_type=kind or "statuscallback",
                destination=_address(sender, None),
                status=canonical(status, STATUSES) if status else None,
                provider_status=status,
                previous_status=canonical(previous, STATUSES) if previous else None,
                occurred_at=self._time(stamp),
                provider_timestamp=stamp,
                **common,
            )
        report_id = _text(top, "reportid", "reportId")
        if report_id is not None or kind == "reportcompletion":
            stamp = _text(top, "timestamp", "timestamp")
            return Event(
                type=EventType.report,
                provider_type=kind or "reportcompletion",
                report_id=report_id,
                output_location=_text(top, "outputlocation", "outputLocation"),
                occurred_at=self._time(stamp),
                provider_timestamp=stamp,
                **common,
            )
        raise PayloadError(
            "not a Whispir callback: no responseMessage, newStatus or reportId field"
        )

    def _reply(
        self, reply: dict[str, Any], kind: str | None, sender: Contact | None, common: dict[str, Any]
    ) -> Event:
        medium_raw = _text(reply, "channel", "responseMessage.channel")
        medium = _medium(medium_raw)
        undeliverable = _text(reply, "undeliverable", "responseMessage.undeliverable")
        if undeliverable is not None or ("undeliverable" in reply and "acknowledged" not in reply):
            event_type, stamp, status = EventType.undeliverable, undeliverable, "failed"
        else:
            stamp = _text(reply, "acknowledged", "responseMessage.acknowledged")
            event_type, status = EventType.message, None
        content = reply.get("content")
        return Event(
            type=event_type,
            provider_type=kind or "deliveryresponse",
            source=_address(sender, medium),
            text=content if isinstance(content, str) else _text(reply, "content", "content"),
            medium=medium,
            status=status,
            occurred_at=self._time(stamp),
            provider_timestamp=stamp,
            **common,
        )

    def _time(self, stamp: str | None) -> datetime | None:
        return parse_dmy_timestamp(stamp, self.timezone) if stamp else None


def _lower(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in mapping.items()}


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a scalar"


def _section(value: Any, path: str) -> dict[str, Any]:
    """A nested object (``from``, ``responseMessage``, ``newStatus``) with lowercased keys."""
    if isinstance(value, dict):
        return _lower(value)
    if value == "" or value is None:
        return {}
    raise PayloadError(f"{path}: expected an object, got {_kind(value)}")


def _text(section: dict[str, Any], key: str, path: str) -> str | None:
    """The string at ``key``; blanks become None, numbers become strings."""
    value = section.get(key)
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise PayloadError(f"{path}: expected text, got {_kind(value)}")


def _medium(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    return _MEDIA.get(lowered, lowered)


def _contact(value: Any) -> Contact | None:
    if value is None:
        return None
    section = _section(value, "from")
    if not section:
        return None
    contact = Contact(
        name=_text(section, "name", "from.name"),
        mri=_text(section, "mri", "from.mri"),
        mobile=_text(section, "mobile", "from.mobile"),
        email=_text(section, "email", "from.email"),
        voice=_text(section, "voice", "from.voice"),
    )
    return contact if contact != _NO_CONTACT else None


_NO_CONTACT = Contact()


def _address(sender: Contact | None, medium: str | None) -> str | None:
    """The person's address on ``medium``, else the first one they have."""
    if sender is None:
        return None
    by_medium = {"sms": sender.mobile, "email": sender.email, "voice": sender.voice}.get(
        medium or ""
    )
    return by_medium or sender.mobile or sender.email or sender.voice


def _custom(top: dict[str, Any]) -> dict[str, str]:
    """Custom parameters from any of their shapes, all values as strings."""
    for key in _CUSTOM_KEYS:
        value = top.get(key)
        if value is not None:
            custom: dict[str, str] = {}
            _collect_custom(value, custom)
            return custom
    return {}


def _collect_custom(value: Any, into: dict[str, str]) -> None:
    if isinstance(value, list):  # the documented typo form: [{"CustomID": "..."}], or entries
        for item in value:
            _collect_custom(item, into)
    elif isinstance(value, dict):
        lowered = {k.lower(): v for k, v in value.items()}
        if lowered.keys() == {"key", "value"}:  # one XML <entry><key/><value/></entry>
            into[_as_string(lowered["key"])] = _as_string(lowered["value"])
        elif lowered.keys() == {"entry"}:  # XML <customParameters><entry>...
            _collect_custom(lowered["entry"], into)
        else:
            for name, item in value.items():
                into[name] = _as_string(item)
    elif value not in ("", None):
        raise PayloadError(f"customParameters: expected an object, got {_kind(value)}")


def _as_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _encode_json(value).decode()
