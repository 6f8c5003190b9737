"""Ownership of the journal's work by several processes (issue 17, part 2): leases, claims,
take-over of a gone process's unfinished entries, and duplicates across processes.

The contract tests run on both journals (a real SQLite file, a real PostgreSQL server:
tests/postgres.py). Several journal objects on one URL stand for several processes; a
real process that records and dies without a word stands for a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from postgres import postgres_server, postgres_url, run_sql
from samples import PAYLOADS
from starlette.testclient import TestClient
from test_journal_postgres import event, journal_url

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.errors import JournalUnavailable
from receiver.journal import DEFAULT_LEASE, Journal, open_journal

__all__ = ["journal_url", "postgres_server", "postgres_url"]  # fixtures, used by name


async def opened(url: str, **options: Any) -> Journal:
    journal = open_journal(url, **options)
    assert journal is not None
    await journal.start()
    return journal


@contextlib.asynccontextmanager
async def processes(url: str, *leases: float) -> AsyncIterator[list[Journal]]:
    """A started journal on ``url`` for each lease: processes sharing it (stopped after)."""
    journals = [await opened(url, lease=lease) for lease in leases]
    try:
        yield journals
    finally:
        for journal in journals:
            await journal.stop()


def test_ownership_live_owner_work_is_not_taken(journal_url: str) -> None:
    async def scenario() -> None:
        async with processes(journal_url, DEFAULT_LEASE, DEFAULT_LEASE) as (mine, other):
            first = event(1)
            await mine.record(first, {}, None)
            await mine.renew()
            assert await other.take_over() == []
            assert await mine.take_over() == []  # its own work is not "taken over"

    asyncio.run(scenario())


def test_ownership_expired_lease_work_taken_by_exactly_one(journal_url: str) -> None:
    async def scenario() -> None:
        gone = await opened(journal_url, lease=0.3)
        peers = [await opened(journal_url) for _ in range(3)]
        try:
            left, handled = event(1), event(2)
            for e in (left, handled):
                await gone.record(e, {}, None)
            await gone.complete(handled.id, None)
            assert [await p.take_over() for p in peers] == [[], [], []]  # lease still on
            await asyncio.sleep(0.5)  # it did not renew: the lease ran out
            taken = await asyncio.gather(*(p.take_over() for p in peers))
            assert sorted(len(found) for found in taken) == [0, 0, 1]
            (entry,) = [e for found in taken for e in found]
            assert entry.id == left.id and entry.state == "received"
            assert [await p.take_over() for p in peers] == [[], [], []]  # claimed once
        finally:
            for journal in (gone, *peers):
                await journal.stop()

    asyncio.run(scenario())


def test_ownership_stopped_process_work_taken_at_once(journal_url: str) -> None:
    async def scenario() -> None:
        stopping = await opened(journal_url, lease=60)
        left = event(1)
        await stopping.record(left, {}, None)
        await stopping.stop()  # a clean stop gives the lease up
        successor = await opened(journal_url, lease=60)
        try:
            assert [e.id for e in await successor.take_over()] == [left.id]
        finally:
            await successor.stop()

    asyncio.run(scenario())


_CRASH = textwrap.dedent(
    """
    import asyncio, os, sys
    from receiver.journal import open_journal
    from receiver.testing import make_event

    async def main():
        journal = open_journal(sys.argv[1], lease=3600.0)
        await journal.start()
        event = make_event("message", text="left behind", message_id="CRASHED")
        await journal.record(event, {}, None)
        print(event.id, flush=True)
        os._exit(0)  # no stop, no release: as kill -9 would leave it

    asyncio.run(main())
    """
)


def crash(url: str) -> str:
    """Run a process that records an entry on ``url`` and dies; return the entry's id."""
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, url], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_ownership_dead_process_of_this_machine_taken_at_once(journal_url: str) -> None:
    """A real process records an entry and dies without a word, holding an hour's lease:
    its pid is gone, so a process of the same machine takes its work over at once."""
    left = crash(journal_url)

    async def scenario() -> list[str]:
        successor = await opened(journal_url, lease=3600)
        try:
            return [e.id for e in await successor.take_over()]
        finally:
            await successor.stop()

    assert asyncio.run(scenario()) == [left]


