"""Storage that fails is never answered 200 (issue 14 part 4).

Real SQLite files in ``tmp_path``; a full disk is a small tmpfs (root, as CI runs) and an
unwritable file is ``chattr +i`` (root ignores permission bits) or ``chmod 0444`` (not
root). A callback whose record cannot be committed gets 503 and is not dispatched; once one
is recorded and handled, a ``done`` that cannot be stored is kept and written later, never
turning its answer into an error nor handling it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from serving import free_port
from starlette.testclient import TestClient
from structlog.testing import capture_logs
from test_journal import JSON, ONEPOINT_DELIVERED, ReceiptCounter, make_app, onepoint, rows

from receiver import Channel, Config, Event, create_app, hookimpl
from receiver.errors import ConfigError
from receiver.journal import SQLiteJournal


def receipt(n: int) -> bytes:
    return onepoint(MessageID=f"MS{n:04d}")


def handled(counter: ReceiptCounter) -> list[str]:
    return [e.message_id or "" for e in counter.events]


# -- the file deleted, or replaced, while serving ------------------------------------------


@pytest.mark.parametrize("sidecars", [False, True], ids=["db-file", "db-wal-shm"])
def test_storage_journal_deleted_while_serving_is_503_and_readyz_creates_nothing(
    tmp_path: Path, sidecars: bool
) -> None:
    db = tmp_path / "j.db"
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter])
    with TestClient(app) as client, capture_logs() as logs:
        assert client.post("/sms", content=receipt(0), headers=JSON).status_code == 200
        db.unlink()
        if sidecars:
            for name in ("j.db-wal", "j.db-shm"):
                (tmp_path / name).unlink(missing_ok=True)
        answers = [client.post("/sms", content=receipt(n), headers=JSON) for n in range(1, 6)]
        ready = client.get("/readyz")
        assert not db.exists()  # /readyz created no new empty database
    assert [r.status_code for r in answers] == [503] * 5
    assert {r.json()["error"] for r in answers} == {
        "journal unavailable: the callback was not stored"
    }
    assert handled(counter) == ["MS0000"]  # nothing dispatched after the loss
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["journal lost: the file was deleted"]
    refused = [e for e in logs if e.get("event") == "callback" and e.get("status") == 503]
    assert len(refused) == 5
    assert {e["log_level"] for e in refused} == {"error"}
    assert {e["outcome"] for e in refused} == {"journal_unavailable"}
    assert not db.exists()  # nor did shutting down


def test_storage_journal_replaced_by_another_database_is_treated_as_unwritable(
    tmp_path: Path,
) -> None:
    db = tmp_path / "j.db"
    counter = ReceiptCounter()
    app = make_app(tmp_path, plugins=[counter])
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE events (id TEXT, message_id TEXT, received_at REAL)")
        connection.commit()
    with TestClient(app) as client:
        assert client.post("/sms", content=receipt(0), headers=JSON).status_code == 200
        os.replace(other, db)  # a restore from a backup, say, renamed over it
        answers = [client.post("/sms", content=receipt(n), headers=JSON) for n in range(1, 4)]
        ready = client.get("/readyz")
    assert [r.status_code for r in answers] == [503] * 3
    assert handled(counter) == ["MS0000"]
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["journal lost: the file was replaced"]
    # Nothing written into the replacement (it may see what was committed before it came:
    # the -wal beside it is still the old file's until the writer closes).
    assert {row["message_id"] for row in rows(db)} <= {"MS0000"}


def test_storage_readyz_on_a_missing_journal_creates_nothing(tmp_path: Path) -> None:
    """check() before start (a mounted app): the journal is reported, not created."""
    db = tmp_path / "sub" / "j.db"
    journal = SQLiteJournal(db)
    assert asyncio.run(journal.check()) == "journal missing"
    assert not db.exists() and not db.parent.exists()


# -- a full disk -------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """A tool this test needs is missing: a failure in CI (``CI`` set, as ``.ci/run`` runs
    as root with these tools), a skip on a developer's machine without root."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only; skipped otherwise)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("a small tmpfs needs root (CI runs as root)")
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; return the filler file."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as sink:
        for chunk in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    sink.write(b"\0" * chunk)
    return filler


class FillsTheDisk:
    """on_receipt: handles each receipt (counting it) and fills the disk at ``fill_at``."""

    def __init__(self, folder: Path, fill_at: str) -> None:
        self.folder = folder
        self.fill_at = fill_at
        self.handled: list[str] = []
        self.filler: Path | None = None

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.handled.append(event.message_id or "")
        if event.message_id == self.fill_at:
            self.filler = fill(self.folder)


def disk_app(db: Path, plugin: Any) -> Any:
    channels = {"sms": Channel(provider="onepoint", auth="none")}
    return create_app(Config(channels=channels, journal=f"sqlite:///{db}"), plugins=[plugin])


def state(db: Path, message_id: str) -> str | None:
    found = rows(db, "message_id = ?", (message_id,))
    return found[0]["state"] if found else None


