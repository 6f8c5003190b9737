"""The journal: every authenticated callback, durably on disk before it is answered.

:class:`Journal` is the interface the request path and the operator commands use;
:class:`SQLiteJournal` is the embedded implementation (one file, one process). A
PostgreSQL implementation for several replicas implements the same interface.

Durability and throughput: one writer thread owns the SQLite connection (WAL). Requests
hand it operations and await the result without blocking the event loop; the writer runs
every operation that arrived while the previous commit was running in one transaction
(group commit). A transaction holding new data (a callback, a rejected body) is fsynced
before anyone is answered (``synchronous=FULL``); one holding only state changes (done,
failed) is committed without waiting for the disk, and reaches it with the next fsync: a
process crash loses neither, a power cut may lose a state change, and the event is then
handled once more (at least once, never lost).

Lifecycle of an entry: ``received`` (committed, being handled) -> ``done`` (handled, the
reply stored with it) | ``failed`` (a handler raised; retried with backoff) -> ``dead``
(out of attempts). A body that authenticated but could not be parsed is kept as
``rejected`` (a blank body's redacted query string is kept as its raw, for the providers
that call back with GET); once ``receiver replay --rejected`` has parsed it with a fixed
parser, it is ``recovered``, and ``recovered_as`` names the event it became (a new one,
or the original it turned out to duplicate).

Duplicates: a duplicate is a re-send of the same callback to the same channel. Both
look-ups are scoped to the channel: the provider's key (:meth:`Provider.dedupe_key
<receiver.providers.base.Provider.dedupe_key>`) within ``duplicate_window``, then the
SHA-256 of the raw body within ``body_window``. Each is one query on one index
(``events_channel_dedupe``, ``events_channel_body``).

Out-of-order statuses: the journal keeps the latest status per message and recipient.
The order is :data:`STATUS_RANK`: queued < submitted < sent < delivered | failed | other
final states < acknowledged | read. An event whose status ranks below the one already seen
is dispatched with ``out_of_order=True``; statuses not in the table are never out of order.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from receiver.errors import ConfigError
from receiver.events import STATUS_RANK, Event, Reply, new_event_id

__all__ = [
    "Entry",
    "Journal",
    "Recorded",
    "SQLiteJournal",
    "open_journal",
]

log = structlog.get_logger()

_T = TypeVar("_T")


STATES = ("received", "done", "failed", "dead", "rejected", "recovered")
"""Every entry state (see the module docstring)."""


class Entry(msgspec.Struct, kw_only=True):
    """One journal entry, as the operator commands see it."""

    id: str
    channel: str
    provider: str
    type: str | None
    message_id: str | None
    state: str
    received_at: float
    attempts: int
    error: str | None
    raw: bytes
    meta: dict[str, str]
    event: Event | None
    reply: Reply | None
    failed_plugins: list[str] | None
    next_attempt_at: float | None
    recovered_as: str | None = None
    """A ``recovered`` entry: the id of the event it became."""


class Recorded(msgspec.Struct, frozen=True):
    """What :meth:`Journal.record` found.

    Attributes:
        event: The event as stored (``out_of_order`` set when its status went backwards).
        duplicate_of: The id of the original when this callback is a duplicate.
        state: The original's state (duplicates only).
        reply: The original's stored reply (duplicates only).
    """

    event: Event
    duplicate_of: str | None = None
    state: str | None = None
    reply: Reply | None = None


class Journal(abc.ABC):
    """Where accepted callbacks are kept; see the module docstring."""

    @abc.abstractmethod
    async def record(self, event: Event, meta: dict[str, str], dedupe_key: str | None) -> Recorded:
        """Store a new event durably, or recognize it as a duplicate (stored nothing)."""

    @abc.abstractmethod
    async def reject(
        self, channel: str, provider: str, raw: bytes, meta: dict[str, str], reason: str
    ) -> str:
        """Store an authenticated body that could not be parsed; return its id."""

    @abc.abstractmethod
    async def recover(
        self, entry_id: str, event: Event, meta: dict[str, str], dedupe_key: str | None
    ) -> Recorded | None:
        """Record ``event``, parsed anew from the rejected entry ``entry_id``, and mark
        that entry ``recovered``, in one transaction.

        ``event`` is recorded as :meth:`record` would (duplicate check included);
        the entry's ``recovered_as`` is the new event's id, or the original's when it is
        a duplicate. None, and nothing stored, when the entry is not ``rejected`` (any
        more).
        """

    @abc.abstractmethod
    async def complete(self, event_id: str, reply: Reply | None) -> None:
        """Mark an event handled, with the reply it got (durably)."""

    @abc.abstractmethod
    async def fail(
        self, event_id: str, error: str, plugins: Sequence[str] | None, retry_at: float | None
    ) -> None:
        """Mark an event failed (``retry_at`` None: out of attempts, a dead letter)."""

    @abc.abstractmethod
    async def due(self, now: float, limit: int = 100) -> list[Entry]:
        """Failed entries whose next attempt is due."""

    @abc.abstractmethod
    async def unfinished(self, before: float, limit: int = 1000) -> list[Entry]:
        """Entries received before ``before`` but not handled: a dead process's work."""

    @abc.abstractmethod
    def entries(
        self,
        *,
        channel: str | None = None,
        type: str | None = None,
        state: str | None = None,
        since: float | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = 100,
    ) -> list[Entry]:
        """Entries for the operator commands, newest first (synchronous)."""

    @abc.abstractmethod
    def prune(self, older_than: float) -> int:
        """Delete done, rejected, recovered and dead entries received before ``older_than``."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open what the journal needs (called before the first callback)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flush and close."""

    def check(self) -> str | None:
        """None when the store is reachable, else a short reason (``/readyz``)."""
        return None