def test_ownership_same_pid_other_owner_is_gone(journal_url: str) -> None:
    """An owner id of this very pid that no open journal holds is a previous process's
    (a container restarted with pid 1 again) or a stopped journal's: gone."""

    async def scenario() -> None:
        first = await opened(journal_url, lease=3600)
        left = event(1)
        await first.record(left, {}, None)
        first._forget_owner()  # as if this process were a new one with the same pid
        successor = await opened(journal_url, lease=3600)
        try:
            assert [e.id for e in await successor.take_over()] == [left.id]
        finally:
            await successor.stop()
            await first.stop()

    asyncio.run(scenario())


def test_ownership_due_retries_claimed_by_one_process(journal_url: str) -> None:
    async def scenario() -> None:
        async with processes(journal_url, 0.5, 0.5) as (a, b):
            failed = [event(n) for n in range(6)]
            now = time.time()
            for e in failed:
                await a.record(e, {}, None)
                await a.fail(e.id, "boom", None, now - 1)
            got_a, got_b = await asyncio.gather(a.due(time.time()), b.due(time.time()))
            ids_a, ids_b = {e.id for e in got_a}, {e.id for e in got_b}
            assert not ids_a & ids_b
            assert ids_a | ids_b == {e.id for e in failed}
            # Claimed: not due again while the claim lasts...
            assert await a.due(time.time()) == [] and await b.due(time.time()) == []
            # ...unless its retry is never recorded (the process died): due again then.
            await asyncio.sleep(0.7)
            assert {e.id for e in await b.due(time.time())} == {e.id for e in failed}

    asyncio.run(scenario())


def test_ownership_renew_keeps_a_running_retry_claimed(journal_url: str) -> None:
    async def scenario() -> None:
        async with processes(journal_url, 0.6, 0.6) as (a, b):
            slow, idle = event(1), event(2)
            for e in (slow, idle):
                await a.record(e, {}, None)
                await a.fail(e.id, "boom", None, time.time() - 1)
            assert len(await a.due(time.time())) == 2
            for _ in range(3):  # its handlers run on past the lease: renewed meanwhile
                await asyncio.sleep(0.3)
                await a.renew({slow.id})
            assert [e.id for e in await b.due(time.time())] == [idle.id]

    asyncio.run(scenario())


def test_ownership_lost_lease_registers_again(journal_url: str) -> None:
    async def scenario() -> None:
        async with processes(journal_url, 0.3, 30) as (a, b):
            left = event(1)
            await a.record(left, {}, None)
            await asyncio.sleep(0.5)  # a hung past its lease: b takes its work over
            assert [e.id for e in await b.take_over()] == [left.id]
            await a.renew()  # a wakes up: registered again (logged), not failing
            await asyncio.sleep(0.1)
            assert await b.take_over() == []  # its lease counts again

    asyncio.run(scenario())


def test_ownership_entries_of_a_journal_before_ownership_taken_over(tmp_path: Path) -> None:
    """A journal written before ownership existed (no owner column, no processes table):
    its unfinished entries are taken over by the first process to look, once."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'j.db'}"

    async def record() -> tuple[str, str]:
        journal = await opened(url)
        left, handled = event(1), event(2)
        for e in (left, handled):
            await journal.record(e, {}, None)
        await journal.complete(handled.id, None)
        await journal.stop()
        return left.id, handled.id

    left, _ = asyncio.run(record())
    with sqlite3.connect(tmp_path / "j.db") as db:  # as the previous version wrote it
        db.execute("ALTER TABLE events DROP COLUMN owner")
        db.execute("DROP TABLE processes")

    async def take() -> tuple[list[str], list[str]]:
        async with processes(url, DEFAULT_LEASE, DEFAULT_LEASE) as (first, second):
            return [e.id for e in await first.take_over()], await second.take_over()

    assert asyncio.run(take()) == ([left], [])


def test_ownership_postgres_schema_1_migrated_and_its_work_taken_over(postgres_url: str) -> None:
    from receiver.journal.postgres import _MIGRATIONS

    async def scenario() -> list[str]:
        import asyncpg

        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute(_MIGRATIONS[0][1])
            await connection.execute(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                "applied_at DOUBLE PRECISION NOT NULL); "
                "INSERT INTO schema_version VALUES (1, 0); "
                "INSERT INTO events (id, channel, provider, state, received_at, raw) VALUES "
                "('left', 'sms', 'onepoint', 'received', 100, ''), "
                "('done', 'sms', 'onepoint', 'done', 101, '')"
            )
        finally:
            await connection.close()
        journal = await opened(postgres_url)  # migrates to the current version
        try:
            return [e.id for e in await journal.take_over()]
        finally:
            await journal.stop()

    assert asyncio.run(scenario()) == ["left"]


def test_ownership_done_ledger_one_slot_per_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        url = f"sqlite:///{tmp_path / 'j.db'}"
        async with processes(url, DEFAULT_LEASE, DEFAULT_LEASE) as (a, b):
            await a.record(event(1), {}, None)
            await b.record(event(2), {}, None)
            assert (tmp_path / "j.db-done").exists() and (tmp_path / "j.db-done.1").exists()

    asyncio.run(scenario())


# -- the worker: take-over in a running app -------------------------------------------

MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()


class Counting:
    """Counts what it handles; replies to messages after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.handled: list[str] = []

    @hookimpl
    async def on_message(self, event: Event) -> Reply:
        await asyncio.sleep(self.delay)
        self.handled.append(event.id)
        return Reply(text=f"handled by {id(self)}")


