"""The journal: every authenticated callback, durably on disk before it is answered.

:class:`Journal` is the interface the request path and the operator commands use. Every
method is a coroutine: the server awaits them on its event loop, and the operator commands
(``receiver events``, ``replay``, ``prune``) run them under ``asyncio.run``, so that one
implementation, with one driver, serves both. :class:`~receiver.journal.sqlite.SQLiteJournal`
(``receiver/journal/sqlite.py``) is the embedded implementation: one file, one process. A
journal shared by several processes or machines is
:class:`~receiver.journal.postgres.PostgresJournal` (``receiver/journal/postgres.py``,
asyncpg), the same interface without touching the request path.

Lifecycle of an entry: ``received`` (committed, being handled) -> ``done`` (handled, the
reply stored with it) | ``failed`` (a handler raised; retried with backoff) -> ``dead``
(out of attempts). A body that authenticated but could not be parsed is kept as
``rejected`` (a blank body's query string, its key parameter removed, is kept as its raw,
for the providers that call back with GET); once ``receiver replay --rejected`` has
parsed it with a fixed parser, it is ``recovered``, and ``recovered_as`` names the event
it became (a new one, or the original it turned out to duplicate).

Undelivered replies: ``received`` -> ``reply_failed`` when the handlers succeeded but
``send_reply`` raised. The reply is stored and only its delivery is retried, with the same
backoff (the handlers never run again), -> ``done`` | ``dead``; such an entry keeps
:data:`REPLY_ONLY` in ``failed_plugins``, so that replaying it re-sends only the reply.

Ownership (several processes on one journal): every journal object is one *owner*
(:attr:`Journal.owner`: host, pid namespace, pid and a random part) with a *lease* it
renews (:meth:`Journal.renew`, every third of :attr:`Journal.lease` seconds). An entry
being handled is owned: a new record by the process that received it, a due retry by the
process whose :meth:`Journal.due` claimed it (its next attempt pushed a lease ahead, so
no other process takes it meanwhile). When an owner's lease runs out (it crashed, or
hung), or at once when it is a process on the same machine that no longer runs, the first
process to look (:meth:`Journal.take_over`) claims its unfinished (``received``) entries
and handles them; a process that stops cleanly gives its lease up, so that what it left
is taken over at the next look. The unfinished entries of a journal written before
ownership existed are given, when it is migrated, to an owner ``legacy`` whose lease has
run out: the first process to look takes them over; those an older receiver still
running writes afterwards (without an owner) are taken over once :data:`ORPHAN_AGE`
old. A live owner also sweeps its own unfinished entries that nothing in it handles
(:meth:`Journal.own_unfinished`): what a lost answer or a database crash left it.

Duplicates: a duplicate is a re-send of the same callback to the same channel. Both
look-ups are scoped to the channel: the provider's key (:meth:`Provider.dedupe_key
<receiver.providers.base.Provider.dedupe_key>`) within ``duplicate_window``, then the
SHA-256 of the raw body within ``body_window``.

Out-of-order statuses: the journal keeps the latest status per message and recipient.
The order is :data:`receiver.events.STATUS_RANK`: queued < submitted < sent < delivered |
failed | other final states < acknowledged | read. An event whose status ranks below the
one already seen is dispatched with ``out_of_order=True``; statuses not in the table are
never out of order.
"""

from __future__ import annotations

import abc
import os
import secrets
import socket
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

import msgspec

from receiver.errors import ConfigError, Failure
from receiver.events import STATUS_RANK as STATUS_RANK  # importable here before it moved
from receiver.events import Event, Reply
from receiver.logs import encodable

__all__ = [
    "REPLY_ONLY",
    "STATES",
    "Attempt",
    "Browsed",
    "Entry",
    "Journal",
    "Recorded",
    "SQLiteJournal",
    "open_journal",
]

DEFAULT_LEASE = 15.0
"""Seconds an owner's lease lasts (``journal_lease``): a process that has not renewed it
for this long is taken for dead, and its unfinished work is taken over."""


ORPHAN_AGE = 600.0
"""Seconds after which a ``received`` entry with no owner, or with an owner that no
process row names any more, is taken over (:meth:`Journal.take_over`): one written after
the migration by a receiver of a version before ownership (which README says to stop
first), or recorded by a process that hung past its lease while another took its work."""


