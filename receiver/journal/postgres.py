"""The shared journal: PostgreSQL, through asyncpg's connection pool.

The same :class:`~receiver.journal.Journal` as :mod:`receiver.journal.sqlite`, with the same
guarantees: a callback is committed (PostgreSQL's own WAL flush, ``synchronous_commit`` as
the server has it) before it is answered; duplicates are found by ``(channel,
dedupe_key)`` and ``(channel, body_hash)`` within their windows and answered with the
original's reply; failed, reply_failed and dead entries keep their attempts.

Group commit: records that arrive while a group transaction is being committed join the
next one (at most :attr:`PostgresJournal.group_writers` in flight, each on a connection
of its own): one commit, one WAL flush, for all of them; their new rows are inserted
together before the commit (one round trip, :class:`_Inserts`). A group that fails
because one record raised is taken apart, each record then committed or failed alone.
Measured on the two-core machine (wrk, 50 callbacks in flight, one ``receiver serve``,
``pg_stat_wal.wal_sync``): 1.9 WAL flushes a callback and 396 callbacks/s with a
transaction each; 0.06 and 1,023/s grouped.

State changes (done, failed, reply_failed, dead, a noted attempt) are grouped too
(:meth:`PostgresJournal._change`): those that arrive while a group is being written join
the next one, one statement per kind for the whole group (a group of done alone, the
common case, is one ``UPDATE ... FROM unnest(...)``: its own transaction, no ``BEGIN``
or ``COMMIT``), written by one task, at most one change of an entry per group, so that
an entry's changes are applied in the order they were made. They are written on
connections of their own whose commits do not wait for the WAL flush
(``synchronous_commit = off``, set when each connects): a crash *of the database* may lose
a state change (the event is then handled again: at least once), as the SQLite journal
commits them without an fsync. Why: each round trip costs the receiver asyncpg's protocol
work, a timer and a wake-up; a state change alone was four (``BEGIN``, ``SET LOCAL``,
``UPDATE``, ``COMMIT``) per callback, the INSERT of a record one more: grouped, a callback
costs a share of four (its record group's ``BEGIN``, INSERTs and ``COMMIT``, its change
group's ``UPDATE``). ``bench/instructions.py --journal --only whispir_json``: 1,037,335
instructions a callback before, 316,335 after (SQLite: 380,620); docs/performance.md.

Two identical callbacks recorded at the same time are serialized by transaction-scoped
advisory locks on their keys (the provider key and the body hash, per channel): the
second waits for the first to commit and then finds it, in this process or in another
one. A group takes the locks of all its records at once, in one order, so that two
groups never wait for each other in a circle.

Connection loss: a record or a rejected body that cannot be committed raises
:class:`~receiver.errors.JournalUnavailable` (503); a state change of a stored event
(done, failed) that cannot be written is kept in memory and written again with backoff, as
the SQLite journal keeps it (``/readyz`` says so meanwhile), each change of a group that
the fault stopped (a noted attempt is not kept: its caller gets
:class:`~receiver.errors.JournalUnavailable`). A state change that the database refuses
(not a fault) raises to its own caller; the others of its group are written alone. The
pool replaces a broken connection at the next acquire: reconnection needs nothing else.

The schema is versioned (table ``schema_version``): :meth:`PostgresJournal.migrate`, run at
:meth:`~PostgresJournal.start` and by ``receiver migrate``, brings it up to
:data:`SCHEMA_VERSION` under an advisory lock, so that replicas starting together create it
once. A journal already at the current version is only read (a role without DDL rights
can serve once an operator has migrated).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import msgspec

from receiver.errors import ConfigError, Failure, JournalUnavailable
from receiver.events import Event, Reply, new_event_id
from receiver.journal import (
    DEFAULT_LEASE,
    ORPHAN_AGE,
    REPLY_ONLY,
    Attempt,
    Browsed,
    Entry,
    Journal,
    Recorded,
    gone,
    matches,
    status_row,
    storable,
)
from receiver.journal.sqlite import SINCE_MARGIN, _attempt, _encode, _entry, _kept_raw
from receiver.logs import get_logger

__all__ = ["SCHEMA_VERSION", "PostgresJournal", "redact_url"]

log = get_logger(__name__)

_T = TypeVar("_T")

_LOCK_KEY = 0x7265_6365_6976_6572  # "receiver": the schema's advisory lock
"""The advisory lock under which the schema is created or migrated."""

_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    provider TEXT NOT NULL,
    type TEXT,
    message_id TEXT,
    state TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    raw BYTEA NOT NULL,
    meta BYTEA,
    event BYTEA,
    reply BYTEA,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    failed_plugins BYTEA,
    next_attempt_at DOUBLE PRECISION,
    dedupe_key TEXT,
    body_hash BYTEA,
    recovered_as TEXT
);
CREATE INDEX events_channel_dedupe ON events (channel, md5(dedupe_key), received_at)
    WHERE dedupe_key IS NOT NULL;
CREATE INDEX events_channel_body ON events (channel, body_hash, received_at);
CREATE INDEX events_due ON events (next_attempt_at) WHERE state IN ('failed', 'reply_failed');
CREATE INDEX events_unfinished ON events (received_at) WHERE state = 'received';
CREATE INDEX events_received ON events (received_at);
CREATE TABLE attempts (
    id BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    plugin TEXT,
    hook TEXT,
    error_type TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT
);
CREATE INDEX attempts_event ON attempts (event_id, attempt);
CREATE TABLE message_status (
    provider TEXT NOT NULL,
    message_id TEXT NOT NULL,
    party TEXT NOT NULL,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (provider, message_id, party)
);
""",
    ),
    (
        2,
        """
ALTER TABLE events ADD COLUMN owner TEXT;
CREATE TABLE processes (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);
CREATE TABLE ended_sessions (
    key BYTEA PRIMARY KEY,
    until DOUBLE PRECISION NOT NULL
);
INSERT INTO processes (id, host, pid, since, lease_until)
    SELECT 'legacy', '', 0, COALESCE(MIN(received_at), 0), 0 FROM events
    WHERE state = 'received';
UPDATE events SET owner = 'legacy' WHERE state = 'received';
""",
    ),
    (
        3,
        """
UPDATE events SET owner = NULL WHERE state IN ('failed', 'reply_failed');
""",
    ),
)
"""(version, SQL): each brings the schema from the version before it to its own (2:
ownership, see :mod:`receiver.journal`; 3: a failed entry's owner is a live claim, which
recording its failure clears, so the owners version 2 left on failed entries go)."""

_LOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
"""Take the advisory locks of duplicate look-ups' keys, in one order."""

_ASYNC_COMMIT = {"synchronous_commit": "off"}
"""The session setting of the state changes' connections (given when each connects, in
the start-up message: no statement, no round trip): their commits do not wait for the WAL
flush. Only those connections have it; records' connections keep the server's setting."""

_DONE = (
    "UPDATE events SET state = 'done', reply = COALESCE(c.reply, events.reply), error = NULL, "
    "next_attempt_at = NULL, failed_plugins = NULL, attempts = events.attempts + 1 "
    "FROM unnest($1::text[], $2::bytea[]) AS c(id, reply) WHERE events.id = c.id"
)
"""Mark a group's entries done, with their replies (None: the stored one is kept)."""

