"""Whispir callbacks: replies, undeliverable notices, status changes, report completion.

Whispir sends the same callback as JSON or XML, with spellings that vary between its
own documents (``messageid``/``messageId``, ``messagelocation``/``messageLocation``/
``location``, ``customParameters``/``customParamters``). Keys are matched
case-insensitively and XML namespaces are ignored, so every variant reads the same.

Timestamps (``dd/mm/yy HH:MM``, day first) carry no zone: the channel's ``timezone``
option (:class:`WhispirOptions`) says which one Whispir's account uses (default UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from receiver.config import Channel
from receiver.errors import ConfigError, PayloadError
from receiver.events import Contact, Event, EventType, new_event_id
from receiver.formats import TOO_DEEP, BodyFormat, parse_xml
from receiver.normalize import canonical, parse_dmy_timestamp
from receiver.providers.base import Provider
from receiver.providers.whispir_payload import (
    FAST,
    Body,
    Sender,
    decode_json,
    kind_of,
    lower_keys,
    read_tree,
    scalar_text,
)

__all__ = ["STATUSES", "WhispirOptions", "WhispirProvider"]

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

_MEDIA = {"SMS": "sms", "sms": "sms", "EMAIL": "email", "VOICE": "voice", "N/A": None, "": None}
_encode_json = msgspec.json.Encoder().encode


class WhispirOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ``whispir`` channel's options (``[channels.NAME.options]``).

    Attributes:
        timezone: IANA zone of the payload's timestamps (Whispir sends local times
            without a zone): your Whispir account's zone. Default UTC.
    """

    timezone: str = "UTC"


