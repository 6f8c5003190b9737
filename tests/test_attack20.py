"""Attack 20: PostgreSQL grouped state changes and records, Journal.unsettled, claims,
SQLite take-over reading gone processes' done ledgers, the ``serve --workers N``
supervisor.

Each test asserts the right behaviour; those that fail on the code they were written
against are findings (see each docstring); guards say so. Real parts: real SQLite
files, the real PostgreSQL server (tests/postgres.py), real ``receiver serve``
processes (tests/serving.py), TestClient apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from postgres import postgres_server, postgres_url
from samples import PAYLOADS
from serving import wait_for
from test_journal_postgres import event, journal_url

from receiver.journal import open_journal

__all__ = ["journal_url", "postgres_server", "postgres_url"]  # fixtures, used by name

MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
JSON = {"content-type": "application/json"}


# -- 5. serve --workers N: the backoff of a worker that cannot start ------------------------


def _held_lock(url: str, table: str, release: threading.Event, held: threading.Event) -> None:
    """Hold an ACCESS EXCLUSIVE lock on ``table`` until ``release`` is set."""

    async def hold() -> None:
        import asyncpg

        connection = await asyncpg.connect(url, timeout=10)
        try:
            async with connection.transaction():
                await connection.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                held.set()
                while not release.is_set():
                    await asyncio.sleep(0.05)
        finally:
            await connection.close()

    asyncio.run(hold())


def _started(server: Any) -> int:
    return sum(
        1 for line in server.log_events() if line.get("event") == "Application startup complete."
    )


def test_supervisor_backoff_doubles_while_a_worker_keeps_failing_to_start(
    tmp_path: Path, postgres_url: str
) -> None:
    """FINDING. ``serve --workers 2`` on PostgreSQL, both workers serving. A replacement
    worker cannot start for a while: here its journal start waits on a lock of
    ``schema_version`` (a migration or a dump holding it) and fails after the
    database's ``lock_timeout`` (1 s); in a fail-over, a connect that times out after
    ``connect_timeout`` (5 s) is the same. The supervisor starts it again "after a
    pause that doubles from retry_min up to retry_max" (module docstring). But at the
    health check after each new start the replacement is alive (starting: its ping
    thread answers while its lifespan waits for the journal), and
    ``keep_subprocess_alive`` forgets the slot's pause (``self._pause.pop``): every pause
    is ``retry_min`` (1 s), for as long as the outage lasts. A Python process is spawned,
    imports the app and fails every ~2 s on the cores of the worker serving the
    callbacks. (A start refused at once, dead before the next health check, does back
    off.) Expected: the pauses grow (1, 2, 4)."""
    from availability import workers
    from serving import serve

    url = postgres_url + "?lock_timeout=1000"
    config = f'journal = "{url}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    release, held = threading.Event(), threading.Event()
    with serve(tmp_path, config, "--workers", "2") as server:
        assert wait_for(lambda: _started(server) >= 2 and len(workers(server.process.pid)) == 2)
        pids = sorted(workers(server.process.pid))
        locker = threading.Thread(
            target=_held_lock, args=(postgres_url, "schema_version", release, held)
        )
        locker.start()
        try:
            assert held.wait(10)
            os.kill(pids[0], signal.SIGKILL)
            deadline = time.monotonic() + 14
            pauses: list[float] = []
            while time.monotonic() < deadline and len(pauses) < 3:
                time.sleep(0.25)
                pauses = [
                    float(line["in_s"])  # type: ignore[arg-type]
                    for line in server.log_events()
                    if "could not start" in str(line.get("event", "")) and "in_s" in line
                ]
            status = server.request("/sms", MESSAGE, JSON)[0]
        finally:
            release.set()
            locker.join()
        alive = server.process.poll() is None
        log = server.log_text()
    assert alive, log[-3000:]
    assert status == 200
    assert len(pauses) >= 3, log[-3000:]
    assert pauses[1] > pauses[0] and pauses[2] > pauses[1], pauses


# -- 4. SQLite take-over reading gone processes' done ledgers -------------------------------


def _dead_pid() -> int:
    """A pid no process has (one just reaped)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_sqlite_stale_done_ledger_does_not_mark_a_failed_replay_done(tmp_path: Path) -> None:
    """FINDING. Process G handled event X but could not write its ``done`` (a full
    disk): X's id is noted in G's done ledger slot (``j.db-done.1``), and G died. A
    live process's take-over reads the unheld slots (``DoneLedger.unheld``) and marks X
    done: right. But the slot is read, not cleared, and stays unheld while no process
    starts into it (one process left, holding slot 0: for ever). Later an operator
    replays X (``receiver replay`` or the console) and a plugin fails: X is ``failed``,
    its retry due in a minute. The next take-over that finds any gone or expired owner
    (a worker of ``serve --workers 2`` stopped by ``kill -HUP``, a replica that
    stopped) reads the stale slot again and marks X ``done``: the failed replay's retry
    never happens, and the entry says handled. Expected: X stays ``failed``."""
    path = tmp_path / "j.db"
    url = f"sqlite:///{path}"

    def gone_process(name: str) -> None:
        from receiver.journal import _host

        with sqlite3.connect(path) as db:
            db.execute(
                "INSERT INTO processes (id, host, pid, since, lease_until) VALUES (?, ?, ?, 0, 0)",
                (name, _host(), _dead_pid()),
            )
        db.close()

    async def scenario() -> str:
        journal = open_journal(url)
        assert journal is not None
        await journal.start()
        try:
            one = event(1)
            await journal.record(one, {}, None)
            # G: X was its own, handled, its done noted in its ledger slot; G is gone.
            gone_process("gone-g")
            with sqlite3.connect(path) as db:
                db.execute("UPDATE events SET owner = 'gone-g' WHERE id = ?", (one.id,))
            db.close()
            (tmp_path / "j.db-done.1").write_bytes(one.id.encode() + b"\n")
            assert await journal.take_over() == []  # marked done from the ledger
            [entry] = await journal.entries(ids=[one.id])
            assert entry.state == "done"
            # An operator's replay of X fails: retried in a minute.
            assert await journal.claim(entry)
            await journal.fail(one.id, "replay failed", None, time.time() + 60)
            [entry] = await journal.entries(ids=[one.id])
            assert entry.state == "failed"
            # Another owner is gone (a worker replaced at kill -HUP): taken over.
            gone_process("gone-h")
            await journal.take_over()
            [entry] = await journal.entries(ids=[one.id])
            return entry.state
        finally:
            await journal.stop()

    assert asyncio.run(scenario()) == "failed"


