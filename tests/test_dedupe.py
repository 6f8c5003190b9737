"""Duplicate identity: a duplicate is a re-send of the same callback to the same channel.

Each test runs a real app (``TestClient``, lifespan on) over a real SQLite journal in
``tmp_path`` and counts what the plugins were given and what the journal stored. A
callback wrongly taken for a duplicate is answered 200 and dropped: for Whispir, which
never retries, that is a person's message lost.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from samples import PAYLOADS
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, create_app, hookimpl
from receiver.journal.sqlite import _BY_BODY, _BY_KEY

JSON = {"content-type": "application/json"}
CONTENT_TYPES = {
    ".json": "application/json",
    ".xml": "application/xml",
    ".form": "application/x-www-form-urlencoded",
}
RECEIPT = {
    "Source": "OPGDemo",
    "Destination": "447700900123",
    "Message": "Your appointment is confirmed for Thu 7 Mar at 10:30",
    "Type": "Receipt",
    "Timestamp": "2024-03-05T14:22:36.018442+00:00",
    "Inbound": False,
    "Status": "delivered",
    "MessageID": "MS1312312312323",
}
WHISPIR_REPLY = {
    "messageId": "3F1C7A9E0B2D4C68A5E1",
    "messageLocation": "https://api.au.whispir.com/messages/3F1C7A9E0B2D4C68A5E1",
    "from": {
        "name": "Olivia Nguyen",
        "mri": "Olivia_Nguyen.704215.Acme@Contact.whispir.com",
        "mobile": "61412345678",
        "email": "olivia.nguyen@example.com.au",
    },
    "responseMessage": {"channel": "SMS", "acknowledged": "09/01/13 13:22", "content": "YES"},
}
WHISPIR_STATUS = {
    "messageId": "7E8F9A0B1C2D43E4F5A6",
    "from": {"name": "John Waters", "mri": "John_Waters.528798@Contact.whispir.com"},
    "oldStatus": {"status": "PEND", "timestamp": "09/01/13 13:22"},
    "newStatus": {"status": "SENT", "timestamp": "09/01/13 13:22"},
}


class Seen:
    """Every event dispatched, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)


def make_app(tmp_path: Path, seen: Seen, channels: dict[str, str], **options: Any) -> Any:
    """An app whose channels (name -> provider) take callbacks without credentials."""
    config = Config(
        channels={name: Channel(provider=p, auth="none") for name, p in channels.items()},
        journal=f"sqlite:///{tmp_path / 'j.db'}",
        **options,
    )
    return create_app(config, plugins=[seen])


def stored(tmp_path: Path) -> list[tuple[str, bytes]]:
    """(channel, raw) of every journal row, oldest first, read with our own connection."""
    with closing(sqlite3.connect(tmp_path / "j.db")) as connection:
        return connection.execute("SELECT channel, raw FROM events ORDER BY received_at").fetchall()


def post_all(app: Any, bodies: list[tuple[str, bytes]]) -> None:
    with TestClient(app) as client:
        for channel, body in bodies:
            assert client.post(f"/{channel}", content=body, headers=JSON).status_code == 200