def config(url: str, **extra: Any) -> Config:
    return Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=url,
        journal_lease=1.0,
        **extra,
    )


def test_ownership_app_handles_work_of_a_dead_process(journal_url: str) -> None:
    left = crash(journal_url)
    counting = Counting()
    with TestClient(create_app(config(journal_url), plugins=[counting])):
        deadline = time.monotonic() + 10
        while left not in counting.handled and time.monotonic() < deadline:
            time.sleep(0.05)
    assert counting.handled == [left]


def test_ownership_duplicate_at_another_process_gets_the_originals_reply(
    journal_url: str,
) -> None:
    """Two apps on one journal stand for two processes: a re-send reaching the second
    while the first still handles the original waits for the original's reply."""
    slow, other = Counting(delay=0.8), Counting()
    first = create_app(config(journal_url), plugins=[slow])
    second = create_app(config(journal_url), plugins=[other])
    answers: dict[str, Any] = {}
    with TestClient(first) as a, TestClient(second) as b:

        def send_original() -> None:
            answers["original"] = a.post("/sms", content=MESSAGE, headers=JSON)

        thread = threading.Thread(target=send_original)
        thread.start()
        time.sleep(0.3)  # the original is stored and being handled
        answers["duplicate"] = b.post("/sms", content=MESSAGE, headers=JSON)
        thread.join()
    original, duplicate = answers["original"], answers["duplicate"]
    assert original.status_code == duplicate.status_code == 200
    assert f"handled by {id(slow)}" in original.text
    assert duplicate.text == original.text  # the original's reply, not an empty 200
    assert duplicate.headers["x-receiver-duplicate"]
    assert len(slow.handled) == 1 and other.handled == []


def test_ownership_duplicate_waits_no_longer_than_reply_timeout(journal_url: str) -> None:
    slow, other = Counting(delay=3.0), Counting()
    first = create_app(config(journal_url, reply_timeout=5.0), plugins=[slow])
    second = create_app(config(journal_url, reply_timeout=0.5), plugins=[other])
    answers: dict[str, Any] = {}
    with TestClient(first) as a, TestClient(second) as b:
        thread = threading.Thread(
            target=lambda: answers.update(original=a.post("/sms", content=MESSAGE, headers=JSON))
        )
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        answers["duplicate"] = b.post("/sms", content=MESSAGE, headers=JSON)
        waited = time.monotonic() - started
        thread.join()
    assert answers["duplicate"].status_code == 503  # still handled elsewhere: send it again
    assert 0.4 < waited < 2.5
    assert answers["original"].status_code == 200
    assert other.handled == []


JSON = {"content-type": "application/json"}


def test_ownership_config_lease_bounds() -> None:
    from receiver.errors import ConfigError

    for bad in (0, 0.5, -1, 100000):
        with pytest.raises(ConfigError, match="journal_lease"):
            Config(journal_lease=bad).validate()  # type: ignore[call-arg]
    assert os.environ.get("RECEIVER_JOURNAL_LEASE") is None