# -- 1. PostgreSQL records: what the database refuses ---------------------------------------


def test_journal_status_with_a_long_message_id_is_stored_not_refused(journal_url: str) -> None:
    """FINDING. A delivery receipt whose ``MessageID`` (or ``Destination``) is long and
    not compressible (here 3,000 characters of hex) authenticates and parses; SQLite
    stores it. On PostgreSQL the status row's upsert (``_out_of_order``) puts the
    message id into ``message_status``'s primary key, a B-tree whose entries must fit a
    third of a page (about 2,700 bytes): "index row size exceeds btree maximum"
    (ProgramLimitExceeded, not a fault). The record raises, the callback is answered
    500 and nothing is stored (SQLite: 200, stored; the sqlite case is a guard): the
    provider's receipt is lost (and every other record of its group is written again
    alone). The provider key's index already goes through
    ``md5(dedupe_key)`` for this reason. Expected: 200, the receipt stored."""
    from starlette.testclient import TestClient
    from test_journal_postgres import ONEPOINT_DELIVERED, pg_app

    long_id = os.urandom(1500).hex()
    body = json.dumps({**json.loads(ONEPOINT_DELIVERED), "MessageID": long_id}).encode()
    with TestClient(pg_app(journal_url)) as client:
        status = client.post("/sms", content=body, headers=JSON).status_code
    entries = asyncio.run(_entries(journal_url))
    assert status == 200
    assert [entry.message_id for entry in entries] == [long_id]


async def _entries(url: str) -> list[Any]:
    journal = open_journal(url)
    assert journal is not None
    try:
        return await journal.entries()
    finally:
        await journal.stop()