def test_storage_disk_full_after_record_is_200_and_done_is_stored_when_space_returns(
    tmp_path: Path,
) -> None:
    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        plugin = FillsTheDisk(fs, fill_at="MS0003")
        with TestClient(disk_app(db, plugin)) as client:
            answers = [client.post("/sms", content=receipt(n), headers=JSON) for n in range(6)]
            failing = client.get("/readyz")
            assert plugin.filler is not None
            plugin.filler.unlink()  # the space returns
            ready = client.get("/readyz")
            for _ in range(100):  # the kept done is written within the retry backoff
                if ready.status_code == 200:
                    break
                asyncio.run(asyncio.sleep(0.05))
                ready = client.get("/readyz")
            again = [client.post("/sms", content=receipt(n), headers=JSON) for n in (4, 5)]
        # MS0003 was recorded, handled, then its done could not be stored: still a 200.
        assert [r.status_code for r in answers] == [200, 200, 200, 200, 503, 503]
        assert failing.status_code == 503
        (problem,) = failing.json()["problems"]
        assert problem.startswith("journal failing: 1 handled events' states not stored yet")
        assert "full" in problem
        assert ready.status_code == 200, ready.json()
        assert [r.status_code for r in again] == [200, 200]
        assert state(db, "MS0003") == "done"
        assert plugin.handled == ["MS0000", "MS0001", "MS0002", "MS0003", "MS0004", "MS0005"]


def test_storage_disk_full_without_traffic_stays_not_ready_until_space_returns(
    tmp_path: Path,
) -> None:
    """A refused record makes /readyz 503 until a write works again: reads (the retry
    worker's) do not clear it, and the writer tries a write itself (no callbacks need
    to come, as none would while a load balancer keeps the instance out)."""
    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        counter = ReceiptCounter()
        with TestClient(disk_app(db, counter)) as client:
            assert client.post("/sms", content=receipt(0), headers=JSON).status_code == 200
            filler = fill(fs)
            assert client.post("/sms", content=receipt(1), headers=JSON).status_code == 503
            asyncio.run(asyncio.sleep(1.5))  # the retry worker has read the journal since
            full = client.get("/readyz")
            filler.unlink()
            ready = client.get("/readyz")
            for _ in range(100):
                if ready.status_code == 200:
                    break
                asyncio.run(asyncio.sleep(0.05))
                ready = client.get("/readyz")
        assert full.status_code == 503
        assert full.json()["problems"] == ["journal not writable: database or disk is full"]
        assert ready.status_code == 200
        assert handled(counter) == ["MS0000"]


def test_storage_disk_full_after_record_is_not_handled_again_after_restart(
    tmp_path: Path,
) -> None:
    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        plugin = FillsTheDisk(fs, fill_at="MS0002")
        with TestClient(disk_app(db, plugin)) as client:
            answers = [client.post("/sms", content=receipt(n), headers=JSON) for n in range(4)]
        # Stopped with the disk still full: the done of MS0002 is in the ledger only.
        assert [r.status_code for r in answers] == [200, 200, 200, 503]
        assert state(db, "MS0002") == "received"
        assert (fs / "j.db-done").read_bytes().split(b"\0", 1)[0].count(b"\n") == 1

        # Full still: start-up refuses (nothing can be written), and handles nothing.
        with (
            pytest.raises(ConfigError, match=r"^journal: .*full"),
            TestClient(disk_app(db, plugin)),
        ):
            pass
        assert plugin.filler is not None
        plugin.filler.unlink()

        with TestClient(disk_app(db, plugin)) as client:
            asyncio.run(asyncio.sleep(0.3))  # the resume worker would run now
            ready = client.get("/readyz")
        assert ready.status_code == 200
        assert state(db, "MS0002") == "done"
        assert plugin.handled == ["MS0000", "MS0001", "MS0002"]  # none handled twice
        assert (fs / "j.db-done").read_bytes().strip(b"\0") == b""  # the ledger is cleared


# -- unwritable before start -------------------------------------------------------------


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` made unwritable: ``chattr +i`` as root (which ignores permission bits),
    ``chmod`` to read-only otherwise."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            unavailable("chattr is not installed")
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if made.returncode != 0:
            unavailable(f"chattr +i does not work here: {made.stderr.decode().strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)


def existing_journal(tmp_path: Path) -> Path:
    """A journal written and closed (its -wal and -shm gone), as after a clean stop."""
    db = tmp_path / "state" / "j.db"
    with TestClient(make_app(tmp_path, journal=f"sqlite:///{db}")) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    return db


CONFIG = """
journal = "sqlite:///{db}"

[channels.sms]
provider = "onepoint"
auth = "header"
header = "X-Test-Key"
keys = ["storage-test-key"]
"""


def serve_refused(tmp_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "receiver.toml"
    config.write_text(CONFIG.format(db=db))
    env = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(free_port()),
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("what", ["file", "folder"])
def test_storage_unwritable_journal_refuses_to_start(tmp_path: Path, what: str) -> None:
    db = existing_journal(tmp_path)
    before = rows(db)
    target = db if what == "file" else db.parent
    with unwritable(target):
        journal = SQLiteJournal(db)
        problem = asyncio.run(journal.check())
        refused = serve_refused(tmp_path, db)
        app = make_app(tmp_path, journal=f"sqlite:///{db}")
        with (
            pytest.raises(ConfigError, match=rf"^journal: {re.escape(str(db))}: "),
            TestClient(app),
        ):
            pass
    assert problem is not None and problem.startswith("journal not writable")
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith(f"receiver: configuration error: journal: {db}: ")
    assert "Traceback" not in refused.stderr + refused.stdout
    assert "listening" not in refused.stderr
    assert rows(db) == before