def test_ownership_owner_is_one_id_when_asked_from_threads_at_once(tmp_path: Path) -> None:
    """The event loop and the writer thread may ask for the owner first at the same time:
    one id, or the process registers twice and a peer takes the first for dead."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(20):
        journal = open_journal(f"sqlite:///{tmp_path / 'j.db'}")
        assert journal is not None
        barrier = threading.Barrier(8)

        def ask(_: int, journal: Journal = journal, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return journal.owner

        with ThreadPoolExecutor(8) as pool:
            assert len(set(pool.map(ask, range(8)))) == 1


# -- across processes: one original, statuses in order -----------------------------------


def test_ownership_same_callback_at_two_processes_one_original(journal_url: str) -> None:
    """The same callback recorded by several processes at once: exactly one original."""

    async def scenario() -> None:
        journals = [await opened(journal_url) for _ in range(4)]
        try:
            for n in range(5):
                copies = [event(100 + n, raw=f'{{"same": {n}}}'.encode()) for _ in journals]
                found = await asyncio.gather(
                    *(j.record(c, {}, f"key-{n}") for j, c in zip(journals, copies, strict=True))
                )
                originals = [r for r in found if r.duplicate_of is None]
                assert len(originals) == 1
                assert {r.duplicate_of for r in found if r.duplicate_of} == {originals[0].event.id}
        finally:
            for journal in journals:
                await journal.stop()

    asyncio.run(scenario())


def test_ownership_out_of_order_status_across_processes(journal_url: str) -> None:
    async def scenario() -> None:
        async with processes(journal_url, DEFAULT_LEASE, DEFAULT_LEASE) as (a, b):
            delivered = await a.record(event(1, status="delivered", message_id="M1"), {}, None)
            sent = await b.record(event(2, status="sent", message_id="M1"), {}, None)
            read = await b.record(event(3, status="read", message_id="M1"), {}, None)
            assert not delivered.event.out_of_order
            assert sent.event.out_of_order  # b sees what a stored
            assert not read.event.out_of_order

    asyncio.run(scenario())


def test_ownership_lease_failure_logged_once_until_it_works_again() -> None:
    """A journal that cannot be reached: one error line, not one every renewal; a line
    again when the lease is renewed."""
    from receiver.dispatch import Dispatcher
    from receiver.plugins import make_plugin_manager
    from receiver.redelivery import Redelivery

    class Down:
        lease = 0.06
        calls = 0

        async def renew(self, running: object = ()) -> None:
            self.calls += 1
            if self.calls <= 5:
                raise ConnectionRefusedError("journal down")

        async def take_over(self) -> list[Any]:
            return []

        async def own_unfinished(self, before: float | None = None) -> list[Any]:
            return []

        unsettled: tuple[str, ...] = ()

        async def due(self, now: float) -> list[Any]:
            return []

    async def scenario() -> int:
        journal = Down()
        redelivery = Redelivery(journal, Dispatcher(make_plugin_manager(autoload=False)), [1.0])  # type: ignore[arg-type]
        redelivery.start()
        while journal.calls < 8:
            await asyncio.sleep(0.02)
        await redelivery.stop()
        return journal.calls

    from structlog.testing import capture_logs

    with capture_logs() as logs:
        assert asyncio.run(scenario()) >= 8
    failed = [line for line in logs if "renewing the lease failed" in line["event"]]
    again = [line for line in logs if "lease renewed again" in line["event"]]
    assert len(failed) == 1 and len(again) == 1


# -- replays: claimed, and the console's confirmation good in any process ----------------

CONSOLE_TOKEN = "console-token-5b1e9d2c7a"
BEARER = {"authorization": "Bearer " + CONSOLE_TOKEN}


class FailsOnce:
    """Raises at its first call, then counts."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def on_message(self, event: Event) -> None:
        self.calls.append(event.id)
        if len(self.calls) == 1:
            raise RuntimeError("the CRM is down")