def test_sqlite_done_ledger_marks_a_delivered_reply_done(tmp_path: Path) -> None:
    """FINDING. X is ``reply_failed`` (its handlers ran; ``send_reply`` raised). Process
    G's retry worker claims it and delivers the reply; its ``done`` cannot be written (a
    full disk), so G notes X in its done ledger, then dies. The ledger exists for
    exactly this: "a handled event is not handled again because its done could not be
    stored". But ``_mark_done`` (take-over of G's unheld slot here; a start that takes
    the slot is the same) only marks entries ``received`` or ``failed``: X stays
    ``reply_failed`` and its reply is delivered a second time by the next retry.
    Expected: X done."""
    path = tmp_path / "j.db"
    url = f"sqlite:///{path}"

    async def scenario() -> str:
        from receiver.events import Reply
        from receiver.journal import _host

        journal = open_journal(url)
        assert journal is not None
        await journal.start()
        try:
            one = event(1)
            await journal.record(one, {}, None)
            await journal.undelivered(one.id, Reply(text="hi"), "send_reply raised", time.time())
            [entry] = await journal.entries(ids=[one.id])
            assert entry.state == "reply_failed"
            # G claimed it (due), delivered the reply, noted its done, died.
            with sqlite3.connect(path) as db:
                db.execute(
                    "INSERT INTO processes (id, host, pid, since, lease_until) "
                    "VALUES ('gone-g', ?, ?, 0, 0)",
                    (_host(), _dead_pid()),
                )
                db.execute(
                    "UPDATE events SET owner = 'gone-g', next_attempt_at = ? WHERE id = ?",
                    (time.time() + 0.5, one.id),
                )
            db.close()
            (tmp_path / "j.db-done.1").write_bytes(one.id.encode() + b"\n")
            await journal.take_over()
            [entry] = await journal.entries(ids=[one.id])
            return entry.state
        finally:
            await journal.stop()

    assert asyncio.run(scenario()) == "done"


def test_postgres_duplicates_within_one_group_are_found(postgres_url: str) -> None:
    """GUARD. Records queued together are committed in one group transaction, their
    rows inserted together at its end: a re-send in the same group (same provider key;
    same body under another key) is found among the group's own inserts, and only the
    original is stored."""

    async def scenario() -> tuple[list[Any], int, int]:
        journal = open_journal(postgres_url)
        assert journal is not None
        await journal.start()
        try:
            journal.group_writers = 1  # type: ignore[attr-defined]
            first = event(1, raw=b'{"a": 1}')
            by_key = event(2, raw=b'{"a": 2}')
            by_body = event(3, raw=b'{"a": 1}')
            other = event(4, raw=b'{"a": 4}')
            before = journal.commits  # type: ignore[attr-defined]
            recorded = await asyncio.gather(
                journal.record(first, {}, "k1"),
                journal.record(by_key, {}, "k1"),
                journal.record(by_body, {}, "k3"),
                journal.record(other, {}, "k4"),
            )
            commits = journal.commits - before  # type: ignore[attr-defined]
            stored = await journal.entries()
            return [r.duplicate_of for r in recorded], len(stored), commits
        finally:
            await journal.stop()

    duplicates, stored, commits = asyncio.run(scenario())
    assert duplicates[0] is None and duplicates[3] is None
    assert duplicates[1] is not None and duplicates[1] == duplicates[2]
    assert stored == 2
    assert commits == 1  # one group


# -- 1. PostgreSQL grouped state changes: a kept change written after a take-over ----------


