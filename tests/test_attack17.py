"""Attack 17: ownership, several processes on one journal, PostgreSQL group commit.

Each test asserts the right behaviour and fails on the code it was written against.
Real parts: real SQLite files, the real PostgreSQL server (tests/postgres.py), real
``receiver serve`` processes on loopback (tests/serving.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from pathlib import Path

from postgres import admin, postgres_server, postgres_url
from samples import PAYLOADS
from serving import serve
from test_journal_postgres import event

from receiver.errors import JournalUnavailable
from receiver.journal import open_journal

__all__ = ["postgres_server", "postgres_url"]  # fixtures, used by name

MESSAGE = json.loads((PAYLOADS / "onepoint" / "message_inbound.json").read_bytes())
JSON = {"content-type": "application/json"}

FAILING = """
from receiver import hookimpl

@hookimpl
def on_message(event):
    raise RuntimeError("downstream is down")
"""


def body(number: int) -> bytes:
    return json.dumps({**MESSAGE, "MessageID": f"A17-{number:04d}"}).encode()


def wait_for(predicate: object, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_workers_default_journal_keeps_a_failed_callback(tmp_path: Path) -> None:
    # No `journal` setting: `receiver serve` keeps its journal under state_dir
    # (state/receiver.db). With --workers 2 the worker processes must keep it too: a
    # callback whose handler fails is answered 200 because it is stored for a retry.
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "failing.py").write_text(FAILING)
    config = 'plugins_dir = "plugins"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    with serve(tmp_path, config, "--workers", "2") as server:
        assert server.request("/sms", body(1), JSON)[0] == 200
        time.sleep(0.5)
        database = tmp_path / "state" / "receiver.db"
        assert database.exists()
        with sqlite3.connect(database) as db:
            stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert stored == 1, "the worker answered 200 for a failed callback it never stored"


SLOW_RETRY = """
import os, time
from receiver import blocking, hookimpl

FOLDER = os.environ["A17_NOTES"]