def test_ownership_console_confirmation_works_in_another_process_once(
    journal_url: str,
) -> None:
    """With several processes behind one console address, the confirmation page comes
    from one and the click may reach another: it works there, and only once anywhere."""
    import re

    from receiver.config import Console

    plugin = FailsOnce()
    config = Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=journal_url,
        retry_delays=[3600.0],
        console=Console(token=CONSOLE_TOKEN),
    )
    first = create_app(config, plugins=[plugin], autoload=False)
    second = create_app(config, plugins=[plugin], autoload=False)
    with TestClient(first) as a, TestClient(second) as b:
        assert a.post("/sms", content=MESSAGE, headers=JSON).status_code == 200
        (entry_id,) = re.findall(
            r'/console/events/([^"]+)"', a.get("/console/", headers=BEARER).text
        )
        asked = a.post("/console/replay", data={"id": entry_id}, headers=BEARER)
        (once,) = re.findall(r'name="once" value="([^"]+)"', asked.text)
        confirm = {"confirm": "yes", "id": entry_id, "once": once}
        done = b.post("/console/replay", data=confirm, headers=BEARER)
        assert done.status_code == 200 and "1 succeeded" in done.text
        again = a.post("/console/replay", data=confirm, headers=BEARER)
        assert again.status_code == 409
    assert len(plugin.calls) == 2  # the first attempt, and one replay


def test_ownership_replay_claims_each_entry_once(journal_url: str) -> None:
    """Two replays of the same failed entry at once (two operators, a double click on two
    processes): it is dispatched once; the other leaves it alone."""
    from receiver.endpoint import CallbackEndpoint
    from receiver.operations import replay_entries

    slow = Counting(delay=0.3)

    async def scenario() -> list[Any]:
        config = Config(
            channels={"sms": Channel(provider="onepoint", auth="none")},
            journal=journal_url,
            retry_delays=[3600.0],
            autoload_plugins=False,
        )
        endpoints = [CallbackEndpoint.from_config(config, [slow]) for _ in range(2)]
        journals = [endpoint.journal for endpoint in endpoints if endpoint.journal is not None]
        for journal in journals:
            await journal.start()
        try:
            failed = event(1)
            await journals[0].record(failed, {}, None)
            await journals[0].fail(failed.id, "boom", None, time.time() + 3600)
            (entry,) = await journals[0].entries(ids=[failed.id])
            return await asyncio.gather(*(replay_entries(e, [entry]) for e in endpoints))
        finally:
            for journal in journals:
                await journal.stop()

    outcomes = asyncio.run(scenario())
    assert sorted(str(o[next(iter(o))]) for o in outcomes) == ["None", "True"]
    assert len(slow.handled) == 1


def test_ownership_console_logout_ends_the_session_in_every_process(journal_url: str) -> None:
    """Logged out at one process, the copied cookie no longer works at another either."""
    import re

    from receiver.config import Console

    config = Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=journal_url,
        console=Console(token=CONSOLE_TOKEN),
    )
    first = create_app(config, autoload=False)
    second = create_app(config, autoload=False)
    with TestClient(first) as a, TestClient(second) as b:
        page = a.get("/console/", headers={"accept": "text/html"})
        (login_csrf,) = re.findall(r'name="csrf" value="([^"]*)"', page.text)
        answer = a.post(
            "/console/login",
            data={"token": CONSOLE_TOKEN, "csrf": login_csrf, "next": "/console/"},
            follow_redirects=False,
        )
        session = str(answer.cookies["receiver_console"])
        copied = {"cookie": f"receiver_console={session}"}
        assert b.get("/console/", headers=copied).status_code == 200  # good everywhere
        csrf = re.findall(r'name="csrf" value="([^"]*)"', a.get("/console/").text)[0]
        assert a.post("/console/logout", data={"csrf": csrf}, follow_redirects=False).is_redirect
        b.cookies.clear()
        assert b.get("/console/", headers=copied).status_code == 401


def test_ownership_replay_leaves_a_live_owners_received_entry_takes_a_gone_ones(
    journal_url: str,
) -> None:
    async def scenario() -> tuple[bool, bool]:
        async with processes(journal_url, 0.3, 30) as (handling, operator):
            left = event(1)
            await handling.record(left, {}, None)
            await handling.renew()
            (entry,) = await operator.entries(ids=[left.id])
            being_handled = await operator.claim(entry)
            await asyncio.sleep(0.5)  # the owner's lease ran out
            return being_handled, await operator.claim(entry)

    assert asyncio.run(scenario()) == (False, True)


# -- outcomes that could not be recorded: looked at again ------------------------------


