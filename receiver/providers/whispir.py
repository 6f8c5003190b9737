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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from receiver.config import Channel
from receiver.errors import ConfigError, PayloadError
from receiver.events import Contact, Event, EventType, new_event_id
from receiver.formats import TOO_DEEP, BodyFormat, parse_xml
from receiver.normalize import canonical, parse_dmy_timestamp
from receiver.providers.base import Provider

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
_MEDIA = {"SMS": "sms", "sms": "sms", "EMAIL": "email", "VOICE": "voice", "N/A": None, "": None}
_encode_json = msgspec.json.Encoder().encode


class _View(msgspec.Struct, forbid_unknown_fields=True):
    """Base of the structs below: only the documented keys, so anything else is noticed."""


class _From(_View):
    name: str | None = None
    mri: str | None = None
    mobile: str | None = None
    email: str | None = None
    voice: str | None = None


class _Reply(_View):
    channel: str | None = None
    acknowledged: str | None = None
    undeliverable: str | None = None
    content: str | None = None


class _Status(_View):
    status: str | None = None
    timestamp: str | None = None


_Custom = dict[str, Any] | list[Any] | None


class _Body(_View):
    """Every documented spelling of every field of every Whispir callback.

    JSON in these spellings decodes straight into this struct. Any other key (another
    casing, a root wrapper, a new field) makes that fail, and the body is then read the
    slow way: keys lowercased, unknown keys dropped, and converted into this struct.
    """

    messageid: str | None = None
    messageId: str | None = None
    messagelocation: str | None = None
    messageLocation: str | None = None
    location: str | None = None
    sender: _From | None = msgspec.field(default=None, name="from")
    responsemessage: _Reply | None = None
    responseMessage: _Reply | None = None
    oldstatus: _Status | None = None
    oldStatus: _Status | None = None
    newstatus: _Status | None = None
    newStatus: _Status | None = None
    reportid: str | None = None
    reportId: str | None = None
    outputlocation: str | None = None
    outputLocation: str | None = None
    timestamp: str | None = None
    customparameters: _Custom = None
    customParameters: _Custom = None
    customparamters: _Custom = None
    customParamters: _Custom = None
    callbackparameters: _Custom = None
    callbackParameters: _Custom = None


_SECTIONS: dict[str, frozenset[str]] = {
    "from": frozenset(_From.__struct_fields__),
    "responsemessage": frozenset(_Reply.__struct_fields__),
    "oldstatus": frozenset(_Status.__struct_fields__),
    "newstatus": frozenset(_Status.__struct_fields__),
}
_CUSTOM_KEYS = frozenset({"customparameters", "customparamters", "callbackparameters"})
_TEXT_KEYS = (
    frozenset(
        name for name in _Body.__struct_fields__ if name.islower() and name not in _CUSTOM_KEYS
    )
    - _SECTIONS.keys()
    - {"sender"}
)
_FAST = msgspec.json.Decoder(_Body)


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
        self._times: dict[str, datetime | None] = {}

    @classmethod
    def from_channel(cls, channel: Channel) -> WhispirProvider:
        """Reads the channel's ``timezone``."""
        try:
            return cls(timezone=channel.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"timezone {channel.timezone!r} is not a known zone") from None

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
            body, kind = _read_tree(tree, root.lower())
        else:
            try:
                body = _FAST.decode(raw)
            except msgspec.ValidationError:
                body, kind = _read_tree(_decode_json(raw), None)
            except msgspec.DecodeError as exc:
                raise PayloadError(str(exc)) from None
            except RecursionError:
                raise PayloadError(TOO_DEEP) from None
        return self._normalize(body, kind, raw, channel, received_at, event_id)

    def _normalize(
        self,
        body: _Body,
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


def _decode_json(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise PayloadError(str(exc)) from None
    except RecursionError:
        raise PayloadError(TOO_DEEP) from None


def _read_tree(tree: Any, kind: str | None) -> tuple[_Body, str | None]:
    """The slow path: any key casing, an optional root wrapper, numbers as text."""
    if not isinstance(tree, dict):
        raise PayloadError(f"expected a JSON object, got {_kind(tree)}")
    top = _lower(tree)
    if len(top) == 1:  # a body wrapped in its root name, e.g. {"deliveryResponse": {...}}
        ((only, inner),) = top.items()
        if only in _ROOTS and isinstance(inner, dict):
            kind, top = only, _lower(inner)
    clean: dict[str, Any] = {}
    for key, value in top.items():
        if value is None or value == "":
            continue
        fields = _SECTIONS.get(key)
        if fields is not None:
            if isinstance(value, dict):
                value = {
                    low: item if isinstance(item, str) else _scalar_text(item)
                    for name, item in value.items()
                    if (low := name.lower()) in fields and item is not None
                }
        elif key in _TEXT_KEYS:
            if not isinstance(value, str):
                value = _scalar_text(value)
        elif key not in _CUSTOM_KEYS:
            continue
        clean[key] = value
    try:
        return msgspec.convert(clean, _Body), kind
    except msgspec.ValidationError as exc:
        raise PayloadError(str(exc)) from None


def _scalar_text(value: Any) -> Any:
    """Numbers and booleans as text; anything else unchanged (for the struct to judge)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _lower(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in mapping.items()}


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a scalar"


def _medium(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _MEDIA[value]
    except KeyError:
        lowered = value.strip().lower()
        return None if lowered in ("n/a", "") else lowered


def _contact(value: _From | None) -> Contact | None:
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


def _custom(body: _Body) -> dict[str, str]:
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
        lowered = _lower(value)
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
    """A custom parameter's value as text: scalars as written, objects as JSON."""
    if value is None:
        return ""
    text = _scalar_text(value)
    return text if isinstance(text, str) else _encode_json(value).decode()
