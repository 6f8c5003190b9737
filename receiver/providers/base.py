"""What a provider is: a name, the body formats it sends, and a parser to :class:`Event`."""

from __future__ import annotations

import abc
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

import msgspec

from receiver.errors import PayloadError, UnsupportedPayload
from receiver.events import Event, Reply
from receiver.formats import (
    MARKS,
    BodyFormat,
    as_utf8,
    charset_of,
    detect_format,
    repair_json,
)

if TYPE_CHECKING:
    from receiver.config import Channel

__all__ = ["Provider"]

_FORM, _JSON, _XML = BodyFormat.form, BodyFormat.json, BodyFormat.xml


class Provider(abc.ABC):
    """A callback dialect: turns one request's body into one :class:`Event`.

    Subclasses set :attr:`name` and :attr:`formats` and implement :meth:`parse_as`.
    Instances are built once per app and must be safe to share between requests.
    """

    name: ClassVar[str]
    """The provider's name, as written in a channel's ``provider = "..."``."""

    formats: ClassVar[frozenset[BodyFormat]]
    """The body formats this provider sends."""

    def parse(
        self,
        body: bytes,
        *,
        content_type: str | None = None,
        query: str | bytes = "",
        channel: str = "",
        received_at: datetime | None = None,
        event_id: str | None = None,
    ) -> Event:
        """Parse one callback into an :class:`Event`.

        Args:
            body: The request body, exactly as received (after any Content-Encoding
                is undone).
            content_type: The request's Content-Type header, if any; trusted when it
                names a known format, otherwise the body is sniffed. Its ``charset``
                is honoured for JSON and form bodies.
            query: The request's query string (the raw bytes, or text); providers that
                call back with GET put the callback's fields there (used when the body
                is empty). Percent-escapes are read as UTF-8.
            channel: The configured endpoint name, copied into the event.
            received_at: When the request arrived (default: now, UTC).
            event_id: The event's id (default: a new UUIDv7).

        Text is read as :func:`receiver.formats.as_utf8` says (a byte order mark is not
        data, a declared charset is honoured, invalid bytes become U+FFFD), and a JSON
        body whose only fault is its text (bytes that are not UTF-8, a ``\\u`` escape
        of half a surrogate pair) is read with U+FFFD in their place
        (:func:`receiver.formats.repair_json`). ``parse_as`` sees the cleaned bytes;
        the event's ``raw`` is always the body as received.

        Raises:
            UnsupportedPayload: the body is in no format this provider sends.
            PayloadError: the body is malformed or holds no recognizable callback.
        """
        blank = not body or body.isspace()  # (no copy of the body, unlike strip())
        if blank and query and BodyFormat.form in self.formats:
            raw = query if isinstance(query, bytes) else query.encode()
            fmt, charset = _FORM, None
        elif blank:
            raise PayloadError("empty body")
        else:
            raw, detected = body, detect_format(content_type, body)
            if detected is None or detected not in self.formats:
                kinds = " or ".join(sorted(f.value for f in self.formats))
                raise UnsupportedPayload(f"{self.name} callbacks are {kinds}; this body is not")
            fmt = detected
            charset = charset_of(content_type) if content_type and ";" in content_type else None
        received_at = received_at or datetime.now(UTC)
        if fmt is _XML:  # expat reads BOMs and encoding declarations itself
            return self.parse_as(
                fmt, raw, channel=channel, received_at=received_at, event_id=event_id
            )
        # Checked inline: most bodies are UTF-8 with nothing to drop, and pay no call.
        data = raw if charset is None and raw[0] not in MARKS else as_utf8(raw, charset, fmt)
        try:
            event = self.parse_as(
                fmt, data, channel=channel, received_at=received_at, event_id=event_id
            )
        except PayloadError:
            repaired = repair_json(data) if fmt is _JSON else None
            if repaired is None:
                raise
            event = self.parse_as(
                fmt, repaired, channel=channel, received_at=received_at, event_id=event_id
            )
            data = repaired
        if data is not raw and event.raw is data:
            event = msgspec.structs.replace(event, raw=raw)
        return event

    @abc.abstractmethod
    def parse_as(
        self,
        fmt: BodyFormat,
        raw: bytes,
        *,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        """Parse ``raw`` known to be in format ``fmt`` (see :meth:`parse` for the rest)."""

    @classmethod
    def from_channel(cls, channel: Channel) -> Provider:
        """The provider for one configured channel (override to read channel options)."""
        return cls()

    def render_reply(self, event: Event, reply: Reply) -> bytes | None:
        """The HTTP response body that carries ``reply`` back, as JSON.

        None (the default) means this provider cannot take a reply in the response; the
        reply then goes to the ``send_reply`` hook.
        """
        return None

    def dedupe_key(self, event: Event) -> str | None:
        """A key equal for re-sends of one callback, and only for them.

        The journal treats a callback as a duplicate when an earlier one on the same
        channel had the same key (within ``duplicate_window``) or the same raw body
        (within ``duplicate_body_window``). So the key must hold every field that tells
        two callbacks apart: identifier, type, status, timestamp, sender and recipient,
        content, as sent. Encode absence distinctly (a field that is absent must never
        equal one that is present but empty): the built-in providers encode the parts
        as a JSON array, ``null`` for absent.

        Return None ("mostly empty": only the body hash is used) unless the callback has
        both an identifier of the message it is about and the time the provider says it
        happened: without the time, two different callbacks (a person texting "yes"
        twice in reply to one message, which keeps the message's id) can agree on every
        other field. The default returns None.
        """
        return None

    def has_callback_fields(self, query: str) -> bool:
        """Whether a GET with this query string is a callback (not a URL check).

        The default says no: only providers that call back with GET override it.
        """
        return False
