"""OnePoint Global and DIY Surveys (its white label) callbacks.

Both send the same fields (``Source``, ``Destination``, ``Message``, ``Type``, ``Status``,
``Timestamp``, ``MetaData``, ...) as a JSON body, an ``application/x-www-form-urlencoded``
body, or (DIY's ``Method = GET``) in the query string. Field names are matched
case-insensitively; form and query values are strings and are converted to the field's
type (``"true"``/``"True"``/``"1"`` -> True, ``"2"`` -> 2).

``Type`` and ``Status`` are matched ignoring case, spaces, underscores and hyphens
(``Not Killed``, ``NotKilled`` and ``Notkilled`` are one type). An unknown ``Type`` is
kept as :attr:`EventType.unknown`, never rejected.

Their signature scheme (``auth = "hmac"``) and its options are in
:mod:`receiver.providers.onepoint_signature`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import msgspec

from receiver.auth import AuthenticatorFactory
from receiver.errors import PayloadError
from receiver.events import Event, EventType, Reply, new_event_id
from receiver.formats import TOO_DEEP, BodyFormat
from receiver.logs import bounded, get_logger
from receiver.normalize import canonical, parse_iso_timestamp, snake, squash
from receiver.providers.base import Provider
from receiver.providers.onepoint_metadata import INT_MAX, INT_MIN, decode_metadata, flatten_metadata
from receiver.providers.onepoint_signature import OnePointOptions, signature_check

__all__ = ["STATUSES", "TYPES", "DiyProvider", "OnePointProvider"]

log = get_logger(__name__)

TYPES: dict[str, EventType] = {
    "receipt": EventType.receipt,
    "lookup": EventType.lookup,
    "lookups": EventType.lookup,
    "message": EventType.message,
    "info": EventType.info,
    "help": EventType.help,
    "stop": EventType.stop,
    "unstop": EventType.unstop,
    "keyword": EventType.keyword,
    "click": EventType.click,
    "killed": EventType.killed,
    "notkilled": EventType.not_killed,
    "onstop": EventType.on_stop,
    "routingfailure": EventType.routing_failure,
    "timedout": EventType.timed_out,
}
"""Squashed ``Type`` spellings -> event type."""

STATUSES: dict[str, str] = {
    "failed": "failed",
    "failure": "failed",
    "fail": "failed",
    "timedout": "timed_out",
    "notkilled": "not_killed",
    "landlineunknown": "landline_unknown",
    "noroute": "no_route",
    "onstop": "on_stop",
    "routingfailure": "routing_failure",
    "delivrd": "delivered",
    "undeliv": "undelivered",
    "notreachable": "not_reachable",
    "unreachable": "not_reachable",
}
"""Squashed ``Status`` spellings that mechanics would get wrong; others become snake_case."""


class _Fields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The callback fields receiver reads, under the names OnePoint documents.

    JSON in exactly these names decodes straight into this struct; any other key (other
    casing, a field receiver does not read) makes that fail, and the body is read the
    slow way: keys matched case-insensitively, unknown keys dropped.
    """

    Source: str | int | None = None
    Destination: str | int | None = None
    Message: str | None = None
    Type: str | None = None
    Timestamp: str | None = None
    Inbound: bool | None = None
    Lookup: bool | None = None
    Test: bool | None = None
    Status: str | None = None
    MetaData: list[Any] | dict[str, Any] | str | None = None
    MessageID: str | int | None = None
    Carrier: str | None = None
    Reachable: bool | None = None
    NumberType: str | None = None
    Segments: int | None = None


_CANONICAL = {name.lower(): name for name in _Fields.__struct_fields__}
_TYPED = frozenset({"Inbound", "Lookup", "Test", "Reachable", "Segments"})
_RECOGNIZED = ("Type", "MessageID", "Source", "Destination", "Message", "Status")
_FAST = msgspec.json.Decoder(_Fields, strict=False)
_JSON = msgspec.json.Decoder()
_encode_json = msgspec.json.Encoder().encode
_METADATA_KEY = re.compile(r"^metadata(?:\[([^\]]*)\]|\.(.+))$", re.IGNORECASE)


