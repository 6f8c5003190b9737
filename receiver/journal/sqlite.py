"""The embedded journal: one SQLite file, written by one thread with group commit.

This module is what is stored and how it is looked up (the schema, the duplicate
look-ups, the status order); see :mod:`receiver.journal` for the lifecycle of an entry, and
:mod:`receiver.journal.sqlite_io` for how the file is written (one writer thread, group
commit, which commits are fsynced) and read (off the event loop, beside the writer). Every
write, the operator's ``prune`` included, goes through the writer.

Duplicates: both look-ups are one query on one index each (``events_channel_dedupe``,
``events_channel_body``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import msgspec

from receiver.config import DEFAULT_MAX_BODY_BYTES
from receiver.errors import Failure
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
from receiver.journal.sqlite_io import Reader, Writer, min_free_bytes
from receiver.logs import get_logger

__all__ = ["SQLiteJournal"]

log = get_logger(__name__)


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
    recovered_as TEXT,
    owner TEXT
);
DROP INDEX IF EXISTS events_dedupe;
DROP INDEX IF EXISTS events_body;
CREATE INDEX IF NOT EXISTS events_channel_dedupe ON events (channel, dedupe_key, received_at)
    WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_channel_body ON events (channel, body_hash, received_at);
DROP INDEX IF EXISTS events_retry;
CREATE INDEX IF NOT EXISTS events_due ON events (next_attempt_at)
    WHERE state IN ('failed', 'reply_failed');
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE INDEX IF NOT EXISTS events_unfinished ON events (received_at) WHERE state = 'received';
CREATE TABLE IF NOT EXISTS attempts (
    event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    plugin TEXT,
    hook TEXT,
    error_type TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT
);
CREATE INDEX IF NOT EXISTS attempts_event ON attempts (event_id, attempt);
CREATE TABLE IF NOT EXISTS processes (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since REAL NOT NULL,
    lease_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ended_sessions (
    key BLOB PRIMARY KEY,
    until REAL NOT NULL
);
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
# events_dedupe and events_body, dropped above, and no recovered_as column: _migrate.
# Older journals get the attempts and processes tables here too, and the owner column
# from _migrate.)

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
    if "owner" not in columns:
        connection.execute("ALTER TABLE events ADD COLUMN owner TEXT")
        connection.execute(_LEGACY_OWNER, (LEGACY_OWNER,))
        connection.execute(_LEGACY_ENTRIES, (LEGACY_OWNER,))


def _migrate_to_write(connection: sqlite3.Connection) -> None:
    """:func:`_migrate`, and what only a process that writes the journal changes (a reader,
    an operator command on a read-only file, writes nothing): at version 1 (the file's
    ``user_version``) a failed entry's owner is a live claim, which recording its
    failure clears; the owners earlier versions left on failed entries go."""
    _migrate(connection)
    if connection.execute("PRAGMA user_version").fetchone()[0] < 1:
        connection.execute(
            "UPDATE events SET owner = NULL WHERE state IN ('failed', 'reply_failed')"
        )
        connection.execute("PRAGMA user_version = 1")


_NOT_BEING_HANDLED = (
    "(owner IS NULL OR owner NOT IN (SELECT id FROM processes WHERE lease_until > ?) "
    "OR (state NOT IN ('received', 'failed', 'reply_failed') "
    "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)))"
)
"""Whether an entry is free to claim for a replay (parameters: now, now): one whose owner's
lease lasts is being handled when it is received, or failed or reply_failed with an owner
(claimed by a retry worker or a replay: recording its failure clears the owner), or of
any other state with its next attempt ahead (a replay of a done or dead entry claimed
it)."""

LEGACY_OWNER = "legacy"
"""The owner of the unfinished entries a receiver wrote before ownership existed: an
owner whose lease has run out, so the first process to look takes them over."""

_LEGACY_OWNER = (
    "INSERT INTO processes (id, host, pid, since, lease_until) SELECT ?, '', 0, "
    "COALESCE(MIN(received_at), 0), 0 FROM events WHERE state = 'received'"
)
_LEGACY_ENTRIES = "UPDATE events SET owner = ? WHERE state = 'received'"


_ORPHANS = (
    "UPDATE events INDEXED BY events_unfinished SET owner = ? "
    "WHERE state = 'received' AND received_at < ? "
    "AND (owner IS NULL OR (owner != ? AND owner NOT IN (SELECT id FROM processes))) "
    f"RETURNING {_COLUMNS}"
)
"""Claim the received entries older than :data:`~receiver.journal.ORPHAN_AGE` that no
process owns (one range of the small ``events_unfinished`` index)."""

SINCE_MARGIN = 600.0
"""Seconds before its registration from which an owner's entries are looked for when it
is taken over: a callback's ``received_at`` is when its request began, which may be before
the record that registered the owner (a slow body)."""


_encode = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(Event).decode
_decode_reply = msgspec.msgpack.Decoder(Reply).decode
_decode_meta = msgspec.msgpack.Decoder(dict[str, str]).decode
_decode_plugins = msgspec.msgpack.Decoder(list[str]).decode


class SQLiteJournal(Journal):
    """The embedded journal: one SQLite file, written by one thread with group commit.

    Args:
        path: The database file (its folder is created).
        duplicate_window: Seconds within which the same provider key is a duplicate.
        body_window: Seconds within which the same raw body (SHA-256) is a duplicate.
        max_batch: Most operations in one transaction.
        done_ledger_bytes: Space reserved beside the file (``<path>-done``) for the ids of
            handled events whose ``done`` could not be stored (a full disk): marked done
            at the next start-up instead of being handled again. 0: no ledger.
        max_body_bytes: The largest body a callback may have: the store counts as
            failing (``/readyz``) while its filesystem has less than
            :attr:`min_free_bytes` free, ``max(4 MiB, 4 * max_body_bytes)``.
        lease: Seconds an owner's lease lasts (:attr:`Journal.lease`).

    Several processes of one machine may share the file (``serve --workers N``): SQLite
    locks it for each transaction, and ownership (:mod:`receiver.journal`) says which
    process handles what. Not across machines: a network filesystem's locks are not
    to be trusted with SQLite (use PostgreSQL).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        duplicate_window: float = 48 * 3600,
        body_window: float = 600,
        max_batch: int = 512,
        done_ledger_bytes: int = 256 * 1024,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.path = Path(path)
        self.lease = lease
        self._registered = False
        self.duplicate_window = duplicate_window
        self.body_window = body_window
        self.min_free_bytes = min_free_bytes(max_body_bytes)
        """Free space the store needs on its filesystem to count as working."""
        self._writer = Writer(
            self.path,
            _migrate_to_write,
            max_batch,
            done_ledger_bytes,
            _mark_done,
            min_free=self.min_free_bytes,
        )
        self._submit = self._writer.submit  # bound once: the request path calls it per operation
        self._reader = Reader(self.path, _migrate, self.min_free_bytes)

    @property
    def max_batch(self) -> int:
        """Most operations in one transaction."""
        return self._writer.max_batch

    @property
    def on_commit(self) -> Callable[[float], None] | None:
        """Told the seconds of each transaction (by the writer thread)."""
        return self._writer.on_commit

    @on_commit.setter
    def on_commit(self, observer: Callable[[float], None] | None) -> None:
        self._writer.on_commit = observer

    @property
    def commits(self) -> int:
        """Transactions committed: with group commit, fewer than operations."""
        return self._writer.commits

    async def start(self) -> None:
        """Open the file (created, migrated): in a thread, as it may wait for another
        process's write lock (:attr:`Writer.start_timeout
        <receiver.journal.sqlite_io.Writer.start_timeout>`).

        Raises:
            ConfigError: the journal cannot be written (one line: the path, the reason).
        """
        await asyncio.to_thread(self._writer.ensure_started)

    async def stop(self) -> None:
        if self._registered:
            try:
                await self.release()
            except Exception:  # a failing store: the lease runs out instead
                log.warning("journal: giving the lease up failed", path=str(self.path))
        await self._writer.stop()
        self._forget_owner()

    async def own_unfinished(self, before: float | None = None) -> list[Entry]:
        owner = self.owner
        query = (
            f"SELECT {_COLUMNS} FROM events INDEXED BY events_unfinished "
            "WHERE state = 'received' AND received_at < ? AND owner = ? ORDER BY received_at"
        )
        until = math.inf if before is None else before

        def operation(connection: sqlite3.Connection) -> list[Entry]:
            return [_entry(row) for row in connection.execute(query, (until, owner))]

        return await self._submit(operation, durable=False)

    @property
    def unsettled(self) -> Collection[str]:
        # The writer thread changes the dict: tuple() copies its str keys in one C call.
        return tuple(self._writer.kept)

    async def claim(self, entry: Entry) -> bool:
        owner, until = self.owner, time.time() + self.lease
        if not self._registered:
            await self.renew()

        def operation(connection: sqlite3.Connection) -> bool:
            return bool(
                connection.execute(
                    "UPDATE events SET owner = ?, next_attempt_at = ? WHERE id = ? "
                    "AND state = ? AND attempts = ? AND next_attempt_at IS ? "
                    f"AND {_NOT_BEING_HANDLED}",
                    (
                        owner,
                        until,
                        entry.id,
                        entry.state,
                        entry.attempts,
                        entry.next_attempt_at,
                        time.time(),
                        time.time(),
                    ),
                ).rowcount
            )

        return await self._submit(operation, durable=False)

    async def end_session(self, key: bytes, until: float) -> None:
        def operation(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM ended_sessions WHERE until < ?", (time.time(),))
            connection.execute(
                "INSERT OR REPLACE INTO ended_sessions (key, until) VALUES (?, ?)", (key, until)
            )

        await self._submit(operation, durable=False)

    async def session_ended(self, key: bytes) -> bool:
        found = await self._reader.select(
            "SELECT 1 FROM ended_sessions WHERE key = ?", (key,), lambda row: row
        )
        return bool(found)

    # -- ownership ------------------------------------------------------------------

    def _register(self, connection: sqlite3.Connection, since: float) -> None:
        """Insert this owner's row, or renew its lease (writer thread)."""
        until = time.time() + self.lease
        owner = self.owner
        renewed = connection.execute(
            "UPDATE processes SET lease_until = ? WHERE id = ?", (until, owner)
        ).rowcount
        if not renewed:
            connection.execute(
                "INSERT INTO processes (id, host, pid, since, lease_until) VALUES (?, ?, ?, ?, ?)",
                (owner, self._host, self._pid, since - SINCE_MARGIN, until),
            )
            if self._registered:
                log.warning(
                    "journal lease lost: renewed too late, this process's unfinished work "
                    "may have been taken over (handled twice)",
                    owner=owner,
                )

    async def renew(self, running: Collection[str] = ()) -> None:
        ids = list(running)

        def operation(connection: sqlite3.Connection) -> None:
            self._register(connection, time.time())
            if ids:
                connection.execute(
                    f"UPDATE events SET next_attempt_at = ? WHERE id IN "
                    f"({', '.join('?' for _ in ids)}) AND (state IN ('failed', 'reply_failed') "
                    "OR (state != 'received' AND next_attempt_at > ?))",
                    (time.time() + self.lease, *ids, time.time()),
                )

        await self._submit(operation, durable=False)
        self._registered = True

    async def release(self) -> None:
        owner = self.owner

        def operation(connection: sqlite3.Connection) -> None:
            connection.execute("UPDATE processes SET lease_until = 0 WHERE id = ?", (owner,))

        await self._submit(operation, durable=False)
        self._registered = False

    async def take_over(self, limit: int = 1000) -> list[Entry]:
        owner = self.owner
        ledgers: list[Path] = []  # the gone processes' done ledgers read (set in operation)

        def operation(connection: sqlite3.Connection) -> list[Entry]:
            now = time.time()
            claimed: list[Entry] = []
            others = connection.execute(
                "SELECT id, host, pid, since, lease_until FROM processes WHERE id != ?", (owner,)
            ).fetchall()
            ledger_read = False
            for other, host, pid, since, lease_until in others:
                if len(claimed) >= limit:
                    break
                if lease_until > now and not gone(other, host, pid):
                    continue
                if not ledger_read:  # what gone processes handled but could not mark done
                    ledger_read = True
                    noted, ledgers[:] = self._writer.ledger.unheld()
                    _mark_done(connection, noted)
                claimed += [
                    _entry(row)
                    for row in connection.execute(
                        "UPDATE events SET owner = ? WHERE owner = ? AND state = 'received' "
                        f"AND received_at >= ? RETURNING {_COLUMNS}",
                        (owner, other, since),
                    )
                ]
                connection.execute("DELETE FROM processes WHERE id = ?", (other,))
            if len(claimed) < limit:
                claimed += [
                    _entry(row)
                    for row in connection.execute(_ORPHANS, (owner, now - ORPHAN_AGE, owner))
                ]
            if claimed:
                self._register(connection, now)
                connection.execute(
                    "UPDATE processes SET since = min(since, ?) WHERE id = ?",
                    (min(entry.received_at for entry in claimed), owner),
                )
            return claimed

        claimed = await self._submit(operation, durable=False)
        if ledgers:  # their ids are marked done, committed: cleared, applied once
            await asyncio.to_thread(self._writer.ledger.forget, ledgers)
        if claimed:
            self._registered = True
        return sorted(claimed, key=lambda entry: entry.received_at)

    async def check(self) -> str | None:
        writer = self._writer
        problem = writer.problem()
        if problem is not None:
            return problem
        return await self._reader.check(writer.identity if writer.running else None)

    # -- the request path ---------------------------------------------------------

    async def record(self, event: Event, meta: dict[str, str], dedupe_key: str | None) -> Recorded:
        body_hash = hashlib.sha256(event.raw).digest()
        windows = self.duplicate_window, self.body_window
        owner = self.owner
        if self._registered:

            def operation(connection: sqlite3.Connection) -> Recorded:
                return _record(connection, event, meta, dedupe_key, body_hash, windows, owner)

            return await self._submit(operation)

        def registering(connection: sqlite3.Connection) -> Recorded:
            # The owner's row with its first entry: a process that dies now is taken over.
            self._register(connection, event.received_at.timestamp())
            return _record(connection, event, meta, dedupe_key, body_hash, windows, owner)

        recorded = await self._submit(registering)
        self._registered = True
        return recorded

    async def recover(
        self, entry_id: str, event: Event, meta: dict[str, str], dedupe_key: str | None
    ) -> Recorded | None:
        body_hash = hashlib.sha256(event.raw).digest()
        windows = self.duplicate_window, self.body_window
        owner = self.owner

        def operation(connection: sqlite3.Connection) -> Recorded | None:
            found = connection.execute(
                "SELECT state FROM events WHERE id = ?", (entry_id,)
            ).fetchone()
            if found is None or found[0] != "rejected":
                return None
            self._register(connection, event.received_at.timestamp())
            recorded = _record(connection, event, meta, dedupe_key, body_hash, windows, owner)
            connection.execute(
                "UPDATE events SET state = 'recovered', recovered_as = ? WHERE id = ?",
                (recorded.duplicate_of or event.id, entry_id),
            )
            return recorded

        recorded = await self._submit(operation)
        self._registered = True
        return recorded

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

        await self._submit(operation, durable=False, key=event_id, done=True)

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

        def operation(connection: sqlite3.Connection) -> None:
            if reply is None:
                connection.execute(
                    "UPDATE events SET state = ?, error = ?, failed_plugins = ?, "
                    "next_attempt_at = ?, attempts = attempts + 1, owner = NULL WHERE id = ?",
                    (state, storable(error), encoded, retry_at, event_id),
                )
            else:  # a reply still to deliver is kept with the failed entry
                connection.execute(
                    "UPDATE events SET state = ?, reply = ?, error = ?, failed_plugins = ?, "
                    "next_attempt_at = ?, attempts = attempts + 1, owner = NULL WHERE id = ?",
                    (state, _encode(reply), storable(error), encoded, retry_at, event_id),
                )
            _keep_attempt(connection, event_id, failures, ended=True)

        await self._submit(operation, durable=False, key=event_id)

    async def undelivered(
        self,
        event_id: str,
        reply: Reply,
        error: str,
        retry_at: float | None,
        failures: Sequence[Failure] = (),
    ) -> None:
        state = "reply_failed" if retry_at is not None else "dead"
        encoded = _encode(reply), _encode([REPLY_ONLY])

        def operation(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE events SET state = ?, reply = ?, error = ?, failed_plugins = ?, "
                "next_attempt_at = ?, attempts = attempts + 1, owner = NULL WHERE id = ?",
                (state, encoded[0], storable(error), encoded[1], retry_at, event_id),
            )
            _keep_attempt(connection, event_id, failures, ended=True)

        await self._submit(operation, durable=False)

    async def note(self, event_id: str, failures: Sequence[Failure]) -> None:
        def operation(connection: sqlite3.Connection) -> None:
            _keep_attempt(connection, event_id, failures, ended=False)

        await self._submit(operation, durable=False)

    async def backlog(self) -> int:
        def operation(connection: sqlite3.Connection) -> int:
            # The state term as the index events_due says it: SQLite counts that index.
            # (Received entries are not counted here: an index for them cost a quarter
            # more instructions per callback; the server counts those it is handling.)
            found = connection.execute(
                "SELECT COUNT(*) FROM events WHERE state IN ('failed', 'reply_failed')"
            ).fetchone()
            return int(found[0])

        return await self._submit(operation, durable=False)

    async def due(self, now: float, limit: int = 100) -> list[Entry]:
        # Claimed in the writer's transaction (the file's write lock: one process at a
        # time); the state term as the index events_due says it, for SQLite to use it.
        query = (
            "UPDATE events SET next_attempt_at = ?, owner = ? WHERE id IN (SELECT id FROM events "
            "WHERE state IN ('failed', 'reply_failed') AND next_attempt_at <= ? "
            f"ORDER BY next_attempt_at LIMIT ?) RETURNING {_COLUMNS}"
        )
        params = (now + self.lease, self.owner, now, limit)
        kept = self._writer.kept

        def operation(connection: sqlite3.Connection) -> list[Entry]:
            rows = connection.execute(query, params).fetchall()
            # Not those whose new state the writer keeps, still to be written (read in
            # its thread, before it writes them: their claim is harmless).
            return [_entry(row) for row in rows if row[0] not in kept]

        claimed = await self._submit(operation, durable=False)
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
        query = (
            f"SELECT {_COLUMNS}, {_LAST_ERROR} FROM events {where} "
            f"ORDER BY received_at DESC {bounded}"
        )
        return await self._reader.select(query, params, _entry)

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
        # The time range is one range on events_received, newest first, cut at ``scan``
        # rows (index only: rowid and received_at); the filters are applied to those
        # rows alone, each looked up by rowid. So a look-up costs at most ``scan`` index
        # steps and ``scan`` row reads, whatever the journal holds.
        window_params: list[Any] = [
            since if since is not None else float("-inf"),
            before if before is not None else float("inf"),
            scan,
        ]
        query, params = _browse_query(
            channel=channel, provider=provider, type=type, state=state, search=search
        )
        edge = _WINDOW_EDGE

        def read(connection: sqlite3.Connection) -> Browsed:
            rows = connection.execute(query, [*window_params, *params, limit + 1]).fetchall()
            found = [_entry(row) for row in rows]
            scanned, oldest = connection.execute(edge, window_params).fetchone()
            page = found[:limit]
            older: float | None
            if len(found) > limit:
                older = page[-1].received_at
                if found[limit].received_at == older:
                    # Entries with the same time (a recovered entry keeps the rejected
                    # one's) straddle the page's end: they all go to the next page, whose
                    # window ends just after that time, so none is skipped.
                    kept = [entry for entry in page if entry.received_at != older]
                    if kept:
                        page, older = kept, math.nextafter(older, math.inf)
            elif scanned >= scan:
                older = oldest
            else:
                older = None
            page = [entry for entry in page if matches(entry, search)]
            return Browsed(entries=page, older=older, scanned=scanned)

        return await self._reader.read(read)

    async def per_minute(self, since: float) -> dict[tuple[int, str], int]:
        def row(found: tuple[Any, ...]) -> tuple[int, str, int]:
            return int(found[0]), str(found[1]), int(found[2])

        rows = await self._reader.select(_PER_MINUTE, (since,), row)
        return {(minute, state): count for minute, state, count in rows}

    async def attempts(self, event_id: str) -> list[Attempt]:
        query = (
            "SELECT attempt, at, plugin, hook, error_type, message, traceback FROM attempts "
            "WHERE event_id = ? ORDER BY attempt, rowid"
        )
        return await self._reader.select(query, (event_id,), _attempt)

    async def prune(self, older_than: float) -> int:
        self._reader.require()
        batch = max(1, self.prune_batch)
        total = 0
        after = -math.inf  # the events_received range left to look at: [after, older_than)
        while True:
            # Each batch one writer operation (its own transaction, or in a group with
            # the callbacks queued meanwhile): at most ``batch`` entries and their attempts.
            deleted, last = await self._submit(
                _prune_batch(after, older_than, batch), durable=False
            )
            total += deleted
            if deleted < batch:
                break
            after = last
            await asyncio.sleep(self.prune_pause)  # other processes' writers get the lock
        while (await self._submit(_prune_statuses(older_than, batch), durable=False)) >= batch:
            await asyncio.sleep(self.prune_pause)
        return total


def _prune_batch(
    after: float, older_than: float, batch: int
) -> Callable[[sqlite3.Connection], tuple[int, float]]:
    """A writer operation deleting at most ``batch`` finished entries received in
    ``[after, older_than)``, oldest first, and their attempts (one range on
    ``events_received``). Returns how many, and the last one's ``received_at`` (where the
    next batch starts: entries of that same time may be left)."""

    def operation(connection: sqlite3.Connection) -> tuple[int, float]:
        rows = connection.execute(_PRUNE_PICK, (after, older_than, time.time(), batch)).fetchall()
        if not rows:
            return 0, after
        connection.executemany("DELETE FROM events WHERE rowid = ?", [row[:1] for row in rows])
        connection.executemany(
            "DELETE FROM attempts WHERE event_id = ?", [(row[1],) for row in rows]
        )
        return len(rows), rows[-1][2]

    return operation


def _prune_statuses(older_than: float, batch: int) -> Callable[[sqlite3.Connection], int]:
    """A writer operation deleting at most ``batch`` latest statuses not updated since
    ``older_than``; returns how many."""

    def operation(connection: sqlite3.Connection) -> int:
        return connection.execute(
            "DELETE FROM message_status WHERE rowid IN (SELECT rowid FROM message_status "
            "WHERE updated_at < ? LIMIT ?)",
            (older_than, batch),
        ).rowcount

    return operation


_PRUNE_PICK = (
    "SELECT rowid, id, received_at FROM events WHERE received_at >= ? AND received_at < ? "
    "AND state IN ('done', 'rejected', 'recovered', 'dead') "
    "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY received_at LIMIT ?"
)
"""The next batch of entries a prune deletes: one range on ``events_received`` (not one
claimed now: a replay in progress, its next attempt ahead)."""


_WINDOW = (
    "WITH window AS (SELECT rowid AS row, received_at FROM events "
    "WHERE received_at >= ? AND received_at < ? ORDER BY received_at DESC LIMIT ?)"
)
"""The console's look-up window: the newest entries of a time range, on events_received."""

_PAGE_COLUMNS = ", ".join(f"events.{c.strip()}" for c in _COLUMNS.split(","))
_PAGE_JOIN = "CROSS JOIN events ON events.rowid = window.row"  # this order: window first

_WINDOW_EDGE = f"{_WINDOW} SELECT COUNT(*), MIN(received_at) FROM window"
"""How many entries the window holds, and the oldest one's time."""


def _browse_query(
    *,
    channel: str | None,
    provider: str | None,
    type: str | None,
    state: str | None,
    search: str | None,
) -> tuple[str, list[Any]]:
    """The console's page query (:meth:`SQLiteJournal.browse`) and its filter parameters
    (after the window's three: since, before, scan; then the page's limit)."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("channel", channel),
        ("provider", provider),
        ("type", type),
        ("state", state),
    ):
        if value is not None:
            clauses.append(f"events.{column} = ?")
            params.append(value)
    if search:
        # A first cut in SQL (the message id, or anywhere in the stored event), then
        # exactly in Python (source, destination: inside the stored event).
        clauses.append(
            "(instr(lower(events.message_id), ?) > 0 "
            "OR instr(lower(CAST(events.event AS TEXT)), ?) > 0)"
        )
        params += [search.lower(), search.lower()]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    query = f"{_WINDOW} SELECT {_PAGE_COLUMNS} FROM window {_PAGE_JOIN} {where} "
    return query + "ORDER BY window.received_at DESC LIMIT ?", params


_PER_MINUTE = (
    "SELECT CAST(received_at / 60 AS INTEGER) AS minute, state, COUNT(*) FROM events "
    "WHERE received_at >= ? GROUP BY minute, state"
)
"""Entries per minute and state since a time: one range on events_received."""


def _record(
    connection: sqlite3.Connection,
    event: Event,
    meta: dict[str, str],
    dedupe_key: str | None,
    body_hash: bytes,
    windows: tuple[float, float],
    owner: str,
) -> Recorded:
    """Find the original of ``event`` on its channel, or store ``event`` (writer thread).

    ``windows``: the journal's ``duplicate_window`` and ``body_window``; ``owner``: the
    owner that handles it.
    """
    duplicate_window, body_window = windows
    received = event.received_at.timestamp()
    # Two single-index look-ups, the provider key's first (one query with OR needed a
    # multi-index OR and a sort, at twice the cost). A window of 0 is off.
    original = None
    if dedupe_key is not None and duplicate_window > 0:
        original = connection.execute(
            _BY_KEY, (event.channel, dedupe_key, received - duplicate_window)
        ).fetchone()
    if original is None and body_window > 0:
        original = connection.execute(
            _BY_BODY, (event.channel, body_hash, received - body_window)
        ).fetchone()
    if original is not None:
        reply = _decode_reply(original[2]) if original[2] else None
        return Recorded(event, original[0], original[1], reply)
    recorded = event
    if _out_of_order(connection, event, received):
        recorded = msgspec.structs.replace(event, out_of_order=True)
    connection.execute(
        "INSERT INTO events (id, channel, provider, type, message_id, state, "
        "received_at, raw, meta, event, dedupe_key, body_hash, owner) "
        "VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?, ?)",
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
            owner,
        ),
    )
    return Recorded(recorded)


_LAST_ERROR = (
    "(SELECT error_type || ': ' || message FROM attempts WHERE event_id = events.id "
    "ORDER BY attempt DESC, rowid DESC LIMIT 1)"
)
"""The last failure kept for an entry, one look-up on ``attempts_event``."""


def _keep_attempt(
    connection: sqlite3.Connection, event_id: str, failures: Sequence[Failure], *, ended: bool
) -> None:
    """Store ``failures`` as an attempt at ``event_id`` (writer thread): the entry's
    ``attempts`` (``ended``: already counting it), or the one under way."""
    if not failures:
        return
    row = connection.execute("SELECT attempts FROM events WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return
    number = row[0] if ended else row[0] + 1
    connection.executemany(
        "INSERT INTO attempts (event_id, attempt, at, plugin, hook, error_type, message, "
        "traceback) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                event_id,
                number,
                failure.at,
                storable(failure.plugin),
                storable(failure.hook),
                storable(failure.error_type),
                storable(failure.message),
                storable(failure.traceback),
            )
            for failure in failures
        ],
    )


def _attempt(row: tuple[Any, ...]) -> Attempt:
    attempt, at, plugin, hook, error_type, message, traceback = row
    return Attempt(
        attempt=attempt,
        at=at,
        plugin=plugin,
        hook=hook,
        error_type=error_type,
        message=message,
        traceback=traceback,
    )


def _mark_done(connection: sqlite3.Connection, ids: list[str]) -> None:
    """Mark handled the events the done ledger names (start-up, writer thread)."""
    connection.executemany(
        "UPDATE events SET state = 'done', error = NULL, next_attempt_at = NULL, "
        "failed_plugins = NULL, attempts = attempts + 1 "
        "WHERE id = ? AND state IN ('received', 'failed', 'reply_failed')",
        [(entry_id,) for entry_id in ids],
    )


def _kept_raw(raw: bytes, meta: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """What a rejected request keeps as its raw body, and its meta.

    A blank body with a query string was a GET callback (or a POST that put its fields in
    the query): its fields are in the query, so the query is kept as the raw body, as
    :attr:`Event.raw` keeps it for a GET callback: as ``meta["query"]`` has it, without
    the ``auth = "query"`` key parameter (the endpoint removed it). ``meta["raw"] =
    "query"`` says so, for ``receiver replay --rejected`` to parse it as a query string
    again.
    """
    query = meta.get("query")
    if query and (not raw or raw.isspace()):
        return query.encode("latin-1"), {**meta, "raw": "query"}
    return raw, meta


def _out_of_order(connection: sqlite3.Connection, event: Event, received: float) -> bool:
    """Track the latest status per message and recipient; True when this one is older."""
    row = status_row(event)
    if row is None:
        return False
    message_id, party, rank = row
    key = (event.provider, message_id, party)
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
        *last_error,
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
        last_error=last_error[0] if last_error else None,
    )
