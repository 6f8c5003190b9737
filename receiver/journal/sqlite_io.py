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

Free space: the store counts as failing while the journal's filesystem has less than
:func:`min_free_bytes` free (room for a batch of the largest callbacks). ``/readyz`` says
so before any write fails (one ``statvfs`` per check, none per callback), and a store that
failed is not working again until a write works *and* that much is free: a page written
on an almost full disk does not make room for the next callback.

Immutable files: SQLite maps ``<journal>-shm`` into memory (``mmap``) and writes the
wal-index through that mapping. Once the file is made immutable (``chattr +i``, also by
``chattr -R +i`` on its folder), ext4 answers the next write to the mapping (any
transaction, even a read or closing the connection) with SIGBUS, which kills the process:
Python cannot catch it. So the writer reads the attributes of the journal, its ``-wal``
and its ``-shm`` (``FS_IOC_GETFLAGS`` on descriptors held open, about 0.5 us a file)
before each transaction it runs, ``/readyz`` and the operator commands read them before
they connect, and a journal with an immutable (or append-only) file is not writable: 503,
never touching the mapping, and the connection is not closed at stop while it is so. The
attribute set *during* a transaction (between that check and the commit) still kills the
process: no check can close that window.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import fcntl
import os
import queue
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from receiver.errors import ConfigError, JournalUnavailable
from receiver.logs import get_logger

__all__ = [
    "DoneLedger",
    "Reader",
    "Writer",
    "connect",
    "file_attribute",
    "locked",
    "low_space",
    "min_free_bytes",
    "storage_fault",
]

log = get_logger(__name__)

_T = TypeVar("_T")


MIN_FREE_FLOOR = 4 * 1024 * 1024
"""The least free space :func:`min_free_bytes` asks for, whatever the body limit."""


def min_free_bytes(max_body_bytes: int) -> int:
    """Free space the journal needs to count as working: room for a batch of callbacks
    of the largest size accepted (a callback is stored once in the WAL, then copied into
    the database at the next checkpoint, with its index pages)."""
    return max(MIN_FREE_FLOOR, 4 * max_body_bytes)


LOW_SPACE = "low disk space"


def low_space(path: Path, needed: int) -> str | None:
    """Why the filesystem of ``path`` (or of its folder, when there is no such file) has
    too little room for the journal; None when at least ``needed`` bytes are free."""
    try:
        found = os.statvfs(path if path.exists() else path.parent)
    except OSError as exc:
        return f"journal unreachable: {exc.strerror or exc}"
    free = found.f_bavail * found.f_frsize
    if free >= needed:
        return None
    return f"{LOW_SPACE}: {free // 1024} KiB free, {needed // 1024} KiB needed"


_GETFLAGS = 0x80006601 | (struct.calcsize("l") << 16)
"""``FS_IOC_GETFLAGS`` (``_IOR('f', 1, long)``): a file's attributes (``lsattr``)."""
_FLAGS = ((0x10, "immutable (chattr +i)"), (0x20, "append-only (chattr +a)"))
"""``FS_IMMUTABLE_FL`` and ``FS_APPEND_FL``: no write, not even by root; nor through a
mapping (SIGBUS)."""
_UNWRITABLE = 0x10 | 0x20


def file_attribute(fd: int) -> str | None:
    """ "immutable (chattr +i)" or "append-only (chattr +a)" when the open file ``fd``
    has that attribute; None when it has neither, or its filesystem keeps none."""
    flags = array.array("i", [0])
    try:
        fcntl.ioctl(fd, _GETFLAGS, flags)
    except OSError:
        return None
    return next((name for bit, name in _FLAGS if flags[0] & bit), None)


_WATCHED: dict[tuple[int, int], list[int]] = {}
"""Descriptors the writers of this process hold open on their journal's files (the file,
its -wal, its -shm; :meth:`Writer._watch`), by (device, inode).

Closing *any* descriptor of a file releases every POSIX lock the process holds on that
file (fcntl(2)), SQLite's included. Once the lock SQLite holds on the -shm for as long as
it is connected is gone, the next process that opens the journal (a new ``--workers``
worker, an operator command) takes itself for the only one, truncates the -shm, and every
process that has it mapped dies of SIGBUS at its next transaction. So a file a writer of
this process has open is never opened and closed again here: its watched descriptor is
asked (:func:`_ask_watched`)."""
_WATCHED_LOCK = threading.Lock()
_KEPT: list[int] = []
"""Descriptors opened on a watched file that could not be closed (see :data:`_WATCHED`):
kept until the process ends. Only when a writable file was found not writable a moment
before: rare."""


