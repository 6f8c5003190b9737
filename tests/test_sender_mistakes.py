"""Sender mistakes with one sane reading (issue 11 part 4), and HEAD as a URL check (part 7).

A ``+`` that a sender did not percent-encode in a form body or query string arrives as a
space. Where a space cannot be valid (addresses that are numbers, ids, timestamps,
numbers and flags) it is read back as ``+`` (or dropped, for numbers); free text keeps
its spaces.
"""

from __future__ import annotations

from typing import Any

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.providers.onepoint import DiyProvider, OnePointProvider

FORM = "application/x-www-form-urlencoded"


class _Replier(EventRecorder):
    @hookimpl
    def on_message(self, event: Event) -> Reply:
        return Reply(text="Yes, reply SLOT to pick one")


def _client() -> tuple[TestClient, _Replier]:
    seen = _Replier()
    channels = {
        "diy": Channel(provider="diy", auth="none"),
        "op": Channel(provider="onepoint", auth="none"),
        "w": Channel(provider="whispir", auth="none"),
    }
    return TestClient(create_app(Config(channels=channels), plugins=[seen])), seen


def test_sender_mistakes_diy_get_unencoded_plus_in_numbers() -> None:
    client, seen = _client()
    response = client.get(
        "/diy?Type=Message&MessageID=MS5000000099001&Source=+447700900501"
        "&Destination=+447700900000&Message=Can+I+change+my+slot%3F&Inbound=true"
    )
    assert response.status_code == 200
    event = seen.events[0]
    assert event.source == "+447700900501"
    assert event.destination == "+447700900000"
    assert event.text == "Can I change my slot?"  # free text: spaces stay
    assert response.json()["Destination"] == "+447700900501"
    assert response.json()["Source"] == "+447700900000"


@pytest.mark.parametrize("provider", [OnePointProvider(), DiyProvider()])
@pytest.mark.parametrize(
    ("field", "sent", "expected"),
    [
        ("Source", "+447700900501", "+447700900501"),
        ("Source", "+61 400 400 400", "+61 400 400 400"),  # spaces after the + stay
        ("Destination", "+15551234567", "+15551234567"),
        ("Source", "My Shop", "My Shop"),  # an alphanumeric sender: not a number
        ("Source", "60777", "60777"),
        ("MessageID", "MS+5000+1", "MS+5000+1"),
        ("MessageID", "abc+/def==", "abc+/def=="),
    ],
)
def test_sender_mistakes_plus_in_addresses_and_ids(
    provider: Any, field: str, sent: str, expected: str
) -> None:
    query = f"Type=Message&Message=hi+there&{field}={sent}"
    event = provider.parse(b"", query=query)
    attribute = {"Source": "source", "Destination": "destination", "MessageID": "message_id"}
    assert getattr(event, attribute[field]) == expected
    assert event.text == "hi there"


@pytest.mark.parametrize("content_type", [FORM, None])
def test_sender_mistakes_plus_in_form_body(content_type: str | None) -> None:
    body = b"Type=Stop&MessageID=MS1&Source=+447700900302&Destination=60777&Message=STOP+now"
    event = DiyProvider().parse(body, content_type=content_type)
    assert event.source == "+447700900302"
    assert event.text == "STOP now"


def test_sender_mistakes_plus_in_timestamp_offset_kept_raw_too() -> None:
    event = OnePointProvider().parse(
        b"", query="Type=Receipt&MessageID=MS2&Status=Delivered&Timestamp=2024-05-01T10:00:00+01:00"
    )
    assert event.provider_timestamp == "2024-05-01T10:00:00+01:00"
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at.utcoffset().total_seconds() == 3600  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "sent", "attribute", "expected"),
    [
        ("Segments", "+2", "segments", 2),
        ("Inbound", "+true", "inbound", True),
        ("Test", "false+", "test", False),
    ],
)
def test_sender_mistakes_plus_in_numbers_and_flags(
    field: str, sent: str, attribute: str, expected: object
) -> None:
    event = DiyProvider().parse(b"", query=f"Type=Message&MessageID=MS3&Message=x&{field}={sent}")
    assert getattr(event, attribute) == expected


def test_sender_mistakes_encoded_plus_is_untouched() -> None:
    event = DiyProvider().parse(b"", query="Type=Message&MessageID=MS4&Source=%2B447700900501")
    assert event.source == "+447700900501"


def test_sender_mistakes_json_addresses_are_never_rewritten() -> None:
    body = b'{"Type":"Message","MessageID":"MS5","Source":" 447700900501","Message":" a b"}'
    event = OnePointProvider().parse(body)
    assert event.source == " 447700900501"  # JSON has no '+' to lose: the value as sent
    assert event.text == " a b"


# -- HEAD is a URL check, with or without callback fields ---------------------------------


@pytest.mark.parametrize("path", ["/diy", "/op", "/w"])
def test_sender_mistakes_head_with_callback_fields_dispatches_nothing(path: str) -> None:
    client, seen = _client()
    response = client.head(f"{path}?Type=Message&MessageID=MS6&Source=447700900501&Message=hi")
    assert response.status_code == 200
    assert response.content == b""
    assert seen.events == []


def test_sender_mistakes_head_without_fields_is_200() -> None:
    client, seen = _client()
    assert client.head("/diy").status_code == 200
    assert seen.events == []


def test_sender_mistakes_get_with_fields_is_still_dispatched() -> None:
    client, seen = _client()
    response = client.get("/diy?Type=Stop&MessageID=MS7&Source=447700900501&Message=STOP")
    assert response.status_code == 200
    assert len(seen.events) == 1


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("2026-11-30%2010:00:00%2B01:00", "2026-11-30 10:00:00+01:00"),  # encoded: as sent
        ("2026-11-30T10:00:00+01:00", "2026-11-30T10:00:00+01:00"),
        ("2026-11-30 10:00:00.123+0100", "2026-11-30 10:00:00.123+0100"),
        ("2026-11-30T10:00:00", "2026-11-30T10:00:00"),
    ],
)
def test_sender_mistakes_timestamp_space_between_date_and_time_is_kept(
    sent: str, expected: str
) -> None:
    event = DiyProvider().parse(b"", query=f"Type=Receipt&MessageID=MS8&Timestamp={sent}")
    assert event.provider_timestamp == expected
    assert event.occurred_at is not None


@pytest.mark.parametrize(
    ("field", "sent", "attribute", "expected"),
    [
        ("Segments", "%2B2", "segments", 2),
        ("Inbound", "yes", "inbound", True),
        ("Inbound", "No", "inbound", False),
        ("Reachable", "on", "reachable", True),
        ("Inbound", "maybe", "inbound", None),  # no sane reading: dropped, callback kept
        ("Segments", "two", "segments", None),
    ],
)
def test_sender_mistakes_flags_and_counts_never_refuse_the_callback(
    field: str, sent: str, attribute: str, expected: object
) -> None:
    event = DiyProvider().parse(b"", query=f"Type=Stop&MessageID=MS9&Message=STOP&{field}={sent}")
    assert event.type.value == "stop"
    assert getattr(event, attribute) == expected