_FAILED = (
    "UPDATE events SET state = c.state, reply = COALESCE(c.reply, events.reply), "
    "error = c.error, failed_plugins = c.failed_plugins, next_attempt_at = c.next_attempt_at, "
    "attempts = events.attempts + 1, owner = NULL FROM unnest($1::text[], $2::text[], $3::bytea[], "
    "$4::text[], $5::bytea[], $6::float8[]) "
    "AS c(id, state, reply, error, failed_plugins, next_attempt_at) WHERE events.id = c.id "
    "AND (events.owner IS NULL OR events.owner = $7) "
    "RETURNING events.id, events.attempts"
)
"""Mark a group's entries failed, reply_failed or dead (:meth:`PostgresJournal.fail` and
:meth:`~PostgresJournal.undelivered` write the same columns), unless another owner
claimed one since (``$7``: this owner; a failure kept through an outage long enough for
another process to take the entry over and handle it must not undo what that one
recorded); their attempt numbers come
back."""

_ATTEMPTS = (
    "INSERT INTO attempts (event_id, attempt, at, plugin, hook, error_type, message, "
    "traceback) SELECT * FROM (SELECT c.event_id, COALESCE(c.attempt, "
    "(SELECT e.attempts + 1 FROM events e WHERE e.id = c.event_id)) AS attempt, c.at, "
    "c.plugin, c.hook, c.error_type, c.message, c.traceback FROM unnest($1::text[], "
    "$2::int[], $3::float8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) "
    "AS c(event_id, attempt, at, plugin, hook, error_type, message, traceback)) AS a "
    "WHERE a.attempt IS NOT NULL"
)
"""Keep a group's failures: a failed entry's at the number :data:`_FAILED` returned, a
noted one's (no number given) at the attempt under way, its attempts + 1; none for an
entry that is not there."""

_NOW = "extract(epoch from clock_timestamp())::float8"
"""The database's clock, in seconds since the epoch: leases are compared on one clock,
whatever the replicas' clocks say."""

_REGISTER = (
    "INSERT INTO processes (id, host, pid, since, lease_until) "
    f"VALUES ($1, $2, $3, $4, {_NOW} + $5) "
    "ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until "
    "RETURNING xmax = 0"
)
"""Register an owner or renew its lease; true when the row was inserted."""

SCHEMA_VERSION = _MIGRATIONS[-1][0]
"""The schema version this receiver writes."""

_COLUMNS = (
    "id, channel, provider, type, message_id, state, received_at, raw, meta, event, reply, "
    "error, attempts, failed_plugins, next_attempt_at, recovered_as"
)

_ORPHANS = (
    "UPDATE events SET owner = $1 WHERE state = 'received' AND received_at < $2 "
    "AND (owner IS NULL OR (owner <> $1 AND owner NOT IN (SELECT id FROM processes))) "
    f"RETURNING {_COLUMNS}"
)
"""Claim the received entries older than :data:`~receiver.journal.ORPHAN_AGE` that no
process owns (a range of the small ``events_unfinished`` index)."""

_ORIGINAL = (
    "(SELECT id, state, reply, 0 AS o FROM events "
    "WHERE channel = $1 AND md5(dedupe_key) = md5($2) AND dedupe_key = $2 "
    "AND received_at >= $3 LIMIT 1) "
    "UNION ALL (SELECT id, state, reply, 1 FROM events WHERE channel = $1 AND body_hash = $4 "
    "AND received_at >= $5 AND state NOT IN ('rejected', 'recovered') LIMIT 1) "
    "ORDER BY o LIMIT 1"
)
"""Both duplicate look-ups in one round trip, the provider key's first: one range on
``events_channel_dedupe``, one on ``events_channel_body`` (a window of 0: a bound of
+inf)."""

_INSERT = (
    "INSERT INTO events (id, channel, provider, type, message_id, state, received_at, raw, "
    "meta, event, dedupe_key, body_hash, owner) "
    "VALUES ($1, $2, $3, $4, $5, 'received', $6, $7, $8, $9, $10, $11, $12)"
)

_LAST_ERROR = (
    "(SELECT error_type || ': ' || message FROM attempts WHERE event_id = events.id "
    "ORDER BY attempt DESC, id DESC LIMIT 1)"
)

_FINISHED = "('done', 'rejected', 'recovered', 'dead')"


def _text(value: str | None) -> str | None:
    """``value`` as a PostgreSQL text column can hold it: NUL (which it refuses) and lone
    surrogates (:func:`~receiver.journal.storable`) as U+FFFD. (Raw bodies, events and
    meta are stored as bytes, exactly.)"""
    value = storable(value)
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def redact_url(url: str) -> str:
    """``url`` without its password (for logs and messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "postgresql://?"
    if parts.query:  # libpq also takes ?password=... (and any other parameter)
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() == "password" for name, _ in pairs):
            shown = [(n, "***" if n.lower() == "password" else v) for n, v in pairs]
            parts = parts._replace(query=urllib.parse.urlencode(shown, safe="*"))
    if parts.password is None:
        return urllib.parse.urlunsplit(parts)
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _lock_keys(event: Event, dedupe_key: str | None, body_hash: bytes, look_up: bool) -> list[int]:
    """The advisory lock keys of a record, sorted (one order for every transaction: no
    deadlock): its two duplicate look-ups' (``look_up``: a window is on), and its
    message status row's (:func:`_out_of_order`; two groups upserting the statuses of
    two messages in opposite orders would otherwise deadlock, a second lost each time
    to PostgreSQL's ``deadlock_timeout``)."""
    channel = event.channel.encode()
    keys: set[int] = set()
    if look_up:
        keys.add(_key(b"body\0" + channel + b"\0" + body_hash))
        if dedupe_key is not None:
            keys.add(_key(b"key\0" + channel + b"\0" + dedupe_key.encode()))
    row = status_row(event)
    if row is not None:
        # The row's key as _out_of_order stores it (_text): ids differing only in a NUL
        # or a lone surrogate are one row, so one lock.
        message_id, party = _text(row[0]), _text(row[1])
        keys.add(_key(f"status\0{event.provider}\0{message_id}\0{party}".encode()))
    return sorted(keys)


