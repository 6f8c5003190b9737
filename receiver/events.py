"""The normalized event model every provider's callback is turned into.

One callback (one HTTP request) becomes one :class:`Event`. The field names are the
public contract: plugins read them, the journal stores them, ``forward`` re-posts them.
"""

from __future__ import annotations

import enum
import os
import random
import time
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "STATUS_RANK",
    "Contact",
    "Event",
    "EventType",
    "Reply",
    "new_event_id",
]


class EventType(enum.StrEnum):
    """What a callback is about; each value ``v`` is dispatched to the hook ``on_<v>``.

    The first fourteen are OnePoint/DIY ``Type`` values, ``undeliverable`` and ``report``
    are Whispir's, and ``unknown`` is any type a provider sent that receiver does not know
    (kept and dispatched to ``on_unknown``, never rejected).
    """

    receipt = "receipt"
    lookup = "lookup"
    message = "message"
    info = "info"
    help = "help"
    stop = "stop"
    unstop = "unstop"
    keyword = "keyword"
    click = "click"
    killed = "killed"
    not_killed = "not_killed"
    on_stop = "on_stop"
    routing_failure = "routing_failure"
    timed_out = "timed_out"
    undeliverable = "undeliverable"
    report = "report"
    unknown = "unknown"

    @property
    def is_response_type(self) -> bool:
        """True for the types whose handlers may answer with a reply (Message, Keyword)."""
        return self is EventType.message or self is EventType.keyword


