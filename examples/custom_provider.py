"""A plugin module that adds a provider: ``acme``, a tiny JSON callback dialect.

Acme (an imaginary SMS gateway) posts each inbound message as::

    {"id": "m-123", "from": "+61400000000", "text": "hello"}

and takes a reply in the response as ``{"to": ..., "text": ...}``. This module teaches
receiver to read that: it defines a :class:`receiver.providers.Provider` subclass named
``"acme"`` and returns it from the ``register_providers`` hook. Register the module as a
plugin and name the provider in a channel::

    import custom_provider
    create_app(
        Config(channels={"acme": Channel(provider="acme", auth="header",
                                         header="X-Acme-Key", keys=["..."])}),
        plugins=[custom_provider],
    )

or, in ``receiver.toml``: ``plugins = ["custom_provider"]`` and
``[channels.acme] provider = "acme"``. Acme messages then reach ``on_message`` like any
other; a handler's reply goes back through :meth:`AcmeProvider.render_reply`.

Run it on its own::

    ACME_KEY=... uvicorn examples.custom_provider:app
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import ClassVar

import msgspec

from receiver import Channel, Config, Event, EventType, PayloadError, Reply, create_app, hookimpl
from receiver.events import new_event_id
from receiver.formats import BodyFormat
from receiver.providers import Provider


class _AcmeMessage(msgspec.Struct):
    id: str
    sender: str = msgspec.field(name="from")
    text: str


_decode = msgspec.json.Decoder(_AcmeMessage).decode
_encode = msgspec.json.Encoder().encode


class AcmeProvider(Provider):
    """Acme's callbacks: one JSON object per inbound message."""

    name: ClassVar[str] = "acme"
    formats: ClassVar[frozenset[BodyFormat]] = frozenset({BodyFormat.json})

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
            medium="sms",
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
