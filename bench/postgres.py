"""A PostgreSQL server for the benchmarks' PostgreSQL journal rows, and what it costs.

``$RECEIVER_BENCH_POSTGRES`` (a libpq URL of a role that may create databases) names an
existing server. Otherwise :func:`server` starts a throwaway one of its own: Debian's
binaries (``/usr/lib/postgresql/<version>/bin``, the ``postgresql`` package), ``initdb``
into a temporary folder as the ``postgres`` user (``runuser``: initdb refuses root), on a
free port on 127.0.0.1 with its unix socket in that folder, ``pg_stat_statements``
preloaded with ``pg_stat_statements.track = all``, the server's other settings at their
defaults (``fsync`` and ``synchronous_commit`` on: every commit waits for its WAL flush)
unless ``$RECEIVER_BENCH_POSTGRES_OPTIONS`` adds settings (``-c synchronous_commit=off``,
for an experiment); stopped and removed at exit.

Each benchmark row gets a database of its own (:meth:`Postgres.database`, dropped by
:meth:`Postgres.drop`), so every row starts from an empty journal. What a row costs the
server:

* :meth:`Postgres.statements`: ``pg_stat_statements``' calls in the row's database since
  :meth:`Postgres.reset_statements` (by statement kind); None when the extension is not
  loaded (an existing server may not have it);
* :meth:`Postgres.cpu_seconds`: user + system CPU time of the server's processes (the
  postmaster, its children, and the children that exited, from ``/proc``): on an existing
  server on this machine, found from a backend's parent; None when it is elsewhere.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "RECEIVER_BENCH_POSTGRES"
OPTIONS = "RECEIVER_BENCH_POSTGRES_OPTIONS"  # more settings of a server of our own
HOST = "127.0.0.1"


class PostgresError(Exception):
    """No server could be had (the message says why)."""


@dataclass(frozen=True)
class Statements:
    """``pg_stat_statements`` calls in one database, by statement (normalized text)."""

    calls: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def round_trips(self) -> int:
        """Client round trips: one per call, but a simple query of several statements
        (asyncpg's reset on releasing a pooled connection: ``SELECT
        pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) is one round trip,
        counted here by its ``RESET ALL``."""
        batched = ("CLOSE ALL", "UNLISTEN *", "SELECT pg_advisory_unlock_all()")
        return sum(n for query, n in self.calls.items() if query.strip().rstrip(";") not in batched)


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise PostgresError(f"{' '.join(command[:4])}...: {' '.join(message)}")
    return done.stdout


async def _admin(url: str, *statements: str, args: tuple[Any, ...] = ()) -> list[Any]:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows: list[Any] = []
        for statement in statements:
            rows = await connection.fetch(statement, *args)
        return rows
    finally:
        await connection.close()


def _admin_sync(url: str, *statements: str, args: tuple[Any, ...] = ()) -> list[Any]:
    return asyncio.run(_admin(url, *statements, args=args))


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def _database_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/") or "postgres"


def _proc_cpu(pid: int, children: bool = False) -> tuple[int, int]:
    """(ticks of user + system CPU, parent pid) of ``pid``; with ``children``, the exited
    children's too."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks, int(fields[1])