class OnePointProvider(Provider):
    """Parser for OnePoint Global callbacks (JSON, form and GET)."""

    name: ClassVar[str] = "onepoint"
    formats: ClassVar[frozenset[BodyFormat]] = frozenset({BodyFormat.json, BodyFormat.form})
    options: ClassVar[type[msgspec.Struct]] = OnePointOptions
    authenticators: ClassVar[Mapping[str, AuthenticatorFactory]] = {"hmac": signature_check}

    def parse_as(
        self,
        fmt: BodyFormat,
        raw: bytes,
        *,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        extra_metadata: dict[str, Any] = {}
        if fmt is BodyFormat.json:
            try:
                fields = _FAST.decode(raw)
                if not _recognizable(fields):
                    raise self._unrecognized()
            except msgspec.ValidationError:
                tree = _decode_json(raw)
                if not isinstance(tree, dict):
                    raise PayloadError("expected a JSON object") from None
                fields = self._convert(_canonical_keys(tree.items()))
            except msgspec.DecodeError as exc:
                raise PayloadError(str(exc)) from None
            except RecursionError:
                raise PayloadError(TOO_DEEP) from None
        else:
            found, extra_metadata = _read_form(raw)
            fields = self._convert(found)
        return self._normalize(fields, extra_metadata, raw, channel, received_at, event_id)

    def _unrecognized(self) -> PayloadError:
        return PayloadError(
            f"not a {self.name} callback: no Type, MessageID, Source, Destination, "
            "Message or Status field"
        )

    def _convert(self, found: dict[str, Any]) -> _Fields:
        if not any(found.get(key) not in (None, "") for key in _RECOGNIZED):
            raise self._unrecognized()
        try:
            return msgspec.convert(found, _Fields, strict=False)
        except msgspec.ValidationError as exc:
            raise PayloadError(str(exc)) from None

    def _normalize(
        self,
        fields: _Fields,
        extra_metadata: dict[str, Any],
        raw: bytes,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        provider_type = fields.Type
        event_type = _type(provider_type) if provider_type else None
        if event_type is None:
            event_type = EventType.unknown
            log.warning(
                "unknown callback type", provider=self.name, provider_type=bounded(provider_type)
            )
        metadata = flatten_metadata(fields.MetaData)
        if extra_metadata:
            metadata.update(extra_metadata)
        status = fields.Status
        stamp = fields.Timestamp
        segments = fields.Segments
        if segments is not None and not INT_MIN <= segments <= INT_MAX:
            log.warning("Segments out of range: not kept", provider=self.name)
            segments = None
        # Positional, in field order: msgspec matches each keyword argument by name, which
        # costs three times the positional call.
        return Event(
            event_id or new_event_id(),  # id
            received_at,
            channel,
            self.name,  # provider
            event_type,  # type
            raw,
            provider_type,
            _str(fields.MessageID),  # message_id
            None,  # location
            _str(fields.Source),  # source
            _str(fields.Destination),  # destination
            fields.Message,  # text
            None,  # medium
            _status(status) if status else None,  # status
            status,  # provider_status
            None,  # previous_status
            parse_iso_timestamp(stamp) if stamp else None,  # occurred_at
            stamp,  # provider_timestamp
            None,  # sender
            {},  # custom
            metadata,
            fields.Inbound,  # inbound
            fields.Test,  # test
            fields.Lookup,  # lookup
            fields.Reachable,  # reachable
            fields.Carrier or None,  # carrier
            snake(fields.NumberType) if fields.NumberType else None,  # number_type
            segments,
        )

    def render_reply(self, event: Event, reply: Reply) -> bytes:
        """A Message/Send body: Source, Destination, Message and the optional fields set.

        ``Source`` defaults to the event's destination and ``Destination`` to its source
        (the reply goes back the way the message came).
        """
        body: dict[str, Any] = {
            "Source": reply.source if reply.source is not None else event.destination,
            "Destination": reply.destination if reply.destination is not None else event.source,
            "Message": reply.text,
        }
        if reply.reply is not None:
            body["Reply"] = reply.reply
        if reply.when is not None:
            body["When"] = reply.when
        if reply.metadata is not None:
            body["MetaData"] = [{key: value} for key, value in reply.metadata.items()]
        if reply.extra:
            body.update(reply.extra)
        return _encode_json(body)

    def dedupe_key(self, event: Event) -> str | None:
        """Every field the callback carries, as sent; None without MessageID or Timestamp.

        MessageID, Type, Status, Timestamp, Source, Destination, Message, Inbound, Test,
        Lookup, Reachable, Carrier, NumberType, Segments and MetaData, as a JSON array
        (an absent field is ``null``, never ``""``). Replies keep the outbound
        message's MessageID, so MessageID alone names no callback: without a Timestamp
        too (when it happened), two replies could agree on everything else, and only the
        body hash is used (see :meth:`Provider.dedupe_key`).
        """
        if event.message_id is None or not event.provider_timestamp:
            return None
        parts = (
            self.name,
            event.message_id,
            event.provider_type,
            event.provider_status,
            event.provider_timestamp,
            event.source,
            event.destination,
            event.text,
            event.inbound,
            event.test,
            event.lookup,
            event.reachable,
            event.carrier,
            event.number_type,
            event.segments,
            event.metadata,
        )
        return msgspec.json.encode(parts, order="sorted").decode()

    def has_callback_fields(self, query: str) -> bool:
        """A GET is a callback when its query string carries a callback field."""
        return any(
            _CANONICAL.get(name.lower()) in _RECOGNIZED
            for name, _ in parse_qsl(query, keep_blank_values=True)
        )


class DiyProvider(OnePointProvider):
    """Parser for DIY Surveys callbacks: OnePoint's, under DIY's name."""

    name: ClassVar[str] = "diy"


def _str(value: str | int | None) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _recognizable(fields: _Fields) -> bool:
    return bool(
        fields.Type
        or fields.MessageID
        or fields.Source
        or fields.Destination
        or fields.Message
        or fields.Status
    )


@lru_cache(maxsize=256)
def _type(value: str) -> EventType | None:
    """The event type of a ``Type`` value (cached: senders use a handful of spellings)."""
    known = TYPES.get(value)
    return known if known is not None else TYPES.get(squash(value))


@lru_cache(maxsize=256)
def _status(value: str) -> str:
    return canonical(value, STATUSES)


def _decode_json(raw: bytes) -> Any:
    try:
        return _JSON.decode(raw)
    except msgspec.DecodeError as exc:
        raise PayloadError(str(exc)) from None
    except RecursionError:
        raise PayloadError(TOO_DEEP) from None


def _canonical_keys(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Fields under their documented names, matched case-insensitively; others dropped."""
    found: dict[str, Any] = {}
    for name, value in items:
        canonical_name = _CANONICAL.get(name.lower())
        if canonical_name is not None:
            found[canonical_name] = value
    return found


def _read_form(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Form or query fields (under their documented names) and ``MetaData[Key]`` pairs.

    ``raw`` is UTF-8 (see :meth:`Provider.parse`); bytes or escapes that are not become
    U+FFFD. Empty values of typed fields (booleans, counts) count as absent. ``MetaData``
    may come as a JSON string or as ``MetaData[Key]=value`` / ``MetaData.Key=value``
    pairs. A ``+`` the sender did not percent-encode reads as a space; where a space
    cannot be valid it is read back as the ``+`` it was (see :func:`_unspaced`).
    """
    try:
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True, errors="replace")
    except ValueError as exc:
        raise PayloadError(f"malformed form body: {exc}") from None
    metadata: dict[str, Any] = {}
    for name, value in pairs:
        match = _METADATA_KEY.match(name)
        if match:
            metadata[match[1] if match[1] is not None else match[2]] = value
    found = _canonical_keys(
        (name, value)
        for name, value in pairs
        if value != "" or _CANONICAL.get(name.lower()) not in _TYPED
    )
    for field in _UNSPACED:
        spaced = found.get(field)
        if spaced is not None and " " in spaced:
            found[field] = _unspaced(field, spaced)
    _typed_form_values(found)
    text = found.get("MetaData")
    if isinstance(text, str):
        found["MetaData"] = decode_metadata(text)
    return found, metadata


_UNSPACED = ("Source", "Destination", "MessageID", "Timestamp")
"""Fields in which a space can stand for a '+': addresses, ids, timestamps."""
_PHONE = re.compile(r" +[0-9][0-9 ]*")


def _unspaced(name: str, value: str) -> str:
    """``value`` with the spaces an unencoded ``+`` became read back as ``+``.

    Addresses: a number with leading spaces (``" 447700900501"``) was ``+447700900501``;
    other spaces in an address (an alphanumeric sender) are kept. Ids: every space was a
    ``+``. Timestamps: a space where an offset's sign belongs (``...T10:00:00 01:00`` ->
    ``+01:00``; a space between date and time is kept). Numbers and flags: a space is
    dropped (``" 2"`` -> ``2``). Free text is never changed.
    """
    if name in ("Source", "Destination"):
        if _PHONE.fullmatch(value):
            return "+" + value.lstrip(" ")
        return value
    if name == "MessageID":
        return value.strip(" ").replace(" ", "+") if value.strip(" ") else value
    if name == "Timestamp":
        return _OFFSET_SPACE.sub(r"\1+\2", value)
    return value.strip()


_OFFSET_SPACE = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")
_TRUE = frozenset({"true", "1", "yes", "y", "on", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "off", "f"})


def _typed_form_values(found: dict[str, Any]) -> None:
    """Form and query text of flags and counts as booleans and integers, in place.

    A value with no sane reading (``Inbound=maybe``) is dropped and logged: the callback
    is kept without it rather than refused.
    """
    for field in _TYPED:
        text = found.get(field)
        if not isinstance(text, str):
            continue
        lowered = text.strip().lower()
        if field == "Segments":
            try:
                found[field] = int(lowered)
                continue
            except ValueError:
                pass
        elif lowered in _TRUE or lowered in _FALSE:
            found[field] = lowered in _TRUE
            continue
        del found[field]
        log.warning("unreadable field dropped", field=field)