def encode(fields: dict[str, Any], **changes: Any) -> bytes:
    """``fields`` with ``changes`` as a JSON body; a change to None removes the field."""
    data = {**fields, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


# -- OnePoint and DIY: the examples --------------------------------------------


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_dedupe_two_replies_to_one_message_both_dispatched(tmp_path: Path, provider: str) -> None:
    # Replies keep the outbound message's MessageID; these carry no Type/Status/Timestamp.
    reply = {"MessageID": "MS1312312312323", "Source": "447700900123", "Destination": "60777"}
    bodies = [encode(reply, Message="the response"), encode(reply, Message="Sorry, I meant NO")]
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"op": provider}), [("op", body) for body in bodies])
    assert [event.text for event in seen.events] == ["the response", "Sorry, I meant NO"]
    assert [raw for _, raw in stored(tmp_path)] == bodies


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_dedupe_receipts_for_two_destinations_both_kept(tmp_path: Path, provider: str) -> None:
    bodies = [
        encode(RECEIPT, Destination="447700900123"),
        encode(RECEIPT, Destination="447700900456"),
    ]
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"op": provider}), [("op", body) for body in bodies])
    assert [event.destination for event in seen.events] == ["447700900123", "447700900456"]
    assert len(stored(tmp_path)) == 2


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_dedupe_same_callback_on_two_channels_each_dispatched(
    tmp_path: Path, provider: str
) -> None:
    # The body-hash look-up off: only the provider key could take one for the other.
    body = encode(RECEIPT)
    seen = Seen()
    app = make_app(tmp_path, seen, {"a": provider, "b": provider}, duplicate_body_window=0)
    post_all(app, [("a", body), ("b", body), ("a", body), ("b", body)])
    assert [event.channel for event in seen.events] == ["a", "b"]  # re-sends: duplicates
    assert stored(tmp_path) == [("a", body), ("b", body)]


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_dedupe_same_keyless_body_on_two_channels_each_dispatched(
    tmp_path: Path, provider: str
) -> None:
    # No Timestamp: no provider key; only the body hash decides, per channel.
    body = encode(RECEIPT, Timestamp=None)
    seen = Seen()
    post_all(
        make_app(tmp_path, seen, {"a": provider, "b": provider}),
        [("a", body), ("b", body), ("b", body)],
    )
    assert [event.channel for event in seen.events] == ["a", "b"]
    assert stored(tmp_path) == [("a", body), ("b", body)]


# -- OnePoint and DIY: every field of the key -------------------------------------------


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
@pytest.mark.parametrize(
    ("field", "first", "second"),
    [
        ("Source", "OPGDemo", "OPGOther"),
        ("Message", "the text sent", "another text sent"),
        ("Inbound", False, True),
        ("Test", False, True),
        ("Lookup", False, True),
        ("Reachable", False, True),
        ("Carrier", "EE", "O2"),
        ("NumberType", "Mobile", "Landline"),
        ("Segments", 1, 2),
        ("MetaData", {"Campaign": 1}, {"Campaign": 2}),
        ("Status", "", None),  # present but empty is not absent
        ("Type", "", None),
        ("Message", "", None),
    ],
)
def test_dedupe_callbacks_differing_in_one_field_both_kept(
    tmp_path: Path, provider: str, field: str, first: Any, second: Any
) -> None:
    bodies = [encode(RECEIPT, **{field: first}), encode(RECEIPT, **{field: second})]
    assert bodies[0] != bodies[1]
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"op": provider}), [("op", body) for body in bodies])
    assert len(seen.events) == 2
    assert len(stored(tmp_path)) == 2


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_dedupe_resend_in_other_formatting_is_duplicate(tmp_path: Path, provider: str) -> None:
    original = encode(RECEIPT, MetaData={"b": 2, "a": [1, {"x": None}]})
    resent = json.dumps(json.loads(original), indent=4).encode() + b"\n"
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"op": provider}), [("op", original), ("op", resent)])
    assert len(seen.events) == 1
    assert [raw for _, raw in stored(tmp_path)] == [original]


@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_dedupe_without_timestamp_only_the_body_hash_decides(tmp_path: Path, provider: str) -> None:
    # MessageID but no Timestamp: "mostly empty", so no provider key. The same bytes are a
    # re-send; the same fields in other bytes may be a second message, and are kept.
    body = encode(RECEIPT, Timestamp=None, Type="Message", Status=None, Message="YES")
    other_bytes = json.dumps(json.loads(body), indent=2).encode()
    seen = Seen()
    post_all(
        make_app(tmp_path, seen, {"op": provider}),
        [("op", body), ("op", body), ("op", other_bytes)],
    )
    assert len(seen.events) == 2
    assert [raw for _, raw in stored(tmp_path)] == [body, other_bytes]


# -- Whispir -------------------------------------------------------------------------


def whispir(base: dict[str, Any], **sections: Any) -> bytes:
    """``base`` with whole top-level values replaced (None removes the key)."""
    return encode(base, **sections)


