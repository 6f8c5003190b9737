"""A query key (``auth = "query"``) never reaches the journal, the event or the plugins.

A OnePoint/DIY GET callback carries its fields in the query string, next to the key;
``Event.raw`` of a GET callback is that query string. The key parameter is removed from
it before parsing, so neither the stored event, nor the raw body kept with it, nor what a
plugin receives holds it (tests/test_key_sweep.py sweeps every other place).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient

from receiver import Channel, Config, create_app

KEY = "s3cret-query-k3y-value"


@pytest.mark.parametrize("name", ["key", "KEY", "k%65y", "Key"])
def test_secrets_query_key_is_removed_from_event_and_journal(name: str, tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    seen = EventRecorder()
    channel = Channel(provider="diy", auth="query", param="key", keys=[KEY])
    config = Config(channels={"diy": channel}, journal=f"sqlite:///{db}")
    with TestClient(create_app(config, plugins=[seen])) as client:
        accepted = client.get(
            f"/diy?Type=Stop&MessageID=MS9&Source=447700900301&Message=STOP&{name}={KEY}"
        )
        rejected = client.get(f"/diy?Type=Message&MetaData=%7Bbroken&{name}={KEY}")
    assert accepted.status_code == 200
    assert rejected.status_code == 400
    event = seen.events[0]
    assert event.message_id == "MS9"
    assert KEY.encode() not in event.raw
    assert event.raw == b"Type=Stop&MessageID=MS9&Source=447700900301&Message=STOP"
    with sqlite3.connect(db) as connection:
        for row in connection.execute("SELECT * FROM events"):
            for column in row:
                if isinstance(column, bytes | str):
                    text = column if isinstance(column, str) else column.decode("latin-1")
                    assert KEY not in text
    assert len(list(sqlite3.connect(db).execute("SELECT id FROM events"))) == 2


def test_secrets_query_key_wrong_still_refused_and_other_params_kept() -> None:
    seen = EventRecorder()
    channel = Channel(provider="diy", auth="query", param="key", keys=[KEY])
    client = TestClient(create_app(Config(channels={"diy": channel}), plugins=[seen]))
    assert client.get("/diy?Type=Stop&MessageID=MS1&key=wrong").status_code == 401
    assert client.get("/diy?Type=Stop&MessageID=MS2&keyed=1&key=" + KEY).status_code == 200
    assert seen.events[0].raw == b"Type=Stop&MessageID=MS2&keyed=1"
