"""Tests for the durable journal: storage before the answer, duplicates, retries, CLI.

Every test uses a real SQLite file under ``tmp_path`` and, where durability is the
point, reads it back through a separate ``sqlite3`` connection (not through the app).
Apps run under ``with TestClient(app)`` so their lifespan opens the journal and starts
the retry worker; the tests that need truly concurrent requests use
``httpx2.ASGITransport`` instead (the app then starts its journal lazily) and stop the
worker and the journal themselves.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
import structlog
from samples import PAYLOADS
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.journal import SQLiteJournal
from receiver.redelivery import Redelivery

WHISPIR_REPLY = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
ONEPOINT_MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
ONEPOINT_DELIVERED = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
ONEPOINT_SENT = (PAYLOADS / "onepoint" / "receipt_sent.json").read_bytes()

JSON = {"content-type": "application/json"}
WHISPIR_KEY = "wh1spir-K3Y-never-stored"
QUERY_KEY = "sekret"


# -- helpers ------------------------------------------------------------------------


def db_path(tmp_path: Path) -> Path:
    return tmp_path / "j.db"


def make_app(tmp_path: Path, *, plugins: Any = (), journal: str | None = "", **options: Any) -> Any:
    """An app with an open OnePoint channel ``/sms`` and a keyed Whispir channel ``/w``."""
    channels = options.pop(
        "channels",
        {
            "sms": Channel(provider="onepoint", auth="none"),
            "w": Channel(provider="whispir", auth="header", keys=[WHISPIR_KEY]),
        },
    )
    if journal == "":
        journal = f"sqlite:///{db_path(tmp_path)}"
    return create_app(Config(channels=channels, journal=journal, **options), plugins=plugins)


def rows(db: Path, where: str = "1 = 1", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of the events table, oldest first, read through a connection of our own."""
    with closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        found = connection.execute(
            f"SELECT * FROM events WHERE {where} ORDER BY received_at", params
        ).fetchall()
        return [dict(row) for row in found]


