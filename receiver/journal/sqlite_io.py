"""How the SQLite journal touches its file: one writer thread, and reads beside it.

Writes (:class:`Writer`): one thread owns the writing connection. Requests hand it
operations (functions of a connection) and await the result without blocking the event
loop; the writer runs every operation that arrived while the previous commit was running
in one transaction (group commit). A transaction holding new data (a callback, a rejected
body) is fsynced before anyone is answered (``synchronous=FULL``); one holding only state
changes (done, failed) is committed without waiting for the disk, and reaches it with the
next fsync: a process crash loses neither, a power cut may lose a state change, and the
event is then handled once more (at least once, never lost).

Reads (:class:`Reader`: the operator commands' listings, ``/readyz``) do not queue behind
the writer: each opens a connection of its own in a worker thread, and WAL lets it read
beside the writer. A long listing never holds up a callback's commit (it takes no write
lock), and no read blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import structlog

from receiver.errors import ConfigError

__all__ = ["Reader", "Writer", "connect"]

log = structlog.get_logger()

_T = TypeVar("_T")


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the journal file (its folder created) in WAL mode, fsyncing commits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


class _Batch:
    """One operation for the writer thread, with the future that gets its result."""

    __slots__ = ("durable", "future", "loop", "operation")

    def __init__(
        self,
        operation: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        durable: bool,
    ) -> None:
        self.operation = operation
        self.loop = loop
        self.future = future
        self.durable = durable


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Writer:
    """The one thread that writes the journal file, with group commit (module docstring).

    Args:
        path: The database file (its folder is created).
        prepare: Called with the new connection before the first operation (the schema).
        max_batch: Most operations in one transaction.
    """

    def __init__(
        self, path: Path, prepare: Callable[[sqlite3.Connection], None], max_batch: int
    ) -> None:
        self.path = path
        self.prepare = prepare
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0
        """Transactions committed: with group commit, fewer than operations."""
        self._synced = True  # the connection's synchronous setting is FULL

    @property
    def running(self) -> bool:
        return self._thread is not None

    def ensure_started(self) -> None:
        """Start the thread (connecting and preparing the file) unless it runs."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            connection = connect(self.path)
            self.prepare(connection)
            thread = threading.Thread(
                target=self._write_loop, args=(connection,), name="receiver-journal", daemon=True
            )
            thread.start()
            self._thread = thread

    async def submit(
        self, operation: Callable[[sqlite3.Connection], _T], *, durable: bool = True
    ) -> _T:
        """Run ``operation`` in the writer's next transaction; return once it is committed.

        ``durable`` (new data: records, rejected bodies): the commit is fsynced before
        this returns. Otherwise (state changes of stored events) it is committed, which a
        process crash cannot undo, and fsynced with the next durable commit: after a power
        cut such a change may be lost, and an event handled again (at least once).
        """
        if self._thread is None:
            self.ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Batch(operation, loop, future, durable))
        return await future

    async def stop(self) -> None:
        """Commit what is queued, close the connection and end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(thread.join, 10)
        self._thread = None

    # -- the thread ---------------------------------------------------------------

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(connection, batch)
            if stop:
                break
        connection.close()

    def _run_batch(self, connection: sqlite3.Connection, batch: list[_Batch]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        durable = any(item.durable for item in batch)
        try:
            if durable != self._synced:
                connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._synced = durable
            connection.execute("BEGIN IMMEDIATE")
            outcomes = [(item.operation(connection), None) for item in batch]
            connection.execute("COMMIT")
            self.commits += 1
        except Exception:
            # One operation failed (or the commit did): take the batch apart, so that
            # each operation succeeds or fails on its own.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            outcomes = [self._run_alone(connection, item) for item in batch]
        # One wake-up of each event loop per batch, not one per operation.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any, Any]]] = {}
        for item, (result, error) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, result, error))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle_all, settled)

    def _run_alone(
        self, connection: sqlite3.Connection, item: _Batch
    ) -> tuple[Any, BaseException | None]:
        try:
            connection.execute("BEGIN IMMEDIATE")
            result = item.operation(connection)
            connection.execute("COMMIT")
            self.commits += 1
            return result, None
        except Exception as exc:
            log.exception("journal operation failed", path=str(self.path))
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return None, exc


class Reader:
    """Reads of the journal file, each on a connection of its own in a worker thread.

    Args:
        path: The database file; it must exist (see :meth:`require`).
        prepare: Called with each new connection before the read (the schema: a journal
            written by an older version is brought up to date).
    """

    def __init__(self, path: Path, prepare: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self.prepare = prepare

    def require(self) -> None:
        """An operator command reads or prunes a journal that is there; it creates none."""
        if not self.path.exists():
            raise ConfigError(f"journal: {self.path} does not exist")

    async def select(
        self, query: str, params: Sequence[Any], row: Callable[[tuple[Any, ...]], _T]
    ) -> list[_T]:
        """The rows ``query`` finds, each converted by ``row`` (in the worker thread too)."""
        return await asyncio.to_thread(self._select, query, params, row)

    def _select(
        self, query: str, params: Sequence[Any], row: Callable[[tuple[Any, ...]], _T]
    ) -> list[_T]:
        self.require()
        with closing(connect(self.path)) as connection:
            self.prepare(connection)
            return [row(found) for found in connection.execute(query, params).fetchall()]

    async def check(self) -> str | None:
        """None when the file can be read, else a short reason."""
        return await asyncio.to_thread(self._check)

    def _check(self) -> str | None:
        try:
            with closing(sqlite3.connect(self.path, timeout=2)) as connection:
                connection.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return f"journal unreachable: {exc}"
        return None
