"""The operator console without a browser (issue 18): the journal's look-ups behind its
pages (bounded, on the time index) and its configuration. Kept apart from the browser
tests: Playwright's sync API runs an event loop of its own in the main thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

# -- the journal's look-ups (no browser) ---------------------------------------------------


def _event(number: int, at: float, channel: str = "w", source: str = "61400000000") -> Any:
    from datetime import UTC, datetime

    from receiver.events import Event, EventType

    return Event(
        id=f"evt-{number:05d}",
        received_at=datetime.fromtimestamp(at, UTC),
        channel=channel,
        provider="whispir",
        type=EventType.message,
        raw=b"{}",
        message_id=f"MSG{number:05d}",
        source=source,
        text=f"hello {number}",
    )


def test_console_journal_browse_pages_filters_and_stays_bounded(tmp_path: Path) -> None:
    import asyncio

    from receiver.journal import SQLiteJournal

    async def run() -> None:
        journal = SQLiteJournal(tmp_path / "j.db", duplicate_window=0, body_window=0)
        await journal.start()
        now = time.time()
        for number in range(120):
            channel = "a" if number % 2 else "b"
            event = _event(number, now - 1000 + number, channel, f"6140000{number:04d}")
            await journal.record(event, {}, None)
        first = await journal.browse(limit=50)
        assert [e.id for e in first.entries][:2] == ["evt-00119", "evt-00118"]
        assert len(first.entries) == 50 and first.older is not None
        second = await journal.browse(limit=50, before=first.older)
        assert second.entries[0].id == "evt-00069"
        only_a = await journal.browse(channel="a", limit=500)
        assert len(only_a.entries) == 60 and only_a.older is None
        found = await journal.browse(search="61400000042")
        assert [e.id for e in found.entries] == ["evt-00042"]
        assert [e.id for e in (await journal.browse(search="msg00007")).entries] == ["evt-00007"]
        # The scan bound: only the 30 newest are looked at; Older goes on from the 30th.
        bounded = await journal.browse(search="61400000042", scan=30)
        assert bounded.entries == [] and bounded.scanned == 30
        assert bounded.older == pytest.approx(now - 1000 + 90)
        counts = await journal.per_minute(now - 3600)
        assert sum(counts.values()) == 120
        await journal.stop()

    asyncio.run(run())


def test_console_journal_queries_use_the_time_index(tmp_path: Path) -> None:
    import sqlite3

    from receiver.journal import sqlite as store

    connection = sqlite3.connect(tmp_path / "plan.db")
    store._migrate(connection)
    query, params = store._browse_query(
        channel="w", provider="whispir", type="message", state="failed", search="614"
    )
    plans = {
        "page": (query, [0.0, 1e12, 5000, *params, 51]),
        "edge": (store._WINDOW_EDGE, [0.0, 1e12, 5000]),
        "chart": (store._PER_MINUTE, [0.0]),
    }
    for name, (sql, values) in plans.items():
        plan = " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", values))
        assert "events_received" in plan, (name, plan)
        assert "SCAN events" not in plan.replace("SCAN events USING", ""), (name, plan)
        assert "channel_" not in plan and "events_due" not in plan, (name, plan)
    page_plan = " | ".join(
        row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", plans["page"][1])
    )
    assert "INTEGER PRIMARY KEY (rowid=?)" in page_plan, page_plan
    connection.close()


def test_console_token_is_a_secret_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.config import SECRET_PLACES, load_config
    from receiver.errors import ConfigError

    assert "console" in SECRET_PLACES
    monkeypatch.setenv("CONSOLE_TOKEN_TEST", "from-the-environment-123")
    (tmp_path / "token").write_text("from-a-file-4567890\n")
    path = tmp_path / "receiver.toml"
    path.write_text('[console]\ntoken = "${CONSOLE_TOKEN_TEST}"\n')
    config = load_config(path)
    assert config.console is not None
    assert config.console.token == "from-the-environment-123"
    path.write_text(f'[console]\ntoken = "file:{tmp_path / "token"}"\n')
    config = load_config(path)
    assert config.console is not None and config.console.token == "from-a-file-4567890"
    path.write_text('[console]\ntoken = "short"\n')
    with pytest.raises(ConfigError, match=r"console\.token"):
        load_config(path).validate()
    path.write_text('[console]\ntoken = "${NOT_SET_ANYWHERE_CONSOLE}"\n')
    with pytest.raises(ConfigError, match=r"console\.token"):
        load_config(path)
    assert load_config(path, channel_secrets=False).console is not None  # operator commands


def test_console_name_is_reserved_for_channels() -> None:
    from receiver.config import Channel, Config
    from receiver.errors import ConfigError

    config = Config(channels={"console": Channel(provider="whispir", auth="none")})
    with pytest.raises(ConfigError, match=r"channels\.console"):
        config.validate()
