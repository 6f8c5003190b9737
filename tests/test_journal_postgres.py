"""The PostgreSQL journal: one contract table that the SQLite journal passes too, then what
only PostgreSQL has (an app on it, connection loss, the schema under its advisory lock,
``receiver migrate``, ``receiver events`` on it).

The server is real (tests/postgres.py): each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from postgres import admin, postgres_server, postgres_url, with_database
from samples import PAYLOADS
from starlette.testclient import TestClient

import receiver.logs
from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.cli import main
from receiver.errors import Failure
from receiver.events import EventType
from receiver.journal import REPLY_ONLY, Journal, open_journal
from receiver.journal.postgres import SCHEMA_VERSION, PostgresJournal

__all__ = ["postgres_server", "postgres_url"]  # fixtures, used by name

ONEPOINT_MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
ONEPOINT_DELIVERED = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
JSON = {"content-type": "application/json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each contract test runs on both journals."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'j.db'}"
    return str(request.getfixturevalue("postgres_url"))


def run(url: str, scenario: Callable[[Journal], Awaitable[Any]], **options: Any) -> Any:
    """``scenario`` on a started journal (stopped after), in an event loop of its own."""

    async def go() -> Any:
        journal = open_journal(url, **options)
        assert journal is not None
        await journal.start()
        try:
            return await scenario(journal)
        finally:
            await journal.stop()

    return asyncio.run(go())


def event(
    number: int,
    *,
    at: float | None = None,
    channel: str = "sms",
    raw: bytes | None = None,
    status: str | None = None,
    message_id: str | None = None,
    type: EventType = EventType.message,
    source: str = "61400000000",
) -> Event:
    return Event(
        id=f"evt-{number:05d}-{time.monotonic_ns()}",
        received_at=datetime.fromtimestamp(at if at is not None else time.time(), UTC),
        channel=channel,
        provider="onepoint",
        type=type,
        raw=raw if raw is not None else f'{{"n": {number}}}'.encode(),
        message_id=message_id or f"MSG{number:05d}",
        source=source,
        status=status,
        text=f"hello {number}",
    )


# -- the contract: both journals ---------------------------------------------------------


def test_contract_duplicates_found_by_key_and_body_answered_with_original_reply(
    journal_url: str,
) -> None:
    async def scenario(journal: Journal) -> None:
        first = event(1, raw=b'{"a": 1}')
        recorded = await journal.record(first, {"ip": "127.0.0.1"}, "key-1")
        assert recorded.duplicate_of is None and recorded.event.id == first.id
        await journal.complete(first.id, Reply(text="hi"))
        by_key = await journal.record(event(2, raw=b'{"a": 2}'), {}, "key-1")
        assert by_key.duplicate_of == first.id
        assert by_key.state == "done" and by_key.reply == Reply(text="hi")
        by_body = await journal.record(event(3, raw=b'{"a": 1}'), {}, None)
        assert by_body.duplicate_of == first.id and by_body.reply == Reply(text="hi")
        elsewhere = await journal.record(event(4, raw=b'{"a": 1}', channel="other"), {}, "key-1")
        assert elsewhere.duplicate_of is None  # both look-ups are per channel
        (stored,) = await journal.entries(ids=[first.id])
        assert stored.state == "done" and stored.meta == {"ip": "127.0.0.1"}
        assert stored.raw == b'{"a": 1}' and stored.event is not None
        assert stored.event.raw == b'{"a": 1}' and stored.attempts == 1

    run(journal_url, scenario)


def test_contract_duplicates_only_within_their_windows(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        now = time.time()
        await journal.record(event(1, at=now - 1000, raw=b"old"), {}, "k-old")
        # body window 600 s: the same body 1000 s later is new; the key window 2000 s: not
        assert (await journal.record(event(2, at=now, raw=b"old"), {}, None)).duplicate_of is None
        again = await journal.record(event(3, at=now, raw=b"other"), {}, "k-old")
        assert again.duplicate_of is not None

    run(journal_url, scenario, duplicate_window=2000, body_window=600)


def test_contract_windows_of_zero_are_off(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        await journal.record(event(1, raw=b"same"), {}, "k")
        assert (await journal.record(event(2, raw=b"same"), {}, "k")).duplicate_of is None

    run(journal_url, scenario, duplicate_window=0, body_window=0)


def test_contract_concurrent_identical_callbacks_one_original(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        found = await asyncio.gather(
            *(journal.record(event(n, raw=b"twin"), {}, "twin") for n in range(8))
        )
        originals = [r for r in found if r.duplicate_of is None]
        assert len(originals) == 1
        assert {r.duplicate_of for r in found if r.duplicate_of} == {originals[0].event.id}

    run(journal_url, scenario)


def test_contract_reject_then_recover_once(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        rejected = await journal.reject("sms", "onepoint", b"<not json", {"ip": "x"}, "bad")
        (entry,) = await journal.entries(state="rejected")
        assert entry.id == rejected and entry.raw == b"<not json" and entry.error == "bad"
        parsed = event(1, raw=b"<not json")
        recorded = await journal.recover(rejected, parsed, {}, None)
        assert recorded is not None and recorded.duplicate_of is None
        (entry,) = await journal.entries(ids=[rejected])
        assert entry.state == "recovered" and entry.recovered_as == parsed.id
        assert await journal.recover(rejected, event(2), {}, None) is None

    run(journal_url, scenario)


def test_contract_fail_due_retry_then_dead_keeps_attempts(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        now = time.time()
        stored = event(1)
        await journal.record(stored, {}, None)
        boom = Failure.of(RuntimeError("boom 1"), plugin="p", hook="on_message")
        await journal.fail(stored.id, "boom 1", ["p"], now - 1, [boom])
        (due,) = await journal.due(now)
        assert due.id == stored.id and due.state == "failed" and due.attempts == 1
        assert due.failed_plugins == ["p"] and due.plugins_to_retry == ["p"]
        assert await journal.due(now - 10) == []
        assert await journal.backlog() == 1
        await journal.note(stored.id, [Failure.of(TimeoutError("slow"))])
        await journal.fail(stored.id, "boom 2", ["p"], None, [Failure.of(RuntimeError("boom 2"))])
        assert await journal.due(now + 10) == []
        assert await journal.backlog() == 0
        (dead,) = await journal.entries(state="dead")
        assert dead.attempts == 2 and dead.last_error == "RuntimeError: boom 2"
        attempts = await journal.attempts(stored.id)
        assert [(a.attempt, a.error_type) for a in attempts] == [
            (1, "RuntimeError"),
            (2, "TimeoutError"),
            (2, "RuntimeError"),
        ]
        assert attempts[0].plugin == "p" and attempts[0].hook == "on_message"

    run(journal_url, scenario)


def test_contract_fail_keeps_another_plugins_reply_to_deliver(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        stored = event(1)
        await journal.record(stored, {}, None)
        await journal.fail(stored.id, "x", ["p"], time.time() - 1, [], Reply(text="kept"))
        (entry,) = await journal.due(time.time())
        assert entry.reply == Reply(text="kept") and entry.failed_plugins == ["p", REPLY_ONLY]
        again = await journal.record(event(2, raw=stored.raw), {}, None)
        assert again.reply == Reply(text="kept") and again.state == "failed"

    run(journal_url, scenario)


def test_contract_undelivered_reply_failed_then_done(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        stored = event(1)
        await journal.record(stored, {}, None)
        reply = Reply(text="to deliver")
        await journal.undelivered(stored.id, reply, "send failed", time.time() - 1)
        (entry,) = await journal.due(time.time())
        assert entry.state == "reply_failed" and entry.reply_only and entry.reply == reply
        assert await journal.backlog() == 1
        await journal.complete(stored.id, None)
        (entry,) = await journal.entries(ids=[stored.id])
        assert entry.state == "done" and entry.reply == reply and entry.failed_plugins is None
        other = event(2)
        await journal.record(other, {}, None)
        await journal.undelivered(other.id, reply, "send failed", None)
        (entry,) = await journal.entries(ids=[other.id])
        assert entry.state == "dead" and entry.reply_pending == reply

    run(journal_url, scenario)


def test_contract_entries_filters_newest_first(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        now = time.time()
        stored = [
            event(n, at=now - 100 + n, channel="a" if n % 2 else "b", type=EventType.message)
            for n in range(6)
        ]
        for e in stored:
            await journal.record(e, {}, None)
        await journal.complete(stored[5].id, None)
        assert [e.id for e in await journal.entries()] == [e.id for e in reversed(stored)]
        assert [e.id for e in await journal.entries(channel="a")] == [
            stored[5].id,
            stored[3].id,
            stored[1].id,
        ]
        assert [e.id for e in await journal.entries(state="done")] == [stored[5].id]
        assert len(await journal.entries(since=now - 100 + 3.5)) == 2
        assert len(await journal.entries(limit=2)) == 2
        assert len(await journal.entries(limit=None)) == 6
        assert len(await journal.entries(type="message")) == 6
        assert await journal.entries(type="receipt") == []
        ids = [stored[0].id, stored[2].id, "no-such-id"]
        assert {e.id for e in await journal.entries(ids=ids)} == {stored[0].id, stored[2].id}

    run(journal_url, scenario)


def test_contract_prune_deletes_only_finished_old_entries(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        now = time.time()
        old_done, old_dead, old_received, new_done = (
            event(1, at=now - 100),
            event(2, at=now - 100),
            event(3, at=now - 100),
            event(4, at=now),
        )
        for e in (old_done, old_dead, old_received, new_done):
            await journal.record(e, {}, None)
        await journal.complete(old_done.id, None)
        await journal.fail(old_dead.id, "x", None, None, [Failure.of(RuntimeError("x"))])
        await journal.complete(new_done.id, None)
        await journal.reject("sms", "onepoint", b"?", {}, "bad")
        assert await journal.prune(now - 50) == 2
        left = {e.id for e in await journal.entries(limit=None)}
        assert old_done.id not in left and old_dead.id not in left
        assert {old_received.id, new_done.id} <= left and len(left) == 3
        assert await journal.attempts(old_dead.id) == []

    run(journal_url, scenario)


def test_contract_out_of_order_status_flagged(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        receipt = EventType.receipt
        kw: dict[str, Any] = {"type": receipt, "message_id": "M1"}
        first = await journal.record(event(1, raw=b"d", status="delivered", **kw), {}, None)
        late = await journal.record(event(2, raw=b"s", status="sent", **kw), {}, None)
        read = await journal.record(event(3, raw=b"r", status="read", **kw), {}, None)
        assert not first.event.out_of_order and late.event.out_of_order
        assert not read.event.out_of_order

    run(journal_url, scenario)


def test_contract_browse_pages_filters_search_and_per_minute(journal_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        now = time.time()
        for n in range(120):
            channel = "a" if n % 2 else "b"
            e = event(n, at=now - 1000 + n, channel=channel, source=f"6140000{n:04d}")
            await journal.record(e, {}, None)
        first = await journal.browse(limit=50)
        assert [e.message_id for e in first.entries][:2] == ["MSG00119", "MSG00118"]
        assert len(first.entries) == 50 and first.older is not None
        second = await journal.browse(limit=50, before=first.older)
        assert second.entries[0].message_id == "MSG00069"
        only_a = await journal.browse(channel="a", limit=500)
        assert len(only_a.entries) == 60 and only_a.older is None
        found = await journal.browse(search="61400000042")
        assert [e.message_id for e in found.entries] == ["MSG00042"]
        assert [e.message_id for e in (await journal.browse(search="msg00007")).entries] == [
            "MSG00007"
        ]
        bounded = await journal.browse(search="61400000042", scan=30)
        assert bounded.entries == [] and bounded.scanned == 30
        assert bounded.older == pytest.approx(now - 1000 + 90)
        minutes = await journal.per_minute(now - 2000)
        assert sum(minutes.values()) == 120 and {s for _, s in minutes} == {"received"}

    run(journal_url, scenario, duplicate_window=0, body_window=0)


def test_contract_check_ready_on_a_working_journal(journal_url: str) -> None:
    async def scenario(journal: Journal) -> str | None:
        return await journal.check()

    assert run(journal_url, scenario) is None


# -- PostgreSQL only -------------------------------------------------------------------


class CountingReplier:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        self.calls += 1
        return Reply(text=f"reply {self.calls}")


def pg_app(url: str, plugins: Any = ()) -> Any:
    channels = {"sms": Channel(provider="onepoint", auth="none")}
    return create_app(Config(channels=channels, journal=url), plugins=plugins)


def fetch(url: str, sql: str) -> list[Any]:
    return asyncio.run(admin(url, sql))


def test_postgres_app_stores_before_answering_and_duplicates_get_the_original_reply(
    postgres_url: str,
) -> None:
    replier = CountingReplier()
    with TestClient(pg_app(postgres_url, [replier])) as client:
        first = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        (row,) = fetch(postgres_url, "SELECT state, raw FROM events")
        assert row["raw"] == ONEPOINT_MESSAGE
        again = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        ready = client.get("/readyz")
    assert first.status_code == again.status_code == 200
    assert first.json()["Message"] == "reply 1" and again.content == first.content
    assert replier.calls == 1
    assert ready.status_code == 200
    (row,) = fetch(postgres_url, "SELECT state, attempts FROM events")
    assert (row["state"], row["attempts"]) == ("done", 1)


def _cut_off(url: str, database: str, allow: bool) -> None:
    """Refuse (or allow again) connections to ``database`` and end those open."""
    statements = [f"ALTER DATABASE {database} ALLOW_CONNECTIONS {str(allow).lower()}"]
    if not allow:
        statements.append(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
    asyncio.run(admin(url, *statements))


def test_postgres_connection_loss_is_503_never_200_then_reconnects(
    postgres_server: str, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    body = json.loads(ONEPOINT_DELIVERED)
    with TestClient(pg_app(postgres_url)) as client:

        def send(n: int) -> int:
            payload = json.dumps({**body, "MessageId": f"lost-{n}"}).encode()
            return client.post("/sms", content=payload, headers=JSON).status_code

        assert send(1) == 200
        _cut_off(postgres_server, database, allow=False)
        try:
            assert send(2) == 503  # its connection was terminated
            assert send(3) == 503  # no new connection allowed
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert "journal unreachable" in " ".join(ready.json()["problems"])
            assert "receiver-test-only" not in ready.text  # never the password
        finally:
            _cut_off(postgres_server, database, allow=True)
        assert send(4) == 200  # the pool reconnected by itself
        assert client.get("/readyz").status_code == 200
    ids = [r["message_id"] for r in fetch(postgres_url, "SELECT message_id FROM events")]
    assert sorted(ids) == ["lost-1", "lost-4"]


def test_postgres_done_lost_with_the_connection_is_kept_and_written_later(
    postgres_server: str, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        journal = PostgresJournal(postgres_url)
        journal.retry_min = 0.05
        await journal.start()
        try:
            stored = event(1)
            await journal.record(stored, {}, None)
            await asyncio.to_thread(_cut_off, postgres_server, database, False)
            try:
                await journal.complete(stored.id, Reply(text="r"))  # kept, not raised
                problem = await journal.check()
                assert problem is not None and "not stored yet" in problem
            finally:
                await asyncio.to_thread(_cut_off, postgres_server, database, True)
            deadline = time.monotonic() + 10
            while journal.kept and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            (entry,) = await journal.entries(ids=[stored.id])
            assert entry.state == "done" and entry.reply == Reply(text="r")
            assert await journal.check() is None
        finally:
            await journal.stop()

    asyncio.run(scenario())


def test_postgres_group_commit_one_transaction_for_concurrent_records(
    postgres_url: str,
) -> None:
    """Records arriving while a group commits join the next group: far fewer commits than
    records, every one stored, and a re-send inside one group still finds its original."""

    async def scenario(journal: Journal) -> None:
        assert isinstance(journal, PostgresJournal)
        events = [event(n, raw=f'{{"group": {n}}}'.encode()) for n in range(60)]
        again = event(1000, raw=b'{"group": 7}')  # the same body as events[7]
        commits = journal.commits
        found = await asyncio.gather(
            *(journal.record(e, {}, f"key-{n}") for n, e in enumerate(events)),
            journal.record(again, {}, None),
        )
        assert journal.commits - commits <= 12  # 61 records: a few groups, not 61
        assert journal.grouped == 61
        assert [r.duplicate_of for r in found[:60]] == [None] * 60
        assert found[60].duplicate_of == events[7].id
        stored = await journal.entries(limit=None)
        assert {e.id for e in stored} == {e.id for e in events}

    run(postgres_url, scenario)


def groups_of_statuses(
    url: str, rounds: int, suffixes: tuple[str, str] = ("", "")
) -> tuple[int, int]:
    """Two processes (journals) each commit a group of statuses of the same six messages,
    in opposite orders, ``rounds`` times; the second's ids end in ``suffixes[1]``, the
    first's in ``suffixes[0]``. Returns the deadlocks PostgreSQL found meanwhile
    (``pg_stat_database.deadlocks``) and how many records were committed in groups."""

    async def deadlocks() -> int:
        rows = await admin(
            url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(rows[0][0])

    def statuses(ids: list[str], base: int) -> list[Event]:
        return [
            event(base + n, status="delivered", message_id=m, type=EventType.receipt)
            for n, m in enumerate(ids)
        ]

    async def scenario() -> tuple[int, int]:
        journals = [open_journal(url), open_journal(url)]
        for journal in journals:
            assert isinstance(journal, PostgresJournal)
            await journal.start()
        try:
            before = await deadlocks()
            for round in range(rounds):
                messages = [f"DL{round}-{n}" for n in range(6)]
                first = statuses([m + suffixes[0] for m in messages], 100 * round)
                second = statuses([m + suffixes[1] for m in messages[::-1]], 100 * round + 50)
                await asyncio.gather(
                    *(journals[0].record(e, {}, None) for e in first),
                    *(journals[1].record(e, {}, None) for e in second),
                )
            await asyncio.sleep(0.6)  # the statistics collector's report
            grouped = sum(j.grouped for j in journals)  # type: ignore[attr-defined]
            return await deadlocks() - before, grouped
        finally:
            for journal in journals:
                await journal.stop()

    return asyncio.run(scenario())


def test_postgres_groups_with_statuses_in_opposite_orders_never_deadlock(
    postgres_url: str,
) -> None:
    """Two processes each commit a group of statuses of the same messages, in opposite
    orders: the status rows are locked in one order (advisory locks), so PostgreSQL never
    finds a deadlock (before: one group waited out ``deadlock_timeout``, a second, and was
    taken apart). Counted by the server: ``pg_stat_database.deadlocks``."""
    found, grouped = groups_of_statuses(postgres_url, 8)
    assert found == 0, f"{found} deadlock(s) between two groups"
    assert grouped == 8 * 12  # none taken apart


def test_postgres_group_takes_no_more_advisory_locks_than_max_locks(postgres_url: str) -> None:
    """A burst of records (duplicate windows on: two lock keys each) is committed in
    groups that each hold at most ``max_locks`` advisory locks (PostgreSQL's default
    max_locks_per_transaction): big groups on several connections and replicas would
    fill the server's shared lock table, and every record of a group would be refused.
    Watched from another connection (pg_locks) while the burst commits."""
    import asyncpg

    async def scenario(journal: Journal) -> tuple[int, int]:
        assert isinstance(journal, PostgresJournal)
        watcher = await asyncpg.connect(postgres_url)
        most = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal most
            while not done.is_set():
                rows = await watcher.fetch(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' GROUP BY pid"
                )
                most = max([most, *(row[0] for row in rows)])

        watching = asyncio.create_task(watch())
        try:
            events = [event(n, raw=f'{{"locks": {n}}}'.encode()) for n in range(600)]
            await asyncio.gather(*(journal.record(e, {}, f"lk-{n}") for n, e in enumerate(events)))
        finally:
            done.set()
            await watching
            await watcher.close()
        return most, len(await journal.entries(limit=None))

    most, stored = run(postgres_url, scenario)
    assert stored == 600
    assert 0 < most <= PostgresJournal.max_locks


def test_postgres_group_with_a_record_that_raises_fails_only_it(postgres_url: str) -> None:
    async def scenario(journal: Journal) -> None:
        good = [event(n) for n in range(5)]
        # msgpack holds integers of at most 64 bits: storing this event raises OverflowError.
        bad = msgspec.structs.replace(event(99), metadata={"huge": 2**70})
        found = await asyncio.gather(
            *(journal.record(e, {}, None) for e in (*good[:2], bad, *good[2:])),
            return_exceptions=True,
        )
        assert isinstance(found[2], OverflowError)
        assert [r.event.id for r in (*found[:2], *found[3:])] == [e.id for e in good]
        stored = await journal.entries(limit=None)
        assert {e.id for e in stored} == {e.id for e in good}

    run(postgres_url, scenario)


def test_postgres_state_changes_do_not_wait_for_the_wal_flush(postgres_url: str) -> None:
    """done/failed are committed with synchronous_commit off (a database crash may lose
    one: handled again); a record waits for the flush."""

    async def scenario(journal: Journal) -> list[tuple[str, str]]:
        assert isinstance(journal, PostgresJournal)
        seen: list[tuple[str, str]] = []
        run_one = journal._run

        async def watched(work: Any, **options: Any) -> Any:
            async def with_setting(connection: Any) -> Any:
                result = await work(connection)
                setting = await connection.fetchval("SHOW synchronous_commit")
                seen.append((work.__qualname__.split(".<locals>")[0].split(".")[-1], setting))
                return result

            return await run_one(with_setting, **options)

        journal._run = watched  # type: ignore[method-assign]
        first, second = event(1), event(2)
        await journal.record(first, {}, None)
        await journal.record(second, {}, None)
        await journal.complete(first.id, None)
        await journal.fail(second.id, "boom", None, time.time() + 60)
        return list(seen)  # (stop gives the lease up: not among these)

    assert run(postgres_url, scenario) == [
        ("_commit_group", "on"),
        ("_commit_group", "on"),
        ("_write_group", "off"),  # each alone here: its group of one
        ("_write_group", "off"),
    ]


def test_postgres_schema_created_once_when_several_start_together(postgres_url: str) -> None:
    async def scenario() -> list[tuple[int | None, int]]:
        journals = [PostgresJournal(postgres_url) for _ in range(4)]
        try:
            return await asyncio.gather(*(j.migrate() for j in journals))
        finally:
            for j in journals:
                await j.stop()

    found = asyncio.run(scenario())
    assert sorted(found, key=str) == sorted(
        [(None, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3, key=str
    )
    rows = fetch(postgres_url, "SELECT version FROM schema_version")
    assert [r["version"] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_postgres_newer_schema_is_refused(postgres_url: str) -> None:
    from receiver.errors import ConfigError

    run(postgres_url, lambda journal: asyncio.sleep(0))
    fetch(postgres_url, "INSERT INTO schema_version VALUES (999, 0)")
    with pytest.raises(ConfigError, match="newer"):
        run(postgres_url, lambda journal: asyncio.sleep(0))


def _config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> str:
    user_host, database = url.removeprefix("postgresql://").rsplit("/", 1)
    user, rest = user_host.split(":", 1)
    password, host = rest.rsplit("@", 1)
    monkeypatch.setenv("PG_TEST_PASSWORD", password)
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    # The CLI configures process-wide logging (cached structlog loggers): keep it local.
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    path = tmp_path / "receiver.toml"
    path.write_text(
        f'journal = "postgresql://{user}:${{PG_TEST_PASSWORD}}@{host}/{database}"\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    return str(path)


def test_postgres_migrate_command_creates_then_finds_the_schema(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
) -> None:
    config = _config_file(tmp_path, monkeypatch, postgres_url)
    assert main(["events", "--config", config]) == 2  # no schema yet: nothing created
    err = capsys.readouterr().err
    assert "receiver migrate" in err and "receiver-test-only" not in err
    assert main(["migrate", "--config", config]) == 0
    out = capsys.readouterr().out
    assert f"schema version {SCHEMA_VERSION} (was none)" in out and "***" in out
    assert "receiver-test-only" not in out
    assert main(["migrate", "--config", config]) == 0
    assert f"(was {SCHEMA_VERSION})" in capsys.readouterr().out


def _json_or_none(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


def test_postgres_events_command_reads_the_journal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
) -> None:
    with TestClient(pg_app(postgres_url)) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    config = _config_file(tmp_path, monkeypatch, postgres_url)
    capsys.readouterr()  # the app's log lines, if an earlier test sent logging to stdout
    assert main(["events", "--config", config, "--json"]) == 0
    # Only the listing: a log line an earlier test's logging set-up prints there is not.
    rows = [_json_or_none(line) for line in capsys.readouterr().out.splitlines()]
    (listed,) = [row for row in rows if isinstance(row, dict) and "state" in row]
    assert listed["state"] == "done" and listed["channel"] == "sms"
    assert main(["events", "--config", config, "show", listed["id"]]) == 0
    assert listed["id"] in capsys.readouterr().out
    assert main(["prune", "--config", config, "--older-than", "1s", "--dry-run"]) == 0


def test_postgres_config_accepts_the_url_and_keeps_the_password_out_of_errors(
    postgres_server: str,
) -> None:
    from receiver.errors import ConfigError

    wrong = with_database(postgres_server, "no_such_database_here")
    journal = open_journal(wrong)
    assert isinstance(journal, PostgresJournal)

    async def start() -> None:
        try:
            await journal.start()
        finally:
            await journal.stop()

    with pytest.raises(ConfigError) as raised:
        asyncio.run(start())
    assert "receiver-test-only" not in str(raised.value) and "***" in str(raised.value)
    with pytest.raises(ConfigError, match="postgresql://"):
        Config(journal="mysql://x").validate()


# -- grouped state changes ---------------------------------------------------------------


def test_state_changes_grouped_commit_all_of_a_group(postgres_url: str) -> None:
    """done, failed and undelivered changes arriving together are written in a few group
    transactions, not one each; every one of them is stored, with its failures."""

    async def scenario(journal: Journal) -> None:
        assert isinstance(journal, PostgresJournal)
        events = [event(n) for n in range(60)]
        for e in events:
            await journal.record(e, {}, None)
        commits = journal.commits
        later = time.time() + 60
        await asyncio.gather(
            *(journal.complete(e.id, Reply(text=f"r{n}")) for n, e in enumerate(events[:40])),
            *(
                journal.fail(e.id, "boom", ["p"], later, [Failure.of(RuntimeError(f"b{n}"))])
                for n, e in enumerate(events[40:50])
            ),
            *(journal.undelivered(e.id, Reply(text="u"), "send", None, []) for e in events[50:55]),
            *(journal.note(e.id, [Failure.of(TimeoutError("slow"))]) for e in events[55:]),
        )
        assert journal.commits - commits <= 6  # 60 changes: a few groups, not 60
        assert journal.changes_grouped == 60
        stored = {e.id: e for e in await journal.entries(limit=None)}
        for n, e in enumerate(events[:40]):
            assert stored[e.id].state == "done" and stored[e.id].reply == Reply(text=f"r{n}")
            assert stored[e.id].attempts == 1
        for n, e in enumerate(events[40:50]):
            entry = stored[e.id]
            assert (entry.state, entry.attempts, entry.failed_plugins) == ("failed", 1, ["p"])
            assert entry.next_attempt_at == later and entry.error == "boom"
            (attempt,) = await journal.attempts(e.id)
            assert (attempt.attempt, attempt.message) == (1, f"b{n}")
        for e in events[50:55]:
            entry = stored[e.id]
            assert entry.state == "dead" and entry.reply_pending == Reply(text="u")
        for e in events[55:]:
            assert stored[e.id].state == "received" and stored[e.id].attempts == 0
            (attempt,) = await journal.attempts(e.id)
            assert (attempt.attempt, attempt.error_type) == (1, "TimeoutError")

    run(postgres_url, scenario)


def test_state_change_group_one_failing_item_keeps_the_others_and_raises_to_its_caller(
    postgres_url: str,
) -> None:
    """One change of a group that the database refuses (not a fault: an attempts counter
    at its maximum) fails its own caller; the group is taken apart and the others'
    states are stored."""
    import asyncpg

    async def scenario(journal: Journal) -> None:
        assert isinstance(journal, PostgresJournal)
        events = [event(n) for n in range(6)]
        for e in events:
            await journal.record(e, {}, None)
        await admin(
            postgres_url, f"UPDATE events SET attempts = 2147483647 WHERE id = '{events[2].id}'"
        )
        found = await asyncio.gather(
            *(journal.complete(e.id, Reply(text="ok")) for e in events[:4]),
            journal.fail(events[4].id, "x", ["p"], time.time() + 60, [Failure.of(OSError("x"))]),
            journal.complete(events[5].id, None),
            return_exceptions=True,
        )
        assert isinstance(found[2], asyncpg.NumericValueOutOfRangeError)
        assert [r for n, r in enumerate(found) if n != 2] == [None] * 5
        assert journal.kept == {} and journal.failure is None
        stored = {e.id: e for e in await journal.entries(limit=None)}
        assert [stored[e.id].state for e in events] == [
            "done",
            "done",
            "received",  # its own change only failed
            "done",
            "failed",
            "done",
        ]
        assert [a.attempt for a in await journal.attempts(events[4].id)] == [1]

    run(postgres_url, scenario)


def test_state_changes_of_one_entry_keep_their_order(postgres_url: str) -> None:
    """A note, then a fail, then a complete of the same entry, all queued at once (a
    timeout, its late failure, a retry's success): applied in that order, one group
    each, never merged into one statement (which would apply only one of them)."""

    async def scenario(journal: Journal) -> None:
        assert isinstance(journal, PostgresJournal)
        events = [event(n) for n in range(20)]
        for e in events:
            await journal.record(e, {}, None)
        later = time.time() + 60
        changes = []
        for e in events:
            changes += [
                journal.note(e.id, [Failure.of(TimeoutError("slow"))]),
                journal.fail(e.id, "boom", ["p"], later, [Failure.of(RuntimeError("boom"))]),
                journal.complete(e.id, Reply(text="finally")),
            ]
        await asyncio.gather(*changes)
        for e in events:
            (entry,) = await journal.entries(ids=[e.id])
            assert (entry.state, entry.attempts) == ("done", 2)
            assert entry.reply == Reply(text="finally") and entry.failed_plugins is None
            attempts = await journal.attempts(e.id)
            assert [(a.attempt, a.error_type) for a in attempts] == [
                (1, "TimeoutError"),
                (1, "RuntimeError"),
            ]

    run(postgres_url, scenario)


def test_state_change_group_connection_killed_keeps_the_group_and_marks_nothing_done(
    postgres_server: str, postgres_url: str
) -> None:
    """The state changes' connection is terminated while its group waits (a row lock
    held by another connection): nothing of the group is stored; the done changes are
    kept (their callers return, ``/readyz`` says so) and written once the database
    answers again, each once; the note's caller gets JournalUnavailable."""
    import asyncpg

    from receiver.errors import JournalUnavailable

    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        journal = PostgresJournal(postgres_url)
        journal.retry_min = 0.05
        await journal.start()
        locker = await asyncpg.connect(with_database(postgres_server, database))
        try:
            events = [event(n) for n in range(5)]
            noted = event(99)
            for e in (*events, noted):
                await journal.record(e, {}, None)
            lock = locker.transaction()
            await lock.start()
            await locker.execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", events[0].id)
            changes = asyncio.gather(
                *(journal.complete(e.id, Reply(text="r")) for e in events),
                journal.note(noted.id, [Failure.of(TimeoutError("slow"))]),
                return_exceptions=True,
            )
            waiting = None
            deadline = time.monotonic() + 10
            while waiting is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                waiting = await locker.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                    "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE events%'",
                    database,
                )
            assert waiting is not None, "the group never waited for the row lock"
            await locker.fetchval("SELECT pg_terminate_backend($1)", waiting)
            found = await changes
            assert found[:5] == [None] * 5  # kept, as a single state change is kept
            assert isinstance(found[5], JournalUnavailable)
            assert set(journal.kept) == {e.id for e in events}
            problem = await journal.check()
            assert problem is not None and "not stored yet" in problem
            states = await locker.fetch("SELECT state, attempts FROM events")
            assert {tuple(row) for row in states} == {("received", 0)}  # nothing done
            assert await locker.fetchval("SELECT count(*) FROM attempts") == 0
            await lock.rollback()
            deadline = time.monotonic() + 10
            while journal.kept and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert journal.kept == {}
            for e in events:
                (entry,) = await journal.entries(ids=[e.id])
                assert (entry.state, entry.attempts) == ("done", 1)  # written once
            assert await journal.check() is None
        finally:
            await locker.close()
            await journal.stop()

    asyncio.run(scenario())