def _key(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big", signed=True)


class _Unreachable(Exception):
    """No connection to the database could be had (its cause says why)."""


def _fault(error: BaseException) -> bool:
    """``error`` says the database cannot be reached or written now (a lost connection,
    a server shutting down or starting, a full disk, a read-only standby, a timeout, a
    lock not granted within the server's ``lock_timeout``), not that an operation is
    wrong."""
    import asyncpg

    exceptions = asyncpg.exceptions
    return isinstance(
        error,
        _Unreachable
        | OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | exceptions.InternalClientError
        | exceptions.PostgresConnectionError
        | exceptions.OperatorInterventionError
        | exceptions.InsufficientResourcesError
        | exceptions.LockNotAvailableError
        | exceptions.ReadOnlySQLTransactionError,
    ) or type(error).__name__ in {"ConnectionDoesNotExistError", "ConnectionResetError"}


def _why(error: BaseException) -> str:
    """One line on a fault (never the URL: it may hold the password)."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Inserts:
    """The new records of a group transaction, inserted together before its commit
    (:meth:`insert`), and what a later record of the same group looks its original
    up among (the database does not hold them yet)."""

    __slots__ = ("bodies", "keys", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.keys: dict[tuple[str, str], tuple[str, float]] = {}
        self.bodies: dict[tuple[str, bytes], tuple[str, float]] = {}

    def add(self, row: tuple[Any, ...]) -> None:
        """Insert ``row`` (:data:`_INSERT`'s parameters but the owner) with the group."""
        self.rows.append(row)
        event_id, channel, received, dedupe_key, body_hash = row[0], row[1], row[5], row[9], row[10]
        if dedupe_key is not None:
            self.keys.setdefault((channel, dedupe_key), (event_id, received))
        self.bodies.setdefault((channel, body_hash), (event_id, received))

    def by_key(self, channel: str, dedupe_key: str | None, since: float) -> str | None:
        """The id of a record of the group with this provider key, received since
        ``since``."""
        found = self.keys.get((channel, dedupe_key)) if dedupe_key is not None else None
        return found[0] if found is not None and found[1] >= since else None

    def by_body(self, channel: str, body_hash: bytes, since: float) -> str | None:
        """The id of a record of the group with this body, received since ``since``."""
        found = self.bodies.get((channel, body_hash))
        return found[0] if found is not None and found[1] >= since else None

    async def insert(self, connection: Any, owner: str) -> None:
        """Insert the group's records: asyncpg's ``executemany``, every row's Bind and
        Execute sent at once, one round trip. (Measured against one ``INSERT ... SELECT
        FROM unnest(...)`` of the whole group: 36k fewer instructions per callback in the
        receiver, which encodes no arrays, each element of them checked against
        ``collections.abc`` classes.)"""
        if self.rows:
            await connection.executemany(_INSERT, [(*row, owner) for row in self.rows])


class _Change:
    """One state change of a stored entry, waiting for its group (see
    :meth:`PostgresJournal._change`)."""

    __slots__ = ("event_id", "failures", "future", "keep", "kind", "row")

    def __init__(
        self,
        event_id: str,
        kind: str,
        row: Any,
        failures: Sequence[Failure] = (),
        *,
        keep: bool = True,
    ) -> None:
        self.event_id = event_id
        self.kind = kind
        """``done`` (row: the encoded reply or None), ``failed`` (row: state, encoded
        reply or None, error, encoded failed plugins, next attempt) or ``note`` (row:
        None; ``failures`` only)."""
        self.row = row
        self.failures = failures
        self.keep = keep
        """Kept in memory and written again on a fault (a note is not: its caller gets
        :class:`~receiver.errors.JournalUnavailable`)."""
        self.future: asyncio.Future[None] | None = None


def _statements(changes: Sequence[_Change]) -> int:
    """How many statements :func:`_write_changes` sends for ``changes``."""
    kinds = {change.kind for change in changes}
    failures = any(change.failures for change in changes if change.kind != "done")
    return ("done" in kinds) + ("failed" in kinds) + failures


async def _write_changes(connection: Any, changes: Sequence[_Change], owner: str) -> None:
    """Write ``changes`` (at most one per entry: their order between entries does not
    matter): one statement per kind, whatever their number (:data:`_DONE`,
    :data:`_FAILED`, :data:`_ATTEMPTS`)."""
    done = [change for change in changes if change.kind == "done"]
    if done:
        await connection.execute(
            _DONE, [change.event_id for change in done], [change.row for change in done]
        )
    failed = [change for change in changes if change.kind == "failed"]
    numbers: dict[str, int] = {}
    if failed:
        columns: list[list[Any]] = [[change.event_id] for change in failed]
        for row, change in zip(columns, failed, strict=True):
            row.extend(change.row)
        rows = await connection.fetch(_FAILED, *map(list, zip(*columns, strict=True)), owner)
        numbers = {row[0]: row[1] for row in rows}
    kept: list[tuple[Any, ...]] = []
    for change in changes:
        if change.kind == "done" or not change.failures:
            continue
        if change.kind == "failed":
            number: int | None = numbers.get(change.event_id)
            if number is None:  # no such entry: nothing to keep
                continue
        else:
            number = None  # a note: the attempt under way, looked up
        kept += [
            (
                change.event_id,
                number,
                failure.at,
                _text(failure.plugin),
                _text(failure.hook),
                _text(failure.error_type),
                _text(failure.message),
                _text(failure.traceback),
            )
            for failure in change.failures
        ]
    if kept:
        await connection.execute(_ATTEMPTS, *map(list, zip(*kept, strict=True)))


class PostgresJournal(Journal):
    """The shared journal: PostgreSQL (see the module docstring).

    Args:
        url: A libpq URL, ``postgresql://user:password@host:port/database``.
        duplicate_window: Seconds within which the same provider key is a duplicate.
        body_window: Seconds within which the same raw body (SHA-256) is a duplicate.
        pool_size: Most connections held open.
        max_body_bytes: Accepted for the interface's sake (the server's disk is its own).
        lease: Seconds an owner's lease lasts (:attr:`Journal.lease`), on the database's
            clock.

    Any number of processes, on any number of machines, may share the database:
    ownership (:mod:`receiver.journal`) says which one handles what; claims are row
    locks (``FOR UPDATE SKIP LOCKED``), so no two processes claim one entry.
    """

    connect_timeout = 5.0
    """Seconds to open a connection."""
    command_timeout = 10.0
    """Seconds a statement may take before the operation fails (503 for a record)."""
    retry_min = 0.05
    retry_max = 5.0
    """Seconds between attempts at the kept state changes (doubling from the first)."""
    group_writers = 2
    """Group transactions of records in flight at once (each on a connection of its
    own)."""
    max_batch = 256
    """Most records in one group transaction, and most state changes in one group."""
    max_locks = 64
    """Most advisory locks a group transaction of records takes (its records' lock keys,
    :func:`_lock_keys`; a group ends before the record that would pass it, one record
    alone excepted): PostgreSQL's default ``max_locks_per_transaction``, what its shared
    lock table is sized for per connection. Groups of hundreds of records, three keys
    each, on several connections and replicas, could fill that table ("out of shared
    memory": every record of the group refused)."""
    change_connections = 2
    """Connections of the state changes' pool (``synchronous_commit`` off): the group
    writer's, and one for the kept changes' writer or a replay's claim."""

    def __init__(
        self,
        url: str,
        *,
        duplicate_window: float = 48 * 3600,
        body_window: float = 600,
        pool_size: int = 10,
        max_body_bytes: int = 0,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.url = url
        self.lease = lease
        self._registered = False
        self.duplicate_window = duplicate_window
        self.body_window = body_window
        self.pool_size = pool_size
        self._pool: Any = None
        self._ready = False
        self.failure: str | None = None
        """The last fault, until an operation succeeds with nothing kept."""
        self.kept: dict[str, Callable[[Any], Awaitable[None]]] = {}
        """State changes not written yet, by event id."""
        self._keeper: asyncio.Task[None] | None = None
        self.commits = 0
        """Transactions committed that wrote (a group of state changes is one)."""
        self._queued: list[tuple[Any, list[int], asyncio.Future[Any]]] = []
        self._flushers = 0
        self._flushing: set[asyncio.Task[None]] = set()
        self.grouped = 0
        """Records committed in a group transaction (with others, or alone)."""
        self._async_pool: Any = None
        self._changes: list[_Change] = []
        self._changing: asyncio.Task[None] | None = None
        self.changes_grouped = 0
        """State changes written in a group (with others, or alone)."""

    @property
    def where(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)

    # -- connections ----------------------------------------------------------------

    async def _connections(self, durable: bool = True) -> Any:
        """The pool (created on first use; it opens connections as they are needed);
        ``durable`` False: the state changes' pool, whose connections commit without
        waiting for the WAL flush (:data:`_ASYNC_COMMIT`)."""
        if durable and self._pool is None:
            self._pool = await self._new_pool(self.pool_size)
        elif not durable and self._async_pool is None:
            size = min(self.change_connections, self.pool_size)
            pool = await self._new_pool(size, **_ASYNC_COMMIT)
            if self._async_pool is None:  # (two first uses at once: one pool kept)
                self._async_pool = pool
            else:
                await pool.close()
        return self._pool if durable else self._async_pool

    async def _new_pool(self, size: int, **settings: str) -> Any:
        import asyncpg

        return await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=max(1, size),
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            max_inactive_connection_lifetime=60.0,
            reset=_keep_session,
            server_settings=settings or None,
        )

    async def _run(
        self,
        work: Callable[[Any], Awaitable[_T]],
        *,
        write: bool = True,
        durable: bool = True,
        begin: bool = True,
    ) -> _T:
        """``work`` with a connection, in one transaction; told to :attr:`on_commit`.
        ``durable`` False: on a connection of the state changes' pool (its commits do not
        wait for the WAL flush). ``begin`` False: no ``BEGIN`` and ``COMMIT``, for a
        ``work`` of one statement (PostgreSQL makes it a transaction of its own).

        A pooled connection whose server went away (a restart, ``pg_terminate_backend``)
        fails at ``BEGIN``, before anything of ``work`` was sent: it is closed and the
        transaction begun once more on another connection. A fault later closes the
        connection (the pool opens a new one) and is raised.
        """
        if not begin:
            return await self._statement(work, write=write, durable=durable)
        pool = await self._connections(durable)
        for last in (False, True):
            connection = await self._acquire(pool)
            try:
                started = time.perf_counter()
                transaction = connection.transaction()
                try:
                    await transaction.start()
                except Exception as exc:
                    if last or not _fault(exc):
                        raise
                    connection.terminate()
                    continue
                try:
                    result = await work(connection)
                except BaseException:
                    if not connection.is_closed():
                        with contextlib.suppress(Exception):
                            await transaction.rollback()
                    raise
                await transaction.commit()
            except Exception as exc:
                if _fault(exc):
                    connection.terminate()
                raise
            finally:
                await pool.release(connection)
            break
        self._committed(write, started)
        return result

    async def _acquire(self, pool: Any) -> Any:
        """A connection of ``pool`` within :attr:`connect_timeout` (asyncio.timeout: a
        timer; ``acquire(timeout=)`` would wrap it in a task); whatever stops one means
        the database is not there: :class:`_Unreachable`."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await pool.acquire()
        except Exception as exc:
            raise _Unreachable(_why(exc)) from exc

    async def _statement(
        self, work: Callable[[Any], Awaitable[_T]], *, write: bool, durable: bool
    ) -> _T:
        """``work`` of one statement with a connection, outside ``BEGIN`` and ``COMMIT``
        (see :meth:`_run`). Nothing is tried again: a statement sent on a connection that
        turns out to be broken may have been committed (the kept changes' writer writes
        it again, as after a lost ``COMMIT`` answer)."""
        pool = await self._connections(durable)
        connection = await self._acquire(pool)
        try:
            started = time.perf_counter()
            result = await work(connection)
        except Exception as exc:
            if _fault(exc):
                connection.terminate()
            raise
        finally:
            await pool.release(connection)
        self._committed(write, started)
        return result

    def _committed(self, write: bool, started: float) -> None:
        """A transaction committed (``write``: one that wrote, told to
        :attr:`on_commit`); the journal is writable again when nothing is kept."""
        if write:
            self.commits += 1
            observer = self.on_commit
            if observer is not None:
                try:
                    observer(time.perf_counter() - started)
                except Exception:
                    log.exception("journal commit observer failed")
        if self.failure is not None and not self.kept:
            log.info("journal writable again", journal=self.where)
            self.failure = None

    async def _grouped(
        self, work: Callable[[Any, _Inserts | None], Awaitable[_T]], keys: list[int]
    ) -> _T:
        """Run a record's ``work`` in the next group transaction (see the class); as
        :meth:`_new` for its errors. ``keys``: its advisory lock keys, taken for the whole
        group at once, in one order (no deadlock between groups)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queued.append((work, keys, future))
        if self._flushers < self.group_writers:
            self._flushers += 1
            task = loop.create_task(self._flush())
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return await future

    async def _flush(self) -> None:
        """Commit what is queued, a group at a time, until nothing is (one of at most
        :attr:`group_writers` such tasks)."""
        try:
            while self._queued:
                await self._commit_group(self._next_group())
        finally:
            self._flushers -= 1

    def _next_group(self) -> list[tuple[Any, list[int], asyncio.Future[Any]]]:
        """The queued records of the next group, in order: at most :attr:`max_batch`,
        and no more lock keys than :attr:`max_locks` (at least one record)."""
        queued, keys, end = self._queued, set[int](), 0
        while end < len(queued) and end < self.max_batch:
            more = keys.union(queued[end][1])
            if end and len(more) > self.max_locks:
                break
            keys, end = more, end + 1
        group = queued[:end]
        del queued[:end]
        return group

    async def _commit_group(self, group: list[tuple[Any, list[int], asyncio.Future[Any]]]) -> None:
        """One transaction for the whole group; when it fails for anything but a fault
        (one operation raised), each operation again alone, so that it succeeds or fails
        on its own."""

        async def together(connection: Any) -> list[Any]:
            keys = sorted({key for _, own, _ in group for key in own})
            if keys:  # none: both duplicate windows 0, and no status to track
                await connection.execute(_LOCK, keys)
            inserts = _Inserts()
            results = [await work(connection, inserts) for work, _, _ in group]
            await inserts.insert(connection, self.owner)
            return results

        try:
            results = await self._new(together)
        except JournalUnavailable as exc:  # a fault: nothing of the group is stored
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        except Exception as exc:  # one of them raised
            if len(group) == 1:
                if not group[0][2].done():
                    group[0][2].set_exception(exc)
                return
        else:
            self.grouped += len(group)
            for (_, _, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
            return
        for work, _, future in group:
            try:
                result = await self._new(work)
            except BaseException as exc:  # handed to its caller
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def _new(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """Store new data (a record, a rejected body): a fault is
        :class:`JournalUnavailable` (503), nothing stored."""
        try:
            return await self._run(work)
        except Exception as exc:
            if not _fault(exc):
                raise
            self._failed(exc)
            raise JournalUnavailable() from None

    async def _change(self, change: _Change) -> None:
        """Change a stored event's state in the next group of state changes.

        State changes (done, failed, reply_failed, dead, a noted attempt) that arrive
        while a group is being written join the next one, written by one task: one
        statement per kind of change for the whole group (:func:`_write_changes`), on a
        connection whose commits do not wait for the WAL flush. A group of ``done`` alone
        (the common case) is one ``UPDATE``, its own transaction: no ``BEGIN`` and no
        ``COMMIT`` round trip. Per-entry order holds: a group holds at most one change of
        an entry (a later one waits for the next group), and groups are written one
        after the other. Each change is made after its caller's :meth:`record` returned,
        so after its record committed.

        A fault (the connection lost) keeps every change of the group in memory, written
        again with backoff instead of failing its caller (a note is not kept: its caller
        gets :class:`JournalUnavailable`); while any is kept, new changes are kept after
        it. A group that fails otherwise (one change raised) is taken apart: each change
        is written alone, and only the one that raises fails its caller.
        """
        if self.kept and change.keep:  # written after the ones kept before it
            self.kept[change.event_id] = self._alone(change)
            return
        change.future = asyncio.get_running_loop().create_future()
        self._changes.append(change)
        if self._changing is None:
            self._changing = asyncio.get_running_loop().create_task(self._write_changes())
        await change.future

    @property
    def unsettled(self) -> Collection[str]:
        return {*self.kept, *(change.event_id for change in self._changes)}

    def _alone(self, change: _Change) -> Callable[[Any], Awaitable[None]]:
        """The work that writes ``change`` by itself (kept, or a group taken apart)."""

        async def alone(connection: Any) -> None:
            await _write_changes(connection, (change,), self.owner)

        return alone

    def _next_changes(self) -> list[_Change]:
        """The next group: the queued changes in order, at most :attr:`max_batch`, at
        most one per entry (the others stay queued, in their order)."""
        group: list[_Change] = []
        later: list[_Change] = []
        seen: set[str] = set()
        for change in self._changes:
            if len(group) >= self.max_batch or change.event_id in seen:
                later.append(change)
            else:
                seen.add(change.event_id)
                group.append(change)
        self._changes = later
        return group

    async def _write_changes(self) -> None:
        """Write the queued state changes, a group at a time, until none is left."""
        group: list[_Change] = []
        try:
            while self._changes:
                group = self._next_changes()
                if self.kept:  # a group failed meanwhile: after the kept ones
                    for change in group:
                        if change.keep:
                            self.kept[change.event_id] = self._alone(change)
                            _settle(change, None)
                    group = [change for change in group if not change.keep]
                    if not group:
                        continue
                await self._write_group(group)
        finally:
            self._changing = None
            # Stopped (cancelled at stop) or broken: no caller waits for ever.
            left, self._changes = [*group, *self._changes], []
            for change in left:
                _settle(change, JournalUnavailable())

    async def _write_group(self, group: list[_Change]) -> None:
        """Write ``group`` in one transaction (one statement for done alone); see
        :meth:`_change` for its faults and failures."""

        async def changes(connection: Any) -> None:
            await _write_changes(connection, group, self.owner)

        try:
            await self._run(changes, durable=False, begin=_statements(group) > 1)
        except Exception as exc:
            if _fault(exc):
                self._failed(exc)
                for change in group:
                    self._keep(change, exc)
                return
            if len(group) == 1:
                _settle(group[0], exc)
                return
        else:
            self.changes_grouped += len(group)
            for change in group:
                _settle(change, None)
            return
        for change in group:  # one of them raised: each alone
            try:
                await self._run(self._alone(change), durable=False)
            except Exception as exc:
                if _fault(exc):
                    self._failed(exc)
                    self._keep(change, exc)
                else:
                    _settle(change, exc)
            else:
                self.changes_grouped += 1
                _settle(change, None)

    def _keep(self, change: _Change, fault: BaseException) -> None:
        """A fault stopped ``change``: kept, written again with backoff (a note: its
        caller gets :class:`JournalUnavailable`)."""
        if not change.keep:
            unavailable = JournalUnavailable()
            unavailable.__cause__ = fault
            _settle(change, unavailable)
            return
        self.kept[change.event_id] = self._alone(change)
        _settle(change, None)
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._write_kept())

    def _failed(self, error: BaseException) -> None:
        reason = f"journal unreachable: {_why(error)}"
        if reason != self.failure:
            log.error("journal not writable", journal=self.where, reason=reason)
        self.failure = reason

    async def _write_kept(self) -> None:
        """Write the kept state changes, oldest first, with backoff until they are in."""
        delay = self.retry_min
        while self.kept:
            await asyncio.sleep(delay)
            written = await self._write_kept_once()
            delay = self.retry_min if written else min(delay * 2, self.retry_max)
        log.info("journal writable again", journal=self.where)
        self.failure = None

    async def _write_kept_once(self) -> bool:
        """Try each kept state change once, oldest first; False at the first fault (the
        rest stay kept)."""
        for event_id, work in list(self.kept.items()):
            try:
                await self._run(work, durable=False)
            except Exception as exc:
                if _fault(exc):
                    self._failed(exc)
                    return False
                log.exception("journal operation failed", event_id=event_id)
            if self.kept.get(event_id) is work:
                del self.kept[event_id]
        return True

    async def _require(self) -> None:
        """An operator command reads a journal that is there: the database reachable and
        its schema created (:class:`ConfigError` otherwise); creates nothing."""
        if self._ready:
            return
        try:
            version = await self._version()
        except Exception as exc:
            if not _fault(exc) and not _denied(exc):
                raise
            raise ConfigError(f"journal: {self.where}: {_why(exc)}") from None
        if version is None:
            raise ConfigError(
                f"journal: {self.where} has no receiver schema (run `receiver migrate`)"
            )
        self._ready = True

    async def _version(self, *, strict: bool = True) -> int | None:
        """The schema version of the database (None: no schema). ``strict``: receiver's
        tables without a ``schema_version`` table are a :class:`ConfigError`; else None
        (:meth:`migrate` decides under its lock: another process may be creating the
        schema right now, its tables appearing between two looks)."""
        pool = await self._connections()
        async with pool.acquire(timeout=self.connect_timeout) as connection:
            if await connection.fetchval("SELECT to_regclass('schema_version')") is None:
                if strict:
                    await self._refuse_tables_without_version(connection)
                return None
            found = await connection.fetchval("SELECT max(version) FROM schema_version")
            return int(found) if found is not None else None

    async def _refuse_tables_without_version(self, connection: Any) -> None:
        """Raise :class:`ConfigError` when receiver's tables are there without a
        ``schema_version`` table."""
        if await connection.fetchval("SELECT to_regclass('events')") is not None:
            raise ConfigError(
                f"journal: {self.where} has receiver's tables but no schema_version "
                "table (restored without it?): restore it, or migrate into an empty "
                "database"
            )

    async def migrate(self) -> tuple[int | None, int]:
        """Create the schema or bring it up to :data:`SCHEMA_VERSION`, under an advisory
        lock (replicas starting together: one creates it, the others wait and find it).
        Returns (the version found, the version now).

        Raises:
            ConfigError: the database cannot be reached, or has a newer schema.
        """
        try:
            # A look without the lock first: a database at the current version is only
            # read. Replicas starting together on an empty database: one creates the
            # schema under the lock, the others wait for it there and find it (their
            # look may have seen half of it: no schema_version yet, events already).
            found = await self._version(strict=False)
            if found is None or found < SCHEMA_VERSION:
                found = await self._run(self._migrate_locked, write=False)
        except ConfigError:
            raise
        except ValueError:  # the driver could not read the URL (a port that is no number)
            raise ConfigError(f"journal: {self.where}: not a usable PostgreSQL URL") from None
        except Exception as exc:
            if not _fault(exc) and not _denied(exc):
                raise
            raise ConfigError(f"journal: {self.where}: {_why(exc)}") from None
        if found is not None and found > SCHEMA_VERSION:
            raise ConfigError(
                f"journal: {self.where} has schema version {found}, newer than this "
                f"receiver's {SCHEMA_VERSION}: upgrade receiver"
            )
        self._ready = True
        return found, max(SCHEMA_VERSION, found or 0)

    async def _migrate_locked(self, connection: Any) -> int | None:
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        # Under the lock, whoever created the schema has committed. Read pg_class (this
        # statement's snapshot), not to_regclass: the backend's cache still remembers the
        # schema_version it did not find before the lock was granted.
        tables = await connection.fetch(
            "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace "
            "AND relname IN ('schema_version', 'events')"
        )
        if {row["relname"] for row in tables} == {"events"}:
            await self._refuse_tables_without_version(connection)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        found = await connection.fetchval("SELECT max(version) FROM schema_version")
        for version, sql in _MIGRATIONS:
            if found is not None and version <= found:
                continue
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                version,
                time.time(),
            )
            log.info("journal schema migrated", version=version)
        return int(found) if found is not None else None

    async def start(self) -> None:
        try:
            await self.migrate()
        except BaseException:
            await self.stop()  # nobody stops a journal that did not start
            raise

    async def stop(self) -> None:
        # The queued and kept states first, under the lease: given up before, another
        # process could take their (handled) entries over and handle them again meanwhile.
        changing = self._changing
        if changing is not None and not changing.done():
            try:  # the changes queued: written (or kept) now
                await asyncio.wait_for(asyncio.shield(changing), timeout=self.retry_max)
            except (TimeoutError, asyncio.CancelledError):
                changing.cancel()
        keeper, self._keeper = self._keeper, None
        await _cancelled(keeper)  # it may be asleep in its backoff: one more try now
        if self.kept:
            with contextlib.suppress(TimeoutError):  # not a wait for a dead server
                await asyncio.wait_for(self._write_kept_once(), timeout=self.retry_max)
        if self.kept:
            log.error(
                "journal stopped with handled events' states not stored",
                journal=self.where,
                count=len(self.kept),
            )
        if self._registered and self._pool is not None:
            try:
                await asyncio.wait_for(self.release(), timeout=self.retry_max)
            except Exception:  # an unreachable database: the lease runs out instead
                log.warning("journal: giving the lease up failed", journal=self.where)
        self._forget_owner()
        pools = self._pool, self._async_pool
        self._pool = self._async_pool = None
        self._ready = False
        for pool in pools:
            if pool is None:
                continue
            try:
                await asyncio.wait_for(pool.close(), timeout=self.retry_max)
            except Exception:
                pool.terminate()

    async def check(self) -> str | None:
        if self.kept:
            kept = len(self.kept)
            return f"journal failing: {kept} handled events' states not stored yet ({self.failure})"
        try:
            pool = await self._connections()
            async with pool.acquire(timeout=2.0) as connection:
                standby, schema = await connection.fetchrow(
                    "SELECT pg_is_in_recovery(), to_regclass('events') IS NOT NULL", timeout=2.0
                )
        except Exception as exc:
            return f"journal unreachable: {_why(exc)}"
        if standby:
            return "journal not writable: the database is a read-only standby"
        if not schema:
            return "journal missing: no receiver schema in the database"
        return None

    # -- the request path ---------------------------------------------------------

    async def record(self, event: Event, meta: dict[str, str], dedupe_key: str | None) -> Recorded:
        body_hash = hashlib.sha256(event.raw).digest()

        registered = self._registered
        keys = _lock_keys(event, _text(dedupe_key), body_hash, self._looks_up)

        async def work(connection: Any, inserts: _Inserts | None = None) -> Recorded:
            if not registered:  # the owner's row with its first entry
                await self._register(connection, event.received_at.timestamp())
            return await self._record(connection, event, meta, dedupe_key, body_hash, inserts)

        try:
            recorded = await self._grouped(work, keys)
            self._registered = True
            return recorded
        except JournalUnavailable:
            # The connection may have failed after the COMMIT reached the server, its
            # answer lost: then the row is stored, and answering 503 would leave it
            # handled by no one (the provider's re-send would find it as the original).
            # Ask once more, on another connection.
            if await self._stored(event.id):
                log.warning("journal: a record's commit answer was lost; it is stored")
                return Recorded(event)
            raise

    @property
    def _looks_up(self) -> bool:
        """Whether a record looks for its original (a duplicate window is on)."""
        return self.duplicate_window > 0 or self.body_window > 0

    async def _stored(self, event_id: str) -> bool:
        """Whether ``event_id`` is in the journal (False when that cannot be known)."""

        async def look(connection: Any) -> bool:
            return bool(await connection.fetchval("SELECT 1 FROM events WHERE id = $1", event_id))

        try:
            return await self._run(look)
        except Exception:
            return False

    async def _record(
        self,
        connection: Any,
        event: Event,
        meta: dict[str, str],
        dedupe_key: str | None,
        body_hash: bytes,
        inserts: _Inserts | None = None,
    ) -> Recorded:
        """Find the original of ``event`` on its channel, or store ``event``. ``inserts``:
        in a group transaction, which holds the advisory locks of its keys already; the
        new row is inserted with the group's (the original may be one of them)."""
        received = event.received_at.timestamp()
        dedupe_key = _text(dedupe_key)
        channel = event.channel
        looks_up = self._looks_up
        if inserts is None:  # alone (a group takes its records' locks at once)
            keys = _lock_keys(event, dedupe_key, body_hash, looks_up)
            if keys:
                await connection.execute(_LOCK, keys)
        if looks_up:  # both windows 0: no look-up
            key_since = received - self.duplicate_window if self.duplicate_window > 0 else math.inf
            body_since = received - self.body_window if self.body_window > 0 else math.inf
            original = await connection.fetchrow(
                _ORIGINAL, channel, dedupe_key, key_since, body_hash, body_since
            )
            # The provider key's match first, as _ORIGINAL's order: the database's, then
            # the group's; then the body's.
            if inserts is not None and (original is None or original[3] != 0):
                found = inserts.by_key(channel, dedupe_key, key_since)
                if found is None and original is None:
                    found = inserts.by_body(channel, body_hash, body_since)
                if found is not None:
                    return Recorded(event, found, "received", None)
            if original is not None:
                reply = msgspec.msgpack.decode(original[2], type=Reply) if original[2] else None
                return Recorded(event, original[0], original[1], reply)
        recorded = event
        if await _out_of_order(connection, event, received):
            recorded = msgspec.structs.replace(event, out_of_order=True)
        row = (
            event.id,
            channel,
            event.provider,
            event.type.value,
            _text(event.message_id),
            received,
            event.raw,
            _encode(meta),
            _encode(msgspec.structs.replace(recorded, raw=b"")),  # raw has its column
            dedupe_key,
            body_hash,
        )
        if inserts is not None:
            inserts.add(row)
        else:
            await connection.execute(_INSERT, *row, self.owner)
        return Recorded(recorded)

    async def recover(
        self, entry_id: str, event: Event, meta: dict[str, str], dedupe_key: str | None
    ) -> Recorded | None:
        body_hash = hashlib.sha256(event.raw).digest()

        async def work(connection: Any) -> Recorded | None:
            state = await connection.fetchval(
                "SELECT state FROM events WHERE id = $1 FOR UPDATE", entry_id
            )
            if state != "rejected":
                return None
            await self._register(connection, event.received_at.timestamp())
            recorded = await self._record(connection, event, meta, dedupe_key, body_hash)
            await connection.execute(
                "UPDATE events SET state = 'recovered', recovered_as = $1 WHERE id = $2",
                recorded.duplicate_of or event.id,
                entry_id,
            )
            return recorded

        recovered = await self._new(work)
        self._registered = True
        return recovered

    async def reject(
        self, channel: str, provider: str, raw: bytes, meta: dict[str, str], reason: str
    ) -> str:
        entry_id = new_event_id()
        raw, meta = _kept_raw(raw, meta)

        async def work(connection: Any) -> str:
            await connection.execute(
                "INSERT INTO events (id, channel, provider, state, received_at, raw, meta, "
                "error, body_hash) VALUES ($1, $2, $3, 'rejected', $4, $5, $6, $7, $8)",
                entry_id,
                channel,
                provider,
                time.time(),
                raw,
                _encode(meta),
                reason,
                hashlib.sha256(raw).digest(),
            )
            return entry_id

        return await self._new(work)

    async def complete(self, event_id: str, reply: Reply | None) -> None:
        encoded = _encode(reply) if reply is not None else None
        await self._change(_Change(event_id, "done", encoded))

    async def fail(
        self,
        event_id: str,
        error: str,
        plugins: Sequence[str] | None,
        retry_at: float | None,
        failures: Sequence[Failure] = (),
        reply: Reply | None = None,
        delivered: bool = False,
    ) -> None:
        state = "failed" if retry_at is not None else "dead"
        undelivered = reply is not None and not delivered
        names = [*(plugins or ()), *([REPLY_ONLY] if undelivered else [])]
        encoded = _encode(names) if names else None
        kept_reply = _encode(reply) if reply is not None else None
        row = (state, kept_reply, _text(error), encoded, retry_at)
        await self._change(_Change(event_id, "failed", row, list(failures)))

    async def undelivered(
        self,
        event_id: str,
        reply: Reply,
        error: str,
        retry_at: float | None,
        failures: Sequence[Failure] = (),
    ) -> None:
        state = "reply_failed" if retry_at is not None else "dead"
        row = (state, _encode(reply), _text(error), _encode([REPLY_ONLY]), retry_at)
        await self._change(_Change(event_id, "failed", row, list(failures)))

    async def note(self, event_id: str, failures: Sequence[Failure]) -> None:
        if not failures:
            return
        await self._change(_Change(event_id, "note", None, list(failures), keep=False))

    async def backlog(self) -> int:
        async def work(connection: Any) -> int:
            found = await connection.fetchval(
                "SELECT COUNT(*) FROM events WHERE state IN ('failed', 'reply_failed')"
            )
            return int(found)

        return await self._run(work, write=False)

    async def due(self, now: float, limit: int = 100) -> list[Entry]:
        # Rows another process is claiming are skipped (SKIP LOCKED), and a claimed row's
        # next attempt is a lease ahead: one process retries an entry at a time.
        query = (
            "UPDATE events SET next_attempt_at = $1, owner = $2 WHERE id IN (SELECT id FROM "
            "events WHERE state IN ('failed', 'reply_failed') AND next_attempt_at <= $3 "
            "AND NOT (id = ANY($5::text[])) "
            "ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLUMNS}"
        )
        owner = self.owner

        async def work(connection: Any) -> list[Entry]:
            # Not those whose new state is held here, still to be written (a snapshot
            # before the query: one written since is no longer due).
            unsettled = list(self.unsettled)
            rows = await connection.fetch(query, now + self.lease, owner, now, limit, unsettled)
            return [_entry(tuple(row)) for row in rows]

        claimed = await self._run(work)
        return sorted(claimed, key=lambda entry: entry.received_at)

    async def _select(self, query: str, *params: Any) -> list[Entry]:
        async def work(connection: Any) -> list[Entry]:
            return [_entry(tuple(row)) for row in await connection.fetch(query, *params)]

        return await self._run(work, write=False)

    async def own_unfinished(self, before: float | None = None) -> list[Entry]:
        return await self._select(
            f"SELECT {_COLUMNS} FROM events WHERE state = 'received' AND received_at < $1 "
            "AND owner = $2 ORDER BY received_at",
            math.inf if before is None else before,
            self.owner,
        )

    async def claim(self, entry: Entry) -> bool:
        owner = self.owner
        if not self._registered:
            await self.renew()

        async def work(connection: Any) -> bool:
            found = await connection.fetchval(
                "UPDATE events SET owner = $1, next_attempt_at = $2 WHERE id = $3 "
                "AND state = $4 AND attempts = $5 "
                "AND next_attempt_at IS NOT DISTINCT FROM $6 "
                "AND (owner IS NULL OR owner NOT IN (SELECT id FROM processes "
                f"WHERE lease_until > {_NOW}) "
                "OR (state NOT IN ('received', 'failed', 'reply_failed') "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= $7))) RETURNING 1",
                owner,
                time.time() + self.lease,
                entry.id,
                entry.state,
                entry.attempts,
                entry.next_attempt_at,
                time.time(),
            )
            return found is not None

        return await self._run(work, durable=False)

    async def end_session(self, key: bytes, until: float) -> None:
        async def work(connection: Any) -> None:
            await connection.execute("DELETE FROM ended_sessions WHERE until < $1", time.time())
            await connection.execute(
                "INSERT INTO ended_sessions (key, until) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET until = excluded.until",
                key,
                until,
            )

        await self._run(work)

    async def session_ended(self, key: bytes) -> bool:
        async def work(connection: Any) -> bool:
            found = await connection.fetchval("SELECT 1 FROM ended_sessions WHERE key = $1", key)
            return found is not None

        return await self._run(work, write=False)

    # -- ownership ------------------------------------------------------------------

    async def _register(self, connection: Any, since: float) -> None:
        """Insert this owner's row, or renew its lease (on the database's clock)."""
        owner = self.owner
        inserted = await connection.fetchval(
            _REGISTER, owner, self._host, self._pid, since - SINCE_MARGIN, self.lease
        )
        if inserted and self._registered:
            log.warning(
                "journal lease lost: renewed too late, this process's unfinished work "
                "may have been taken over (handled twice)",
                owner=owner,
            )

    async def renew(self, running: Collection[str] = ()) -> None:
        ids = list(running)

        async def work(connection: Any) -> None:
            await self._register(connection, time.time())
            if ids:
                await connection.execute(
                    "UPDATE events SET next_attempt_at = $1 WHERE id = ANY($2::text[]) "
                    "AND (state IN ('failed', 'reply_failed') "
                    "OR (state <> 'received' AND next_attempt_at > $3))",
                    time.time() + self.lease,
                    ids,
                    time.time(),
                )

        await self._run(work)
        self._registered = True

    async def release(self) -> None:
        owner = self.owner

        async def work(connection: Any) -> None:
            await connection.execute("UPDATE processes SET lease_until = 0 WHERE id = $1", owner)

        await self._run(work)
        self._registered = False

    async def take_over(self, limit: int = 1000) -> list[Entry]:
        owner = self.owner

        async def work(connection: Any) -> list[Entry]:
            now = await connection.fetchval(f"SELECT {_NOW}")
            others = await connection.fetch(
                "SELECT id, host, pid, lease_until FROM processes WHERE id <> $1", owner
            )
            claimed: list[Entry] = []
            for other, host, pid, lease_until in others:
                if len(claimed) >= limit:
                    break
                if lease_until > now and not gone(other, host, pid):
                    continue
                # Whoever deletes the row takes the owner's work: one process only.
                since = await connection.fetchval(
                    "DELETE FROM processes WHERE id = $1 RETURNING since", other
                )
                if since is None:
                    continue
                rows = await connection.fetch(
                    "UPDATE events SET owner = $1 WHERE owner = $2 AND state = 'received' "
                    f"AND received_at >= $3 RETURNING {_COLUMNS}",
                    owner,
                    other,
                    since,
                )
                claimed += [_entry(tuple(row)) for row in rows]
            if len(claimed) < limit:
                rows = await connection.fetch(_ORPHANS, owner, now - ORPHAN_AGE)
                claimed += [_entry(tuple(row)) for row in rows]
            if claimed:
                await self._register(connection, now)
                await connection.execute(
                    "UPDATE processes SET since = LEAST(since, $1) WHERE id = $2",
                    min(entry.received_at for entry in claimed),
                    owner,
                )
            return claimed

        claimed = await self._run(work)
        if claimed:
            self._registered = True
        return sorted(claimed, key=lambda entry: entry.received_at)

    # -- the operator commands --------------------------------------------------

    async def entries(
        self,
        *,
        channel: str | None = None,
        type: str | None = None,
        state: str | None = None,
        since: float | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = 100,
    ) -> list[Entry]:
        await self._require()
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("channel", channel), ("type", type), ("state", state)):
            if value is not None:
                params.append(_text(value))  # an operator's filter: NUL would be an error
                clauses.append(f"{column} = ${len(params)}")
        if since is not None:
            params.append(since)
            clauses.append(f"received_at >= ${len(params)}")
        if ids:
            params.append([_text(one) for one in ids])
            clauses.append(f"id = ANY(${len(params)}::text[])")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        bounded = ""
        if limit is not None:
            params.append(limit)
            bounded = f"LIMIT ${len(params)}"
        query = (
            f"SELECT {_COLUMNS}, {_LAST_ERROR} FROM events {where} "
            f"ORDER BY received_at DESC {bounded}"
        )
        return await self._select(query, *params)

    async def browse(
        self,
        *,
        channel: str | None = None,
        provider: str | None = None,
        type: str | None = None,
        state: str | None = None,
        since: float | None = None,
        before: float | None = None,
        search: str | None = None,
        limit: int = 50,
        scan: int = 5000,
    ) -> Browsed:
        await self._require()
        # The newest ``scan`` entries of the time range (events_received), then the
        # filters on those rows alone; the search exactly, in Python (the event is stored
        # encoded), on the filtered rows of the window.
        params: list[Any] = [
            since if since is not None else -math.inf,
            before if before is not None else math.inf,
            scan,
        ]
        clauses: list[str] = []
        for column, value in (
            ("channel", channel),
            ("provider", provider),
            ("type", type),
            ("state", state),
        ):
            if value is not None:
                params.append(_text(value))
                clauses.append(f"{column} = ${len(params)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        window = (
            f"WITH window_ AS (SELECT {_COLUMNS} FROM events WHERE received_at >= $1 "
            "AND received_at < $2 ORDER BY received_at DESC LIMIT $3)"
        )
        bounded = ""
        if not search:
            params.append(limit + 1)
            bounded = f"LIMIT ${len(params)}"
        query = f"{window} SELECT * FROM window_ {where} ORDER BY received_at DESC {bounded}"
        edge = f"{window} SELECT COUNT(*), MIN(received_at) FROM window_"

        async def work(connection: Any) -> Browsed:
            rows = await connection.fetch(query, *params)
            entries = (_entry(tuple(row)) for row in rows)
            found = [entry for entry in entries if matches(entry, search)]
            scanned, oldest = await connection.fetchrow(edge, *params[:3])
            page = found[:limit]
            older: float | None
            if len(found) > limit:
                older = page[-1].received_at
                if found[limit].received_at == older:
                    kept = [entry for entry in page if entry.received_at != older]
                    if kept:
                        page, older = kept, math.nextafter(older, math.inf)
            elif scanned >= scan:
                older = oldest
            else:
                older = None
            return Browsed(entries=page, older=older, scanned=int(scanned))

        return await self._run(work, write=False)

    async def per_minute(self, since: float) -> dict[tuple[int, str], int]:
        await self._require()

        async def work(connection: Any) -> dict[tuple[int, str], int]:
            rows = await connection.fetch(
                "SELECT floor(received_at / 60)::bigint AS minute, state, COUNT(*) "
                "FROM events WHERE received_at >= $1 GROUP BY minute, state",
                since,
            )
            return {(int(row[0]), str(row[1])): int(row[2]) for row in rows}

        return await self._run(work, write=False)

    async def attempts(self, event_id: str) -> list[Attempt]:
        await self._require()

        async def work(connection: Any) -> list[Attempt]:
            rows = await connection.fetch(
                "SELECT attempt, at, plugin, hook, error_type, message, traceback FROM "
                "attempts WHERE event_id = $1 ORDER BY attempt, id",
                event_id,
            )
            return [_attempt(tuple(row)) for row in rows]

        return await self._run(work, write=False)

    async def prune(self, older_than: float) -> int:
        await self._require()
        batch = max(1, self.prune_batch)
        total = 0
        after = -math.inf  # the events_received range left to look at: [after, older_than)

        async def entries(connection: Any) -> tuple[int, int, float]:
            # At most ``batch`` entries, oldest first, on events_received; the DELETE
            # checks the state again (an entry replayed meanwhile is kept).
            picked = await connection.fetch(_PRUNE_PICK, after, older_than, batch)
            if not picked:
                return 0, 0, after
            ids = await connection.fetch(_PRUNE_EVENTS, [row[0] for row in picked], time.time())
            await connection.execute(
                "DELETE FROM attempts WHERE event_id = ANY($1::text[])", [row[0] for row in ids]
            )
            return len(picked), len(ids), picked[-1][1]

        async def statuses(connection: Any) -> int:
            status = await connection.execute(
                "DELETE FROM message_status WHERE ctid = ANY(ARRAY(SELECT ctid FROM "
                "message_status WHERE updated_at < $1 LIMIT $2))",
                older_than,
                batch,
            )
            return int(status.split()[-1])

        while True:  # each batch a transaction of its own: none long
            picked, deleted, last = await self._run(entries, durable=False)
            total += deleted
            if picked < batch:
                break
            after = last
            await asyncio.sleep(self.prune_pause)
        while await self._run(statuses, durable=False) >= batch:
            await asyncio.sleep(self.prune_pause)
        return total


