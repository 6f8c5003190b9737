"""A plugin module that adds a provider: ``acme``, a tiny JSON callback dialect.

Acme (an imaginary SMS gateway) posts each inbound message as::

    {"id": "m-123", "from": "+61400000000", "text": "hello"}

signed with ``X-Acme-Signature: sha256=<hex HMAC-SHA256(signing secret, body)>``, and
takes a reply in the response as ``{"to": ..., "text": ...}``. This module teaches
receiver all of that: it defines a :class:`receiver.providers.Provider` subclass named
``"acme"`` with its own options (:class:`AcmeOptions`) and its own auth mode
(``"signature"``), and returns it from the ``register_providers`` hook. Register the
module as a plugin and name the provider in a channel::

    import custom_provider
    create_app(
        Config(channels={"acme": Channel(provider="acme", auth="signature",
                                         options={"signing_secret": "..."})}),
        plugins=[custom_provider],
    )

or, in ``receiver.toml``::

    plugins = ["custom_provider"]

    [channels.acme]
    provider = "acme"
    auth = "signature"          # Acme's own mode; the generic ones work too
    [channels.acme.options]
    signing_secret = "${ACME_SECRET}"
    medium = "whatsapp"

Acme messages then reach ``on_message`` like any other; a handler's reply goes back
through :meth:`AcmeProvider.render_reply`.

Run it on its own::

    ACME_KEY=... uvicorn examples.custom_provider:app
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar

import msgspec

from receiver import Channel, Config, Event, EventType, PayloadError, Reply, create_app, hookimpl
from receiver.auth import Authenticator, AuthenticatorFactory, CallbackRequest
from receiver.errors import ConfigError, NotAuthenticated
from receiver.events import new_event_id
from receiver.formats import BodyFormat
from receiver.providers import Provider


class _AcmeMessage(msgspec.Struct):
    id: str
    sender: str = msgspec.field(name="from")
    text: str


_decode = msgspec.json.Decoder(_AcmeMessage).decode
_encode = msgspec.json.Encoder().encode


class AcmeOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An ``acme`` channel's ``[channels.NAME.options]``.

    Attributes:
        signing_secret: The secret Acme signs callbacks with (``auth = "signature"``).
        medium: The events' ``medium`` (Acme also relays WhatsApp).
    """

    signing_secret: str = ""
    medium: str = "sms"


class AcmeSignature(Authenticator):
    """``X-Acme-Signature: sha256=<hex HMAC-SHA256(signing_secret, raw body)>``."""

    def __init__(self, secret: str) -> None:
        self.key = secret.encode()

    def check(self, request: CallbackRequest) -> None:
        presented = request.header(b"x-acme-signature")
        if presented is None:
            raise NotAuthenticated("missing credentials: X-Acme-Signature header")
        digest = hmac.new(self.key, request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(presented, b"sha256=" + digest.encode()):
            raise NotAuthenticated("wrong credentials: signature does not match")


def acme_signature(channel: Channel, options: AcmeOptions, name: str) -> AcmeSignature:
    """The ``"signature"`` auth mode's factory (called once per channel at start-up)."""
    if not options.signing_secret:
        raise ConfigError(f"channels.{name}.options.signing_secret: auth = 'signature' needs it")
    return AcmeSignature(options.signing_secret)


class AcmeProvider(Provider):
    """Acme's callbacks: one JSON object per inbound message."""

    name: ClassVar[str] = "acme"
    formats: ClassVar[frozenset[BodyFormat]] = frozenset({BodyFormat.json})
    options: ClassVar[type[msgspec.Struct]] = AcmeOptions
    authenticators: ClassVar[Mapping[str, AuthenticatorFactory]] = {"signature": acme_signature}

    def __init__(self, medium: str = "sms") -> None:
        self.medium = medium

    @classmethod
    def from_channel(cls, channel: Channel, options: AcmeOptions) -> AcmeProvider:
        """One provider per channel, with that channel's options."""
        return cls(medium=options.medium)

    def parse_as(
        self,
        fmt: BodyFormat,
        raw: bytes,
        *,
        channel: str,
        received_at: datetime,
        event_id: str | None,
    ) -> Event:
        try:
            message = _decode(raw)
        except msgspec.DecodeError as exc:  # also msgspec.ValidationError
            # msgspec's messages name the field at fault, never the body.
            raise PayloadError(f"not an acme callback: {exc}") from None
        return Event(
            id=event_id or new_event_id(),
            received_at=received_at,
            channel=channel,
            provider=self.name,
            type=EventType.message,
            raw=raw,
            provider_type="message",
            message_id=message.id,
            source=message.sender,
            text=message.text,
            medium=self.medium,
        )

    def render_reply(self, event: Event, reply: Reply) -> bytes:
        """Acme takes the reply in the HTTP response."""
        to = reply.destination if reply.destination is not None else event.source
        return _encode({"to": to, "text": reply.text})


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [AcmeProvider]


app = create_app(
    Config(
        channels={
            "acme": Channel(
                provider="acme",
                auth="header",
                header="X-Acme-Key",
                keys=[os.environ.get("ACME_KEY", "change-me")],
            )
        }
    ),
    plugins=[sys.modules[__name__]],
)
