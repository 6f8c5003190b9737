"""A real PostgreSQL server for the tests, and a throwaway database per test.

Import the fixtures into a test module (``from postgres import postgres_server,
postgres_url``). The server is ``$RECEIVER_TEST_POSTGRES`` (a libpq URL of a role that may
create databases) when set; otherwise Debian's cluster on this machine (``make tools``
installs the ``postgresql`` package), started with ``pg_ctlcluster`` as root, with a
role of the tests' own. Without a server: in CI (``CI`` set) the tests fail, never skip;
elsewhere they skip, saying why.
"""

from __future__ import annotations

import asyncio
import glob
import os
import secrets
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

ROLE = "receiver_test"
PASSWORD = "receiver-test-only"


def _unavailable(reason: str) -> Any:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests need a server in CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason} (set RECEIVER_TEST_POSTGRES, or `make tools`)")


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _psql(sql: str, port: int) -> str:
    return _run("runuser", "-u", "postgres", "--", "psql", "-p", str(port), "-qAtc", sql)


def local_cluster() -> str:
    """Start this machine's Debian cluster (created if there is none) and a test role;
    return the role's URL. Raises RuntimeError saying what is missing."""
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not versions:
        raise RuntimeError("no server binary in /usr/lib/postgresql (apt-get install postgresql)")
    if os.geteuid() != 0 or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("starting the local cluster needs root and pg_ctlcluster")
    version = versions[-1].split("/")[4]
    clusters = [line.split() for line in _run("pg_lsclusters", "-h").splitlines() if line]
    mine = [c for c in clusters if c[0] == version]
    if not mine:
        _run("pg_createcluster", version, "main")
        clusters = [line.split() for line in _run("pg_lsclusters", "-h").splitlines() if line]
        mine = [c for c in clusters if c[0] == version]
    name, port, status = mine[0][1], int(mine[0][2]), mine[0][3]
    if status != "online":
        _run("pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start")
    exists = _psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}'", port).strip()
    if not exists:
        _psql(f"CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD}'", port)
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/postgres"


async def admin(url: str, *statements: str) -> list[Any]:
    """Run ``statements`` on ``url`` (outside a transaction); the last one's rows."""
    import asyncpg

    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows: list[Any] = []
        for statement in statements:
            rows = await connection.fetch(statement)
        return rows
    finally:
        await connection.close()


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def run_sql(url: str, sql: str) -> None:
    """:func:`admin` to its end, in a thread of its own: a test may hold an event loop in
    this thread (Playwright's sync API does)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(admin(url, sql))
        except BaseException as exc:  # raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a PostgreSQL role that may create databases (see the module)."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return _unavailable("asyncpg is not installed (pip install -e '.[dev]')")  # type: ignore[no-any-return]
    url = os.environ.get("RECEIVER_TEST_POSTGRES")
    if not url:
        try:
            url = local_cluster()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            return _unavailable(str(exc))  # type: ignore[no-any-return]
    try:
        run_sql(url, "SELECT 1")
    except Exception as exc:
        return _unavailable(f"{type(exc).__name__}: {exc}")  # type: ignore[no-any-return]
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own (``test_<random>``), dropped after it."""
    database = f"test_{secrets.token_hex(6)}"
    run_sql(postgres_server, f"CREATE DATABASE {database}")
    try:
        yield with_database(postgres_server, database)
    finally:
        run_sql(postgres_server, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