def test_ownership_outcome_not_recorded_is_handled_again(journal_url: str) -> None:
    """complete() raises once (not a storage fault: a bug, a value the store refuses): the
    entry stays received under this live process, which no one takes over; the worker
    looks at it again and handles it."""
    counting = Counting()
    app = create_app(config(journal_url), plugins=[counting], autoload=False)
    journal = app.state.journal
    real_complete = journal.complete
    calls = []

    async def complete_once_broken(event_id: str, reply: Any) -> None:
        calls.append(event_id)
        if len(calls) == 1:
            raise UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")
        await real_complete(event_id, reply)

    journal.complete = complete_once_broken
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/sms", content=MESSAGE, headers=JSON)
        assert answer.status_code == 500
        entry = _settled(journal_url)
    assert len(counting.handled) == 2 and entry.state == "done"


def test_ownership_record_answered_503_but_stored_is_handled(journal_url: str) -> None:
    """The record committed, its answer lost and the look-up failing too: 503 to the
    provider, and the stored callback is still handled once the journal answers."""
    counting = Counting()
    app = create_app(config(journal_url), plugins=[counting], autoload=False)
    journal = app.state.journal
    real_record = journal.record

    async def stored_but_unanswered(*args: Any) -> Any:
        await real_record(*args)
        from receiver.errors import JournalUnavailable

        raise JournalUnavailable()

    journal.record = stored_but_unanswered
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/sms", content=MESSAGE, headers=JSON).status_code == 503
        entry = _settled(journal_url)
    assert len(counting.handled) == 1 and entry.state == "done"


def _settled(url: str, seconds: float = 10) -> Any:
    """The journal's one entry, once it is no longer received (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        (entry,) = asyncio.run(_entries(url))
        if entry.state != "received" or time.monotonic() > deadline:
            return entry
        time.sleep(0.05)


async def _entries(url: str) -> list[Any]:
    journal = open_journal(url)
    assert journal is not None
    try:
        return await journal.entries(limit=None)
    finally:
        await journal.stop()


# -- stranded: what a lost answer or a database crash left this live process ----------


def sql(url: str, statement: str) -> None:
    """Run ``statement`` on the journal's database, as another client would."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            db.execute(statement)
    else:
        run_sql(url, statement)