class Contact(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A Whispir ``from`` block: who replied or whose message changed status."""

    name: str | None = None
    mri: str | None = None
    mobile: str | None = None
    email: str | None = None
    voice: str | None = None


class Event(msgspec.Struct, frozen=True, gc=False):
    """One callback, normalized.

    Build one with keyword arguments. (Positional arguments are accepted because the
    built-in parsers use them, a third of the cost on the request path; their order is
    the field order below and is not a promise.)

    Fields that a provider does not send are ``None`` (or empty for ``custom`` and
    ``metadata``). Raw values are kept next to normalized ones (``provider_type``,
    ``provider_status``, ``provider_timestamp``) and the body itself is in ``raw``.

    Attributes:
        id: Unique per received callback: a time-ordered UUIDv7 string.
        received_at: When receiver got the callback (UTC).
        channel: Name of the configured endpoint it arrived on ("" when parsed directly).
        provider: ``"whispir"``, ``"onepoint"``, ``"diy"`` or a plugin provider's name.
        type: What happened; decides the dispatch hook.
        provider_type: The type exactly as the provider spelled it (Whispir: the root
            element or callback kind, e.g. ``"deliveryresponse"``).
        message_id: The provider's message id.
        location: Whispir's message URL.
        source: For an inbound message, the person's address; OnePoint/DIY ``Source``
            as sent (on inbound callbacks their Source is the recipient of the original
            message). Whispir replies: the sender's address on the reply's medium.
        destination: OnePoint/DIY ``Destination`` as sent; Whispir does not say.
        text: Reply content / ``Message``; for a Click, the clicked URL.
        medium: ``"sms"``, ``"email"``, ``"voice"`` (lowercase), or None.
        status: Normalized status, lowercase snake_case (``"delivered"``, ``"failed"``).
        provider_status: The status as sent.
        previous_status: Normalized previous status (Whispir status callbacks).
        occurred_at: When it happened, timezone-aware, from the provider's timestamp.
        provider_timestamp: The timestamp as sent.
        sender: Whispir ``from`` block.
        custom: Whispir custom parameters, values as strings.
        metadata: OnePoint/DIY ``MetaData`` flattened into one mapping.
        inbound: OnePoint/DIY ``Inbound``.
        test: OnePoint/DIY ``Test``.
        lookup: OnePoint/DIY ``Lookup``.
        reachable: OnePoint/DIY ``Reachable``.
        carrier: OnePoint/DIY ``Carrier``.
        number_type: OnePoint/DIY ``NumberType``, lowercase (``"mobile"``, ``"landline"``).
        segments: Number of SMS segments, when the provider says.
        report_id: Whispir report completion: the report id.
        output_location: Whispir report completion: where the report is.
        out_of_order: Set by the journal when a status would move a message backwards.
        raw: The body exactly as received (for a GET callback, the query string, without
            the key parameter of an ``auth = "query"`` channel: removed, every spelling).
    """

    id: str
    received_at: datetime
    channel: str
    provider: str
    type: EventType
    raw: bytes
    provider_type: str | None = None
    message_id: str | None = None
    location: str | None = None
    source: str | None = None
    destination: str | None = None
    text: str | None = None
    medium: str | None = None
    status: str | None = None
    provider_status: str | None = None
    previous_status: str | None = None
    occurred_at: datetime | None = None
    provider_timestamp: str | None = None
    sender: Contact | None = None
    custom: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    inbound: bool | None = None
    test: bool | None = None
    lookup: bool | None = None
    reachable: bool | None = None
    carrier: str | None = None
    number_type: str | None = None
    segments: int | None = None
    report_id: str | None = None
    output_location: str | None = None
    out_of_order: bool = False


class Reply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A reply to an inbound Message or Keyword, returned by ``on_message``/``on_keyword``.

    For OnePoint and DIY it goes back in the HTTP response as a Message/Send body; for
    Whispir (which cannot take a reply in the response) it is handed to ``send_reply``.
    A handler may return a plain ``str``: shorthand for ``Reply(text=...)``.

    Attributes:
        text: The message to send back (OnePoint ``Message``).
        source: Who it comes from; default: the event's ``destination``.
        destination: Who it goes to; default: the event's ``source``.
        when: OnePoint ``When``: when to send it, as the provider expects it.
        reply: OnePoint ``Reply``, passed through as given.
        metadata: OnePoint ``MetaData``; sent as a list of one-key objects.
        extra: Any other Message/Send fields, sent as given.
    """

    text: str
    source: str | None = None
    destination: str | None = None
    when: str | None = None
    reply: str | None = None
    metadata: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None


STATUS_RANK: dict[str, int] = {
    "queued": 0,
    "pending": 0,
    "accepted": 0,
    "buffered": 0,
    "submitted": 1,
    "sent": 2,
    "delivered": 3,
    "failed": 3,
    "undelivered": 3,
    "expired": 3,
    "rejected": 3,
    "timed_out": 3,
    "killed": 3,
    "not_killed": 3,
    "no_route": 3,
    "landline": 3,
    "landline_unknown": 3,
    "acknowledged": 4,
    "read": 4,
}
"""Normalized status -> position in a message's lifecycle: queued < submitted < sent <
delivered | failed | other final states < acknowledged | read. The journal dispatches an
event whose status ranks below the latest one seen for its message and recipient with
``out_of_order=True``; statuses not in the table are never out of order."""


def new_event_id() -> str:
    """Return a new UUIDv7 (RFC 9562) string: millisecond time first, then 74 random bits.

    The 12 bits after the version are drawn once per millisecond (with the formatted
    time), the last 62 per id. The random bits come from :mod:`random` (ids must be
    unique, not secret): a tenth of the cost of a system call to ``os.urandom`` on the
    request path.
    """
    global _last_ms, _last_prefix
    ms = time.time_ns() // 1_000_000
    if ms != _last_ms:
        h = f"{ms:012x}"
        _last_ms, _last_prefix = ms, f"{h[:8]}-{h[8:]}-7{_getrandbits(12):03x}-"
    tail = (_getrandbits(62) | _VARIANT_BITS).to_bytes(8, "big").hex()
    return f"{_last_prefix}{tail[:4]}-{tail[4:]}"


_VARIANT_BITS = 0b10 << 62
_last_ms = -1
_last_prefix = ""
_random = random.Random()
_getrandbits = _random.getrandbits
os.register_at_fork(after_in_child=_random.seed)
