"""What a provider is: a name, the body formats it sends, a parser to :class:`Event`, and
its options and authentication modes."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from receiver.config import convert
from receiver.errors import ConfigError, PayloadError, UnsupportedPayload
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
    from receiver.auth import AuthenticatorFactory
    from receiver.config import Channel

__all__ = ["NoOptions", "Provider"]

_FORM, _JSON, _XML = BodyFormat.form, BodyFormat.json, BodyFormat.xml


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The options of a provider that takes none."""


class Provider(abc.ABC):
    """A callback dialect: turns one request's body into one :class:`Event`.

    Subclasses set :attr:`name` and :attr:`formats` and implement :meth:`parse_as`; they
    may declare :attr:`options` (a channel's ``[channels.NAME.options]`` table) and
    :attr:`authenticators` (auth modes of their own, such as a signature scheme).
    Instances are built once per app and must be safe to share between requests.
    """

    name: ClassVar[str]
    """The provider's name, as written in a channel's ``provider = "..."``."""

    formats: ClassVar[frozenset[BodyFormat]]
    """The body formats this provider sends."""

    options: ClassVar[type[msgspec.Struct]] = NoOptions
    """The struct a channel's ``options`` table converts to (default: no options).

    Give defaults to every field a channel may leave out. Secrets in it are written as
    ``"${VAR}"`` or ``"file:/path"`` like any configuration value.
    """

    authenticators: ClassVar[Mapping[str, AuthenticatorFactory]] = {}
    """Auth mode name -> factory, for the modes of this provider's own.

    A factory is called once per channel at start-up as ``factory(channel, options,
    name)`` (the :class:`~receiver.config.Channel`, its options as an :attr:`options`
    instance, the channel's name) and returns a :class:`receiver.auth.Authenticator`;
    it raises :class:`~receiver.errors.ConfigError` naming the key path when the options
    do not allow a check. The generic modes (``header``, ``query``, ``basic``,
    ``bearer``, ``none``) need no entry; an entry of the same name replaces one.
    """

    key_header: ClassVar[str | None] = None
    """The header ``auth = "header"`` reads when the channel names none (None: the
    channel must name it)."""

    @classmethod
    def read_options(cls, channel: Channel, name: str) -> Any:
        """Channel ``name``'s ``options`` table as an instance of :attr:`options`.

        Raises:
            ConfigError: a key the struct does not have (the message lists those it
                has) or a value of the wrong type, named ``channels.NAME.options.KEY``.
        """
        where = f"channels.{name}.options"
        known = [field.encode_name for field in msgspec.structs.fields(cls.options)]
        for key in channel.options:
            if key not in known:
                takes = f"its options: {', '.join(sorted(known))}" if known else "it has none"
                raise ConfigError(
                    f"{where}.{key}: provider {cls.name!r} has no such option ({takes}); remove it"
                )
        return convert(channel.options, cls.options, where)

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
    def from_channel(cls, channel: Channel, options: Any) -> Provider:
        """The provider for one configured channel; override to use its options.

        Args:
            channel: The channel's configuration.
            options: Its options, an instance of :attr:`options` (from
                :meth:`read_options`).

        Raises:
            ConfigError: an option's value is unusable (the app prefixes the message
                with ``channels.NAME: ``).
        """
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