@pytest.fixture
def sweeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease keeper looks for stranded entries every 0.2 s, 0.5 s after their receipt."""
    from receiver.redelivery import Redelivery

    monkeypatch.setattr(Redelivery, "sweep_interval", 0.2, raising=False)
    monkeypatch.setattr(Redelivery, "stranded_after", 0.5, raising=False)


def _handled(counting: Counting, count: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while len(counting.handled) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(counting.handled) >= count


@pytest.mark.usefixtures("sweeping")
def test_ownership_record_stored_answer_and_look_lost_is_handled(journal_url: str) -> None:
    """A group commit's answer lost (503), and the worker's look at it answered before
    the commit showed (it finds nothing): the stored callback, this live process's, is
    found by the sweep and handled once. Before: left received for good."""
    counting = Counting()
    app = create_app(config(journal_url), plugins=[counting], autoload=False)
    journal = app.state.journal
    real_record, real_entries = journal.record, journal.entries

    async def stored_but_unanswered(*args: Any) -> Any:
        await real_record(*args)
        raise JournalUnavailable()

    async def not_there_yet(**query: Any) -> Any:
        if query.get("ids"):
            return []
        return await real_entries(**query)

    journal.record, journal.entries = stored_but_unanswered, not_there_yet
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/sms", content=MESSAGE, headers=JSON).status_code == 503
        assert _handled(counting, 1)
        entry = _settled(journal_url)
        time.sleep(0.6)  # a few more sweeps: nothing handled twice
    assert len(counting.handled) == 1 and entry.state == "done"


@pytest.mark.usefixtures("sweeping")
def test_ownership_take_over_answer_lost_is_handled(journal_url: str) -> None:
    """A take-over committed but its answer lost (the driver's retry then found nothing
    left to claim): the entries are this process's without its knowing; the sweep finds
    and handles them."""
    left = crash(journal_url)
    counting = Counting()
    app = create_app(config(journal_url), plugins=[counting], autoload=False)
    journal = app.state.journal
    real_take_over = journal.take_over

    async def answer_lost(*args: Any) -> list[Any]:
        await real_take_over(*args)
        return []

    journal.take_over = answer_lost
    with TestClient(app):
        assert _handled(counting, 1)
        time.sleep(0.6)
    assert counting.handled == [left]


@pytest.mark.usefixtures("sweeping")
def test_ownership_failed_state_lost_in_a_crash_is_retried(journal_url: str) -> None:
    """A handler failed and its entry was marked failed, but the database lost that state
    (PostgreSQL commits state changes without waiting for the flush; a crash loses the
    last ones): the entry is received again, this live process's, and nothing would
    retry it. The sweep does."""
    fails = FailsOnce()
    app = create_app(config(journal_url, retry_delays=[3600.0]), plugins=[fails], autoload=False)
    with TestClient(app) as client:
        assert client.post("/sms", content=MESSAGE, headers=JSON).status_code == 200
        (failed,) = asyncio.run(_entries(journal_url))
        assert failed.state == "failed"
        # The row as it was before the lost change: received, this process's.
        owner = app.state.journal.owner
        sql(
            journal_url,
            "UPDATE events SET state = 'received', attempts = 0, error = NULL, "
            f"next_attempt_at = NULL, owner = '{owner}'",
        )
        deadline = time.monotonic() + 10
        while len(fails.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        entry = _settled(journal_url)
    assert len(fails.calls) == 2 and entry.state == "done"


@pytest.mark.usefixtures("sweeping")
def test_ownership_sweep_leaves_entries_being_handled(journal_url: str) -> None:
    """Handlers that take longer than ``stranded_after`` (in the endpoint, and past their
    timeout) are not taken for stranded: each callback is handled once."""
    slow = Counting(delay=1.5)
    app = create_app(config(journal_url, reply_timeout=1.0), plugins=[slow], autoload=False)
    with TestClient(app) as client:
        first = json.loads(MESSAGE)
        bodies = [json.dumps({**first, "MessageID": f"SLOW-{n}"}).encode() for n in range(3)]
        for body in bodies:
            assert client.post("/sms", content=body, headers=JSON).status_code == 200
        assert _handled(slow, 3)
        time.sleep(1.0)  # several sweeps after the handlers finished
    assert len(slow.handled) == 3 == len(set(slow.handled))


def test_ownership_ownerless_old_entries_taken_over_once(journal_url: str) -> None:
    """An entry received after the migration by a receiver of an older version (no owner),
    or owned by no process row, is taken over once ORPHAN_AGE old; a younger one, and one
    of a live owner, are left."""
    from receiver.journal import ORPHAN_AGE

    old = time.time() - ORPHAN_AGE - 60
    young = time.time() - 10

    async def scenario() -> tuple[list[str], list[str]]:
        async with processes(journal_url, DEFAULT_LEASE, DEFAULT_LEASE) as (first, second):
            live = event(1)
            await first.record(live, {}, None)
            for number, (owner, at) in enumerate(
                (("NULL", old), ("'ghost'", old), ("NULL", young), (f"'{first.owner}'", old))
            ):
                sql(
                    journal_url,
                    "INSERT INTO events (id, channel, provider, state, received_at, raw, owner) "
                    f"VALUES ('orphan-{number}', 'sms', 'onepoint', 'received', {at}, '', {owner})",
                )
            taken = [e.id for e in await second.take_over()]
            again = [e.id for e in await first.take_over()] + await second.take_over()
            return taken, again

    taken, again = asyncio.run(scenario())
    assert sorted(taken) == ["orphan-0", "orphan-1"]
    assert again == []


def _watch_due(url: str, entry_id: str, stop: threading.Event, taken: list[str]) -> None:
    """Another process's retry worker: asks for due entries every 0.1 s until ``stop``."""

    async def watch() -> None:
        other = await opened(url)
        try:
            while not stop.is_set():
                taken.extend(e.id for e in await other.due(time.time()) if e.id == entry_id)
                await asyncio.sleep(0.1)
        finally:
            await other.stop()

    asyncio.run(watch())