class Postgres:
    """A server the benchmarks may create databases on (see the module)."""

    def __init__(self, url: str, postmaster: int | None, note: str) -> None:
        self.url = url
        """A URL of a role that may create databases (its database: ``postgres``)."""
        self.postmaster = postmaster
        """The server's main process, when it runs on this machine (CPU figures)."""
        self.note = note
        """What the server is, for the benchmark's header."""
        self._dbids: dict[str, int] = {}

    def database(self) -> str:
        """A new empty database; its URL."""
        name = f"bench_{secrets.token_hex(5)}"
        _admin_sync(self.url, f"CREATE DATABASE {name}")
        query = "SELECT oid FROM pg_database WHERE datname = $1"
        found = _admin_sync(self.url, query, args=(name,))
        self._dbids[name] = int(found[0][0])
        return with_database(self.url, name)

    def drop(self, url: str) -> None:
        name = _database_of(url)
        self._dbids.pop(name, None)
        _admin_sync(self.url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def events(self, url: str) -> int:
        """Rows in the journal's ``events`` table at ``url`` (0 when there is none)."""
        try:
            found = _admin_sync(url, "SELECT count(*) FROM events")
        except Exception:
            return 0
        return int(found[0][0])

    def reset_statements(self, url: str) -> bool:
        """Forget ``pg_stat_statements``' counts of ``url``'s database; False when the
        extension is not there."""
        dbid = self._dbids.get(_database_of(url))
        try:
            _admin_sync(self.url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            _admin_sync(self.url, "SELECT pg_stat_statements_reset(0, $1::oid, 0)", args=(dbid,))
        except Exception:
            return False
        return True

    def statements(self, url: str) -> Statements | None:
        """``pg_stat_statements``' calls in ``url``'s database since the reset."""
        dbid = self._dbids.get(_database_of(url))
        try:
            rows = _admin_sync(
                self.url,
                "SELECT query, calls FROM pg_stat_statements WHERE dbid = $1",
                args=(dbid,),
            )
        except Exception:
            return None
        calls: dict[str, int] = {}
        for query, count in rows:
            calls[query] = calls.get(query, 0) + int(count)
        return Statements(calls)

    def transactions(self, url: str) -> int | None:
        """Transactions committed in ``url``'s database so far (``pg_stat_database``'s
        ``xact_commit``: a statement outside BEGIN and COMMIT counts as one). A backend
        reports them when idle, at most once a second, or when it exits: read after the
        clients have gone."""
        try:
            found = _admin_sync(
                self.url,
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                args=(_database_of(url),),
            )
        except Exception:
            return None
        return int(found[0][0]) if found else None

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the server so far: the postmaster with its exited
        children, and each running child; None when the server is not on this machine."""
        if self.postmaster is None:
            return None
        try:
            ticks, _ = _proc_cpu(self.postmaster, children=True)
        except OSError:
            return None
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == self.postmaster:
                continue
            try:
                child, parent = _proc_cpu(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if parent == self.postmaster:
                ticks += child
        return ticks / os.sysconf("SC_CLK_TCK")


def _postmaster_of(url: str) -> int | None:
    """The postmaster of the server at ``url`` when it runs on this machine."""
    try:
        found = _admin_sync(url, "SELECT pg_backend_pid()")
        _, parent = _proc_cpu(int(found[0][0]))
    except Exception:
        return None
    return parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def binaries() -> Path:
    """The newest Debian PostgreSQL's ``bin`` folder."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not found:
        raise PostgresError(
            "no PostgreSQL binaries in /usr/lib/postgresql (apt-get install postgresql), "
            f"and ${ENV} is not set"
        )
    return Path(found[-1]).parent


@contextmanager
def server() -> Iterator[Postgres]:
    """``$RECEIVER_BENCH_POSTGRES``'s server, or a throwaway one of our own (see the
    module); raises :class:`PostgresError` when neither can be had."""
    url = os.environ.get(ENV)
    if url:
        try:
            _admin_sync(url, "SELECT 1")
        except Exception as exc:
            raise PostgresError(f"${ENV}: {type(exc).__name__}: {exc}") from None
        yield Postgres(url, _postmaster_of(url), f"${ENV} (an existing server)")
        return
    bin_dir = binaries()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            raise PostgresError("running as root, and no runuser to run initdb as postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    top = Path(tempfile.mkdtemp(prefix="receiver-bench-pg-"))
    data, sockets = top / "data", top / "run"
    try:
        sockets.mkdir()
        if as_postgres:
            shutil.chown(top, "postgres")
            shutil.chown(sockets, "postgres")
        _run(
            *as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--no-instructions",
        )  # fmt: skip
        port = _free_port()
        options = " ".join(
            [
                f"-c port={port}",
                f"-c listen_addresses={HOST}",
                f"-c unix_socket_directories={sockets}",
                "-c shared_preload_libraries=pg_stat_statements",
                "-c pg_stat_statements.track=all",
                os.environ.get(OPTIONS, ""),
            ]
        )
        _run(
            *as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        try:
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
            url = f"postgresql://postgres@{HOST}:{port}/postgres"
            _admin_sync(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            version = bin_dir.parent.name
            extra = f", with {os.environ[OPTIONS]}" if os.environ.get(OPTIONS) else ""
            yield Postgres(url, postmaster, f"PostgreSQL {version} of its own, in {top}{extra}")
        finally:
            subprocess.run(
                [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                 "stop"],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":  # a smoke run: start, make a database, count, stop
    with server() as pg:
        print(pg.note, pg.url, "postmaster", pg.postmaster)
        db = pg.database()
        print("database", db, "statements reset:", pg.reset_statements(db))
        _admin_sync(db, "SELECT 1")
        print("statements", pg.statements(db))
        print("cpu seconds", pg.cpu_seconds())
        pg.drop(db)
