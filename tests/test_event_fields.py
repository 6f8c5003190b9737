"""The built-in parsers build Event positionally (a third of the keyword call's cost on the
request path): these tests tie that argument order to the field order (issue 12), so that
``source`` and ``destination`` (or any two fields) cannot swap unnoticed."""

from __future__ import annotations

import json

from receiver.events import Event, EventType
from receiver.providers.onepoint import DiyProvider, OnePointProvider
from receiver.providers.whispir import WhispirProvider

FIELD_ORDER = (
    "id", "received_at", "channel", "provider", "type", "raw", "provider_type",
    "message_id", "location", "source", "destination", "text", "medium", "status",
    "provider_status", "previous_status", "occurred_at", "provider_timestamp", "sender",
    "custom", "metadata", "inbound", "test", "lookup", "reachable", "carrier",
    "number_type", "segments", "report_id", "output_location", "out_of_order",
)  # fmt: skip


def test_event_fields_order_is_the_one_the_parsers_pass() -> None:
    """Reordering Event's fields changes what the positional calls in
    receiver/providers/*.py mean: change them together, then this list."""
    assert Event.__struct_fields__ == FIELD_ORDER


def test_event_fields_onepoint_every_field_lands_in_its_own_place() -> None:
    body = {
        "Source": "SRC-447700900001",
        "Destination": "DST-60777",
        "Message": "TEXT hello",
        "Type": "Receipt",
        "Timestamp": "2024-03-05T15:02:47+00:00",
        "Inbound": True,
        "Lookup": False,
        "Test": True,
        "Status": "Delivrd",
        "MetaData": [{"K": "V"}],
        "MessageID": "MID-1",
        "Carrier": "CARRIER-EE",
        "Reachable": False,
        "NumberType": "Mobile",
        "Segments": 3,
    }
    for provider in (OnePointProvider(), DiyProvider()):
        event = provider.parse(json.dumps(body).encode(), channel="CHAN", event_id="EID")
        assert (event.id, event.channel, event.provider) == ("EID", "CHAN", provider.name)
        assert event.type is EventType.receipt
        assert event.provider_type == "Receipt"
        assert event.message_id == "MID-1"
        assert event.location is None
        assert event.source == "SRC-447700900001"
        assert event.destination == "DST-60777"
        assert event.text == "TEXT hello"
        assert event.medium is None
        assert (event.status, event.provider_status) == ("delivered", "Delivrd")
        assert event.previous_status is None
        assert event.occurred_at is not None and event.occurred_at.year == 2024
        assert event.provider_timestamp == "2024-03-05T15:02:47+00:00"
        assert event.sender is None and event.custom == {}
        assert event.metadata == {"K": "V"}
        assert (event.inbound, event.test, event.lookup, event.reachable) == (
            True,
            True,
            False,
            False,
        )
        assert (event.carrier, event.number_type, event.segments) == ("CARRIER-EE", "mobile", 3)
        assert (event.report_id, event.output_location, event.out_of_order) == (None, None, False)


def test_event_fields_whispir_reply_and_status_land_in_their_places() -> None:
    reply = {
        "messageid": "MID-W",
        "messagelocation": "LOC-URL",
        "from": {"name": "Fred", "mobile": "MOBILE-614", "email": "e@x.test"},
        "responseMessage": {
            "channel": "SMS",
            "acknowledged": "09/01/13 13:22",
            "content": "TEXT yes",
        },
        "customParameters": {"CP": "1"},
    }
    event = WhispirProvider().parse(json.dumps(reply).encode(), channel="W", event_id="E1")
    assert (event.id, event.channel, event.provider) == ("E1", "W", "whispir")
    assert (event.message_id, event.location) == ("MID-W", "LOC-URL")
    assert (event.source, event.destination) == ("MOBILE-614", None)
    assert (event.text, event.medium) == ("TEXT yes", "sms")
    assert event.provider_timestamp == "09/01/13 13:22"
    assert event.sender is not None and event.sender.name == "Fred"
    assert event.custom == {"CP": "1"}
    status = {
        "messageid": "MID-S",
        "from": {"mobile": "RECIPIENT-614"},
        "oldStatus": {"status": "SENT"},
        "newStatus": {"status": "RCVD", "timestamp": "10/01/13 09:00"},
    }
    event = WhispirProvider().parse(json.dumps(status).encode())
    assert event.type is EventType.receipt
    assert (event.source, event.destination) == (None, "RECIPIENT-614")
    assert (event.status, event.provider_status, event.previous_status) == (
        "delivered",
        "RCVD",
        "sent",
    )
    assert event.provider_timestamp == "10/01/13 09:00"