def test_ownership_replay_claim_held_while_its_handlers_run(journal_url: str) -> None:
    """A replay (the console's, in a serving process) whose handlers take longer than the
    lease: its claim is renewed with the lease, so another process's retry worker never
    takes the entry meanwhile (before: it fell due again after one lease)."""
    from receiver.endpoint import CallbackEndpoint
    from receiver.operations import replay_entries

    slow = Counting(delay=2.5)
    stop, taken = threading.Event(), []

    async def scenario() -> Any:
        endpoint = CallbackEndpoint.from_config(
            config(journal_url, retry_delays=[3600.0], autoload_plugins=False), [slow]
        )
        journal, redelivery = endpoint.journal, endpoint.redelivery
        assert journal is not None and redelivery is not None
        await journal.start()
        redelivery.start()
        failed = event(1)
        watcher = threading.Thread(target=_watch_due, args=(journal_url, failed.id, stop, taken))
        try:
            await journal.record(failed, {}, None)
            await journal.fail(failed.id, "boom", None, time.time() + 3600)
            (entry,) = await journal.entries(ids=[failed.id])
            watcher.start()
            return await replay_entries(endpoint, [entry])
        finally:
            stop.set()
            if watcher.is_alive():
                await asyncio.to_thread(watcher.join)
            await redelivery.stop()
            await journal.stop()

    outcomes = asyncio.run(scenario())
    assert list(outcomes.values()) == [True]
    assert taken == [], "another process took the entry while its replay ran"
    assert len(slow.handled) == 1


SLOW_PLUGIN = """
import asyncio
from receiver import hookimpl

@hookimpl
async def on_message(event):
    await asyncio.sleep(2.5)
"""


def test_ownership_cli_replay_claim_held_while_its_handlers_run(
    journal_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for ``receiver replay`` (its own process: the command renews the claim)."""
    import receiver.logs
    from receiver.cli import main

    # The CLI configures process-wide logging (cached structlog loggers): keep it local.
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(SLOW_PLUGIN)
    (tmp_path / "receiver.toml").write_text(
        f'journal = "{journal_url}"\njournal_lease = 1.0\nplugins_dir = "{tmp_path / "plugins"}"\n'
        "retry_delays = [3600.0]\nautoload_plugins = false\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    failed = event(1)

    async def prepare() -> None:
        journal = await opened(journal_url)
        try:
            await journal.record(failed, {}, None)
            await journal.fail(failed.id, "boom", None, time.time() + 3600)
        finally:
            await journal.stop()

    asyncio.run(prepare())
    stop, taken = threading.Event(), []
    watcher = threading.Thread(target=_watch_due, args=(journal_url, failed.id, stop, taken))
    watcher.start()
    try:
        status = main(["replay", "--config", str(tmp_path / "receiver.toml"), failed.id])
    finally:
        stop.set()
        watcher.join()
    assert status == 0
    assert taken == [], "another process took the entry while `receiver replay` ran it"


def test_ownership_failed_entries_claimed_by_an_older_version_are_released(
    journal_url: str,
) -> None:
    """Before, a failed entry kept the owner of the retry that last claimed it; now an
    owner on a failed entry is a live claim (replays leave it). A journal an older
    version wrote is brought up to this once at start (SQLite user_version 1, PostgreSQL
    schema 3): those owners go, and a replay can claim the entry."""
    failed = event(1)

    async def prepare() -> None:
        journal = await opened(journal_url)
        try:
            await journal.record(failed, {}, None)
            await journal.fail(failed.id, "boom", None, time.time() + 3600)
            await journal.renew()
        finally:
            owner = journal.owner
            await journal.stop()
        # As the older version left it: the failed entry with its live owner's id.
        sql(journal_url, f"UPDATE processes SET lease_until = {time.time() + 3600}")
        sql(journal_url, f"UPDATE events SET owner = '{owner}'")
        if journal_url.startswith("sqlite:"):
            sql(journal_url, "PRAGMA user_version = 0")
        else:
            sql(journal_url, "DELETE FROM schema_version WHERE version = 3")

    async def replay() -> bool:
        journal = await opened(journal_url)  # migrates
        try:
            (entry,) = await journal.entries(ids=[failed.id])
            return await journal.claim(entry)
        finally:
            await journal.stop()

    asyncio.run(prepare())
    assert asyncio.run(replay()) is True


def test_ownership_crash_without_retries_configured_is_still_handled(journal_url: str) -> None:
    """A take-over counts an attempt (a callback that kills its process ends a dead
    letter), but with no retries configured a crash alone does not make the dead
    process's callback a dead letter: it is handled once by the process taking over."""
    left = crash(journal_url)
    counting = Counting()
    app = create_app(config(journal_url, retry_delays=[]), plugins=[counting], autoload=False)
    with TestClient(app):
        assert _handled(counting, 1)
    assert counting.handled == [left]
    (entry,) = asyncio.run(_entries(journal_url))
    assert entry.state == "done"