class WhispirProvider(Provider):
    """Parser for Whispir callbacks (JSON and XML).

    Args:
        timezone: Zone of the timestamps in the payload (an IANA name or a tzinfo);
            Whispir sends local times without a zone. Default UTC.
    """

    name: ClassVar[str] = "whispir"
    formats: ClassVar[frozenset[BodyFormat]] = frozenset({BodyFormat.json, BodyFormat.xml})
    options: ClassVar[type[msgspec.Struct]] = WhispirOptions
    key_header: ClassVar[str | None] = "X-Whispir-Callback-Key"
    """Whispir's ``httpheader`` auth type sends the key in this header."""

    def __init__(self, *, timezone: str | tzinfo = UTC) -> None:
        self.timezone: tzinfo = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self._times: dict[str, datetime | None] = {}

    @classmethod
    def from_channel(cls, channel: Channel, options: WhispirOptions) -> WhispirProvider:
        """Reads the channel's ``timezone`` option.

        Raises:
            ConfigError: the zone is not known.
        """
        try:
            return cls(timezone=options.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"options.timezone: {options.timezone!r} is not a known zone"
            ) from None

    def parse_as(
        self,
        fmt: BodyFormat,
        raw: bytes,
        *,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        kind: str | None = None
        if fmt is BodyFormat.xml:
            root, tree = parse_xml(raw)
            if not isinstance(tree, dict):
                raise PayloadError("the XML root element holds no callback fields")
            body, kind = read_tree(tree, root.lower())
        else:
            try:
                body = FAST.decode(raw)
            except msgspec.ValidationError:
                body, kind = read_tree(decode_json(raw), None)
            except msgspec.DecodeError as exc:
                raise PayloadError(str(exc)) from None
            except RecursionError:
                raise PayloadError(TOO_DEEP) from None
        return self._normalize(body, kind, raw, channel, received_at, event_id)

    def _normalize(
        self,
        body: Body,
        kind: str | None,
        raw: bytes,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        sender = _contact(body.sender)
        message_id = body.messageid or body.messageId
        location = body.messagelocation or body.messageLocation or body.location or None
        custom = _custom(body)
        reply = body.responsemessage or body.responseMessage
        if reply is not None:
            medium = _medium(reply.channel)
            stamp: str | None
            status: str | None
            if reply.undeliverable or (reply.undeliverable is not None and not reply.acknowledged):
                event_type, stamp, status = EventType.undeliverable, reply.undeliverable, "failed"
            else:
                event_type, stamp, status = EventType.message, reply.acknowledged, None
            # Positional, in field order: msgspec matches each keyword argument by name,
            # which costs three times the positional call.
            return Event(
                event_id or new_event_id(),  # id
                received_at,
                channel,
                "whispir",  # provider
                event_type,  # type
                raw,
                kind or "deliveryresponse",  # provider_type
                message_id or None,  # message_id
                location,
                _address(sender, medium),  # source
                None,  # destination
                reply.content,  # text
                medium,
                status,
                None,  # provider_status
                None,  # previous_status
                self._time(stamp),  # occurred_at
                stamp or None,  # provider_timestamp
                sender,
                custom,
            )
        new = body.newstatus or body.newStatus
        if new is not None:
            old = body.oldstatus or body.oldStatus
            previous = old.status if old is not None else None
            return Event(  # positional, in field order (see above)
                event_id or new_event_id(),  # id
                received_at,
                channel,
                "whispir",  # provider
                EventType.receipt,  # type
                raw,
                kind or "statuscallback",  # provider_type
                message_id or None,  # message_id
                location,
                None,  # source
                _address(sender, None),  # destination
                None,  # text
                None,  # medium
                canonical(new.status, STATUSES) if new.status else None,  # status
                new.status or None,  # provider_status
                canonical(previous, STATUSES) if previous else None,  # previous_status
                self._time(new.timestamp),  # occurred_at
                new.timestamp or None,  # provider_timestamp
                sender,
                custom,
            )
        report_id = body.reportid or body.reportId
        if report_id or kind == "reportcompletion":
            return Event(
                id=event_id or new_event_id(),
                received_at=received_at,
                channel=channel,
                provider="whispir",
                type=EventType.report,
                raw=raw,
                provider_type=kind or "reportcompletion",
                message_id=message_id or None,
                location=location,
                report_id=report_id or None,
                output_location=body.outputlocation or body.outputLocation or None,
                occurred_at=self._time(body.timestamp),
                provider_timestamp=body.timestamp or None,
                sender=sender,
                custom=custom,
            )
        raise PayloadError(
            "not a Whispir callback: no responseMessage, newStatus or reportId field"
        )

    def dedupe_key(self, event: Event) -> str | None:
        """Every field the callback carries; None without messageid/reportid or timestamp.

        The kind and type, messageid, reportid, location, the acknowledged/undeliverable/
        new-status timestamp (or the report's), the new and old status, the reply's
        channel and content, the whole ``from`` block, the report's outputLocation and
        the custom parameters, as a JSON array (an absent field is ``null``, never
        ``""``). Whispir timestamps have minute resolution: a person's two replies with
        the same text in the same minute to one message are indistinguishable from a
        re-send (their bodies are identical too).
        """
        if (event.message_id is None and event.report_id is None) or not event.provider_timestamp:
            return None
        sender = event.sender
        parts = (
            self.name,
            event.provider_type,
            event.type.value,
            event.message_id,
            event.report_id,
            event.location,
            event.provider_timestamp,
            event.provider_status,
            event.previous_status,
            event.medium,
            event.text,
            event.source,
            event.destination,
            None
            if sender is None
            else (sender.name, sender.mri, sender.mobile, sender.email, sender.voice),
            event.output_location,
            event.custom,
        )
        return msgspec.json.encode(parts, order="sorted").decode()

    def _time(self, stamp: str | None) -> datetime | None:
        """Parse a timestamp, remembering recent ones (they have minute resolution)."""
        if not stamp:
            return None
        try:
            return self._times[stamp]
        except KeyError:
            if len(self._times) >= 4096:
                self._times.clear()
            parsed = self._times[stamp] = parse_dmy_timestamp(stamp, self.timezone)
            return parsed


def _medium(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _MEDIA[value]
    except KeyError:
        lowered = value.strip().lower()
        return None if lowered in ("n/a", "") else lowered


def _contact(value: Sender | None) -> Contact | None:
    """The ``from`` block as a Contact, blanks as None; None when it says nothing."""
    if value is None:
        return None
    name, mri, mobile, email, voice = value.name, value.mri, value.mobile, value.email, value.voice
    # Blank or whitespace-only fields are None (written out: this runs on every callback).
    name = name if name and not name.isspace() else None
    mri = mri if mri and not mri.isspace() else None
    mobile = mobile if mobile and not mobile.isspace() else None
    email = email if email and not email.isspace() else None
    voice = voice if voice and not voice.isspace() else None
    if name is None and mri is None and mobile is None and email is None and voice is None:
        return None
    return Contact(name=name, mri=mri, mobile=mobile, email=email, voice=voice)


def _address(sender: Contact | None, medium: str | None) -> str | None:
    """The person's address on ``medium``, else the first one they have."""
    if sender is None:
        return None
    if medium == "sms" and sender.mobile:
        return sender.mobile
    if medium == "email" and sender.email:
        return sender.email
    if medium == "voice" and sender.voice:
        return sender.voice
    return sender.mobile or sender.email or sender.voice


def _custom(body: Body) -> dict[str, str]:
    """Custom parameters from any of their spellings and shapes, all values as strings."""
    value = (
        body.customParameters
        or body.customParamters
        or body.customparameters
        or body.customparamters
        or body.callbackParameters
        or body.callbackparameters
    )
    if not value:
        return {}
    custom: dict[str, str] = {}
    _collect_custom(value, custom)
    return custom


def _collect_custom(value: Any, into: dict[str, str]) -> None:
    if isinstance(value, list):  # the documented typo form: [{"CustomID": "..."}], or entries
        for item in value:
            _collect_custom(item, into)
    elif isinstance(value, dict):
        lowered = lower_keys(value)
        if lowered.keys() == {"key", "value"}:  # one XML <entry><key/><value/></entry>
            into[_as_string(lowered["key"])] = _as_string(lowered["value"])
        elif lowered.keys() == {"entry"}:  # XML <customParameters><entry>...
            _collect_custom(lowered["entry"], into)
        else:
            for name, item in value.items():
                into[name] = _as_string(item)
    elif value not in ("", None):
        raise PayloadError(f"customParameters: expected an object, got {kind_of(value)}")


def _as_string(value: Any) -> str:
    """A custom parameter's value as text: scalars as written, objects as JSON."""
    if value is None:
        return ""
    text = scalar_text(value)
    return text if isinstance(text, str) else _encode_json(value).decode()
