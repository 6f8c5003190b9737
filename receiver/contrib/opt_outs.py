"""Keep the numbers that texted STOP (and drop them on UNSTOP) in a local SQLite file.

On in an app whose configuration has its table::

    [settings.opt_outs]
    database = "state/opt_outs.db"   # relative to the configuration file's folder

On a ``Stop`` callback the person's number (``event.source``: on OnePoint/DIY inbound
callbacks, ``Source`` is the recipient of the original message) is stored with its
channel, provider and time; on ``Unstop`` it is removed. The table is
``opt_outs(number PRIMARY KEY, channel, provider, opted_out_at)`` in WAL mode; the
folder is created. Numbers are stored as sent, less whitespace and a leading ``+``;
logs show only the last 4 digits.

Other code asks the app's instance, :meth:`OptOuts.is_opted_out`, from a ``@blocking``
hook or a thread (it reads the file): a plugin through the manager its ``configure``
hook gets (``manager.get_plugin("opt_outs")``), application code through
``app.state.plugin_manager.get_plugin("opt_outs")``. ``/readyz`` answers 503 while the
database cannot be opened and queried; a STOP that cannot be stored makes the hook
raise: answered 500 so that the provider retries, or, with a ``journal``, answered 200
and retried by receiver.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from datetime import UTC
from pathlib import Path

import msgspec

from receiver.config import Config, Expanded
from receiver.errors import ConfigError
from receiver.events import Event
from receiver.hookspecs import hookimpl
from receiver.logs import bounded, get_logger
from receiver.plugins import blocking

__all__ = ["OptOuts", "mask"]

log = get_logger(__name__)

_SCHEMA = """CREATE TABLE IF NOT EXISTS opt_outs (
    number TEXT PRIMARY KEY,
    channel TEXT,
    provider TEXT,
    opted_out_at TEXT NOT NULL
)"""


def _normalize(number: str) -> str:
    return "".join(number.split()).removeprefix("+")


def mask(number: str) -> str:
    """``number`` as it may be logged: only its last 4 characters (escaped), after at
    most 15 stars (a number is never longer; a sender's 1 MB Source is not logged whole)."""
    return "*" * min(max(len(number) - 4, 0), 15) + bounded(number[-4:])


class OptOuts:
    """The ``opt_outs`` plugin: one instance (and one database) per app."""

    name = "opt_outs"

    class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        """``[settings.opt_outs]``.

        Attributes:
            database: The SQLite file; a relative path is relative to the configuration
                file's folder (the current folder for a configuration built in Python);
                ``${NAME}`` is replaced by the environment variable
                (``"${STATE_DIRECTORY}/opt_outs.db"``).
        """

        database: Expanded

    def __init__(self) -> None:
        self.database: Path | None = None
        self._initialized = False
        self._lock = threading.Lock()

    @hookimpl
    def configure(self, config: Config) -> None:
        settings = config.settings.get(self.name)
        if not isinstance(settings, self.Settings):
            return
        if not settings.database.strip():
            where = f"{config.source}: settings.{self.name}.database"
            raise ConfigError(f"{where}: must be a file path")
        database = Path(settings.database).expanduser()
        if not database.is_absolute() and config.source != "config":
            database = Path(config.source).resolve().parent / database
        self.database, self._initialized = database, False
        try:
            with closing(self._connect()):
                pass
        except (OSError, sqlite3.Error) as exc:  # not fatal: /readyz says so until it works
            log.error(
                "opt-out store unavailable",
                plugin=self.name,
                database=str(database),
                error=str(exc),
            )
            return
        log.info("plugin on", plugin=self.name, database=str(database))

    def _connect(self) -> sqlite3.Connection:
        """A new connection (one per call: hooks run in worker threads), schema ensured."""
        if self.database is None:
            raise RuntimeError("opt_outs is not configured")
        with self._lock:
            if not self._initialized:
                self.database.parent.mkdir(parents=True, exist_ok=True)
                with closing(sqlite3.connect(self.database, timeout=5)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute(_SCHEMA)
                    conn.commit()
                self._initialized = True
        return sqlite3.connect(self.database, timeout=5)

    def is_opted_out(self, number: str) -> bool:
        """True when ``number`` texted STOP (and not UNSTOP since) on this app.

        Raises:
            sqlite3.Error, OSError: the database cannot be read.
        """
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT 1 FROM opt_outs WHERE number = ?", (_normalize(number),)
            ).fetchone()
        return row is not None

    @hookimpl
    @blocking
    def on_stop(self, event: Event) -> None:
        if not event.source:
            log.warning("stop without a number ignored", plugin=self.name, event_id=event.id)
            return
        number = _normalize(event.source)
        when = (event.occurred_at or event.received_at).astimezone(UTC).isoformat()
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO opt_outs (number, channel, provider, opted_out_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(number) DO UPDATE SET"
                " channel = excluded.channel, provider = excluded.provider,"
                " opted_out_at = excluded.opted_out_at",
                (number, event.channel, event.provider, when),
            )
        log.info("opted out", plugin=self.name, number=mask(number), event_id=event.id)

    @hookimpl
    @blocking
    def on_unstop(self, event: Event) -> None:
        if not event.source:
            log.warning("unstop without a number ignored", plugin=self.name, event_id=event.id)
            return
        number = _normalize(event.source)
        with closing(self._connect()) as conn, conn:
            removed = conn.execute("DELETE FROM opt_outs WHERE number = ?", (number,)).rowcount
        log.info(
            "opted back in", plugin=self.name, number=mask(number), was_opted_out=bool(removed)
        )

    @hookimpl
    def check_ready(self) -> str | None:
        try:
            with closing(self._connect()) as conn:
                conn.execute("SELECT count(*) FROM opt_outs").fetchone()
        except (OSError, sqlite3.Error, RuntimeError):
            return "opt-out store unreachable"
        return None
