"""Attack 19: the stranded sweep, orphan take-over, replays holding their claims, batched
prunes, lone surrogates, PostgreSQL's status-key locks.

Each test asserts the right behaviour; those that fail on the code they were written
against are findings (see each docstring). Real parts: a real SQLite file, the real
PostgreSQL server (tests/postgres.py), TestClient apps.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest
from postgres import postgres_server, postgres_url
from samples import PAYLOADS
from starlette.testclient import TestClient
from test_journal_postgres import _cut_off, event, journal_url
from test_ownership import Counting, _entries, sweeping

from receiver import Channel, Config, Event, create_app, hookimpl

__all__ = ["journal_url", "postgres_server", "postgres_url", "sweeping"]  # fixtures, used by name

MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
JSON = {"content-type": "application/json"}


def config(url: str, **extra: Any) -> Config:
    return Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=url,
        journal_lease=1.5,
        **extra,
    )


# -- 1. the stranded sweep ----------------------------------------------------------------


@pytest.mark.usefixtures("sweeping")
def test_sweep_never_rehandles_an_entry_whose_done_is_kept_in_memory(
    postgres_server: str, postgres_url: str
) -> None:
    """FINDING. A callback is handled while PostgreSQL goes away: its ``done`` cannot be
    written, so the journal keeps it in memory (``PostgresJournal.kept``) and writes it
    again with backoff (up to 5 s apart). The entry is still ``received`` in the
    database, and nothing in ``Redelivery._busy`` names it. When the database answers
    again, the lease keeper's first successful renewal sweeps *at once* (``failing`` ->
    ``next_sweep = 0``), before the kept write's next attempt: the entry is older than
    ``stranded_after`` (in production: the outage lasted more than a minute), so it is
    taken for stranded and its handlers run a second time (a second reply sent to the
    person). Expected: handled once."""
    database = postgres_url.rsplit("/", 1)[1]
    counting = Counting(delay=1.0)
    app = create_app(config(postgres_url), plugins=[counting], autoload=False)
    journal = app.state.journal
    journal.retry_min = journal.retry_max = 4.0  # the backoff after a few seconds of outage
    cutter = threading.Timer(0.4, _cut_off, (postgres_server, database, False))
    with TestClient(app) as client:
        cutter.start()
        try:
            answer = client.post("/sms", content=MESSAGE, headers=JSON)
            assert answer.status_code == 200
            assert journal.kept  # the done could not be written
            time.sleep(1.0)  # the outage goes on; the lease keeper's renewals fail
        finally:
            cutter.join()
            _cut_off(postgres_server, database, True)
        time.sleep(5.0)  # the keeper renews, sweeps; the kept done is written
    entries = asyncio.run(_entries(postgres_url))
    assert [e.state for e in entries] == ["done"]
    assert len(counting.handled) == 1, counting.handled


# -- 4. serve --workers N: a worker that cannot start -------------------------------------


def test_workers_replacement_failing_during_a_journal_outage_keeps_serving(
    tmp_path: Any, postgres_server: str, postgres_url: str
) -> None:
    """FINDING. ``serve --workers 2`` on PostgreSQL, serving. The database refuses
    connections for a while (a restart, a fail-over) and meanwhile one worker dies
    (OOM killer, a segfault in a plugin's C extension: here ``kill -9``). uvicorn starts
    a replacement; its lifespan cannot open the journal, so it exits 3
    (``STARTUP_FAILURE``) and the supervisor, taking that for a broken configuration,
    stops *every* worker, the healthy one included, and ``serve`` exits 3: the port is
    closed. When the database is back a moment later nothing listens: callbacks are
    refused (Whispir does not re-send), and under systemd every restart attempt during
    the outage fails the same way until the start limit gives up. Expected: the healthy
    worker goes on serving (answering 503 while the journal is unreachable, 200 after),
    and the failed replacement is tried again."""
    import os
    import signal

    from availability import workers
    from serving import serve

    database = postgres_url.rsplit("/", 1)[1]
    config = f'journal = "{postgres_url}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    with serve(tmp_path, config, "--workers", "2") as server:
        deadline = time.monotonic() + 15
        while len(workers(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = sorted(workers(server.process.pid))
        assert len(pids) == 2
        _cut_off(postgres_server, database, False)
        try:
            os.kill(pids[0], signal.SIGKILL)
            time.sleep(4.0)  # the replacement tries to start while the database refuses
        finally:
            _cut_off(postgres_server, database, True)
        alive = server.process.poll() is None
        body = json.dumps({**json.loads(MESSAGE), "MessageID": "AFTER-OUTAGE"}).encode()
        try:
            status = server.request("/sms", body, JSON)[0] if alive else None
        except OSError as exc:
            status = repr(exc)
        log = server.log_text()
    assert alive, f"serve exited {server.process.returncode}:\n{log[-3000:]}"
    assert status == 200, log[-3000:]


class FailsFirst:
    """Raises at its first call; later calls succeed after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[str] = []

    @hookimpl
    async def on_message(self, event: Event) -> None:
        self.calls.append(event.id)
        if len(self.calls) == 1:
            raise RuntimeError("first attempt fails")
        await asyncio.sleep(self.delay)


def test_retry_whose_done_is_kept_in_memory_is_not_retried_again(
    postgres_server: str, postgres_url: str
) -> None:
    """FINDING (the same hole as the sweep's, by the retry worker). A failed entry is
    claimed by the retry worker (``due``: next attempt a lease ahead); its handlers
    succeed while PostgreSQL refuses connections, so its ``done`` is kept in memory and
    written later with backoff (up to 5 s apart). The entry is no longer held
    (``Redelivery.held``), its claim is not renewed, and in the database it is still
    ``failed`` with a next attempt one lease after the claim: once the database answers,
    the worker's next ``due`` (every second) claims it again before the kept ``done`` is
    written, and its handlers run once more after they succeeded (another process's
    worker would do the same). Expected: 2 calls (the failure, the successful retry)."""
    database = postgres_url.rsplit("/", 1)[1]
    plugin = FailsFirst(delay=1.0)
    app = create_app(
        config(postgres_url, retry_delays=[0.2, 0.2]), plugins=[plugin], autoload=False
    )
    journal = app.state.journal
    journal.retry_min = journal.retry_max = 4.0  # the backoff after a few seconds of outage
    with TestClient(app) as client:
        assert client.post("/sms", content=MESSAGE, headers=JSON).status_code == 200
        deadline = time.monotonic() + 10
        while len(plugin.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(plugin.calls) == 2  # the retry's handlers are running
        _cut_off(postgres_server, database, False)
        try:
            time.sleep(2.5)  # the retry succeeds; its done is kept; the lease (1.5 s) runs out
            assert journal.kept
        finally:
            _cut_off(postgres_server, database, True)
        time.sleep(5.0)
    entries = asyncio.run(_entries(postgres_url))
    assert [e.state for e in entries] == ["done"]
    assert len(plugin.calls) == 2, plugin.calls


def test_mounted_app_first_callback_never_blocks_the_event_loop_on_the_journal_lock(
    tmp_path: Any,
) -> None:
    """FINDING. A mounted app (no lifespan) opens its SQLite journal at its first callback:
    ``Writer.submit`` calls ``ensure_started()`` synchronously, on the event loop, and
    since the new start-up waits for another process's write lock (up to
    ``start_timeout``, 30 s, in steps of the 5 s ``busy_timeout``), the host app's whole
    event loop stops while another process (a worker, ``receiver prune``) holds the lock:
    every other request of the host app (and its health check) hangs with it. Expected:
    the callback waits, the loop does not (a health route answers within a second)."""
    import sqlite3

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    path = tmp_path / "j.db"
    receiver_app = create_app(config(f"sqlite:///{path}"), plugins=[Counting()], autoload=False)
    with sqlite3.connect(path) as db:  # the file exists, with a table to lock
        db.execute("CREATE TABLE IF NOT EXISTS other (x)")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")

    async def ping(request: Any) -> PlainTextResponse:
        return PlainTextResponse("pong")

    host = Starlette(routes=[Route("/ping", ping), Mount("/hooks", app=receiver_app)])
    statuses: list[int] = []
    with TestClient(host) as client:
        sender = threading.Thread(
            target=lambda: statuses.append(
                client.post("/hooks/sms", content=MESSAGE, headers=JSON).status_code
            )
        )
        threading.Timer(3.0, holder.rollback).start()  # the lock is held 3 s
        sender.start()
        time.sleep(0.5)  # the callback is waiting for the lock
        started = time.monotonic()
        pinged = client.get("/ping").status_code
        waited = time.monotonic() - started
        sender.join(timeout=60)
    holder.close()
    assert pinged == 200
    assert waited < 1.0, f"the host app's event loop was blocked {waited:.1f} s"
    assert statuses == [200]


# -- 3/4. a replay and a prune at once ------------------------------------------------------


class SlowFailure:
    """Raises after ``delay`` seconds (a replay that fails again)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    @hookimpl
    async def on_message(self, event: Event) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        raise RuntimeError("still failing")


def test_replay_of_an_old_dead_letter_is_not_pruned_while_it_runs(journal_url: str) -> None:
    """FINDING. An operator replays a dead letter just past the retention (the console's
    Replay, or ``receiver replay``) while the retry worker's hourly prune runs. A
    replay's claim changes the entry's owner and next attempt, not its state: the entry
    is still ``dead`` while its handlers run, so the prune (whose DELETE checks the state
    again, "an entry replayed meanwhile is kept") deletes it. The handlers fail again;
    ``fail`` updates no row and the attempt is not kept: the operator is told it "is
    retried like any failed event", and the callback is gone for good. Expected: an
    entry claimed by a replay is not pruned (it ends ``failed``, kept for a retry)."""
    from receiver.endpoint import CallbackEndpoint
    from receiver.operations import replay_entries

    plugin = SlowFailure(delay=1.0)
    retention = 48 * 3600.0

    async def scenario() -> tuple[Any, list[Any]]:
        endpoint = CallbackEndpoint.from_config(
            config(journal_url, retry_delays=[3600.0], autoload_plugins=False), [plugin]
        )
        journal, redelivery = endpoint.journal, endpoint.redelivery
        assert journal is not None and redelivery is not None
        await journal.start()
        try:
            old = event(1, at=time.time() - retention - 60)
            await journal.record(old, {}, None)
            await journal.fail(old.id, "boom", None, None)  # out of attempts: dead
            (entry,) = await journal.entries(ids=[old.id])
            assert entry.state == "dead"
            replaying = asyncio.ensure_future(replay_entries(endpoint, [entry]))
            await asyncio.sleep(0.3)  # claimed; its handlers run
            await journal.prune(time.time() - retention)
            outcomes = await replaying
            return outcomes, await journal.entries(ids=[old.id])
        finally:
            await redelivery.stop()
            await journal.stop()

    outcomes, found = asyncio.run(scenario())
    assert list(outcomes.values()) == [False]  # the replay failed
    assert [e.state for e in found] in (["failed"], ["dead"]), "the replayed entry was pruned"


def test_sqlite_retry_whose_done_is_kept_on_a_full_disk_is_not_retried_again(
    tmp_path: Any,
) -> None:
    """FINDING (SQLite, the default journal: the hole of
    test_retry_whose_done_is_kept_in_memory_is_not_retried_again). A retry's handlers
    succeed as the disk fills up: its ``done`` is kept in memory (and in the done
    ledger). The entry is still ``failed`` in the file with a next attempt one lease
    after the claim; when space returns, the worker's ``due`` (every second) is the
    first transaction to work, and its result is read *before* the writer writes the
    kept states (``_write_kept`` runs after the batch's commit): the entry is claimed
    and its handlers run again. Expected: 2 calls (the failure, the successful retry)."""
    from test_storage import fill, small_filesystem

    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        plugin = FailsFirst(delay=1.0)
        app = create_app(
            config(f"sqlite:///{db}", retry_delays=[0.2, 0.2]), plugins=[plugin], autoload=False
        )
        with TestClient(app) as client:
            assert client.post("/sms", content=MESSAGE, headers=JSON).status_code == 200
            deadline = time.monotonic() + 10
            while len(plugin.calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(plugin.calls) == 2  # the retry's handlers are running
            filler = fill(fs)
            try:
                time.sleep(2.5)  # the retry succeeds; its done is kept; the lease runs out
            finally:
                filler.unlink()
            time.sleep(4.0)
        entries = asyncio.run(_entries(f"sqlite:///{db}"))
    assert [e.state for e in entries] == ["done"]
    assert len(plugin.calls) == 2, plugin.calls


class SlowCounting:
    """Counts its calls (each ``delay`` seconds long)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    @hookimpl
    async def on_message(self, event: Event) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)


def test_replay_leaves_an_entry_the_retry_worker_is_retrying(journal_url: str) -> None:
    """FINDING. The retry worker claims a due failed entry and runs its handlers (slow:
    2 s). Meanwhile an operator replays it (the console's Replay, or ``receiver replay``
    from another process): the replay reads the entry *after* the worker's claim, so its
    optimistic claim (same state, attempts and next attempt as read) matches, and
    nothing in ``Journal.claim`` looks at whether the entry is claimed now (only a
    ``received`` entry's owner is checked). Both run the handlers at once: handled
    twice. Expected: the replay leaves it alone (None), one call."""
    from receiver.endpoint import CallbackEndpoint
    from receiver.operations import replay_entries

    plugin = SlowCounting(delay=2.0)

    async def scenario() -> dict[str, Any]:
        endpoint = CallbackEndpoint.from_config(
            config(journal_url, retry_delays=[3600.0, 3600.0], autoload_plugins=False),
            [plugin],
        )
        journal, redelivery = endpoint.journal, endpoint.redelivery
        assert journal is not None and redelivery is not None
        await journal.start()
        try:
            failed = event(1)
            await journal.record(failed, {}, None)
            await journal.fail(failed.id, "boom", None, time.time())  # due now
            redelivery.start()
            deadline = time.monotonic() + 10
            while plugin.calls < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert plugin.calls == 1  # the worker's retry is running
            (entry,) = await journal.entries(ids=[failed.id])  # the operator's page
            outcomes = await replay_entries(endpoint, [entry])
            await asyncio.sleep(2.5)
            return outcomes
        finally:
            await redelivery.stop()
            await journal.stop()

    outcomes = asyncio.run(scenario())
    assert plugin.calls == 1, f"handled {plugin.calls} times; replay outcome {outcomes}"
    assert list(outcomes.values()) == [None]


# -- 2. orphans taken over by several processes at once (a guard: passes) ------------------


def test_orphans_taken_over_by_several_processes_at_once_each_exactly_once(
    journal_url: str,
) -> None:
    """GUARD (passes). 300 received entries older than ORPHAN_AGE, half without an owner,
    half owned by an owner with no process row, and three processes taking over at the
    same moment (each also claiming a gone owner's work in the same transaction): every
    orphan is claimed by exactly one of them."""
    from test_ownership import opened, sql

    from receiver.journal import ORPHAN_AGE

    old = time.time() - ORPHAN_AGE - 60
    values = ", ".join(
        f"('orphan-{n}', 'sms', 'onepoint', 'received', {old + n / 1000}, '', "
        f"{'NULL' if n % 2 else repr('ghost')})"
        for n in range(300)
    )

    async def scenario() -> list[list[str]]:
        journals = [await opened(journal_url, lease=15.0) for _ in range(3)]
        try:
            for journal in journals:
                await journal.renew()
            insert = "INSERT INTO events (id, channel, provider, state, received_at, raw, owner) "
            await asyncio.to_thread(sql, journal_url, f"{insert} VALUES {values}")
            taken = await asyncio.gather(*(journal.take_over() for journal in journals))
            again = await asyncio.gather(*(journal.take_over() for journal in journals))
            return [[e.id for e in found] for found in (*taken, *again)]
        finally:
            for journal in journals:
                await journal.stop()

    claims = [entry_id for found in asyncio.run(scenario()) for entry_id in found]
    assert sorted(claims) == sorted(f"orphan-{n}" for n in range(300))


# -- 6. PostgreSQL: the status key's advisory lock ------------------------------------------


def test_postgres_status_lock_key_is_the_stored_rows_key(postgres_url: str) -> None:
    """FINDING (low). ``_lock_keys`` locks a record's message status key made of the
    message id and party *as received*, while ``_out_of_order`` upserts the row of the
    ids *as stored* (``_text``: NUL and lone surrogates as U+FFFD). Two ids that differ
    only there (``"M\\x00"`` and ``"M\\ufffd"``: a sender's choice) take different
    advisory locks but upsert the same row: two groups holding them in opposite orders
    deadlock again (PostgreSQL breaks it after ``deadlock_timeout``, a group is taken
    apart and waits a second). Expected: no deadlock, every group committed whole."""
    from test_journal_postgres import groups_of_statuses

    found, grouped = groups_of_statuses(postgres_url, 4, ("\x00", "\ufffd"))
    assert found == 0, f"{found} deadlock(s) between two groups"
    assert grouped == 4 * 12  # none taken apart


# -- take-over and the done ledger (SQLite, several processes) -------------------------------


def test_sqlite_take_over_skips_what_the_gone_process_noted_done_in_its_ledger(
    tmp_path: Any,
) -> None:
    """FINDING (SQLite, ``serve --workers N``). A process handles a callback while the
    disk is full: its ``done`` is noted in its done ledger (``j.db-done``), the space
    reserved for exactly this, "so that a restart marks it done instead of handling it
    again". The process then dies (here: stops with the state unwritten; a crash is the
    same). Space returns. Another process sharing the journal takes its unfinished work
    over at once (its pid is gone / its owner id unknown) and gets the entry to handle
    again: nothing reads the gone process's ledger first (only a process starting and
    locking that slot does, later). Expected: the entry the ledger names is not handed
    out for handling again."""
    from test_ownership import opened
    from test_storage import fill, small_filesystem

    with small_filesystem(tmp_path / "fs") as fs:
        url = f"sqlite:///{fs / 'j.db'}"

        async def scenario() -> list[str]:
            gone = await opened(url, lease=15.0)
            other = await opened(url, lease=15.0)
            try:
                handled = event(1)
                await gone.record(handled, {}, None)
                await other.renew()
                filler = fill(fs)
                await gone.complete(handled.id, None)  # kept; noted in the ledger
                await gone.stop()  # dies with the done unwritten
                filler.unlink()
                return [e.id for e in await other.take_over()]
            finally:
                await other.stop()

        taken = asyncio.run(scenario())
    assert taken == [], "an entry its handler's process noted done was handed out again"


def test_postgres_stop_writes_kept_states_before_giving_the_lease_up(
    postgres_server: str, postgres_url: str
) -> None:
    """FINDING. A PostgreSQL blip leaves a handled callback's ``done`` kept in memory
    (written again with backoff, up to 5 s apart). The process is then stopped (a
    rolling restart, ``kill -HUP`` of ``--workers``): ``PostgresJournal.stop`` gives its
    lease up *first*, then waits up to ``retry_max`` for the kept states. In between,
    another process's lease keeper takes the entry over (lease 0: expired) and handles
    it again, although its done was about to be written. Expected: the kept states are
    written (or tried) before the lease is given up, so the entry is not taken over."""
    from test_ownership import opened

    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> list[str]:
        stopping = await opened(postgres_url, lease=15.0)
        other = await opened(postgres_url, lease=15.0)
        stopping.retry_min = stopping.retry_max = 3.0  # the backoff after a few failures
        try:
            handled = event(1)
            await stopping.record(handled, {}, None)
            await other.renew()
            await asyncio.to_thread(_cut_off, postgres_server, database, False)
            try:
                await stopping.complete(handled.id, None)  # kept, written later
            finally:
                await asyncio.to_thread(_cut_off, postgres_server, database, True)
            assert stopping.kept
            stop = asyncio.ensure_future(stopping.stop())
            await asyncio.sleep(0.5)  # the lease is given up; the kept done not yet written
            taken = [e.id for e in await other.take_over()]
            await stop
            return taken
        finally:
            await other.stop()

    taken = asyncio.run(scenario())
    assert taken == [], "a handled entry was taken over while its done was being written"