def test_postgres_kept_failed_does_not_undo_a_take_over_done(
    postgres_server: str, postgres_url: str
) -> None:
    """FINDING. Replica A handles X; a plugin fails, and A's ``failed`` cannot be written
    (A is cut off from the database: a network partition, its connections refused),
    so it is kept in memory and written again with backoff. A cannot renew its lease
    either: once it has run out, replica B takes X over (``take_over``) and handles it:
    ``done``. When A reaches the database again its keeper writes the kept ``failed``
    over B's ``done`` (``_FAILED`` changes any state): X is ``failed`` again, with a
    next attempt, and is handled a third time by a retry; the console shows a handled
    message as failed. (A's late write is the lease-lost case the journal warns of;
    its being handled twice is the documented price, a regression of a finished entry
    is not.) Expected: X stays ``done``."""
    from postgres import admin, with_database

    database = postgres_url.rsplit("/", 1)[1]
    role = f"a20_{os.urandom(4).hex()}"
    db_admin = with_database(postgres_server, database)
    asyncio.run(
        admin(
            db_admin,
            f"CREATE ROLE {role} LOGIN PASSWORD 'a20-only'",
            f"GRANT ALL ON SCHEMA public TO {role}",
        )
    )
    user_url = postgres_url.replace("//receiver_test:receiver-test-only@", f"//{role}:a20-only@")

    async def scenario() -> str:
        b = open_journal(postgres_url, lease=1.5)
        assert b is not None
        await b.start()  # the schema
        await admin(
            db_admin,
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
        )
        a = open_journal(user_url, lease=1.5)
        assert a is not None
        await a.start()
        try:
            x = event(1)
            await a.record(x, {}, None)
            await admin(
                db_admin,
                f"ALTER ROLE {role} CONNECTION LIMIT 0",
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            )
            await a.fail(x.id, "a plugin failed", None, time.time() + 0.2)
            assert x.id in a.unsettled  # kept
            await asyncio.sleep(2.0)  # A's lease runs out
            taken = await b.take_over()
            assert [entry.id for entry in taken] == [x.id]
            await b.complete(x.id, None)
            await admin(db_admin, f"ALTER ROLE {role} CONNECTION LIMIT -1")
            deadline = time.monotonic() + 10
            while a.unsettled and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not a.unsettled
            [entry] = await b.entries(ids=[x.id])
            return entry.state
        finally:
            await a.stop()
            await b.stop()
            await admin(
                db_admin,
                f"DROP OWNED BY {role}",
            )
            await admin(postgres_server, f"DROP ROLE {role}")

    assert asyncio.run(scenario()) == "done"


# -- 3. Claims -------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["done", "dead"])
def test_journal_claim_refuses_a_second_replay_while_the_first_runs(
    journal_url: str, state: str
) -> None:
    """FINDING. ``claim`` promises that "no retry worker (nor a second replay) takes it
    meanwhile". Process A replays X (``done``, or a ``dead`` letter): its claim makes X
    A's, its next attempt a lease ahead, renewed while the handlers run. Process B (a
    second worker of ``serve --workers 2`` whose console an operator uses, the
    double-submitted form landing there, or ``receiver replay`` run meanwhile) reads X
    after that claim and replays it too: its claim matches what it read (state,
    attempts, next attempt), and the owner check applies only to received, failed and
    reply_failed entries, so it succeeds: X's handlers run twice at once. Expected: B's
    claim refused while A's lease lasts (as for a failed entry)."""

    async def scenario() -> bool:
        a = open_journal(journal_url)
        b = open_journal(journal_url)
        assert a is not None and b is not None
        await a.start()
        await b.start()
        try:
            x = event(1)
            await a.record(x, {}, None)
            if state == "done":
                await a.complete(x.id, None)
            else:
                await a.fail(x.id, "out of attempts", None, None)
            [seen] = await a.entries(ids=[x.id])
            assert seen.state == state
            assert await a.claim(seen)  # A's replay runs
            await a.renew([x.id])
            [seen] = await b.entries(ids=[x.id])  # read after A's claim
            return await b.claim(seen)
        finally:
            await b.stop()
            await a.stop()

    assert asyncio.run(scenario()) is False


# -- 1. PostgreSQL: a statement the server cancels ------------------------------------------


