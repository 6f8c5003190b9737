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
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from serving import free_port, serve
from starlette.testclient import TestClient
from structlog.testing import capture_logs
from test_journal import JSON, ONEPOINT_DELIVERED, ReceiptCounter, make_app, onepoint, rows

from receiver import Channel, Config, Event, create_app, hookimpl
from receiver.endpoint import CallbackEndpoint
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
def small_filesystem(where: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only; skipped otherwise): more than
    the journal's free-space margin (4 MiB), or it would never count as working."""
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


# -- too little room: a write that fits is not a store that works ------------------------


def leave_free(filler: Path, free: int) -> None:
    """Shrink ``filler`` (the disk full) so that about ``free`` bytes are free."""
    os.truncate(filler, max(filler.stat().st_size - free, 0))


def logged(logs: list[dict[str, Any]], event: str) -> int:
    return sum(1 for line in logs if line.get("event") == event)


def ready_within(client: TestClient, seconds: float = 6.0) -> Any:
    """/readyz, asked until it answers 200 (the writer's backoff is 5 s at most)."""
    ready = client.get("/readyz")
    for _ in range(int(seconds / 0.05)):
        if ready.status_code == 200:
            break
        asyncio.run(asyncio.sleep(0.05))
        ready = client.get("/readyz")
    return ready


def test_storage_min_free_bytes_is_room_for_a_batch_of_the_largest_callbacks(
    tmp_path: Path,
) -> None:
    assert SQLiteJournal(tmp_path / "j.db").min_free_bytes == 4 * 1024 * 1024
    assert SQLiteJournal(tmp_path / "j.db", max_body_bytes=3 << 20).min_free_bytes == 12 << 20
    config = Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=f"sqlite:///{tmp_path / 'j.db'}",
        max_body_bytes=2 << 20,
    )
    journal = CallbackEndpoint.from_config(config).journal
    assert isinstance(journal, SQLiteJournal)
    assert journal.min_free_bytes == 8 << 20  # the server's body limit reaches the journal


def test_storage_failed_store_stays_failing_while_writes_fit_but_room_is_short(
    tmp_path: Path,
) -> None:
    """Each path that clears a failure (a callback written, the writer's own probe)
    needs the free-space margin too: 1 MiB free takes a callback, yet the store fails
    until 4 MiB are free."""
    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        counter = ReceiptCounter()
        with TestClient(disk_app(db, counter)) as client, capture_logs() as logs:
            assert client.post("/sms", content=receipt(0), headers=JSON).status_code == 200
            filler = fill(fs)
            assert client.post("/sms", content=receipt(1), headers=JSON).status_code == 503
            leave_free(filler, 1 << 20)
            # Written (the record fits) while failing: the store is still failing.
            assert client.post("/sms", content=receipt(2), headers=JSON).status_code == 200
            stored_while_short = client.get("/readyz")
            asyncio.run(asyncio.sleep(0.5))  # the writer's probes write, and fit, too
            probed_while_short = client.get("/readyz")
            writable_while_short = logged(logs, "journal writable again")
            filler.unlink()
            ready = ready_within(client)
        for answer in (stored_while_short, probed_while_short):
            assert answer.status_code == 503
            (problem,) = answer.json()["problems"]
            assert problem.startswith("low disk space: "), problem
            assert problem.endswith("KiB free, 4096 KiB needed")
        assert writable_while_short == 0
        assert ready.status_code == 200, ready.json()
        assert logged(logs, "journal writable again") == 1
        assert logged(logs, "journal still failing") == 1  # once, not at each probe
        assert handled(counter) == ["MS0000", "MS0002"]


def test_storage_readyz_says_low_disk_space_before_any_write_fails(tmp_path: Path) -> None:
    """Under the margin, /readyz answers 503 before a callback is refused (callbacks
    that fit are still stored); back over it, 200 again."""
    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        counter = ReceiptCounter()
        with TestClient(disk_app(db, counter)) as client, capture_logs() as logs:
            assert client.post("/sms", content=receipt(0), headers=JSON).status_code == 200
            assert client.get("/readyz").status_code == 200
            filler = fill(fs)
            leave_free(filler, 2 << 20)
            low = client.get("/readyz")
            stored = client.post("/sms", content=receipt(1), headers=JSON)
            filler.unlink()
            ready = client.get("/readyz")
        assert low.status_code == 503
        (problem,) = low.json()["problems"]
        assert re.fullmatch(r"low disk space: \d+ KiB free, 4096 KiB needed", problem), problem
        assert stored.status_code == 200
        assert ready.status_code == 200, ready.json()
        assert logged(logs, "journal not writable") == 0
        assert handled(counter) == ["MS0000", "MS0001"]


def test_storage_start_with_low_disk_space_is_not_ready_until_there_is_room(
    tmp_path: Path,
) -> None:
    with small_filesystem(tmp_path / "fs") as fs:
        db = fs / "j.db"
        counter = ReceiptCounter()
        filler = fill(fs)
        leave_free(filler, 2 << 20)
        with capture_logs() as logs, TestClient(disk_app(db, counter)) as client:
            low = client.get("/readyz")
            stored = client.post("/sms", content=receipt(0), headers=JSON)
            filler.unlink()
            ready = ready_within(client)
        assert low.status_code == 503
        assert low.json()["problems"][0].startswith("low disk space: ")
        assert stored.status_code == 200  # it fits: stored, and handled
        assert ready.status_code == 200, ready.json()
        assert logged(logs, "journal failing at start") == 1
        assert logged(logs, "journal writable again") == 1
        assert handled(counter) == ["MS0000"]