_PRUNE_PICK = (
    "SELECT id, received_at FROM events WHERE received_at >= $1 AND received_at < $2 "
    f"AND state IN {_FINISHED} ORDER BY received_at LIMIT $3"
)
"""The next batch of entries a prune deletes: one range on ``events_received``."""

_PRUNE_EVENTS = (
    f"DELETE FROM events WHERE id = ANY($1::text[]) AND state IN {_FINISHED} "
    "AND (next_attempt_at IS NULL OR next_attempt_at <= $2) RETURNING id"
)
"""Delete a batch :data:`_PRUNE_PICK` found, unless replayed meanwhile, or claimed now
(a replay in progress: its next attempt is ahead); their ids."""


async def _cancelled(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing) and wait until it has ended."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _keep_session(connection: Any) -> None:
    """The pool's reset of a released connection: nothing sent to the server. asyncpg
    still rolls back a transaction left open; its default reset (``SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, one more round trip per
    operation) undoes session state, and the journal keeps none: its advisory locks are
    transaction-scoped, it opens no cursor outside a transaction, listens to nothing and
    sets nothing (the state changes' ``synchronous_commit`` is a connection parameter,
    given when it connects, and their pool's alone)."""


def _denied(error: BaseException) -> bool:
    """A refusal that no retry mends: a wrong password, an unknown database or role, no
    right to create the schema (a configuration error at start)."""
    import asyncpg

    exceptions = asyncpg.exceptions
    return isinstance(
        error,
        exceptions.InvalidAuthorizationSpecificationError
        | exceptions.InvalidCatalogNameError
        | exceptions.InsufficientPrivilegeError,
    )


def _settle(change: _Change, error: BaseException | None) -> None:
    """Tell ``change``'s caller it is written (``error`` None), or why not."""
    future = change.future
    if future is None or future.done():  # (a caller that was cancelled meanwhile)
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def _out_of_order(connection: Any, event: Event, received: float) -> bool:
    """Track the latest status per message and recipient; True when this one is older."""
    row = status_row(event)
    if row is None:
        return False
    message_id, party, rank = row
    # One statement: store this status unless a higher one is stored; the stored rank
    # comes back either way (a row locked until the commit: concurrent statuses of one
    # message are ordered).
    stored = await connection.fetchval(
        "INSERT INTO message_status (provider, message_id, party, status, rank, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider, message_id, party) DO UPDATE "
        "SET status = CASE WHEN excluded.rank < message_status.rank THEN message_status.status "
        "ELSE excluded.status END, "
        "rank = GREATEST(message_status.rank, excluded.rank), "
        "updated_at = CASE WHEN excluded.rank < message_status.rank "
        "THEN message_status.updated_at ELSE excluded.updated_at END "
        "RETURNING rank",
        event.provider,
        _text(message_id),
        _text(party),
        event.status,
        rank,
        received,
    )
    return bool(rank < stored)