@pytest.mark.parametrize("setting", ["statement_timeout", "lock_timeout"])
def test_postgres_done_waiting_past_a_server_timeout_is_not_raised(
    postgres_server: str, postgres_url: str, setting: str
) -> None:
    """FINDING. Production databases often set ``statement_timeout`` (or
    ``lock_timeout``) for every role. X's row is locked for a while by another
    transaction (another replica's ``due`` or prune, an operator's UPDATE, a long
    migration) when X's ``done`` is written: the server cancels the UPDATE
    (QueryCanceledError, 57014; LockNotAvailable for lock_timeout). ``_fault`` does not
    take that for a fault (statement_timeout's QueryCanceled is class 57, operator
    intervention, a fault: a guard; lock_timeout's LockNotAvailable, class 55, is the
    finding): the change is not kept and written again, it raises to its
    caller. In the request path that is a 500 for a callback whose handlers succeeded
    (and X, still ``received``, is handled again); a record cancelled the same way
    (waiting on a duplicate's advisory lock) is a 500 and not stored. Expected:
    ``complete`` returns; X is done once the lock is gone."""
    from postgres import admin, with_database

    database = postgres_url.rsplit("/", 1)[1]
    db_admin = with_database(postgres_server, database)
    held = threading.Event()

    async def scenario() -> tuple[str | None, str]:
        journal = open_journal(postgres_url)
        assert journal is not None
        await journal.start()
        x = event(1)
        await journal.record(x, {}, None)
        await admin(db_admin, f"ALTER DATABASE {database} SET {setting} = '300ms'")
        await journal.stop()  # new connections take the setting
        journal = open_journal(postgres_url)
        assert journal is not None
        await journal.start()

        async def lock_row() -> None:
            import asyncpg

            connection = await asyncpg.connect(postgres_url, timeout=10)
            try:
                async with connection.transaction():
                    await connection.execute(f"SET LOCAL {setting} = 0")
                    await connection.execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", x.id)
                    held.set()
                    await asyncio.sleep(1.0)
            finally:
                await connection.close()

        locker = asyncio.create_task(lock_row())
        raised: str | None = None
        try:
            while not held.is_set():
                await asyncio.sleep(0.01)
            try:
                await journal.complete(x.id, None)
            except Exception as exc:
                raised = type(exc).__name__
            await locker
            deadline = time.monotonic() + 8
            while journal.unsettled and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            [entry] = await journal.entries(ids=[x.id])
            return raised, entry.state
        finally:
            await journal.stop()
            await admin(db_admin, f"ALTER DATABASE {database} RESET {setting}")

    raised, state = asyncio.run(scenario())
    assert raised is None
    assert state == "done"


def test_postgres_record_waiting_past_lock_timeout_is_a_fault_not_an_error(
    postgres_server: str, postgres_url: str
) -> None:
    """FINDING (the record's side of the one above). With ``lock_timeout`` set for the
    database, a record waits on its duplicate keys' advisory locks (a re-send being
    recorded by another replica, whose transaction is slow) past it: LockNotAvailable,
    which ``_fault`` does not count, so ``record`` raises it as it is: the callback is
    answered 500 as for a bug, nothing stored, no ``recheck`` (the endpoint rechecks
    only on JournalUnavailable), no "journal not writable" state. Expected: stored once
    the lock is free, or at least :class:`JournalUnavailable` (503, as for every other
    database that cannot answer now)."""
    import hashlib

    from postgres import admin, with_database

    from receiver.journal.postgres import _lock_keys

    database = postgres_url.rsplit("/", 1)[1]
    db_admin = with_database(postgres_server, database)
    held = threading.Event()

    async def scenario() -> str | None:
        journal = open_journal(postgres_url)
        assert journal is not None
        await journal.start()
        await admin(db_admin, f"ALTER DATABASE {database} SET lock_timeout = '300ms'")
        await journal.stop()
        journal = open_journal(postgres_url)
        assert journal is not None
        await journal.start()
        x = event(1)
        keys = _lock_keys(x, "k1", hashlib.sha256(x.raw).digest(), True)

        async def hold() -> None:
            import asyncpg

            connection = await asyncpg.connect(postgres_url, timeout=10)
            try:
                async with connection.transaction():
                    await connection.execute("SET LOCAL lock_timeout = 0")
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", keys[0])
                    held.set()
                    await asyncio.sleep(1.0)
            finally:
                await connection.close()

        holder = asyncio.create_task(hold())
        try:
            while not held.is_set():
                await asyncio.sleep(0.01)
            try:
                await journal.record(x, {}, "k1")
            except Exception as exc:
                return type(exc).__name__
            return None
        finally:
            await holder
            await journal.stop()
            await admin(db_admin, f"ALTER DATABASE {database} RESET lock_timeout")

    assert asyncio.run(scenario()) in (None, "JournalUnavailable")


