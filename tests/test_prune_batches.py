"""A prune in bounded transactions, a journal start that waits out another process's
write lock, and ``serve --workers`` that does not exit 0 when a worker cannot start.

A prune of a big journal used to be one transaction: on SQLite it held the write lock for
seconds (about 4.5 s for a million old entries), so a ``--workers`` worker starting
meanwhile failed with "database is locked", ``serve`` exited 0, and callbacks in the
other processes waited. Real SQLite files, a real PostgreSQL (tests/postgres.py) and real
``receiver serve`` processes.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from postgres import postgres_server, postgres_url
from samples import PAYLOADS
from serving import start_serve
from starlette.testclient import TestClient

import receiver.logs
from receiver import create_app, hookimpl, load_config
from receiver.errors import Failure
from receiver.events import Event, EventType, Reply, new_event_id
from receiver.journal import Journal, open_journal
from receiver.journal.sqlite import SQLiteJournal

__all__ = ["postgres_server", "postgres_url"]  # fixtures, used by name

FINISHED = ("done", "rejected", "recovered", "dead")
ONEPOINT_DELIVERED = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
JSON = {"content-type": "application/json"}


def event(number: int, at: float, *, status: str | None = None) -> Event:
    return Event(
        id=f"evt-{number:06d}-{new_event_id()}",
        received_at=datetime.fromtimestamp(at, UTC),
        channel="sms",
        provider="onepoint",
        type=EventType.receipt if status else EventType.message,
        raw=f'{{"n": {number}}}'.encode(),
        message_id=f"MSG{number:06d}",
        destination="61400000000",
        status=status,
    )


def fill(path: Path, count: int, at: float) -> None:
    """``count`` done entries received at ``at`` and after (one a millisecond), one in
    ten with an attempt: direct inserts in one transaction, into a journal the library
    made."""

    async def create() -> None:
        journal = SQLiteJournal(path)
        await journal.start()
        await journal.stop()

    asyncio.run(create())
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO events (id, channel, provider, type, state, received_at, raw, "
            "body_hash, attempts) VALUES (?, 'sms', 'onepoint', 'message', 'done', ?, ?, ?, 1)",
            (
                (f"old-{n:07d}", at + n / 1000, b"x" * 200, n.to_bytes(32, "big"))
                for n in range(count)
            ),
        )
        db.executemany(
            "INSERT INTO attempts (event_id, attempt, at, error_type, message) "
            "VALUES (?, 1, ?, 'RuntimeError', 'boom')",
            ((f"old-{n:07d}", at) for n in range(0, count, 10)),
        )
        db.execute("COMMIT")


def test_prune_sqlite_commits_in_batches_while_another_journal_records(tmp_path: Path) -> None:
    """60k old entries pruned with the default batch: many transactions, none long, and a
    second journal object on the file (another process's) records between them, each
    record well within busy_timeout (5 s)."""
    path = tmp_path / "j.db"
    old = time.time() - 30 * 86400
    fill(path, 60_000, old)
    pruner, other = SQLiteJournal(path), SQLiteJournal(path)
    commits: list[float] = []
    waits: list[tuple[float, float]] = []  # (finished at, seconds) of each record

    async def scenario() -> int:
        await pruner.start()
        await other.start()
        pruner.on_commit = commits.append
        stop = asyncio.Event()

        async def record() -> None:
            number = 0
            while not stop.is_set():
                number += 1
                began = time.perf_counter()
                await other.record(event(number, time.time()), {}, None)
                waits.append((time.perf_counter(), time.perf_counter() - began))
                await asyncio.sleep(0.01)

        recording = asyncio.create_task(record())
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        try:
            pruned = await pruner.prune(time.time() - 86400)
        finally:
            ended = time.perf_counter()
            stop.set()
            await recording
            await pruner.stop()
            await other.stop()
        during = [wait for at, wait in waits if started < at < ended]
        assert len(during) >= 10, (len(during), ended - started)  # got in between batches
        assert max(wait for _, wait in waits) < 1.0
        return pruned

    assert asyncio.run(scenario()) == 60_000
    assert len(commits) >= 60_000 // pruner.prune_batch
    assert max(commits) < 1.0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE id LIKE 'old-%'").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM attempts").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == len(waits)


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'j.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_prune_batches_return_the_total_and_spare_unfinished_and_new_entries(
    journal_url: str,
) -> None:
    """Batches of 7 over 40 old finished entries (20 of them received at the same
    instant, across batch ends, among unfinished ones of that instant): the exact total,
    their attempts gone; received, failed, reply_failed and new entries kept, with their
    attempts; one transaction per batch at least."""

    async def scenario(journal: Journal) -> None:
        journal.prune_batch = 7
        journal.prune_pause = 0.0
        now = time.time()
        same = now - 1000
        finished: list[str] = []
        kept: list[str] = []
        number = 0
        for n in range(40):
            number += 1
            at = same if n % 2 else now - 2000 + n
            e = event(number, at, status="delivered" if n == 0 else None)
            await journal.record(e, {}, None)
            if n % 5 == 4:
                await journal.fail(e.id, "dead", ["p"], None, [Failure.of(RuntimeError("x"))])
            else:
                await journal.complete(e.id, None)
            finished.append(e.id)
        for state in ("received", "failed", "reply_failed"):
            for _ in range(3):
                number += 1
                e = event(number, same)
                await journal.record(e, {}, None)
                if state == "failed":
                    await journal.fail(
                        e.id, "failed", ["p"], now + 3600, [Failure.of(RuntimeError("y"))]
                    )
                elif state == "reply_failed":
                    await journal.undelivered(
                        e.id, Reply(text="hi"), "z", now + 3600, [Failure.of(RuntimeError("z"))]
                    )
                kept.append(e.id)
        number += 1
        new = event(number, now)
        await journal.record(new, {}, None)
        await journal.complete(new.id, None)
        kept.append(new.id)
        dead = finished[4]
        assert await journal.attempts(dead)  # kept until pruned

        commits = journal.commits  # type: ignore[attr-defined]
        assert await journal.prune(now - 500) == 40
        assert journal.commits - commits >= math.ceil(40 / 7)  # type: ignore[attr-defined]
        left = {entry.id: entry.state for entry in await journal.entries(limit=None)}
        assert set(left) == set(kept)
        assert sorted(left.values()) == sorted(
            ["received"] * 3 + ["failed"] * 3 + ["reply_failed"] * 3 + ["done"]
        )
        assert await journal.attempts(dead) == []
        failed_ids = [i for i, s in left.items() if s in ("failed", "reply_failed")]
        for entry_id in failed_ids:
            assert await journal.attempts(entry_id)
        assert await journal.prune(now - 500) == 0

    async def go() -> None:
        journal = open_journal(journal_url)
        assert journal is not None
        await journal.start()
        try:
            await scenario(journal)
        finally:
            await journal.stop()

    asyncio.run(go())


def hold_write_lock(path: Path, seconds: float, taken: threading.Event) -> threading.Thread:
    """Another "process" holding the journal's write lock for ``seconds`` (a thread with
    a connection of its own), as a long transaction would."""

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            db.execute("ROLLBACK")
        finally:
            db.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_journal_start_waits_for_a_write_lock_held_past_busy_timeout(tmp_path: Path) -> None:
    """A journal starting while another process holds the write lock 6.5 s (more than
    SQLite's 5 s busy_timeout) waits for it and starts, instead of "database is locked"."""
    path = tmp_path / "j.db"

    async def make() -> None:
        journal = SQLiteJournal(path)
        await journal.start()
        await journal.stop()

    asyncio.run(make())
    taken = threading.Event()
    holder = hold_write_lock(path, 6.5, taken)
    assert taken.wait(5)

    async def start() -> float:
        journal = SQLiteJournal(path)
        began = time.monotonic()
        await journal.start()
        try:
            await journal.record(event(1, time.time()), {}, None)
        finally:
            await journal.stop()
        return time.monotonic() - began

    try:
        took = asyncio.run(start())
    finally:
        holder.join()
    assert 5 < took < 20


WORKER_ONLY_FAILURE = {
    # serve sets RECEIVER_LOG_LEVEL for its workers (after loading the plugins itself):
    # these plugins load in serve and fail each worker.
    "app": """
import os

if os.environ.get("RECEIVER_LOG_LEVEL"):
    raise RuntimeError("this plugin cannot load in a worker")
""",
    "journal": """
import os

from receiver.errors import ConfigError
from receiver.journal.sqlite import SQLiteJournal


async def refused(self):
    raise ConfigError(f"journal: {self.path}: database is locked")


if os.environ.get("RECEIVER_LOG_LEVEL"):  # the worker's journal start (its lifespan) fails
    SQLiteJournal.start = refused
""",
}


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("failing", ["app", "journal"])
def test_serve_workers_exit_nonzero_when_a_worker_cannot_start(
    tmp_path: Path, failing: str
) -> None:
    """Every worker fails at start (``app``: a plugin that cannot load there; ``journal``:
    its journal cannot be opened, in the lifespan): the supervisor stops, and serve says
    so in one line and exits 3 (a single process's startup failure), not 0; never a
    worker started again and again."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "worker_only.py").write_text(WORKER_ONLY_FAILURE[failing])
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    process, log, _ = start_serve(tmp_path, config, "--workers", "2")
    try:
        status = process.wait(timeout=60)
    finally:
        stop(process)
    text = log.read_text()
    assert status == 3, text
    assert "receiver: worker process" in text and "could not start" in text
    assert "died" not in text  # no worker started again and again


def test_serve_workers_start_while_another_process_holds_the_journal_lock(
    tmp_path: Path,
) -> None:
    """The journal's write lock is held 7 s (more than busy_timeout) while the workers
    start: they wait for it and serve; serve neither exits nor loses a worker."""
    config = 'journal = "sqlite:///j.db"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    process, log, port = start_serve(tmp_path, config, "--workers", "2")
    holder: threading.Thread | None = None
    try:
        deadline = time.monotonic() + 20
        while '"serving"' not in log.read_text():  # serve's own journal check is done
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        taken = threading.Event()
        holder = hold_write_lock(tmp_path / "j.db", 7, taken)
        assert taken.wait(5)
        holder.join()
        answered = None
        deadline = time.monotonic() + 30
        while answered is None and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            answered = healthz(port)
            time.sleep(0.1)
        assert answered == 200, log.read_text()
        time.sleep(1)
        assert process.poll() is None, log.read_text()
    finally:
        if holder is not None:
            holder.join()
        stop(process)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("trying again" in str(line.get("event")) for line in lines)


def healthz(port: int) -> Any:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status
    except OSError:
        return None


class FailsOnce:
    """on_receipt: fails the first time, then succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first time")


def test_prune_by_the_retry_worker_never_holds_up_the_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``retention`` set, the worker's prune (many batches: here one that takes 30 s)
    runs in a task of its own: a callback that failed is retried meanwhile."""
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        f'journal = "sqlite:///{tmp_path / "j.db"}"\nretention = "30d"\n'
        "retry_delays = [0.2]\nduplicate_window = 0\nduplicate_body_window = 0\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    plugin = FailsOnce()
    app = create_app(load_config(toml), plugins=[plugin])
    app.state.redelivery.poll_interval = 0.02
    pruning = threading.Event()

    async def slow_prune(older_than: float) -> int:
        pruning.set()
        await asyncio.sleep(30)
        return 0

    app.state.journal.prune = slow_prune
    with TestClient(app) as client:
        assert pruning.wait(5)
        answer = client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON)
        assert answer.status_code == 200
        deadline = time.monotonic() + 5
        while plugin.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plugin.calls == 2  # retried while the prune still runs