def test_storage_free_space_is_checked_per_readyz_and_recovery_not_per_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """statvfs is read at start, by /readyz and by a failing store's recovery, never by
    a callback's record while the store works."""
    calls: list[str] = []
    real = os.statvfs

    def counted(path: Any) -> Any:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "statvfs", counted)
    with TestClient(make_app(tmp_path)) as client:
        assert len(calls) == 1  # at start
        calls.clear()
        for n in range(20):
            assert client.post("/sms", content=receipt(n), headers=JSON).status_code == 200
        assert calls == []
        assert client.get("/readyz").status_code == 200
    assert len(calls) == 1


# -- immutable journal files while serving: SQLite's -shm mapping would be SIGBUS --------


@contextlib.contextmanager
def immutable(target: Path, *, recursive: bool = False) -> Iterator[None]:
    """``chattr +i`` on ``target`` (``-R``: its folder and every file in it); needs root
    and a filesystem with attributes (CI has both)."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        unavailable("chattr +i needs root and chattr (CI runs as root)")
    flag = ["-R"] if recursive else []
    made = subprocess.run(["chattr", *flag, "+i", str(target)], capture_output=True, check=False)
    if made.returncode != 0:
        unavailable(f"chattr +i does not work here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", *flag, "-i", str(target)], check=False)


KEYED = {"X-Test-Key": "storage-test-key", **JSON}


def post(server: Any, n: int) -> int:
    try:
        return int(server.request("/sms", receipt(n), KEYED)[0])
    except OSError:  # the process died (SIGBUS): the connection dropped
        return -1


@pytest.mark.parametrize("what", ["-shm", "-wal", "database", "folder -R"])
def test_storage_immutable_journal_file_while_serving_is_503_and_not_ready(
    tmp_path: Path, what: str
) -> None:
    """/readyz first (its own connection would map the -shm), then callbacks (the
    writer's): 503 and not ready, the process alive; once the attribute is gone the
    store works again without a restart, and the server stops cleanly."""
    db = tmp_path / "state" / "j.db"
    target = {"-shm": Path(f"{db}-shm"), "-wal": Path(f"{db}-wal"), "database": db}
    with serve(tmp_path, CONFIG.format(db=db)) as server:
        assert post(server, 0) == 200
        with immutable(target.get(what, db.parent), recursive=what == "folder -R"):
            not_ready = server.request("/readyz")
            refused = [post(server, n) for n in (1, 2)]
            still = server.request("/readyz")
            alive = server.process.poll()
        ready = server.request("/readyz")
        for _ in range(120):  # the writer's probe, within its backoff
            if ready[0] == 200:
                break
            time.sleep(0.05)
            ready = server.request("/readyz")
        again = post(server, 3)
        server.process.terminate()
        code = server.process.wait(timeout=15)
    assert alive is None, server.log_text()
    assert refused == [503, 503]
    for answer in (not_ready, still):
        assert answer[0] == 503
        (problem,) = json.loads(answer[1])["problems"]
        assert problem.startswith("journal not writable: "), problem
    suffix = what if what.startswith("-") else ""
    if what != "folder -R":
        assert problem == (
            f"journal not writable: {f'its {suffix} file: ' if suffix else ''}immutable (chattr +i)"
        )
    assert ready[0] == 200, ready
    assert again == 200
    assert code == 0, server.log_text()
    assert {row["message_id"] for row in rows(db)} == {"MS0000", "MS0003"}


def test_storage_stop_with_an_immutable_shm_does_not_crash_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Closing SQLite's connection writes to the -shm mapping: while it is immutable the
    connection is left open (and the -wal not checkpointed) instead; what was committed
    is read from the -wal at the next start."""
    db = tmp_path / "state" / "j.db"
    with serve(tmp_path, CONFIG.format(db=db)) as server:
        assert post(server, 0) == 200
        with immutable(Path(f"{db}-shm")):
            server.process.terminate()
            code = server.process.wait(timeout=15)
    assert code == 0, server.log_text()
    assert "journal left open" in server.log_text()
    with serve(tmp_path, CONFIG.format(db=db)) as server:
        assert post(server, 1) == 200
    assert {row["message_id"] for row in rows(db)} == {"MS0000", "MS0001"}


def crashed_journal(tmp_path: Path) -> Path:
    """A journal whose process died: its -wal and -shm left beside it."""
    db = existing_journal(tmp_path)
    script = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=WAL')\n"
        "c.execute('PRAGMA user_version = 0')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True)
    assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
    return db


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_storage_immutable_wal_or_shm_refuses_to_start_in_one_line(
    tmp_path: Path, suffix: str
) -> None:
    db = crashed_journal(tmp_path)
    with immutable(Path(f"{db}{suffix}")):
        refused = serve_refused(tmp_path, db)
        listed = subprocess.run(
            [sys.executable, "-m", "receiver.cli", "events", "--config", "receiver.toml"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"},
            timeout=30,
            check=False,
        )
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert lines == [f"receiver: configuration error: journal: {db}{suffix}: immutable (chattr +i)"]
    assert "listening" not in refused.stderr
    # An operator command reads beside a running server: it must not map an immutable
    # -shm either (an immutable -wal it only reads).
    if suffix == "-shm":
        assert listed.returncode == 2, listed.stderr
        assert listed.stderr.strip() == (
            f"receiver: configuration error: journal: {db}-shm: immutable (chattr +i)"
        )
    else:
        assert listed.returncode == 0, listed.stderr
