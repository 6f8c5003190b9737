"""Keep the numbers that texted STOP (and drop them on UNSTOP) in a local SQLite file.

Off unless the configuration has its table::

    [settings.opt_outs]
    database = "state/opt_outs.db"   # relative to the working folder; folder created

On a ``Stop`` callback the person's number (``event.source``: on OnePoint/DIY inbound
callbacks, ``Source`` is the recipient of the original message) is stored with its
channel, provider and time; on ``Unstop`` it is removed. The table is
``opt_outs(number PRIMARY KEY, channel, provider, opted_out_at)`` in WAL mode. Numbers
are stored as sent, less whitespace and a leading ``+``; logs show only the last 4 digits.

Other plugins ask :func:`is_opted_out` (a plugin file is loaded as module
``receiver_plugins.opt_outs``): ``sys.modules["receiver_plugins.opt_outs"].is_opted_out(n)``,
from a ``@blocking`` hook (it reads the file).
``/readyz`` answers 503 while the database cannot be opened and queried; a STOP that
cannot be stored makes the hook raise: answered 500 so that the provider retries, or,
with a ``journal``, answered 200 and retried by receiver.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from datetime import UTC
from pathlib import Path

import structlog

from receiver import Config, ConfigError, Event, blocking, hookimpl
from receiver.logs import bounded

log = structlog.get_logger()

NAME = "opt_outs"
_SCHEMA = """CREATE TABLE IF NOT EXISTS opt_outs (
    number TEXT PRIMARY KEY,
    channel TEXT,
    provider TEXT,
    opted_out_at TEXT NOT NULL
)"""

_database: Path | None = None
_initialized = False
_lock = threading.Lock()


def _normalize(number: str) -> str:
    return "".join(number.split()).removeprefix("+")


def mask(number: str) -> str:
    """``number`` as it may be logged: only its last 4 characters (escaped), after at
    most 15 stars (a number is never longer; a sender's 1 MB Source is not logged whole)."""
    return "*" * min(max(len(number) - 4, 0), 15) + bounded(number[-4:])


def _connect() -> sqlite3.Connection:
    """A new connection (one per call: hooks run in worker threads), schema ensured."""
    global _initialized
    if _database is None:
        raise RuntimeError("opt_outs is off: no [settings.opt_outs] table")
    with _lock:
        if not _initialized:
            _database.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(_database, timeout=5)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
                conn.commit()
            _initialized = True
    return sqlite3.connect(_database, timeout=5)


@hookimpl
def configure(config: Config) -> None:
    global _database, _initialized
    _database, _initialized = None, False
    settings = config.settings.get(NAME)
    if settings is None:
        log.info("plugin off: no settings table", plugin=NAME, table=f"settings.{NAME}")
        return
    unknown = sorted(set(settings) - {"database"})
    if unknown:
        raise ConfigError(f"settings.{NAME}: unknown key(s) {', '.join(unknown)}")
    database = settings.get("database")
    if not isinstance(database, str) or not database.strip():
        raise ConfigError(f"settings.{NAME}.database: must be a file path")
    _database = Path(database).expanduser()
    try:
        with closing(_connect()):
            pass
    except (OSError, sqlite3.Error) as exc:  # not fatal: /readyz says so until it works
        log.error("opt-out store unavailable", plugin=NAME, database=str(_database), error=str(exc))
        return
    log.info("plugin on", plugin=NAME, database=str(_database))


def is_opted_out(number: str) -> bool:
    """True when ``number`` texted STOP (and not UNSTOP since); False when off."""
    if _database is None:
        return False
    with closing(_connect()) as conn:
        row = conn.execute(
            "SELECT 1 FROM opt_outs WHERE number = ?", (_normalize(number),)
        ).fetchone()
    return row is not None


@hookimpl
@blocking
def on_stop(event: Event) -> None:
    if _database is None:
        return
    if not event.source:
        log.warning("stop without a number ignored", plugin=NAME, event_id=event.id)
        return
    number = _normalize(event.source)
    when = (event.occurred_at or event.received_at).astimezone(UTC).isoformat()
    with closing(_connect()) as conn, conn:
        conn.execute(
            "INSERT INTO opt_outs (number, channel, provider, opted_out_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(number) DO UPDATE SET channel = excluded.channel,"
            " provider = excluded.provider, opted_out_at = excluded.opted_out_at",
            (number, event.channel, event.provider, when),
        )
    log.info("opted out", plugin=NAME, number=mask(number), event_id=event.id)


@hookimpl
@blocking
def on_unstop(event: Event) -> None:
    if _database is None:
        return
    if not event.source:
        log.warning("unstop without a number ignored", plugin=NAME, event_id=event.id)
        return
    number = _normalize(event.source)
    with closing(_connect()) as conn, conn:
        removed = conn.execute("DELETE FROM opt_outs WHERE number = ?", (number,)).rowcount
    log.info("opted back in", plugin=NAME, number=mask(number), was_opted_out=bool(removed))


@hookimpl
def check_ready() -> str | None:
    if _database is None:
        return None
    try:
        with closing(_connect()) as conn:
            conn.execute("SELECT count(*) FROM opt_outs").fetchone()
    except (OSError, sqlite3.Error, RuntimeError):
        return "opt-out store unreachable"
    return None