def test_dedupe_whispir_two_replies_to_one_message_by_sms_and_email_both_kept(
    tmp_path: Path,
) -> None:
    # Two replies of one person to one message, the same text in the same minute: one by
    # SMS, one by email.
    sms = whispir(WHISPIR_REPLY)
    email = whispir(
        WHISPIR_REPLY,
        responseMessage={**WHISPIR_REPLY["responseMessage"], "channel": "EMAIL"},
    )
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"w": "whispir"}), [("w", sms), ("w", email)])
    assert [event.medium for event in seen.events] == ["sms", "email"]
    assert len(stored(tmp_path)) == 2


def test_dedupe_whispir_status_callbacks_differing_only_in_status_both_kept(
    tmp_path: Path,
) -> None:
    bodies = [
        whispir(WHISPIR_STATUS),
        # the same new status, reached from another one
        whispir(WHISPIR_STATUS, oldStatus={"status": "RCVD", "timestamp": "09/01/13 13:22"}),
        # another new status
        whispir(WHISPIR_STATUS, newStatus={"status": "RCVD", "timestamp": "09/01/13 13:22"}),
    ]
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"w": "whispir"}), [("w", body) for body in bodies])
    assert [(e.previous_status, e.status) for e in seen.events] == [
        ("pending", "sent"),
        ("delivered", "sent"),
        ("pending", "delivered"),
    ]


def test_dedupe_whispir_status_for_two_contacts_sharing_a_number_both_kept(
    tmp_path: Path,
) -> None:
    shared = {"mobile": "61412345678"}
    john = whispir(WHISPIR_STATUS, **{"from": {**shared, "name": "John", "mri": "John.1@c"}})
    steve = whispir(WHISPIR_STATUS, **{"from": {**shared, "name": "Steve", "mri": "Steve.2@c"}})
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"w": "whispir"}), [("w", john), ("w", steve)])
    assert [event.sender.name for event in seen.events if event.sender] == ["John", "Steve"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # reply content present but empty, and absent
        (
            {
                "responseMessage": {
                    "channel": "SMS",
                    "acknowledged": "09/01/13 13:22",
                    "content": "",
                }
            },
            {"responseMessage": {"channel": "SMS", "acknowledged": "09/01/13 13:22"}},
        ),
        # an old status, and none
        (
            {
                "newStatus": {"status": "SENT", "timestamp": "09/01/13 13:22"},
                "responseMessage": None,
            },
            {
                "newStatus": {"status": "SENT", "timestamp": "09/01/13 13:22"},
                "oldStatus": {"status": "PEND"},
                "responseMessage": None,
            },
        ),
        # a message location, and none
        ({"messageLocation": "https://api.au.whispir.com/messages/X"}, {"messageLocation": None}),
        # custom parameters that differ
        ({"customParameters": {"CustomID": "1"}}, {"customParameters": {"CustomID": "2"}}),
    ],
    ids=["content", "old-status", "location", "custom"],
)
def test_dedupe_whispir_callbacks_differing_in_one_part_both_kept(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any]
) -> None:
    bodies = [whispir(WHISPIR_REPLY, **first), whispir(WHISPIR_REPLY, **second)]
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"w": "whispir"}), [("w", body) for body in bodies])
    assert len(seen.events) == 2
    assert len(stored(tmp_path)) == 2


def test_dedupe_whispir_reports_differing_in_output_location_both_kept(tmp_path: Path) -> None:
    report = {"reportId": "91A8B7C6D5E4F3A2B1C0", "timestamp": "31/01/24 22:50"}
    bodies = [
        encode(report, outputLocation="https://reports.example/1"),
        encode(report, outputLocation="https://reports.example/2"),
    ]
    seen = Seen()
    post_all(make_app(tmp_path, seen, {"w": "whispir"}), [("w", body) for body in bodies])
    assert len(seen.events) == 2


def test_dedupe_whispir_reply_without_timestamp_only_the_body_hash_decides(
    tmp_path: Path,
) -> None:
    body = whispir(WHISPIR_REPLY, responseMessage={"channel": "SMS", "content": "YES"})
    other_bytes = json.dumps(json.loads(body), indent=2).encode()
    seen = Seen()
    post_all(
        make_app(tmp_path, seen, {"w": "whispir"}),
        [("w", body), ("w", body), ("w", other_bytes)],
    )
    assert len(seen.events) == 2


