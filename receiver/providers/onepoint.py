"""OnePoint Global and DIY Surveys (its white label) callbacks.

Both send the same fields (``Source``, ``Destination``, ``Message``, ``Type``, ``Status``,
``Timestamp``, ``MetaData``, ...) as a JSON body, an ``application/x-www-form-urlencoded``
body, or (DIY's ``Method = GET``) in the query string. Field names are matched
case-insensitively; form and query values are strings and are converted to the field's
type (``"true"``/``"True"``/``"1"`` -> True, ``"2"`` -> 2).

``Type`` and ``Status`` are matched ignoring case, spaces, underscores and hyphens
(``Not Killed``, ``NotKilled`` and ``Notkilled`` are one type). An unknown ``Type`` is
kept as :attr:`EventType.unknown`, never rejected.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import msgspec
import structlog

from receiver.formats import BodyFormat
from receiver.normalize import canonical, parse_iso_timestamp, snake, squash
from receiver.providers.base import Provider
from receiver.types import Event, EventType, PayloadError, new_event_id

__all__ = ["STATUSES", "TYPES", "DiyProvider", "OnePointProvider"]

log = structlog.get_logger()

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


class _Fields(msgspec.Struct, kw_only=True):
    """The callback fields receiver reads, keyed by lowercased name."""

    source: str | int | None = None
    destination: str | int | None = None
    message: str | None = None
    type: str | None = None
    timestamp: str | None = None
    inbound: bool | None = None
    lookup: bool | None = None
    test: bool | None = None
    status: str | None = None
    metadata: list[Any] | dict[str, Any] | str | None = None
    messageid: str | int | None = None
    carrier: str | None = None
    reachable: bool | None = None
    numbertype: str | None = None
    segments: int | None = None


_FIELD_NAMES = frozenset(_Fields.__struct_fields__)
_TYPED = frozenset({"inbound", "lookup", "test", "reachable", "segments"})
_RECOGNIZED = ("type", "messageid", "source", "destination", "message", "status")
_JSON = msgspec.json.Decoder()
_METADATA_KEY = re.compile(r"^metadata(?:\[([^\]]*)\]|\.(.+))$", re.IGNORECASE)
_AT_PATH = re.compile(r"`\$\.(\w+)")


class OnePointProvider(Provider):
    """Parser for OnePoint Global callbacks (JSON, form and GET)."""

    name: ClassVar[str] = "onepoint"
    formats: ClassVar[frozenset[BodyFormat]] = frozenset({BodyFormat.json, BodyFormat.form})

    def parse_as(
        self,
        fmt: BodyFormat,
        raw: bytes,
        *,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        if fmt is BodyFormat.json:
            try:
                tree = _JSON.decode(raw)
            except msgspec.DecodeError as exc:
                raise PayloadError(str(exc)) from None
            if not isinstance(tree, dict):
                raise PayloadError("expected a JSON object, got an array or a scalar")
            names = {key.lower(): key for key in tree}
            lowered = {key.lower(): value for key, value in tree.items()}
            extra_metadata: dict[str, Any] = {}
        else:
            names, lowered, extra_metadata = _read_form(raw)
        if not any(key in lowered for key in _RECOGNIZED):
            raise PayloadError(
                f"not a {self.name} callback: no Type, MessageID, Source, Destination, "
                "Message or Status field"
            )
        try:
            fields = msgspec.convert(lowered, _Fields, strict=False)
        except msgspec.ValidationError as exc:
            # Name the field as the provider spelled it, not as lowercased here.
            reason = _AT_PATH.sub(lambda m: "`$." + names.get(m[1], m[1]), str(exc))
            raise PayloadError(reason) from None
        return self._normalize(fields, extra_metadata, raw, channel, received_at, event_id)

    def _normalize(
        self,
        fields: _Fields,
        extra_metadata: dict[str, Any],
        raw: bytes,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        provider_type = fields.type
        event_type = TYPES.get(squash(provider_type)) if provider_type else None
        if event_type is None:
            event_type = EventType.unknown
            log.warning(
                "unknown callback type", provider=self.name, provider_type=provider_type
            )
        metadata = _flatten_metadata(fields.metadata)
        if extra_metadata:
            metadata.update(extra_metadata)
        status = fields.status
        stamp = fields.timestamp
        return Event(
            id=event_id or new_event_id(),
            received_at=received_at,
            channel=channel,
            provider=self.name,
            type=event_type,
            raw=raw,
            provider_type=provider_type,
            message_id=_str(fields.messageid),
            source=_str(fields.source),
            destination=_str(fields.destination),
            text=fields.message,
            status=canonical(status, STATUSES) if status else None,
            provider_status=status,
            occurred_at=parse_iso_timestamp(stamp) if stamp else None,
            provider_timestamp=stamp,
            metadata=metadata,
            inbound=fields.inbound,
            test=fields.test,
            lookup=fields.lookup,
            reachable=fields.reachable,
            carrier=fields.carrier or None,
            number_type=snake(fields.numbertype) if fields.numbertype else None,
            segments=fields.segments,
        )

    def has_callback_fields(self, query: str) -> bool:
        """A GET is a callback when its query string carries a callback field."""
        return any(
            name.lower() in _RECOGNIZED for name, _ in parse_qsl(query, keep_blank_values=True)
        )


class DiyProvider(OnePointProvider):
    """Parser for DIY Surveys callbacks: OnePoint's, under DIY's name."""

    name: ClassVar[str] = "diy"


def _str(value: str | int | None) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _read_form(raw: bytes) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """Form or query fields: (lowercased -> original names, lowercased fields, metadata).

    Empty values of typed fields (booleans, counts) count as absent. ``MetaData`` may
    come as a JSON string or as ``MetaData[Key]=value`` / ``MetaData.Key=value`` pairs.
    """
    try:
        pairs = parse_qsl(raw.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise PayloadError("form body is not valid UTF-8") from None
    except ValueError as exc:
        raise PayloadError(f"malformed form body: {exc}") from None
    names: dict[str, str] = {}
    fields: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered in _FIELD_NAMES:
            if value == "" and lowered in _TYPED:
                continue
            names[lowered] = name
            fields[lowered] = value
            continue
        match = _METADATA_KEY.match(name)
        if match:
            metadata[match[1] if match[1] is not None else match[2]] = value
    text = fields.get("metadata")
    if isinstance(text, str):
        fields["metadata"] = _decode_metadata(text)
    return names, fields, metadata


def _decode_metadata(text: str) -> Any:
    if text.lstrip()[:1] in ("[", "{"):
        try:
            return _JSON.decode(text)
        except msgspec.DecodeError:
            raise PayloadError("MetaData: not valid JSON") from None
    return text


def _flatten_metadata(value: list[Any] | dict[str, Any] | str | None) -> dict[str, Any]:
    """MetaData as one mapping: a list of one-key objects is merged, the last key winning."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        return {"MetaData": value}
    if isinstance(value, dict):
        return dict(value)
    merged: dict[str, Any] = {}
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise PayloadError(f"MetaData[{index}]: expected an object")
        merged.update(item)
    return merged