@hookimpl
@blocking
def on_message(event):
    try:  # the first attempt at each message fails
        os.close(os.open(os.path.join(FOLDER, "seen-" + event.message_id),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pass
    else:
        raise RuntimeError("first attempt fails")
    time.sleep(0.5)  # a slow downstream (in a thread: the event loop runs on)
    fd = os.open(os.path.join(FOLDER, "handled.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event.message_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""


def handled_counts(folder: Path) -> dict[str, int]:
    notes = folder / "handled.txt"
    counts: dict[str, int] = {}
    for line in notes.read_text().splitlines() if notes.exists() else []:
        counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


def test_due_claims_of_a_long_retry_batch_are_not_retried_twice(tmp_path: Path) -> None:
    # One worker's due() claims every failed entry (up to 100) a lease ahead, then retries
    # them one after the other; only the one being retried has its claim renewed. When the
    # batch takes longer than journal_lease, the other worker claims the rest too: each is
    # retried by both processes (handled twice), though both are alive and well.
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(SLOW_RETRY)
    notes = tmp_path / "notes"
    notes.mkdir()
    os.environ["A17_NOTES"] = str(notes)
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\njournal_lease = 1\n'
        "retry_delays = [0.3, 60]\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    with serve(tmp_path, config, "--workers", "2") as server:
        for n in range(12):
            assert server.request("/sms", body(n), JSON)[0] == 200
        assert wait_for(lambda: len(handled_counts(notes)) == 12, 40)
        time.sleep(3)
        counts = handled_counts(notes)
    twice = {message: count for message, count in counts.items() if count > 1}
    assert not twice, f"retried by both workers: {twice}"


SURROGATE = """
from receiver import hookimpl

@hookimpl
def on_message(event):
    # A downstream answer decoded leniently: undecodable bytes become lone surrogates.
    raise RuntimeError("downstream said: " + b"\\xff\\xfe".decode("utf-8", "surrogateescape"))
"""


def test_failure_message_with_surrogates_is_kept_for_a_retry(tmp_path: Path) -> None:
    # A handler's exception whose message holds lone surrogates: the failure cannot be
    # encoded for the journal. The event is stored; it must end up failed (retried
    # later), not left `received` under a live owner that never handles it again.
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "surrogate.py").write_text(SURROGATE)
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    with serve(tmp_path, config) as server:
        status, _ = server.request("/sms", body(7), JSON)
        time.sleep(1)
        with sqlite3.connect(tmp_path / "j.db") as db:
            states = [row[0] for row in db.execute("SELECT state FROM events")]
        again, _ = server.request("/sms", body(7), JSON)  # the provider re-sends
    assert states == ["failed"], f"answered {status}, then {again}; entry {states}"
    assert status == 200


def test_group_commit_answer_lost_twice_is_not_left_unhandled(
    postgres_server: str, postgres_url: str
) -> None:
    # Records grouped on PostgreSQL while backends are terminated at COMMIT and at the
    # look-up `record()` makes when a commit's answer is lost. A record that raised
    # JournalUnavailable (503) but was in fact committed is a `received` entry of a live
    # owner: that owner never handles it, no peer takes it over (the lease is renewed),
    # and the provider's re-send is a duplicate of it. Every such entry must still be
    # handled by someone (here: found by a take-over), or not be stored at all.
    database = postgres_url.rsplit("/", 1)[1]
    kill = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
        f"'{database}' AND pid <> pg_backend_pid() AND state = 'active' AND "
        "(query LIKE 'COMMIT%' OR query LIKE 'SELECT 1 FROM events%')"
    )

    async def scenario() -> set[str]:
        journal = open_journal(postgres_url, lease=30)
        peer = open_journal(postgres_url, lease=30)
        assert journal is not None and peer is not None
        await journal.start()
        await peer.start()
        raised: set[str] = set()
        stopping = False

        async def killer() -> None:
            while not stopping:
                await admin(postgres_server, kill)
                await asyncio.sleep(random.random() * 0.003)

        task = asyncio.create_task(killer())
        try:
            for round in range(60):
                events = [event(round * 1000 + n) for n in range(60)]
                results = await asyncio.gather(
                    *(journal.record(e, {}, None) for e in events), return_exceptions=True
                )
                raised |= {
                    e.id
                    for e, r in zip(events, results, strict=True)
                    if isinstance(r, JournalUnavailable)
                }
                stored = {r[0] for r in await admin(postgres_url, "SELECT id FROM events")}
                if raised & stored:
                    break
        finally:
            stopping = True
            await task
        try:
            await journal.renew()  # alive and well
            taken = {e.id for e in await peer.take_over()}
            taken |= {e.id for e in await journal.take_over()}
            rows = await admin(postgres_url, "SELECT id FROM events WHERE state = 'received'")
            received = {r[0] for r in rows}
            return (raised & received) - taken
        finally:
            await journal.stop()
            await peer.stop()

    stuck = asyncio.run(scenario())
    assert not stuck, f"answered 503, stored, handled by no one: {sorted(stuck)}"


_OLD_WORKER = """
import asyncio, os, sys
from receiver.journal import open_journal
from receiver.testing import make_event

async def main():
    journal = open_journal(sys.argv[1])
    await journal.start()
    event = make_event("message", text="old worker", message_id="OLD-WORKER")
    await journal.record(event, {}, None)
    print(event.id, flush=True)
    os._exit(0)  # stopped with its handlers cut short: left received

asyncio.run(main())
"""


def test_migrated_journal_entry_of_an_old_worker_is_taken_over(tmp_path: Path) -> None:
    # `kill -HUP` after an upgrade replaces the workers one at a time: the first new one
    # migrates the journal (owner column, 'legacy' owner), while an old worker, still
    # running the code from before ownership, records callbacks without an owner. What
    # that old worker leaves unfinished (received, owner NULL) must be taken over by a
    # new process, as the legacy entries are; it never is.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "89700e7", "receiver"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    url = f"sqlite:///{tmp_path / 'j.db'}"

    async def migrate() -> None:  # the new worker opens the journal first
        journal = open_journal(url)
        assert journal is not None
        await journal.start()
        await journal.renew()
        await journal.stop()

    asyncio.run(migrate())
    done = subprocess.run(
        [sys.executable, "-c", _OLD_WORKER, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(old)},
    )
    left = done.stdout.strip()

    async def successor() -> list[str]:
        journal = open_journal(url)
        assert journal is not None
        await journal.start()
        try:
            return [e.id for e in await journal.take_over()]
        finally:
            await journal.stop()

    with sqlite3.connect(tmp_path / "j.db") as db:
        (state, owner) = db.execute("SELECT state, owner FROM events").fetchone()
    assert (state, owner) == ("received", None)  # what the old code wrote
    assert asyncio.run(successor()) == [left], "an old worker's unfinished entry is never handled"


def test_take_over_commit_answer_lost_is_not_left_unhandled(
    postgres_server: str, postgres_url: str
) -> None:
    # A take-over whose COMMIT reached the server but whose answer was lost: the lease
    # keeper logs a failure, the claimed entries are never handed to the worker, yet they
    # now belong to this live process (and the dead owner's row is gone): nobody handles
    # them while it runs. They must still be handled (by a later take-over, here).
    database = postgres_url.rsplit("/", 1)[1]
    kill = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
        f"'{database}' AND pid <> pg_backend_pid() AND state = 'active' "
        "AND query LIKE 'COMMIT%'"
    )

    async def scenario() -> tuple[str, str | None, list[str]] | None:
        live = open_journal(postgres_url, lease=30)
        peer = open_journal(postgres_url, lease=30)
        assert live is not None and peer is not None
        await live.start()
        await peer.start()
        await live.renew()
        await peer.renew()
        try:
            for attempt in range(300):
                dead = open_journal(postgres_url, lease=1)
                assert dead is not None
                await dead.start()
                left = event(attempt)
                await dead.record(left, {}, None)
                await asyncio.sleep(1.05)  # its lease runs out (it never renews)
                stopping = asyncio.Event()

                async def killer(stopping: asyncio.Event = stopping) -> None:
                    while not stopping.is_set():
                        await admin(postgres_server, kill)

                task = asyncio.create_task(killer())
                try:
                    await live.take_over()
                except Exception:
                    lost = True
                else:
                    lost = False
                finally:
                    stopping.set()
                    await task
                dead._registered = False  # no release: it is dead
                await dead.stop()
                rows = await admin(postgres_url, f"SELECT owner FROM events WHERE id = '{left.id}'")
                owner = rows[0][0]
                if lost and owner == live.owner:
                    await live.renew()
                    later = [e.id for e in await live.take_over()]
                    later += [e.id for e in await peer.take_over()]
                    return left.id, owner, later
                await admin(postgres_url, "UPDATE events SET state = 'done'")
            return None
        finally:
            await live.stop()
            await peer.stop()

    found = asyncio.run(scenario())
    assert found is not None, "the lost commit answer was not produced"
    left, _, later = found
    assert left in later, "taken over, the answer lost: handled by no one"


def old_history(path: Path, rows: int) -> None:
    """A journal holding ``rows`` handled entries two months old (to be pruned)."""

    async def create() -> None:
        journal = open_journal(f"sqlite:///{path}")
        assert journal is not None
        await journal.start()
        await journal.stop()

    asyncio.run(create())
    old = time.time() - 60 * 86400
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO events (id, channel, provider, type, message_id, state, received_at, "
            "raw, dedupe_key, body_hash, attempts) "
            "VALUES (?, 'sms', 'onepoint', 'message', ?, 'done', ?, ?, ?, ?, 1)",
            (
                (f"old-{i}", f"OLD{i}", old + i / 1000, b'{"x": 1}' * 20, f"k{i}", os.urandom(32))
                for i in range(rows)
            ),
        )


def test_workers_prune_does_not_refuse_the_other_workers_callbacks(tmp_path: Path) -> None:
    # serve --workers 2 on SQLite with a retention: each worker prunes at start (and every
    # hour) in one transaction holding the file's write lock for seconds. The other
    # worker, starting meanwhile, fails to open the journal ("database is locked" after
    # busy_timeout), and uvicorn's supervisor then stops the whole server; its records,
    # once up, would wait 5 s and fail. Every callback must be answered 200, the server up.
    old_history(tmp_path / "j.db", 1_000_000)
    config = (
        'journal = "sqlite:///j.db"\nretention = "30d"\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    answers: list[object] = []
    with serve(tmp_path, config, "--workers", "2") as server:
        deadline = time.monotonic() + 15
        n = 0
        while time.monotonic() < deadline:
            try:
                answers.append(server.request("/sms", body(n), JSON)[0])
            except OSError as exc:
                answers.append(type(exc).__name__)
            n += 1
        exited = server.process.poll()
        log = server.log_text()
    refused = [a for a in answers if a != 200]
    assert exited is None, "the server stopped: " + (
        "a worker failed to start: database is locked" if "database is locked" in log else ""
    )
    assert not refused, f"{len(refused)} of {len(answers)} callbacks refused: {set(refused)}"


class PrivatePostgres:
    """A throwaway PostgreSQL instance of this test's own (own folder, own port), to crash:
    the machine's cluster is never touched."""

    def __init__(self) -> None:
        import glob
        import shutil
        import socket
        import subprocess
        import tempfile

        import pytest

        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not binaries or os.geteuid() != 0 or shutil.which("runuser") is None:
            pytest.skip("a private PostgreSQL instance needs the server binaries and root")
        self.subprocess = subprocess
        self.bin = os.path.dirname(binaries[-1])
        self.dir = tempfile.mkdtemp(prefix="a17pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.pg("initdb", "-D", self.data, "--auth=trust", "-U", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg(self, tool: str, *args: str) -> None:
        self.subprocess.run(
            ["runuser", "-u", "postgres", "--", os.path.join(self.bin, tool), *args],
            capture_output=True,
            check=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        log = os.path.join(self.dir, "log")
        self.pg("pg_ctl", "-D", self.data, "-w", "-l", log, "-o", options, "start")

    def crash(self) -> None:
        self.pg("pg_ctl", "-D", self.data, "-m", "immediate", "stop")

    def remove(self) -> None:
        import contextlib
        import shutil

        with contextlib.suppress(Exception):
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_failed_state_lost_in_a_database_crash_is_still_retried() -> None:
    # PostgreSQL journal: `failed` is committed with synchronous_commit off. A crash of
    # the database loses it ("handled again", the README says), but the receiver itself
    # runs on: the entry is `received` again, owned by a live process that renews its
    # lease, so no take-over and no due() ever finds it; the failed handler is never
    # retried while the process lives (and a re-send waits for it, then 503).
    server = PrivatePostgres()
    server.start()

    async def scenario() -> tuple[list[str], list[tuple[str, bool]]]:
        journal = open_journal(server.url, lease=30)
        peer = open_journal(server.url, lease=30)
        assert journal is not None and peer is not None
        await journal.start()
        await journal.renew()
        failed = event(1)
        await journal.record(failed, {}, None)  # answered 200 after this...
        await journal.fail(failed.id, "downstream down", None, time.time() + 0.5)  # ...and
        server.crash()
        server.start()
        await asyncio.sleep(1)
        await peer.start()
        try:
            await journal.renew()  # alive and well
            found = [e.id for e in await journal.due(time.time() + 1)]
            found += [e.id for e in await journal.take_over()]
            found += [e.id for e in await peer.take_over()]
            found += [e.id for e in await peer.due(time.time() + 1)]
            rows = await admin(server.url, f"SELECT state, owner = '{journal.owner}' FROM events")
            return found, [(row[0], row[1]) for row in rows]
        finally:
            await journal.stop()
            await peer.stop()

    try:
        found, rows = asyncio.run(scenario())
    finally:
        server.remove()
    assert rows == [("received", True)]  # the failed state was lost with the crash
    assert found, "a failed callback no one retries while its receiver runs"


SLOW_HANDLER = """
import os, time
from receiver import blocking, hookimpl

FOLDER = os.environ["A17_NOTES"]

@hookimpl
@blocking
def on_message(event):
    fd = os.open(os.path.join(FOLDER, "handled.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event.message_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
    time.sleep(8)  # in a thread, longer than reply_timeout: finishes in the background
"""


def test_stopping_worker_keeps_its_lease_while_late_handlers_finish(tmp_path: Path) -> None:
    # A worker stopping (here: replaced by SIGHUP) cancels its lease keeper first, then
    # waits up to max(reply_timeout, handler_timeout) for handlers past their timeout.
    # Its lease (journal_lease) runs out meanwhile: the other worker takes the entry over
    # and handles it again while the first one's handlers still run. Handled once only.
    import signal

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(SLOW_HANDLER)
    notes = tmp_path / "notes"
    notes.mkdir()
    os.environ["A17_NOTES"] = str(notes)
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\njournal_lease = 3\n'
        "reply_timeout = 0.5\nhandler_timeout = 12\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    with serve(tmp_path, config, "--workers", "2") as server:
        assert server.request("/sms", body(1), JSON)[0] == 200  # late: finishes later
        server.process.send_signal(signal.SIGHUP)  # both workers replaced, one at a time
        time.sleep(20)
        counts = handled_counts(notes)
        log = server.log_text()
        with sqlite3.connect(tmp_path / "j.db") as db:
            states = [row[0] for row in db.execute("SELECT state FROM events")]
    assert "journal lease lost" not in log  # the event loop was never blocked
    assert states == ["done"]
    assert counts == {"A17-0001": 1}, f"handled {counts} times"


def test_workers_log_level_from_the_command_line_is_kept(tmp_path: Path) -> None:
    # `--log-level` (and `--log-format`) reach the workers only through the environment
    # (RECEIVER_LOG_LEVEL): given on the command line, the workers log at info anyway.
    config = 'journal = "sqlite:///j.db"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    with serve(tmp_path, config, "--workers", "2", "--log-level", "error") as server:
        assert server.request("/sms", body(1), JSON)[0] == 200
        time.sleep(0.5)
        info = [e for e in server.log_events() if e.get("level") in ("info", "warning")]
    assert not info, f"{len(info)} lines below error, e.g. {info[0]['event']!r}"