def open_journal(url: str | None, **options: Any) -> Journal | None:
    """The journal a ``journal = "..."`` setting names: ``"none"`` or ``"sqlite:///path"``."""
    if url is None or url == "none":
        return None
    if url.startswith("sqlite:///"):
        return SQLiteJournal(url.removeprefix("sqlite:///"), **options)
    raise ConfigError(f"journal: {url!r} is not 'none' or 'sqlite:///path/to/file.db'")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    provider TEXT NOT NULL,
    type TEXT,
    message_id TEXT,
    state TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,
    meta BLOB,
    event BLOB,
    reply BLOB,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    failed_plugins BLOB,
    next_attempt_at REAL,
    dedupe_key TEXT,
    body_hash BLOB,
    recovered_as TEXT
);
DROP INDEX IF EXISTS events_dedupe;
DROP INDEX IF EXISTS events_body;
CREATE INDEX IF NOT EXISTS events_channel_dedupe ON events (channel, dedupe_key, received_at)
    WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_channel_body ON events (channel, body_hash, received_at);
CREATE INDEX IF NOT EXISTS events_retry ON events (next_attempt_at) WHERE state = 'failed';
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS message_status (
    provider TEXT NOT NULL,
    message_id TEXT NOT NULL,
    party TEXT NOT NULL,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (provider, message_id, party)
);
"""
# (Journals written before the look-ups were scoped to the channel have the indexes
# events_dedupe and events_body, dropped above, and no recovered_as column: _migrate.)

_BY_KEY = (
    "SELECT id, state, reply FROM events "
    "WHERE channel = ? AND dedupe_key = ? AND received_at >= ? LIMIT 1"
)
"""The provider-key look-up: one query on ``events_channel_dedupe``."""

_BY_BODY = (
    "SELECT id, state, reply FROM events WHERE channel = ? AND body_hash = ? "
    "AND received_at >= ? AND state NOT IN ('rejected', 'recovered') LIMIT 1"
)
"""The body-hash look-up: one query on ``events_channel_body`` (rejected bodies are not
events, and a recovered one's event has a row of its own)."""

_COLUMNS = (
    "id, channel, provider, type, message_id, state, received_at, raw, meta, event, reply, "
    "error, attempts, failed_plugins, next_attempt_at, recovered_as"
)


def _migrate(connection: sqlite3.Connection) -> None:
    """Create the schema; bring a journal written by an older version up to it."""
    connection.executescript(_SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(events)")}
    if "recovered_as" not in columns:
        connection.execute("ALTER TABLE events ADD COLUMN recovered_as TEXT")


_encode = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(Event).decode
_decode_reply = msgspec.msgpack.Decoder(Reply).decode
_decode_meta = msgspec.msgpack.Decoder(dict[str, str]).decode
_decode_plugins = msgspec.msgpack.Decoder(list[str]).decode


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


class SQLiteJournal(Journal):
    """The embedded journal: one SQLite file, written by one thread with group commit.

    Args:
        path: The database file (its folder is created).
        duplicate_window: Seconds within which the same provider key is a duplicate.
        body_window: Seconds within which the same raw body (SHA-256) is a duplicate.
        max_batch: Most operations in one transaction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        duplicate_window: float = 48 * 3600,
        body_window: float = 600,
        max_batch: int = 512,
    ) -> None:
        self.path = Path(path)
        self.duplicate_window = duplicate_window
        self.body_window = body_window
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0
        """Transactions committed: with group commit, fewer than operations."""
        self._synced = True  # the connection's synchronous setting is FULL

    # -- the writer thread --------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    def _ensure_writer(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            connection = self._connect()
            _migrate(connection)
            thread = threading.Thread(
                target=self._write_loop, args=(connection,), name="receiver-journal", daemon=True
            )
            thread.start()
            self._thread = thread

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

    async def _submit(
        self, operation: Callable[[sqlite3.Connection], _T], *, durable: bool = True
    ) -> _T:
        """Run ``operation`` in the writer's next transaction; return once it is committed.

        ``durable`` (new data: records, rejected bodies): the commit is fsynced before
        this returns. Otherwise (state changes of stored events) it is committed, which a
        process crash cannot undo, and fsynced with the next durable commit: after a power
        cut such a change may be lost, and an event handled again (at least once).
        """
        self._ensure_writer()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Batch(operation, loop, future, durable))
        return await future

    async def start(self) -> None:
        self._ensure_writer()

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(thread.join, 10)
        self._thread = None

    def check(self) -> str | None:
        try:
            with closing(sqlite3.connect(self.path, timeout=2)) as connection:
                connection.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return f"journal unreachable: {exc}"
        return None

    # -- the request path ---------------------------------------------------------

    async def record(self, event: Event, meta: dict[str, str], dedupe_key: str | None) -> Recorded:
        body_hash = hashlib.sha256(event.raw).digest()

        def operation(connection: sqlite3.Connection) -> Recorded:
            return self._record(connection, event, meta, dedupe_key, body_hash)

        return await self._submit(operation)

    def _record(
        self,
        connection: sqlite3.Connection,
        event: Event,
        meta: dict[str, str],
        dedupe_key: str | None,
        body_hash: bytes,
    ) -> Recorded:
        """Find the original of ``event`` on its channel, or store ``event`` (writer thread)."""
        received = event.received_at.timestamp()
        # Two single-index look-ups, the provider key's first (one query with OR needed a
        # multi-index OR and a sort, at twice the cost). A window of 0 is off.
        original = None
        if dedupe_key is not None and self.duplicate_window > 0:
            original = connection.execute(
                _BY_KEY, (event.channel, dedupe_key, received - self.duplicate_window)
            ).fetchone()
        if original is None and self.body_window > 0:
            original = connection.execute(
                _BY_BODY, (event.channel, body_hash, received - self.body_window)
            ).fetchone()
        if original is not None:
            reply = _decode_reply(original[2]) if original[2] else None
            return Recorded(event, original[0], original[1], reply)
        recorded = event
        if _out_of_order(connection, event, received):
            recorded = msgspec.structs.replace(event, out_of_order=True)
        connection.execute(
            "INSERT INTO events (id, channel, provider, type, message_id, state, "
            "received_at, raw, meta, event, dedupe_key, body_hash) "
            "VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?)",
            (
                event.id,
                event.channel,
                event.provider,
                event.type.value,
                event.message_id,
                received,
                event.raw,
                _encode(meta),
                _encode(msgspec.structs.replace(recorded, raw=b"")),  # raw has its column
                dedupe_key,
                body_hash,
            ),
        )
        return Recorded(recorded)

    async def recover(
        self, entry_id: str, event: Event, meta: dict[str, str], dedupe_key: str | None
    ) -> Recorded | None:
        body_hash = hashlib.sha256(event.raw).digest()

        def operation(connection: sqlite3.Connection) -> Recorded | None:
            found = connection.execute(
                "SELECT state FROM events WHERE id = ?", (entry_id,)
            ).fetchone()
            if found is None or found[0] != "rejected":
                return None
            recorded = self._record(connection, event, meta, dedupe_key, body_hash)
            connection.execute(
                "UPDATE events SET state = 'recovered', recovered_as = ? WHERE id = ?",
                (recorded.duplicate_of or event.id, entry_id),
            )
            return recorded

        return await self._submit(operation)

    async def reject(
        self, channel: str, provider: str, raw: bytes, meta: dict[str, str], reason: str
    ) -> str:
        entry_id = new_event_id()
        raw, meta = _kept_raw(raw, meta)

        def operation(connection: sqlite3.Connection) -> str:
            connection.execute(
                "INSERT INTO events (id, channel, provider, state, received_at, raw, meta, "
                "error, body_hash) VALUES (?, ?, ?, 'rejected', ?, ?, ?, ?, ?)",
                (
                    entry_id,
                    channel,
                    provider,
                    time.time(),
                    raw,
                    _encode(meta),
                    reason,
                    hashlib.sha256(raw).digest(),
                ),
            )
            return entry_id

        return await self._submit(operation)

    async def complete(self, event_id: str, reply: Reply | None) -> None:
        encoded = _encode(reply) if reply is not None else None

        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE events SET state = 'done', reply = COALESCE(?, reply), error = NULL, "
                "next_attempt_at = NULL, failed_plugins = NULL, attempts = attempts + 1 "
                "WHERE id = ?",
                (encoded, event_id),
            )

        await self._submit(operation, durable=False)

    async def fail(
        self, event_id: str, error: str, plugins: Sequence[str] | None, retry_at: float | None
    ) -> None:
        state = "failed" if retry_at is not None else "dead"
        encoded = _encode(list(plugins)) if plugins else None

        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE events SET state = ?, error = ?, failed_plugins = ?, "
                "next_attempt_at = ?, attempts = attempts + 1 WHERE id = ?",
                (state, error, encoded, retry_at, event_id),
            )

        await self._submit(operation, durable=False)

    async def due(self, now: float, limit: int = 100) -> list[Entry]:
        def operation(connection: sqlite3.Connection) -> list[Entry]:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM events WHERE state = 'failed' "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [_entry(row) for row in rows]

        return await self._submit(operation, durable=False)

    async def unfinished(self, before: float, limit: int = 1000) -> list[Entry]:
        def operation(connection: sqlite3.Connection) -> list[Entry]:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM events WHERE state = 'received' "
                "AND received_at < ? ORDER BY received_at LIMIT ?",
                (before, limit),
            ).fetchall()
            return [_entry(row) for row in rows]

        return await self._submit(operation, durable=False)

    # -- the operator commands (synchronous, their own connection) ----------------

    def entries(
        self,
        *,
        channel: str | None = None,
        type: str | None = None,
        state: str | None = None,
        since: float | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = 100,
    ) -> list[Entry]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("channel", channel), ("type", type), ("state", state)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("received_at >= ?")
            params.append(since)
        if ids:
            clauses.append(f"id IN ({', '.join('?' for _ in ids)})")
            params.extend(ids)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        bounded = "LIMIT ?" if limit is not None else ""
        if limit is not None:
            params.append(limit)
        with closing(self._read()) as connection:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM events {where} ORDER BY received_at DESC {bounded}",
                params,
            ).fetchall()
        return [_entry(row) for row in rows]

    def prune(self, older_than: float) -> int:
        with closing(self._read()) as connection:
            cursor = connection.execute(
                "DELETE FROM events WHERE received_at < ? "
                "AND state IN ('done', 'rejected', 'recovered', 'dead')",
                (older_than,),
            )
            connection.execute("DELETE FROM message_status WHERE updated_at < ?", (older_than,))
            return cursor.rowcount

    def _read(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise ConfigError(f"journal: {self.path} does not exist")
        connection = self._connect()
        _migrate(connection)
        return connection


def _kept_raw(raw: bytes, meta: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """What a rejected request keeps as its raw body, and its meta.

    A blank body with a query string was a GET callback (or a POST that put its fields in
    the query): its fields are in the query, so the query is kept as the raw body, as
    :attr:`Event.raw` keeps it for a GET callback, but as ``meta["query"]`` has it, with
    the ``auth = "query"`` parameter's value ``REDACTED``. ``meta["raw"] = "query"`` says
    so, for ``receiver replay --rejected`` to parse it as a query string again.
    """
    query = meta.get("query")
    if query and (not raw or raw.isspace()):
        return query.encode("latin-1"), {**meta, "raw": "query"}
    return raw, meta


def _out_of_order(connection: sqlite3.Connection, event: Event, received: float) -> bool:
    """Track the latest status per message and recipient; True when this one is older."""
    if event.status is None or event.message_id is None:
        return False
    rank = STATUS_RANK.get(event.status)
    if rank is None:
        return False
    party = event.destination or event.source or ""
    key = (event.provider, event.message_id, party)
    row = connection.execute(
        "SELECT rank FROM message_status WHERE provider = ? AND message_id = ? AND party = ?",
        key,
    ).fetchone()
    if row is not None and rank < row[0]:
        return True
    connection.execute(
        "INSERT INTO message_status (provider, message_id, party, status, rank, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (provider, message_id, party) DO UPDATE "
        "SET status = excluded.status, rank = excluded.rank, updated_at = excluded.updated_at",
        (*key, event.status, rank, received),
    )
    return False


def _entry(row: tuple[Any, ...]) -> Entry:
    (
        entry_id,
        channel,
        provider,
        type_,
        message_id,
        state,
        received_at,
        raw,
        meta,
        event,
        reply,
        error,
        attempts,
        failed_plugins,
        next_attempt_at,
        recovered_as,
    ) = row
    decoded = _decode_event(event) if event else None
    if decoded is not None:
        decoded = msgspec.structs.replace(decoded, raw=raw)
    return Entry(
        id=entry_id,
        channel=channel,
        provider=provider,
        type=type_,
        message_id=message_id,
        state=state,
        received_at=received_at,
        attempts=attempts,
        error=error,
        raw=raw,
        meta=_decode_meta(meta) if meta else {},
        event=decoded,
        reply=_decode_reply(reply) if reply else None,
        failed_plugins=_decode_plugins(failed_plugins) if failed_plugins else None,
        next_attempt_at=next_attempt_at,
        recovered_as=recovered_as,
    )