def _host() -> str:
    """This machine and pid namespace: processes with the same host can see each other's
    pids (a container has a pid namespace of its own)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}:{namespace}"


_OWNER_LOCK = threading.Lock()
_OWNERS: set[str] = set()
"""The owners of the journals this process has open (two apps in one process are two)."""


def new_owner() -> tuple[str, str, int]:
    """A new owner id, with its host and pid: ``"host:pidns:pid:random"``."""
    host, pid = _host(), os.getpid()
    return f"{host}:{pid}:{secrets.token_hex(4)}", host, pid


def gone(owner: str, host: str, pid: int) -> bool:
    """Whether the owner ``owner`` (of ``host`` and ``pid``) is known not to run any more:
    a process on this host whose pid is gone, or this very pid under another owner id (a
    previous process, or a stopped journal of this one). False when it cannot be known
    (another host: its lease says)."""
    if host != _host():
        return False
    if pid == os.getpid():
        return owner not in _OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it runs
        return False
    return False


STATES = ("received", "done", "failed", "reply_failed", "dead", "rejected", "recovered")
"""Every entry state (see the module docstring)."""

REPLY_ONLY = "<send_reply>"
"""``failed_plugins`` of an entry whose handlers succeeded but whose reply was not
delivered (``reply_failed``, or ``dead`` after it): retried by re-sending the reply."""


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
    last_error: str | None = None
    """The last failure kept for it (``Type: message``; :meth:`Journal.entries` only)."""

    @property
    def reply_only(self) -> bool:
        """Handled; only its stored reply is to be delivered (``send_reply`` failed)."""
        return self.reply is not None and self.failed_plugins == [REPLY_ONLY]

    @property
    def reply_pending(self) -> Reply | None:
        """The stored reply still to deliver (``send_reply`` failed), else None."""
        return self.reply if self.failed_plugins and REPLY_ONLY in self.failed_plugins else None

    @property
    def plugins_to_retry(self) -> list[str] | None:
        """The plugins a retry calls (None: all): the failed ones, not the reply marker."""
        if self.failed_plugins is None:
            return None
        return [name for name in self.failed_plugins if name != REPLY_ONLY]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One failure kept for an entry: which attempt, when, where, what (see
    :class:`~receiver.errors.Failure`). An attempt at which several plugins failed has one
    of these per plugin; a timeout is one with ``error_type`` ``HandlerTimeout``."""

    attempt: int
    at: float
    plugin: str | None
    hook: str | None
    error_type: str
    message: str
    traceback: str | None


class Browsed(msgspec.Struct, frozen=True, kw_only=True):
    """One page of :meth:`Journal.browse`.

    Attributes:
        entries: The entries found, newest first (at most the ``limit`` asked for).
        older: Where the next page starts (``before`` for the next call): the time of the
            last entry shown when more may follow, or of the oldest entry looked at when
            the scan bound stopped the look-up first; None when nothing older is left.
        scanned: How many entries were looked at.
    """

    entries: list[Entry]
    older: float | None
    scanned: int


OUTCOME_OF_STATE = {
    "received": "accepted",
    "done": "accepted",
    "failed": "failed",
    "reply_failed": "failed",
    "dead": "failed",
    "rejected": "rejected",
    "recovered": "rejected",
}
"""The console chart's outcome of an entry in each state (duplicates are not entries)."""


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


PRUNE_BATCH = 1000
"""Most entries one prune transaction deletes (:attr:`Journal.prune_batch`). Measured on
SQLite (``bench/prune.py``, 200k and 1M old entries): a batch of 1000 and their attempts
commits in about 10 ms (a WAL checkpoint now and then: up to about 250 ms), where one
transaction for all of them held the write lock 0.8 s for 200k and 4.5 s for 1M (near
``busy_timeout``: a waiting writer failed with "database is locked"); 5000 a batch took
about 40-60 ms each and let a concurrent writer wait up to about 180 ms."""