# -- 1. PostgreSQL stop(): the kept states' last chance --------------------------------------


def test_postgres_stop_writes_the_kept_states_now_not_after_the_backoff(
    postgres_server: str, postgres_url: str
) -> None:
    """FINDING. A ``done`` is kept (its connection was lost: here the server ended the
    backends, as a fail-over or ``pg_terminate_backend`` does) and the database answers
    again at once. The keeper sleeps its backoff before each try, which after a few
    seconds of outage has grown to ``retry_max`` (5 s); here ``retry_min = retry_max =
    1`` stands for that. ``serve`` is stopped now (a deploy, ``kill -HUP``):
    ``stop()`` gives the keeper "one more chance" by waiting ``retry_max`` for it, the
    same time the keeper sleeps before trying: the wait ends before the write does, the
    keeper is cancelled, the lease given up, and X, handled, stays ``received``: taken
    over and handled again by the next process. Expected: stop writes the kept states
    now (the database answers), X done."""
    database = postgres_url.rsplit("/", 1)[1]

    async def scenario() -> str:
        import asyncpg

        journal = open_journal(postgres_url)
        assert journal is not None
        journal.retry_min = journal.retry_max = 1.0  # type: ignore[attr-defined]
        await journal.start()
        x = event(1)
        await journal.record(x, {}, None)
        control = await asyncpg.connect(postgres_server, timeout=10)  # one round trip each
        try:
            await control.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            await control.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{database}'"
            )
            await journal.complete(x.id, None)
            assert x.id in journal.unsettled  # kept: no connection
            await control.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await journal.stop()  # the database answers again
        finally:
            await control.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await control.close()
        entries = await _entries(postgres_url)
        return {entry.id: entry.state for entry in entries}[x.id]

    assert asyncio.run(scenario()) == "done"


# -- 5. serve --workers N: a worker crashing repeatedly --------------------------------------

POISON = """
import os, signal
from receiver import hookimpl

@hookimpl
async def on_message(event):
    if event.message_id == "POISON":  # a C extension's segfault, the OOM killer
        fd = os.open(os.environ["A20_CRASHES"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{os.getpid()}\\n".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_poison_callback_is_not_retried_without_bound(tmp_path: Path) -> None:
    """FINDING. ``serve --workers 2``; one callback kills the worker that handles it (a
    plugin's C extension that segfaults on it, the OOM killer on a huge message): the
    event is recorded (``received``), then its worker dies. The supervisor replaces
    the worker, and the first live process to look takes the dead one's unfinished
    entries over (same host, pid gone: at once) and handles the event again: it dies
    too, and so on, for ever. A take-over does not count as an attempt (``attempts``
    only grows when a failure is recorded, which a dead process never does), so the
    ``retry_delays`` bound and the dead letter never apply. Measured: 25 workers
    killed in 12 s, a Python process spawned every half second; each crash drops the
    callbacks in flight on that worker (connections reset: Whispir does not send them
    again; here, with short callbacks one at a time, 0 of ~100 were hit). Expected: the
    poison is tried a bounded number of times (here retry_delays = [0.3], so at most
    about 3), then left dead for an operator."""
    from serving import serve

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "poison.py").write_text(POISON)
    crashes = tmp_path / "crashes.txt"
    os.environ["A20_CRASHES"] = str(crashes)
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\njournal_lease = 1\n'
        "retry_delays = [0.3]\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    poison = json.dumps({**json.loads(MESSAGE), "MessageID": "POISON"}).encode()
    with serve(tmp_path, config, "--workers", "2") as server:
        with contextlib.suppress(OSError):  # the worker died under it
            server.request("/sms", poison, JSON)
        lost, sent, deadline = 0, 0, time.monotonic() + 12
        while time.monotonic() < deadline:  # other callbacks meanwhile
            other = json.dumps({**json.loads(MESSAGE), "MessageID": f"OK-{sent}"}).encode()
            sent += 1
            try:
                lost += server.request("/sms", other, JSON)[0] != 200
            except OSError:
                lost += 1
            time.sleep(0.1)
        count = len(crashes.read_text().split()) if crashes.exists() else 0
    assert 1 <= count <= 3, f"the poison killed {count} workers; {lost}/{sent} others refused"