def _ask_watched(path: Path, ask: Callable[[int], _T]) -> tuple[bool, _T | None]:
    """``(True, ask(fd))`` with a descriptor a writer of this process holds on the file at
    ``path``; ``(False, None)`` when none does (nothing then holds SQLite's locks on it in
    this process through a writer: it may be opened and closed)."""
    try:
        found = os.stat(path)
    except OSError:
        return False, None
    with _WATCHED_LOCK:  # the descriptor is not closed (and reused) meanwhile
        fds = _WATCHED.get((found.st_dev, found.st_ino))
        if not fds:
            return False, None
        return True, ask(fds[0])


def _path_attribute(path: Path) -> str | None:
    """:func:`file_attribute` of the file at ``path`` (None: there is none)."""
    watched, attribute = _ask_watched(path, file_attribute)
    if watched:
        return attribute
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return file_attribute(fd)
    finally:
        os.close(fd)


def _not_writable(path: Path) -> str | None:
    """Why ``path`` cannot be opened for writing (None: it can, or does not exist);
    opening, not :func:`os.access`, which says yes to root for an immutable file. A file
    a writer of this process holds is not opened (:data:`_WATCHED`): its attributes are
    read on the writer's descriptor, and :func:`os.access` tells the rest (permissions,
    a read-only filesystem); only when that says no is it opened, to say why."""
    watched, attribute = _ask_watched(path, file_attribute)
    if watched:
        if attribute is not None:
            return attribute
        if os.access(path, os.W_OK):
            return None
    try:
        fd = os.open(path, os.O_RDWR)  # never O_CREAT
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _path_attribute(path) or exc.strerror or str(exc)
    if watched:
        _KEPT.append(fd)  # closing it would release SQLite's locks (_WATCHED)
    else:
        os.close(fd)
    return None
    return None


SIDECARS = ("-wal", "-shm")
"""The files SQLite keeps beside the journal in WAL mode."""


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the journal file (its folder created) in WAL mode, fsyncing commits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


class _Batch:
    """One operation for the writer thread, with the future that gets its result.

    ``key``: the operation is a state change of the stored event ``key`` (done, failed):
    when the store fails, it is kept and written later instead of failing its caller.
    ``done``: it marks the event done (also noted in the done ledger meanwhile).
    """

    __slots__ = ("done", "durable", "future", "key", "loop", "operation")

    def __init__(
        self,
        operation: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        durable: bool,
        key: str | None = None,
        done: bool = False,
    ) -> None:
        self.operation = operation
        self.loop = loop
        self.future = future
        self.durable = durable
        self.key = key
        self.done = done


class _Lost(Exception):
    """The file at the journal's path is not the one the writer has open (deleted or
    replaced): whatever the writer commits goes nowhere anyone will read."""


class _Immutable(Exception):
    """A file of the journal is immutable (or append-only): SQLite must not touch it
    (on its ``-shm``, that would be SIGBUS: see the module docstring)."""