def wait_until(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def state_of(db: Path, event_id: str) -> str | None:
    found = rows(db, "id = ?", (event_id,))
    return found[0]["state"] if found else None


def onepoint(base: bytes = ONEPOINT_DELIVERED, **changes: Any) -> bytes:
    """A OnePoint body: ``base`` with some fields changed."""
    data = json.loads(base)
    data.update(changes)
    return json.dumps(data).encode()


def decode(blob: bytes | None) -> Any:
    return msgspec.msgpack.decode(blob) if blob is not None else None


class Counter:
    """Records every event it is given through on_event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)


class ReceiptCounter:
    """Records every receipt (on_receipt)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.events.append(event)


class FailingReceipts:
    """on_receipt raises the first ``failures`` times (forever when None), then succeeds."""

    def __init__(self, failures: int | None = None) -> None:
        self.failures = failures
        self.calls = 0

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise RuntimeError(f"boom {self.calls}")


class CountingReplier:
    """on_message replies "reply N", N counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        self.calls += 1
        return Reply(text=f"reply {self.calls}")


async def _shutdown(app: Any) -> None:
    """What the lifespan would do at shutdown (ASGITransport runs no lifespan)."""
    await app.state.redelivery.stop()
    await app.state.journal.stop()


# -- 1. durable before the answer, without credentials --------------------------------


def test_journal_durable_before_200_without_credentials(tmp_path: Path) -> None:
    app = make_app(
        tmp_path,
        channels={
            "w": Channel(provider="whispir", auth="header", keys=[WHISPIR_KEY]),
            "q": Channel(provider="onepoint", auth="query", keys=[QUERY_KEY]),
        },
    )
    whispir_body = WHISPIR_REPLY + b"\r\n \t"  # trailing bytes must survive as sent
    onepoint_body = ONEPOINT_DELIVERED
    db = db_path(tmp_path)
    with TestClient(app) as client:
        r = client.post(
            "/w", content=whispir_body, headers={**JSON, "X-Whispir-Callback-Key": WHISPIR_KEY}
        )
        assert r.status_code == 200
        # Checked while the app still runs: the row was committed before the 200.
        (row,) = rows(db, "channel = 'w'")
        assert row["state"] == "done"
        assert row["provider"] == "whispir"
        assert row["raw"] == whispir_body
        meta = decode(row["meta"])
        assert meta["method"] == "POST"
        assert meta["path"] == "/w"
        assert "x-whispir-callback-key" not in meta
        for value in row.values():
            if isinstance(value, bytes):
                assert WHISPIR_KEY.encode() not in value
            elif isinstance(value, str):
                assert WHISPIR_KEY not in value

        r = client.post(f"/q?auth={QUERY_KEY}&batch=7", content=onepoint_body, headers=JSON)
        assert r.status_code == 200
        (row,) = rows(db, "channel = 'q'")
        assert row["state"] == "done"
        assert row["raw"] == onepoint_body
        meta = decode(row["meta"])
        assert meta["query"] == "batch=7"  # the key parameter removed
        for value in row.values():
            if isinstance(value, bytes):
                assert QUERY_KEY.encode() not in value
            elif isinstance(value, str):
                assert QUERY_KEY not in value


# -- 2. rejected bodies -------------------------------------------------------------


def test_journal_rejected_body_is_kept_unauthenticated_is_not(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    db = db_path(tmp_path)
    garbage = b'{"messageId": "X", '
    with TestClient(app) as client:
        r = client.post(
            "/w", content=garbage, headers={**JSON, "X-Whispir-Callback-Key": WHISPIR_KEY}
        )
        assert r.status_code == 400
        (row,) = rows(db)
        assert row["state"] == "rejected"
        assert row["channel"] == "w"
        assert row["provider"] == "whispir"
        assert row["raw"] == garbage
        assert row["error"]
        assert row["error"] == r.json()["error"]

        for body in (WHISPIR_REPLY, b"not even json"):
            r = client.post("/w", content=body, headers={**JSON, "X-Whispir-Callback-Key": "wrong"})
            assert r.status_code == 401
        assert len(rows(db)) == 1


# -- 3. duplicates ------------------------------------------------------------------


def test_journal_duplicate_receipt_dispatched_once(tmp_path: Path) -> None:
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter])
    with TestClient(app) as client:
        first = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
        second = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
    assert (first.status_code, second.status_code) == (200, 200)
    assert len(counter.events) == 1
    (row,) = rows(db_path(tmp_path))
    assert row["state"] == "done"
    assert row["id"] == counter.events[0].id


def test_journal_duplicate_same_body_caught_by_body_hash(tmp_path: Path) -> None:
    # duplicate_window=0: the provider key finds nothing, only the body hash can.
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter], duplicate_window=0, duplicate_body_window=600)
    with TestClient(app) as client:
        first = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
        second = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
    assert (first.status_code, second.status_code) == (200, 200)
    assert len(counter.events) == 1
    assert len(rows(db_path(tmp_path))) == 1


def test_journal_duplicate_same_provider_key_different_body(tmp_path: Path) -> None:
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter])
    original = ONEPOINT_DELIVERED
    reformatted = json.dumps(json.loads(original), indent=8).encode() + b"\n\n"
    other_text = onepoint(Message="a different text, same receipt")  # another callback
    later = onepoint(Timestamp="2024-03-05T14:22:40.000000+00:00")  # a new key: not a dup
    assert len({original, other_text, reformatted}) == 3
    with TestClient(app) as client:
        for body in (original, reformatted):
            assert client.post("/sms", content=body, headers=JSON).status_code == 200
        assert len(counter.events) == 1
        assert len(rows(db_path(tmp_path))) == 1
        for body in (other_text, later):
            assert client.post("/sms", content=body, headers=JSON).status_code == 200
    assert len(counter.events) == 3
    assert [row["raw"] for row in rows(db_path(tmp_path))] == [original, other_text, later]


def test_journal_duplicate_outside_window_dispatched_again(tmp_path: Path) -> None:
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter], duplicate_window=0, duplicate_body_window=0)
    with TestClient(app) as client:
        for _ in range(2):
            assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
            time.sleep(0.01)
    assert len(counter.events) == 2
    found = rows(db_path(tmp_path))
    assert [row["state"] for row in found] == ["done", "done"]
    assert found[0]["id"] != found[1]["id"]


# -- 4. and 5. a duplicate Message gets the original's reply ------------------------------


def test_journal_duplicate_message_gets_same_reply(tmp_path: Path) -> None:
    replier = CountingReplier()
    app = make_app(tmp_path, plugins=[replier])
    reformatted = json.dumps(json.loads(ONEPOINT_MESSAGE)).encode()  # same key, other body
    with TestClient(app) as client:
        first = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        again = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        resent = client.post("/sms", content=reformatted, headers=JSON)
    assert first.status_code == again.status_code == resent.status_code == 200
    assert first.json()["Message"] == "reply 1"
    assert again.content == first.content
    assert resent.content == first.content
    assert replier.calls == 1
    (row,) = rows(db_path(tmp_path))
    assert decode(row["reply"])["text"] == "reply 1"


def test_journal_duplicate_while_original_in_flight_waits_for_its_reply(tmp_path: Path) -> None:
    class SlowReplier:
        def __init__(self) -> None:
            self.calls = 0

        @hookimpl
        async def on_message(self, event: Event) -> str:
            self.calls += 1
            calls = self.calls
            await asyncio.sleep(0.5)
            return f"reply {calls}"

    replier = SlowReplier()
    app = make_app(tmp_path, plugins=[replier])

    async def scenario() -> tuple[httpx2.Response, httpx2.Response, float]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://r.test") as client:
            try:

                async def original() -> httpx2.Response:
                    return await client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)

                async def duplicate() -> tuple[httpx2.Response, float]:
                    await asyncio.sleep(0.15)  # the original is inside its handler by now
                    started = time.monotonic()
                    response = await client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
                    return response, time.monotonic() - started

                first, (second, waited) = await asyncio.gather(original(), duplicate())
            finally:
                await _shutdown(app)
        return first, second, waited

    first, second, waited = asyncio.run(scenario())
    assert first.status_code == second.status_code == 200
    assert first.json()["Message"] == "reply 1"
    assert second.content == first.content
    assert replier.calls == 1
    assert waited > 0.2  # it waited for the original rather than answering at once
    assert len(rows(db_path(tmp_path))) == 1


# -- 6. and 7. failures, retries, dead letters -------------------------------------------


def test_journal_failed_handler_answers_200_and_is_recorded(tmp_path: Path) -> None:
    app = make_app(tmp_path, plugins=[FailingReceipts()])  # default delays: no retry soon
    with TestClient(app) as client:
        r = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
        assert r.status_code == 200
        (row,) = rows(db_path(tmp_path))
    assert row["state"] == "failed"
    assert row["attempts"] == 1
    assert "failed" in row["error"]
    assert row["next_attempt_at"] > time.time()
    assert len(decode(row["failed_plugins"])) == 1


def test_journal_retry_calls_only_failed_plugins_until_done(tmp_path: Path) -> None:
    flaky = FailingReceipts(failures=2)
    steady = Counter()
    app = make_app(tmp_path, plugins=[flaky, steady], retry_delays=[0.05, 0.05])
    app.state.redelivery.poll_interval = 0.05
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
        event_id = rows(db)[0]["id"]
        assert wait_until(lambda: state_of(db, event_id) == "done")
    (row,) = rows(db)
    assert row["state"] == "done"
    assert row["attempts"] == 3
    assert row["error"] is None
    assert row["failed_plugins"] is None
    assert flaky.calls == 3
    assert [event.id for event in steady.events] == [event_id]  # not called on retries


def test_journal_dead_letter_after_last_retry(tmp_path: Path) -> None:
    always = FailingReceipts()
    app = make_app(tmp_path, plugins=[always], retry_delays=[0.01, 0.01])
    app.state.redelivery.poll_interval = 0.05
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
        event_id = rows(db)[0]["id"]
        assert wait_until(lambda: state_of(db, event_id) == "dead")
        time.sleep(0.2)  # a dead letter is not retried any more
    (row,) = rows(db)
    assert row["state"] == "dead"
    assert row["attempts"] == 3
    assert row["next_attempt_at"] is None
    assert "failed" in row["error"]
    assert always.calls == 3


# -- 8. resume after a restart -----------------------------------------------------------


def test_journal_resumes_received_entries_after_restart(tmp_path: Path) -> None:
    from receiver.providers.onepoint import OnePointProvider

    db = db_path(tmp_path)
    event = OnePointProvider().parse(
        ONEPOINT_DELIVERED, content_type="application/json", channel="sms"
    )

    async def crashed_process() -> None:  # recorded, then died before handling it
        journal = SQLiteJournal(db)
        await journal.start()
        await journal.record(event, {}, None)
        await journal.stop()

    asyncio.run(crashed_process())
    assert [row["state"] for row in rows(db)] == ["received"]

    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter])
    app.state.redelivery.poll_interval = 0.05
    with TestClient(app):
        assert wait_until(lambda: state_of(db, event.id) == "done")
        time.sleep(0.2)  # and only once
    assert [e.id for e in counter.events] == [event.id]
    assert counter.events[0].raw == ONEPOINT_DELIVERED
    (row,) = rows(db)
    assert row["attempts"] == 1


# -- 9. out-of-order statuses ----------------------------------------------------------


class OrderWatcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, bool]] = []

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.seen.append((event.status, event.out_of_order))


def test_journal_out_of_order_receipts(tmp_path: Path) -> None:
    watcher = OrderWatcher()
    app = make_app(tmp_path, plugins=[watcher])
    early, late = "2024-03-05T14:22:31.000000+00:00", "2024-03-05T14:22:36.000000+00:00"

    def receipt(message_id: str, status: str, timestamp: str) -> bytes:
        return onepoint(MessageID=message_id, Status=status, Timestamp=timestamp)

    with TestClient(app) as client:
        for body in (
            receipt("BACKWARDS", "Delivered", late),
            receipt("BACKWARDS", "Sent", early),
            receipt("FORWARDS", "Sent", early),
            receipt("FORWARDS", "Delivered", late),
            receipt("UNKNOWN", "Delivered", early),
            receipt("UNKNOWN", "Wibble", late),
        ):
            assert client.post("/sms", content=body, headers=JSON).status_code == 200
        stored = {
            (e.message_id, e.event.status if e.event else None): e.event.out_of_order
            for e in asyncio.run(app.state.journal.entries(limit=None))
            if e.event is not None
        }
    assert watcher.seen == [
        ("delivered", False),
        ("sent", True),
        ("sent", False),
        ("delivered", False),
        ("delivered", False),
        ("wibble", False),
    ]
    assert stored[("BACKWARDS", "sent")] is True
    assert stored[("BACKWARDS", "delivered")] is False
    assert stored[("UNKNOWN", "wibble")] is False


# -- 10. the operator commands -----------------------------------------------------------


def test_journal_cli_events_replay_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import receiver.logs
    from receiver.cli import main

    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    # The CLI configures process-wide logging (cached structlog loggers): keep it local.
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)

    db = db_path(tmp_path)
    count_file = tmp_path / "count.txt"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "counting.py").write_text(
        "from receiver import hookimpl\n\n"
        "@hookimpl\n"
        "def on_receipt(event):\n"
        f"    with open({str(count_file)!r}, 'a') as f:\n"
        "        f.write(event.id + '\\n')\n"
    )
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        f'journal = "sqlite:///{db}"\n'
        f"plugins_dir = {str(plugins)!r}\n"
        "[channels.sms]\n"
        'provider = "onepoint"\n'
        'auth = "none"\n'
    )

    # A dead letter (no retries at all), then a failed entry that is not dead.
    dead_app = make_app(tmp_path, plugins=[FailingReceipts()], retry_delays=[])
    with TestClient(dead_app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    failed_app = make_app(tmp_path, plugins=[FailingReceipts()], retry_delays=[3600])
    with TestClient(failed_app) as client:
        assert client.post("/sms", content=ONEPOINT_SENT, headers=JSON).status_code == 200
    states = {row["raw"]: (row["id"], row["state"]) for row in rows(db)}
    dead_id, dead_state = states[ONEPOINT_DELIVERED]
    failed_id, failed_state = states[ONEPOINT_SENT]
    assert (dead_state, failed_state) == ("dead", "failed")
    capsys.readouterr()

    assert main(["events", "--config", str(toml), "--state", "dead"]) == 0
    out = capsys.readouterr().out
    assert dead_id in out
    assert failed_id not in out
    assert main(["events", "--config", str(toml), "--status", "failed"]) == 0  # its old name
    out = capsys.readouterr().out
    assert failed_id in out
    assert dead_id not in out

    assert main(["events", "--config", str(toml), "show", dead_id]) == 0
    out = capsys.readouterr().out
    assert dead_id in out
    assert ONEPOINT_DELIVERED.decode() in out

    assert main(["replay", "--config", str(toml), "--dead", "--dry-run", "--only-loaded"]) == 0
    out = capsys.readouterr().out
    assert f"would replay {dead_id}" in out
    assert failed_id not in out
    assert not count_file.exists()
    assert state_of(db, dead_id) == "dead"

    # The entry failed in a plugin object this configuration does not load: --only-loaded.
    assert main(["replay", "--config", str(toml), "--dead", "--only-loaded"]) == 0
    assert count_file.read_text().split() == [dead_id]
    assert state_of(db, dead_id) == "done"
    assert state_of(db, failed_id) == "failed"

    capsys.readouterr()
    assert main(["prune", "--config", str(toml), "--older-than", "0s"]) == 0
    assert "pruned 1 entries" in capsys.readouterr().out
    assert [(row["id"], row["state"]) for row in rows(db)] == [(failed_id, "failed")]


# -- 11. group commit -----------------------------------------------------------------


def test_journal_group_commit_batches_concurrent_callbacks(tmp_path: Path) -> None:
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter])
    count = 200
    bodies = [onepoint(MessageID=f"MSG{i:05d}") for i in range(count)]

    async def scenario() -> tuple[list[httpx2.Response], int]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://r.test") as client:
            try:
                responses = await asyncio.gather(
                    *(client.post("/sms", content=body, headers=JSON) for body in bodies)
                )
                commits = app.state.journal.commits
            finally:
                await _shutdown(app)
        return list(responses), commits

    responses, commits = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * count
    assert len(counter.events) == count
    found = rows(db_path(tmp_path))
    assert len(found) == count
    assert {row["state"] for row in found} == {"done"}
    assert commits < 2 * count  # record + complete per callback, fewer transactions


# -- 12. and 13. readiness, and no journal --------------------------------------------------


def test_journal_readyz_ok_with_working_journal(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with TestClient(app) as client:
        r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"


def test_journal_none_creates_nothing_and_errors_are_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written relative to the cwd would show here
    failing = FailingReceipts()
    for journal in (None, "none"):
        app = make_app(tmp_path, plugins=[failing], journal=journal)
        assert app.state.journal is None
        with TestClient(app) as client:
            r = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
            assert r.status_code == 500
            # no duplicate detection either: the same body is dispatched again
            assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 500
    assert failing.calls == 4
    assert list(tmp_path.iterdir()) == []


# -- 14. one failing operation fails only its own callback ------------------------------


def test_journal_operation_that_raises_fails_only_its_own_callback(tmp_path: Path) -> None:
    from receiver.providers.onepoint import OnePointProvider

    db = db_path(tmp_path)
    parse = OnePointProvider().parse
    good = [
        parse(onepoint(MessageID=f"GOOD{i}"), content_type="application/json", channel="sms")
        for i in range(3)
    ]
    # msgpack holds integers of at most 64 bits: storing this event raises OverflowError.
    bad = msgspec.structs.replace(
        parse(onepoint(MessageID="BAD"), content_type="application/json", channel="sms"),
        metadata={"huge": 2**70},
    )
    first = parse(onepoint(MessageID="FIRST"), content_type="application/json", channel="sms")

    async def scenario() -> tuple[list[Any], int]:
        journal = SQLiteJournal(db)
        await journal.start()
        # Hold the write lock, so that everything sent meanwhile waits in one group.
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            ahead = asyncio.ensure_future(journal.record(first, {}, None))
            await asyncio.sleep(0.1)  # the writer now waits for the lock with FIRST
            group = [
                asyncio.ensure_future(journal.record(event, {}, None))
                for event in (good[0], bad, good[1], good[2])
            ]
            await asyncio.sleep(0.1)  # all four queued behind it
            commits = journal.commits
            blocker.execute("COMMIT")
            await ahead
            results = await asyncio.gather(*group, return_exceptions=True)
            committed = journal.commits - commits  # (stop commits once more: the lease)
        finally:
            blocker.close()
            await journal.stop()
        return results, committed

    results, commits = asyncio.run(scenario())
    assert isinstance(results[1], OverflowError)
    assert [r.event.id for r in (results[0], results[2], results[3])] == [e.id for e in good]
    assert commits == 1 + 3  # FIRST alone; the group rolled back, each good one re-run alone
    assert sorted(row["message_id"] for row in rows(db)) == ["FIRST", "GOOD0", "GOOD1", "GOOD2"]


# -- 15. one async interface: the operator commands' methods too -----------------------


def test_journal_interface_is_async_throughout() -> None:
    """Every public method of the interface (and of the SQLite journal) is a coroutine
    function: one driver serves the request path and the operator commands."""
    import inspect

    from receiver.journal import Journal

    public = sorted(
        name for name, _ in inspect.getmembers(Journal, inspect.isfunction) if name[0] != "_"
    )
    assert {"record", "complete", "fail", "entries", "prune", "check", "start", "stop"} <= set(
        public
    )
    for cls in (Journal, SQLiteJournal):
        assert [n for n in public if not inspect.iscoroutinefunction(getattr(cls, n))] == []


def test_journal_reads_do_not_wait_for_a_record_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """entries() and check() read beside the writer, off the event loop: while a record
    waits for the write lock, they answer (without it), and the loop keeps running."""
    import threading

    import receiver.journal.sqlite_io
    from receiver.providers.onepoint import OnePointProvider

    db = db_path(tmp_path)
    parse = OnePointProvider().parse
    first, second = (
        parse(onepoint(MessageID=name), content_type="application/json", channel="sms")
        for name in ("FIRST", "SECOND")
    )
    opened_in: list[int] = []
    connect = receiver.journal.sqlite_io.connect

    def spy(path: Path) -> sqlite3.Connection:
        opened_in.append(threading.get_ident())
        return connect(path)

    async def scenario() -> tuple[list[str], str | None, bool, int]:
        journal = SQLiteJournal(db)
        await journal.start()
        monkeypatch.setattr(receiver.journal.sqlite_io, "connect", spy)  # reads from here on
        await journal.record(first, {}, None)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # hold the write lock: SECOND waits in the writer
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        try:
            in_flight = asyncio.ensure_future(journal.record(second, {}, None))
            await asyncio.sleep(0.1)
            listed = await asyncio.wait_for(journal.entries(limit=None), 2)
            problem = await asyncio.wait_for(journal.check(), 2)
            still_waiting = not in_flight.done()
            blocker.execute("COMMIT")
            await in_flight
        finally:
            ticker.cancel()
            blocker.close()
            await journal.stop()
        return [e.message_id or "" for e in listed], problem, still_waiting, ticks

    listed, problem, still_waiting, ticks = asyncio.run(scenario())
    assert listed == ["FIRST"]  # committed; SECOND is not, yet
    assert problem is None
    assert still_waiting
    assert ticks > 1
    assert opened_in and threading.get_ident() not in opened_in  # read in a worker thread
    assert sorted(row["message_id"] for row in rows(db)) == ["FIRST", "SECOND"]


def test_journal_operator_commands_on_a_missing_journal_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under asyncio.run as before: a mistyped journal path is a configuration error
    (exit 2), and the file is not created by the reading."""
    import receiver.logs
    from receiver.cli import main

    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    db = tmp_path / "missing" / "j.db"
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        f'journal = "sqlite:///{db}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    for argv in (["events"], ["replay", "--dead"], ["prune", "--older-than", "1d"]):
        assert main([*argv, "--config", str(toml)]) == 2
        assert f"journal: {db} does not exist" in capsys.readouterr().err
    assert not db.exists()


def test_journal_replay_refuses_when_a_failed_plugin_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 part 2: ``replay --dead`` without the plugins serve loaded used to mark the
    entry done with the failed plugin never run. It refuses (exit 2, entry unchanged, the
    missing plugin named), replays with ``--only-loaded``, and runs the plugin when the
    configuration loads it."""
    import receiver.logs
    from receiver.cli import main

    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)

    db = db_path(tmp_path)
    ran = tmp_path / "ran.txt"
    flag = tmp_path / "fail.flag"
    flag.touch()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky_crm.py").write_text(
        "import os\n"
        "from receiver import hookimpl\n\n"
        "@hookimpl\n"
        "def on_receipt(event):\n"
        f"    if os.path.exists({str(flag)!r}):\n"
        "        raise RuntimeError('crm down')\n"
        f"    with open({str(ran)!r}, 'a') as f:\n"
        "        f.write(event.id + '\\n')\n"
    )
    base = f'journal = "sqlite:///{db}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    with_plugins, without = tmp_path / "serve.toml", tmp_path / "bare.toml"
    with_plugins.write_text(f"plugins_dir = {str(plugins)!r}\n" + base)
    without.write_text(base)

    app = make_app(tmp_path, plugins_dir=str(plugins), retry_delays=[])
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    ((dead_id, state),) = [(r["id"], r["state"]) for r in rows(db)]
    assert state == "dead"
    capsys.readouterr()

    assert main(["replay", "--config", str(without), "--dead"]) == 2
    err = capsys.readouterr().err
    assert f"replay refused: {dead_id} failed in flaky_crm, not loaded here" in err
    assert "--only-loaded" in err
    assert state_of(db, dead_id) == "dead"
    assert main(["replay", "--config", str(without), "--dead", "--dry-run"]) == 2
    assert state_of(db, dead_id) == "dead"

    flag.unlink()  # the CRM is back
    assert main(["replay", "--config", str(with_plugins), "--dead"]) == 0
    assert ran.read_text().split() == [dead_id]
    assert state_of(db, dead_id) == "done"


def test_journal_replay_only_loaded_replays_without_the_missing_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import receiver.logs
    from receiver.cli import main

    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("RECEIVER_CONFIG", raising=False)
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    db = db_path(tmp_path)
    app = make_app(tmp_path, plugins=[FailingReceipts()], retry_delays=[])
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    ((dead_id, state),) = [(r["id"], r["state"]) for r in rows(db)]
    assert state == "dead"
    toml = tmp_path / "bare.toml"
    toml.write_text(
        f'journal = "sqlite:///{db}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    assert main(["replay", "--config", str(toml), "--dead"]) == 2
    assert state_of(db, dead_id) == "dead"
    assert main(["replay", "--config", str(toml), "--dead", "--only-loaded"]) == 0
    assert state_of(db, dead_id) == "done"


class ContextWatcher:
    """on_receipt fails once, then succeeds; records structlog's context at each call."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.contexts.append(structlog.contextvars.get_contextvars())
        if len(self.contexts) == 1:
            raise RuntimeError("first try fails")


def test_journal_retry_runs_without_the_first_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 part 6: the retry worker, started by a callback of a mounted app, used to
    carry that request's id into every retry's log lines. The failed callback's own line
    says its outcome."""
    monkeypatch.setattr(Redelivery, "poll_interval", 0.02)
    watcher = ContextWatcher()
    receiver_app = make_app(tmp_path, plugins=[watcher], retry_delays=[0.01])
    host = Starlette(routes=[Mount("/hooks", app=receiver_app)])  # no receiver lifespan
    with TestClient(host) as client, capture_logs() as logs:
        response = client.post("/hooks/sms", content=ONEPOINT_DELIVERED, headers=JSON)
        assert response.status_code == 200
        deadline = time.monotonic() + 5
        while len(watcher.contexts) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    first, retried = watcher.contexts
    assert first.get("request_id")
    assert "request_id" not in retried
    (line,) = [entry for entry in logs if entry["event"] == "callback"]
    assert line["outcome"] == "handler_error"