# -- true re-sends are still duplicates, for every provider and kind of callback ----------


def _payloads() -> list[Any]:
    return [
        pytest.param(folder, path, id=f"{folder}/{path.name}")
        for folder in ("onepoint", "diy", "whispir")
        for path in sorted((PAYLOADS / folder).iterdir())
    ]


@pytest.mark.parametrize(("provider", "path"), _payloads())
def test_dedupe_resend_to_same_channel_is_duplicate(
    tmp_path: Path, provider: str, path: Path
) -> None:
    # The body-hash look-up off: the provider key alone recognizes the re-send.
    seen = Seen()
    app = make_app(tmp_path, seen, {"ch": provider}, duplicate_body_window=0)
    raw = path.read_bytes()
    with TestClient(app) as client:
        for _ in range(2):
            if path.suffix == ".query":
                response = client.get(f"/ch?{raw.decode().strip()}")
            else:
                headers = {"content-type": CONTENT_TYPES[path.suffix]}
                response = client.post("/ch", content=raw, headers=headers)
            assert response.status_code == 200
    assert len(seen.events) == 1
    assert len(stored(tmp_path)) == 1


# -- the journal: look-ups per channel, one index each; older journal files ---------------

_OLD_SCHEMA = """
CREATE TABLE events (
    id TEXT PRIMARY KEY, channel TEXT NOT NULL, provider TEXT NOT NULL, type TEXT,
    message_id TEXT, state TEXT NOT NULL, received_at REAL NOT NULL, raw BLOB NOT NULL,
    meta BLOB, event BLOB, reply BLOB, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    failed_plugins BLOB, next_attempt_at REAL, dedupe_key TEXT, body_hash BLOB
);
CREATE INDEX events_dedupe ON events (dedupe_key, received_at) WHERE dedupe_key IS NOT NULL;
CREATE INDEX events_body ON events (body_hash, received_at);
CREATE INDEX events_retry ON events (next_attempt_at) WHERE state = 'failed';
CREATE INDEX events_received ON events (received_at);
"""


def test_dedupe_journal_from_before_migrates_and_keeps_working(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with closing(sqlite3.connect(db)) as connection:
        connection.executescript(_OLD_SCHEMA)
        connection.execute(
            "INSERT INTO events (id, channel, provider, state, received_at, raw, error) "
            "VALUES ('old-1', 'op', 'onepoint', 'rejected', 1.0, x'7b', 'bad')"
        )
        connection.commit()
    seen = Seen()
    body = encode(RECEIPT)
    app = make_app(tmp_path, seen, {"op": "onepoint"})
    post_all(app, [("op", body), ("op", body)])
    assert len(seen.events) == 1
    with closing(sqlite3.connect(db)) as connection:
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in connection.execute("PRAGMA table_info(events)")}
    assert {"events_dedupe", "events_body"}.isdisjoint(indexes)
    assert {"events_channel_dedupe", "events_channel_body"} <= indexes
    assert "recovered_as" in columns  # added for `receiver replay --rejected`
    (old,) = asyncio.run(app.state.journal.entries(state="rejected"))
    assert (old.id, old.raw, old.recovered_as) == ("old-1", b"{", None)


def test_dedupe_lookups_are_one_indexed_query_each(tmp_path: Path) -> None:
    app = make_app(tmp_path, Seen(), {"op": "onepoint"})
    post_all(app, [("op", encode(RECEIPT))])
    with closing(sqlite3.connect(tmp_path / "j.db")) as connection:
        plans = {
            name: [
                row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", ("op", "k", 0.0))
            ]
            for name, sql in (("key", _BY_KEY), ("body", _BY_BODY))
        }
    assert plans == {
        "key": [
            "SEARCH events USING INDEX events_channel_dedupe "
            "(channel=? AND dedupe_key=? AND received_at>?)"
        ],
        "body": [
            "SEARCH events USING INDEX events_channel_body "
            "(channel=? AND body_hash=? AND received_at>?)"
        ],
    }