def locked(error: BaseException) -> bool:
    """``error`` is SQLite's ``database is locked`` (or ``busy``): another connection
    held the lock longer than ``busy_timeout``; the same may work a moment later."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


def storage_fault(error: BaseException) -> bool:
    """``error`` says the store cannot take a write (disk full, read-only, I/O error,
    locked, file lost, file immutable), not that an operation is wrong (a bug: it fails
    on its own)."""
    return isinstance(error, sqlite3.OperationalError | OSError | _Lost | _Immutable) or (
        type(error) is sqlite3.DatabaseError  # "database disk image is malformed", ...
    )


def _identity(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _write_header(connection: sqlite3.Connection) -> None:
    """Write the database header as it is (a write that changes nothing)."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    connection.execute(f"PRAGMA user_version = {int(version)}")


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in settled:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class DoneLedger:
    """Ids of handled events whose ``done`` could not be written to the database yet.

    A file beside the journal (``<journal>-done``) whose space is reserved at start-up
    (``posix_fallocate``): noting an id writes into space already allocated, so it works
    when the disk is full. At the next start-up the ids noted are marked done before
    anything is resumed, then the ledger is cleared: a handled event is not handled again
    because its ``done`` could not be stored. When the ledger is full (``size`` bytes,
    37 a note), further ids are only kept in memory: at least once for those.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._fd: int | None = None
        self._end = 0

    slots = 64
    """Most processes sharing the journal with a ledger each (more: at least once)."""

    def _lock_slot(self) -> int | None:
        """Open and lock (``flock``, held until closed) the first ledger file no running
        process holds: ``<journal>-done``, then ``-done.1``, ``-done.2``... one per
        process sharing the journal (``serve --workers N``). A slot is only ever read by
        the process holding it: a dead process's ids are found by the next one to take
        its slot. None when every slot is held."""
        for slot in range(self.slots):
            path = self.path if slot == 0 else self.path.with_name(f"{self.path.name}.{slot}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd
        return None

    def open(self) -> list[str]:
        """Reserve the file's space; return the ids a previous process noted."""
        fd = self._lock_slot()
        if fd is None:
            log.warning("every done ledger slot is held: done states kept in memory only")
            return []
        try:
            noted = os.pread(fd, self.size, 0).split(b"\0", 1)[0]
            if os.fstat(fd).st_size < self.size or noted:
                os.posix_fallocate(fd, 0, self.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._end = len(noted)
        return [line.decode("ascii") for line in noted.split() if line]

    def unheld(self) -> tuple[list[str], list[Path]]:
        """The ids noted in the ledger slots no running process holds (processes that
        are gone, whose slots no process started since has taken): what they handled but
        could not mark done; and those slots' paths, for :meth:`forget` once the ids are
        marked done in a committed transaction. A slot held while it is read is skipped
        by a process starting meanwhile (it takes the next one)."""
        noted: list[str] = []
        paths: list[Path] = []
        for slot in range(self.slots):
            path = self.path if slot == 0 else self.path.with_name(f"{self.path.name}.{slot}")
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                break  # slots are made in order: none after
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                found = os.pread(fd, self.size, 0).split(b"\0", 1)[0]
            except OSError:  # held by a running process (ours too), or unreadable
                continue
            finally:
                os.close(fd)
            if found:
                noted += [line.decode("ascii") for line in found.split() if line]
                paths.append(path)
        return noted, paths

    def forget(self, paths: list[Path]) -> None:
        """Clear the slots :meth:`unheld` read, their ids now marked done in the database
        (a slot a process has taken since is its own: left to it, which applies it
        again, harmlessly). Before, a gone process's ids were applied at every take-over,
        marking done again an entry a later replay had failed."""
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                found = os.pread(fd, self.size, 0).split(b"\0", 1)[0]
                if found:
                    os.pwrite(fd, bytes(len(found)), 0)
                    os.fdatasync(fd)
            except OSError:
                continue
            finally:
                os.close(fd)

    def note(self, event_id: str) -> bool:
        """Note ``event_id`` durably; False when it could not be (full, or failing)."""
        record = event_id.encode("ascii") + b"\n"
        if self._fd is None or self._end + len(record) > self.size:
            return False
        try:
            os.pwrite(self._fd, record, self._end)
            os.fdatasync(self._fd)
        except OSError:
            return False
        self._end += len(record)
        return True

    def clear(self) -> None:
        """Forget every id (they are in the database now)."""
        if self._fd is None or self._end == 0:
            return
        try:
            os.pwrite(self._fd, bytes(self._end), 0)
            os.fdatasync(self._fd)
        except OSError:
            return  # kept: marking them done again at start-up is harmless
        self._end = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Writer:
    """The one thread that writes the journal file, with group commit (module docstring).

    Storage faults: a new record that cannot be committed fails with
    :class:`~receiver.errors.JournalUnavailable` (answered 503). A state change (done,
    failed) that cannot be committed is kept here and written again with backoff
    (``done`` ids are also noted in the :class:`DoneLedger`); its caller is not failed.
    After each commit the file at the path is compared (``st_dev``, ``st_ino``) with the
    one opened at start-up: a deleted or replaced file is :attr:`lost` for good (until a
    restart opens the file at the path again). Before each transaction the attributes of
    the file, its ``-wal`` and its ``-shm`` are read: an immutable one fails the
    transaction before SQLite touches it (module docstring).

    A store that failed works again once a write works and at least ``min_free`` bytes
    are free on its filesystem (:func:`low_space`): until then :attr:`failure` stays, and
    the writer keeps trying with backoff. At start-up with less free, it starts failing.

    Args:
        path: The database file (its folder is created).
        prepare: Called with the new connection before the first operation (the schema).
        max_batch: Most operations in one transaction.
        ledger_bytes: Space reserved for the done ledger (0: none).
        min_free: Free bytes the store needs to count as working (0: any).
    """

    retry_min = 0.05
    retry_max = 5.0
    """Seconds between attempts at the kept state changes (doubling from the first)."""

    start_timeout = 30.0
    """Seconds start-up (:meth:`ensure_started`) keeps trying while the file is locked by
    another process (``database is locked``: each try waits ``busy_timeout``, 5 s, for
    the lock) before it fails; any other fault fails it at once."""

    def __init__(
        self,
        path: Path,
        prepare: Callable[[sqlite3.Connection], None],
        max_batch: int,
        ledger_bytes: int = 0,
        apply_done: Callable[[sqlite3.Connection, list[str]], None] | None = None,
        min_free: int = 0,
    ) -> None:
        self.path = path
        self.min_free = min_free
        self.prepare = prepare
        self.max_batch = max_batch
        self.apply_done = apply_done
        self.ledger = DoneLedger(path.with_name(path.name + "-done"), ledger_bytes)
        self._ledger_on = ledger_bytes > 0
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.commits = 0
        """Transactions committed: with group commit, fewer than operations."""
        self.on_commit: Callable[[float], None] | None = None
        """Told the seconds each committed transaction that wrote took, BEGIN to COMMIT."""
        self._synced = True  # the connection's synchronous setting is FULL
        self.identity: tuple[int, int] | None = None
        self.lost: str | None = None
        """Why the file at the path is not the writer's any more (None: it is)."""
        self.failure: str | None = None
        """The last storage fault, until a commit succeeds with nothing kept."""
        self.kept: dict[str, _Batch] = {}
        """State changes not written yet, by event id (written by the thread only)."""
        self._retry_in = self.retry_min
        self._watched: list[tuple[str, int]] = []
        self._held: list[int] = []  # every descriptor _watch opened (in _WATCHED)
        """(name, descriptor) of the files whose attributes are read before each
        transaction (those whose filesystem keeps attributes)."""
        self._flags = array.array("i", [0])

    @property
    def running(self) -> bool:
        return self._thread is not None

    def problem(self) -> str | None:
        """Why the store is failing now (``/readyz``), None when it is not known to."""
        if self.lost is not None:
            return self.lost
        kept = len(self.kept)
        if kept:
            return f"journal failing: {kept} handled events' states not stored yet ({self.failure})"
        return self.failure

    def ensure_started(self) -> None:
        """Start the thread (connecting and preparing the file) unless it runs. Blocks
        while another process holds the file's write lock, up to :attr:`start_timeout`
        seconds (and SQLite's 5 s ``busy_timeout``).

        Raises:
            ConfigError: the journal cannot be written (one line: the path, the reason;
                ``database is locked`` when the lock was still held after that time).
        """
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            connection = self._open()
            thread = threading.Thread(
                target=self._write_loop, args=(connection,), name="receiver-journal", daemon=True
            )
            thread.start()
            self._thread = thread

    def _open(self) -> sqlite3.Connection:
        """Connect, check the file can be written, prepare it, apply the done ledger."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):  # its -wal and -shm files go there
                raise PermissionError(f"folder {path.parent} is not writable")
        except OSError as exc:
            raise ConfigError(f"journal: {path}: {exc.strerror or exc}") from None
        # SQLite would fall back to reading the file (or, on an immutable -shm left by a
        # crash, die of SIGBUS): say why not, naming the file.
        for suffix in ("", *SIDECARS):
            refused = _not_writable(path.with_name(path.name + suffix))
            if refused is not None:
                raise ConfigError(f"journal: {path}{suffix}: {refused}")
        deadline = time.monotonic() + self.start_timeout
        while True:
            connection: sqlite3.Connection | None = None
            try:
                connection = connect(path)
                self.prepare(connection)
                connection.execute("BEGIN IMMEDIATE")
                _write_header(connection)  # fails on a file only readable
                connection.execute("COMMIT")
                self.identity = _identity(path)
                self._watch()
                self._check_files()  # before the done ledger's transaction, as before any
                if self._ledger_on:
                    noted = self.ledger.open()
                    if noted and self.apply_done is not None:
                        connection.execute("BEGIN IMMEDIATE")
                        self.apply_done(connection, noted)
                        connection.execute("COMMIT")
                        log.warning(
                            "handled events marked done from the done ledger", count=len(noted)
                        )
                    self.ledger.clear()
                break
            except (sqlite3.Error, OSError, _Immutable) as exc:
                self.ledger.close()
                if connection is not None:
                    self._close(connection)
                if locked(exc) and time.monotonic() < deadline:
                    # Another process holds the write lock (a long transaction): each try
                    # already waited busy_timeout; wait on, up to start_timeout.
                    log.warning(
                        "journal locked by another process at start: trying again",
                        path=str(path),
                        reason=str(exc),
                    )
                    time.sleep(0.2)
                    continue
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise ConfigError(f"journal: {path}: {reason}") from None
        self.lost = None
        self.failure = low_space(path, self.min_free) if self.min_free else None
        if self.failure is not None:
            log.error("journal failing at start", path=str(path), reason=self.failure)
        return connection

    def _watch(self) -> None:
        """Open the file, its -wal and its -shm (read only) for :meth:`_check_files`.
        Each is registered in :data:`_WATCHED` and held until :meth:`_unwatch` (also on
        a filesystem without attributes, where it is not checked): no check of this
        process opens and closes them while the connection holds SQLite's locks."""
        self._unwatch()
        for suffix in ("", *SIDECARS):
            try:
                fd = os.open(self.path.with_name(self.path.name + suffix), os.O_RDONLY)
            except FileNotFoundError:
                continue
            found = os.fstat(fd)
            with _WATCHED_LOCK:
                _WATCHED.setdefault((found.st_dev, found.st_ino), []).append(fd)
            self._held.append(fd)
            try:
                fcntl.ioctl(fd, _GETFLAGS, self._flags)
            except OSError:  # a filesystem without attributes: nothing to watch
                continue
            self._watched.append((suffix or "database", fd))

    def _unwatch(self) -> None:
        """Close what :meth:`_watch` opened (the connection is closed by now), but a
        descriptor of a file another writer of this process still watches: closing it
        would release that writer's SQLite locks (kept instead, as SQLite keeps its own)."""
        with _WATCHED_LOCK:
            for fd in self._held:
                shared = False
                for key, fds in list(_WATCHED.items()):
                    if fd in fds:
                        fds.remove(fd)
                        shared = bool(fds)
                        if not fds:
                            del _WATCHED[key]
                if shared:
                    _KEPT.append(fd)
                else:
                    os.close(fd)
        self._held = []
        self._watched = []

    def _check_files(self) -> None:
        """Raise :class:`_Immutable` when a file of the journal is immutable or
        append-only: before SQLite touches it (module docstring). About 0.5 us a file."""
        flags = self._flags
        for name, fd in self._watched:
            fcntl.ioctl(fd, _GETFLAGS, flags)
            if flags[0] & _UNWRITABLE:
                what = "" if name == "database" else f"its {name} file: "
                raise _Immutable(f"{what}{file_attribute(fd) or 'immutable'}")

    def _close(self, connection: sqlite3.Connection) -> None:
        """Close the connection, unless a file is immutable: closing writes to the -shm
        mapping (SIGBUS). Then it is left open, for good (its memory is never freed:
        freeing closes it), and the file is not checkpointed: SQLite recovers the -wal
        at the next start, once the attribute is gone."""
        try:
            self._check_files()
        except (_Immutable, OSError) as exc:
            log.error(
                "journal left open: closing it would crash", path=str(self.path), reason=str(exc)
            )
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(connection))
        else:
            connection.close()
        self._unwatch()

    def _room(self) -> bool:
        """Whether a store that failed works again, a write having worked: whether the
        filesystem has :attr:`min_free` bytes free. When not, :attr:`failure` says so."""
        if not self.min_free:
            return True
        reason = low_space(self.path, self.min_free)
        if reason is None:
            return True
        if not (self.failure or "").startswith(LOW_SPACE):  # not at each free byte counted
            log.error("journal still failing", path=str(self.path), reason=reason)
        self.failure = reason
        return False

    async def submit(
        self,
        operation: Callable[[sqlite3.Connection], _T],
        *,
        durable: bool = True,
        key: str | None = None,
        done: bool = False,
    ) -> _T:
        """Run ``operation`` in the writer's next transaction; return once it is committed.

        ``durable`` (new data: records, rejected bodies): the commit is fsynced before
        this returns. Otherwise (state changes of stored events) it is committed, which a
        process crash cannot undo, and fsynced with the next durable commit: after a power
        cut such a change may be lost, and an event handled again (at least once).

        ``key`` (a state change of the stored event ``key``): when the store fails, the
        change is kept and written later (see the class), and this returns None.

        Raises:
            JournalUnavailable: the store failed (nothing was stored).
        """
        if self._thread is None:
            try:
                # In a thread: it may wait for another process's write lock (up to
                # start_timeout), which must not stop the event loop (a mounted app).
                await asyncio.to_thread(self.ensure_started)
            except ConfigError as exc:
                log.error("journal unavailable", reason=str(exc))
                raise JournalUnavailable() from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._queue.put(_Batch(operation, loop, future, durable, key, done))
        return await future

    async def stop(self) -> None:
        """Commit what is queued (and what was kept), close the connection, end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(thread.join, 10)
        self._thread = None

    # -- the thread ---------------------------------------------------------------

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        get = self._queue.get
        while True:
            if (self.kept or self.failure is not None) and self.lost is None:
                try:
                    first = get(timeout=self._retry_in)
                except queue.Empty:
                    self._write_kept(connection)
                    continue
            else:
                first = get()
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
        if self.kept and self.lost is None:
            self._write_kept(connection)
        if self.kept:
            log.error(
                "journal stopped with handled events' states not stored",
                path=str(self.path),
                count=len(self.kept),
                in_done_ledger=sum(1 for item in self.kept.values() if item.done),
            )
        self._close(connection)
        self.ledger.close()

    def _committed(self, started: float, wrote: bool = True) -> None:
        """Count a commit; tell :attr:`on_commit` how long it took when it wrote
        something (not the retry worker's reads; never failing the commit)."""
        self.commits += 1
        observer = self.on_commit
        if observer is not None and wrote:
            try:
                observer(time.perf_counter() - started)
            except Exception:
                log.exception("journal commit observer failed")

    def _check_identity(self) -> None:
        """Raise :class:`_Lost` (and remember why) when the path is not the writer's file."""
        try:
            same = _identity(self.path) == self.identity
        except FileNotFoundError:
            self.lost = "journal lost: the file was deleted"
            raise _Lost(self.lost) from None
        if not same:
            self.lost = "journal lost: the file was replaced"
            raise _Lost(self.lost)

    def _run_batch(self, connection: sqlite3.Connection, batch: list[_Batch]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        durable = any(item.durable for item in batch)
        changes = connection.total_changes
        try:
            if self.lost is not None:
                raise _Lost(self.lost)
            self._check_files()
            if durable != self._synced:
                connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._synced = durable
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            outcomes = [(item.operation(connection), None) for item in batch]
            self._check_identity()  # the -wal beside the path may be another file's now
            connection.execute("COMMIT")
            self._committed(started, connection.total_changes != changes)
            self._check_identity()  # committed to the file at the path, not an orphan
        except Exception:
            # One operation failed (or the commit did): take the batch apart, so that
            # each operation succeeds or fails on its own.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            outcomes = [self._run_alone(connection, item) for item in batch]
        else:
            if self.kept:
                self._write_kept(connection)  # the store works again
            elif self.failure is not None and connection.total_changes != changes and self._room():
                # Written (a read alone says nothing about a full disk), and room for
                # more (a small write may fit where a callback does not): working again.
                log.info("journal writable again", path=str(self.path))
                self.failure = None
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
            if self.lost is not None:
                raise _Lost(self.lost)
            self._check_files()
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            result = item.operation(connection)
            self._check_identity()
            connection.execute("COMMIT")
            self._committed(started)
            self._check_identity()
            return result, None
        except Exception as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            if not storage_fault(exc):
                log.exception("journal operation failed", path=str(self.path))
                return None, exc
            self._failed(exc)
            if item.key is not None:
                self._keep(item)
                return None, None
            return None, JournalUnavailable()

    def _failed(self, error: BaseException) -> None:
        """Remember a storage fault; log it when the store was working until now."""
        reason = self.lost or f"journal not writable: {error}"
        if reason != self.failure:
            log.error("journal not writable", path=str(self.path), reason=reason)
        self.failure = reason

    def _keep(self, item: _Batch) -> None:
        """Keep a state change that could not be written, to write it later."""
        key = item.key
        assert key is not None
        if key not in self.kept and item.done and not self.ledger.note(key):
            log.error(
                "done state kept in memory only: handled again if the process stops first",
                event_id=key,
            )
        self.kept[key] = item

    def _write_kept(self, connection: sqlite3.Connection) -> None:
        """Write the kept state changes in one transaction (none kept: a write that
        changes nothing, to see whether the store works again); back off when that fails."""
        kept = list(self.kept.values())
        try:
            if self.lost is not None:
                raise _Lost(self.lost)
            self._check_files()
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            for item in kept:
                item.operation(connection)
            if not kept:
                _write_header(connection)
            self._check_identity()
            connection.execute("COMMIT")
            self._committed(started)
            self._check_identity()
        except Exception as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            if not storage_fault(exc):  # a bug in one of them: write each alone
                log.exception("journal operation failed", path=str(self.path))
                for item in kept:
                    del self.kept[item.key or ""]
                    self._run_alone(connection, item)
                return
            self._failed(exc)
            self._retry_in = min(self._retry_in * 2, self.retry_max)
            return
        for item in kept:
            del self.kept[item.key or ""]
        if not self.kept:
            self.ledger.clear()  # they are in the database now
        if not self._room():  # written, but too little room for callbacks yet
            self._retry_in = min(self._retry_in * 2, self.retry_max)
            return
        self._retry_in = self.retry_min
        if not self.kept:
            log.info("journal writable again", path=str(self.path), states_stored=len(kept))
            self.failure = None


class Reader:
    """Reads of the journal file, each on a connection of its own in a worker thread.

    Args:
        path: The database file; it must exist (see :meth:`require`).
        prepare: Called with each new connection before the read (the schema: a journal
            written by an older version is brought up to date).
        min_free: Free bytes the store needs to count as working (:meth:`check`).
    """

    def __init__(
        self, path: Path, prepare: Callable[[sqlite3.Connection], None], min_free: int = 0
    ) -> None:
        self.path = path
        self.prepare = prepare
        self.min_free = min_free

    def require(self) -> None:
        """An operator command reads or prunes a journal that is there; it creates none,
        and does not connect to one whose -shm is immutable (SIGBUS: module docstring)."""
        if not self.path.exists():
            raise ConfigError(f"journal: {self.path} does not exist")
        attribute = _path_attribute(self.path.with_name(self.path.name + "-shm"))
        if attribute is not None:  # (an immutable -wal is only read: no harm)
            raise ConfigError(f"journal: {self.path}-shm: {attribute}")

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

    async def read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """What ``work`` reads with a connection of its own (several queries, one
        connection), in a worker thread as :meth:`select`."""
        return await asyncio.to_thread(self._read, work)

    def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        self.require()
        with closing(connect(self.path)) as connection:
            self.prepare(connection)
            return work(connection)

    async def check(self, opened: tuple[int, int] | None = None) -> str | None:
        """None when the file can be read and written, else a short reason; creates
        nothing. ``opened``: the writer's file (``st_dev``, ``st_ino``), which the file at
        the path must still be."""
        return await asyncio.to_thread(self._check, opened)

    def _check(self, opened: tuple[int, int] | None) -> str | None:
        path = self.path
        try:
            found = os.stat(path)
        except FileNotFoundError:
            return "journal lost: the file does not exist" if opened else "journal missing"
        except OSError as exc:
            return f"journal unreachable: {exc.strerror}"
        if opened is not None and (found.st_dev, found.st_ino) != opened:
            return "journal lost: the file was replaced"
        for suffix in ("", *SIDECARS):  # before SQLite maps an immutable -shm: SIGBUS
            reason = _not_writable(path.with_name(path.name + suffix))
            if reason is not None:
                what = f"its {suffix} file: " if suffix else ""
                return f"journal not writable: {what}{reason}"
        if not os.access(path.parent, os.W_OK):
            return "journal not writable: its folder is not writable"
        if self.min_free and (short := low_space(path, self.min_free)) is not None:
            return short
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=rw"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=2)) as connection:
                connection.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return f"journal unreachable: {exc}"
        return None