PRUNE_PAUSE = 0.02
"""Seconds between two prune transactions (:attr:`Journal.prune_pause`): room for the
writers waiting on the lock, other processes' included (SQLite's busy handler sleeps
1-25 ms between its tries during its first 128 ms of waiting). Measured
(``bench/prune.py``): with no pause a writer recording every 20 ms in another process
waited up to 0.5 s (it missed the gaps between batches); with 10 to 50 ms, its 99th
percentile wait was 12-25 ms. A million entries take about 30 s to prune this way."""


class Journal(abc.ABC):
    """Where accepted callbacks are kept; see the module docstring.

    Every method is a coroutine, the operator commands' included: an implementation must
    not block the event loop in any of them (run blocking I/O in a thread, or use an
    async driver).

    Failures are kept per attempt (:meth:`attempts`), written only when something failed:
    the success path stores nothing more than its ``done``.
    """

    on_commit: Callable[[float], None] | None = None
    """Called with the seconds each transaction took (the app's metrics set it; may be
    called from another thread). None: nobody is told."""

    lease: float = DEFAULT_LEASE
    """Seconds this owner's lease lasts once renewed (see the module docstring)."""

    prune_batch: int = PRUNE_BATCH
    """Most entries one of :meth:`prune`'s transactions deletes (:data:`PRUNE_BATCH`)."""

    prune_pause: float = PRUNE_PAUSE
    """Seconds :meth:`prune` waits between its transactions (:data:`PRUNE_PAUSE`)."""

    @property
    def owner(self) -> str:
        """This journal object's owner id (module docstring), made on first use."""
        owner = vars(self).get("_owner")
        if owner is None:
            with _OWNER_LOCK:  # the event loop and a writer thread may both ask first
                owner = vars(self).get("_owner")
                if owner is None:
                    owner, self._host, self._pid = new_owner()
                    self._owner: str = owner
                    _OWNERS.add(owner)
        return owner

    def _forget_owner(self) -> None:
        """This owner is gone (the journal stopped): a new one at the next start."""
        owner = vars(self).pop("_owner", None)
        if owner is not None:
            _OWNERS.discard(owner)

    @abc.abstractmethod
    async def renew(self, running: Collection[str] = ()) -> None:
        """Register this owner, or renew its lease for :attr:`lease` seconds; keep the
        claims on ``running`` (the ids :meth:`Redelivery.held
        <receiver.redelivery.Redelivery.held>` names) for as long: a failed or
        reply_failed one's, and another state's claim that still lasts (a replay's; a done
        entry whose claim ended is left as it is). The retry worker calls it every third
        of the lease; :meth:`record` registers the owner with its first entry."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Give this owner's lease up (a clean stop, called by :meth:`stop`): what it
        leaves unfinished is taken over at the next look, by another process or the next
        start."""

    @abc.abstractmethod
    async def take_over(self, limit: int = 1000) -> list[Entry]:
        """Claim the unfinished (``received``) entries of owners that are gone (lease
        expired or given up, or a process of this host that no longer runs), and those
        received more than :data:`ORPHAN_AGE` seconds ago with no owner, or with an owner
        no process row names; at most about ``limit`` (call again for more): each is
        claimed by one process only.
        Returns the claimed entries, oldest first, to handle now."""

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
        self,
        event_id: str,
        error: str,
        plugins: Sequence[str] | None,
        retry_at: float | None,
        failures: Sequence[Failure] = (),
        reply: Reply | None = None,
        delivered: bool = False,
    ) -> None:
        """Mark an event failed (``retry_at`` None: out of attempts, a dead letter), and
        keep ``failures`` as this attempt's (its number: the entry's attempts, counting
        this one). ``reply``: a reply other plugins gave, kept (a re-sent callback is
        answered with it); not ``delivered`` yet, :data:`REPLY_ONLY` is added among the
        failed plugins and the retry delivers it."""

    @abc.abstractmethod
    async def undelivered(
        self,
        event_id: str,
        reply: Reply,
        error: str,
        retry_at: float | None,
        failures: Sequence[Failure] = (),
    ) -> None:
        """Mark an event handled but its reply not delivered: ``reply_failed``, the reply
        stored with :data:`REPLY_ONLY` (``retry_at`` None: out of attempts, ``dead``);
        ``failures`` kept as :meth:`fail` keeps them."""

    @abc.abstractmethod
    async def note(self, event_id: str, failures: Sequence[Failure]) -> None:
        """Keep ``failures`` as the attempt under way at the event (one that has not
        ended: a timeout, whose handlers go on)."""

    @abc.abstractmethod
    async def attempts(self, event_id: str) -> list[Attempt]:
        """The failures kept for an entry, oldest first (raises :class:`ConfigError` as
        :meth:`entries` does)."""

    @abc.abstractmethod
    async def backlog(self) -> int:
        """How many entries are ``failed`` or ``reply_failed`` (waiting for a retry): one
        cheap, indexed count. (``received`` ones are being handled: the server counts
        those itself, without a look-up.)"""

    @abc.abstractmethod
    async def due(self, now: float, limit: int = 100) -> list[Entry]:
        """Claim the failed and reply_failed entries whose next attempt is due: their next
        attempt is moved :attr:`lease` seconds ahead (so no other process takes them
        meanwhile; a process that dies while retrying leaves them due again then), and
        they are returned to be retried now."""

    @abc.abstractmethod
    async def own_unfinished(self, before: float | None = None) -> list[Entry]:
        """This owner's ``received`` entries received before ``before`` (seconds since
        the epoch; None: any), oldest first: what it should be handling. The lease keeper
        looks periodically (:attr:`receiver.redelivery.Redelivery.sweep_interval`) for
        entries it owns without knowing it: a claim or a record whose commit's answer was
        lost, a state a database crash lost (PostgreSQL commits state changes without
        waiting for the flush)."""

    @property
    def unsettled(self) -> Collection[str]:
        """The ids of the entries whose new state this journal object holds in memory,
        not written yet: a state change queued, or kept through a fault to be written
        again (PostgreSQL). The process is done with them: neither its sweep nor its
        retry worker takes them up again, and their claims are renewed with the lease.
        This default: none (a write returns once it is written)."""
        return ()

    @abc.abstractmethod
    async def claim(self, entry: Entry) -> bool:
        """Claim ``entry`` for a replay (``receiver replay``, the console): True when it
        is as it was read (same state, attempts and next attempt) and now this owner's,
        its next attempt a lease ahead, so that no retry worker (nor a second replay)
        takes it meanwhile; False when another process claimed or handled it since, or
        when it is ``received`` by an owner whose lease lasts (being handled)."""

    @abc.abstractmethod
    async def end_session(self, key: bytes, until: float) -> None:
        """Keep that the console session ``key`` (a hash) was logged out, until ``until``
        (seconds since the epoch: when it would have expired anyway), for every process
        serving the console."""

    @abc.abstractmethod
    async def session_ended(self, key: bytes) -> bool:
        """Whether the console session ``key`` was logged out (:meth:`end_session`)."""

    async def outcome(self, event_id: str) -> tuple[str, Reply | None] | None:
        """The state of ``event_id`` and its stored reply (None: no such entry): what a
        duplicate received by another process waits for. This default reads
        :meth:`entries`."""
        found = await self.entries(ids=[event_id], limit=1)
        return (found[0].state, found[0].reply) if found else None

    @abc.abstractmethod
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
        """Entries for the operator commands, newest first.

        Raises:
            ConfigError: The journal does not exist (an operator command reads only a
                journal that is there; it does not create one).
        """

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
        """A page of entries for the console, newest first: received at or after
        ``since`` and before ``before``, filtered, ``search`` a part of the message id,
        source or destination. A bounded look-up: at most the ``scan`` newest entries of
        the time range are looked at (:attr:`Browsed.older` says where to go on).

        This default reads :meth:`entries`; an implementation does it in one query.
        """
        found = await self.entries(channel=channel, type=type, state=state, since=since, limit=scan)
        if before is not None:
            found = [e for e in found if e.received_at < before]
        chosen = [
            e for e in found if (provider is None or e.provider == provider) and matches(e, search)
        ]
        page = chosen[:limit]
        if len(chosen) > limit:
            older: float | None = page[-1].received_at
        elif len(found) >= scan:
            older = found[-1].received_at
        else:
            older = None
        return Browsed(entries=page, older=older, scanned=len(found))

    async def per_minute(self, since: float) -> dict[tuple[int, str], int]:
        """How many entries were received each minute since ``since``, by state:
        (minute, that is seconds since the epoch // 60; state) -> count. One look-up on
        the time index; this default reads :meth:`entries`."""
        counts: dict[tuple[int, str], int] = {}
        for entry in await self.entries(since=since, limit=None):
            key = int(entry.received_at // 60), entry.state
            counts[key] = counts.get(key, 0) + 1
        return counts

    @abc.abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete done, rejected, recovered and dead entries received before ``older_than``
        (seconds since the epoch), their attempts, and the latest statuses not updated
        since; return how many entries (raises :class:`ConfigError` as :meth:`entries`
        does).

        In bounded transactions: each deletes at most :attr:`prune_batch` entries (with
        their attempts) and commits, then :attr:`prune_pause` seconds pass before the next,
        until none is left; so a big prune never holds the journal's write lock for long
        (other writers, other processes' included, get in between). A prune that fails
        part way has deleted the batches committed before: run it again for the rest."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open what the journal needs (called before the first callback).

        Raises:
            ConfigError: the journal cannot be written (one line: where, and why).
        """

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flush and close (also after an operator command; safe to call more than once)."""

    async def check(self) -> str | None:
        """None when the store can be written, else a short reason (``/readyz``): failing
        writes, a deleted or replaced file, an unwritable (or immutable) file or folder,
        too little free space. Creates nothing."""
        return None


STATUS_ID_LIMIT = 512
"""Most characters of a message id and its recipient together whose statuses are tracked
(out-of-order flags): a longer one is no real provider's, and PostgreSQL's index on the
latest statuses cannot hold a key of thousands of bytes (the record would be refused)."""


def status_row(event: Event) -> tuple[str, str, int] | None:
    """The latest-status row ``event`` updates, as (message id, recipient, rank), or None
    when its status is not tracked: no status, one not in :data:`STATUS_RANK`, no message
    id, or an id and recipient longer than :data:`STATUS_ID_LIMIT` together."""
    if event.status is None or event.message_id is None:
        return None
    rank = STATUS_RANK.get(event.status)
    if rank is None:
        return None
    party = event.destination or event.source or ""
    if len(event.message_id) + len(party) > STATUS_ID_LIMIT:
        return None
    return event.message_id, party, rank


def storable(text: str | None) -> str | None:
    """``text`` as a journal can store it: lone surrogates (an exception's message about
    bytes decoded with ``surrogateescape``, a plugin's text), which neither SQLite nor
    PostgreSQL nor msgpack take, as U+FFFD. A failure that cannot be kept must not leave
    its entry without a state."""
    return None if text is None else encodable(text)


def matches(entry: Entry, search: str | None) -> bool:
    """``search`` (None or blank: anything) is a part of the entry's message id, or of its
    event's source or destination (case-insensitive)."""
    if not search:
        return True
    needle = search.casefold()
    event = entry.event
    values = (
        entry.message_id,
        event.source if event is not None else None,
        event.destination if event is not None else None,
    )
    return any(value is not None and needle in value.casefold() for value in values)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""The URL schemes of a PostgreSQL journal (libpq's)."""


def open_journal(url: str | None, **options: Any) -> Journal | None:
    """The journal a ``journal = "..."`` setting names: ``"none"``, ``"sqlite:///path"`` or
    ``"postgresql://user:password@host/database"``."""
    if url is None or url == "none":
        return None
    if url.startswith("sqlite:///"):
        return SQLiteJournal(url.removeprefix("sqlite:///"), **options)
    if url.startswith(POSTGRES_SCHEMES):
        try:
            import asyncpg  # noqa: F401
        except ImportError:  # pragma: no cover - the extra not installed
            raise ConfigError(
                "journal: a PostgreSQL journal needs asyncpg: "
                "pip install 'receiver-webhooks[postgresql]'"
            ) from None
        from receiver.journal.postgres import PostgresJournal

        return PostgresJournal(url, **options)
    raise ConfigError(
        "journal: use 'none', 'sqlite:///path/to/file.db' or 'postgresql://user@host/database'"
    )


# Last: the implementation imports the interface above (and is re-exported from here, so
# that ``from receiver.journal import SQLiteJournal`` works as it did).
from receiver.journal.sqlite import SQLiteJournal  # noqa: E402
