"""Attack 17: ownership, several processes on one journal, PostgreSQL group commit.

Each test asserts the right behaviour and fails on the code it was written against.
Real parts: real SQLite files, the real PostgreSQL server (tests/postgres.py), real
``receiver serve`` processes on loopback (tests/serving.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from postgres import postgres_server, postgres_url
from samples import PAYLOADS
from serving import serve, wait_for

__all__ = ["postgres_server", "postgres_url"]  # fixtures, used by name

MESSAGE = json.loads((PAYLOADS / "onepoint" / "message_inbound.json").read_bytes())
JSON = {"content-type": "application/json"}

FAILING = """
from receiver import hookimpl

@hookimpl
def on_message(event):
    raise RuntimeError("downstream is down")
"""


def body(number: int) -> bytes:
    return json.dumps({**MESSAGE, "MessageID": f"A17-{number:04d}"}).encode()


def test_workers_default_journal_keeps_a_failed_callback(tmp_path: Path) -> None:
    # No `journal` setting: `receiver serve` keeps its journal under state_dir
    # (state/receiver.db). With --workers 2 the worker processes must keep it too: a
    # callback whose handler fails is answered 200 because it is stored for a retry.
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "failing.py").write_text(FAILING)
    config = 'plugins_dir = "plugins"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    with serve(tmp_path, config, "--workers", "2") as server:
        assert server.request("/sms", body(1), JSON)[0] == 200
        time.sleep(0.5)
        database = tmp_path / "state" / "receiver.db"
        assert database.exists()
        with sqlite3.connect(database) as db:
            stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert stored == 1, "the worker answered 200 for a failed callback it never stored"


SLOW_RETRY = """
import os, time
from receiver import blocking, hookimpl

FOLDER = os.environ["A17_NOTES"]

@hookimpl
@blocking
def on_message(event):
    try:  # the first attempt at each message fails
        os.close(os.open(os.path.join(FOLDER, "seen-" + event.message_id),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pass
    else:
        raise RuntimeError("first attempt fails")
    time.sleep(0.5)  # a slow downstream (in a thread: the event loop runs on)
    fd = os.open(os.path.join(FOLDER, "handled.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event.message_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""


def handled_counts(folder: Path) -> dict[str, int]:
    notes = folder / "handled.txt"
    counts: dict[str, int] = {}
    for line in notes.read_text().splitlines() if notes.exists() else []:
        counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    return counts


def test_due_claims_of_a_long_retry_batch_are_not_retried_twice(tmp_path: Path) -> None:
    # One worker's due() claims every failed entry (up to 100) a lease ahead, then retries
    # them one after the other; only the one being retried has its claim renewed. When the
    # batch takes longer than journal_lease, the other worker claims the rest too: each is
    # retried by both processes (handled twice), though both are alive and well.
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(SLOW_RETRY)
    notes = tmp_path / "notes"
    notes.mkdir()
    os.environ["A17_NOTES"] = str(notes)
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\njournal_lease = 1\n'
        "retry_delays = [0.3, 60]\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    with serve(tmp_path, config, "--workers", "2") as server:
        for n in range(12):
            assert server.request("/sms", body(n), JSON)[0] == 200
        assert wait_for(lambda: len(handled_counts(notes)) == 12, 40)
        time.sleep(3)
        counts = handled_counts(notes)
    twice = {message: count for message, count in counts.items() if count > 1}
    assert not twice, f"retried by both workers: {twice}"


SURROGATE = """
from receiver import hookimpl

@hookimpl
def on_message(event):
    # A downstream answer decoded leniently: undecodable bytes become lone surrogates.
    raise RuntimeError("downstream said: " + b"\\xff\\xfe".decode("utf-8", "surrogateescape"))
"""


SLOW_HANDLER = """
import os, time
from receiver import blocking, hookimpl

FOLDER = os.environ["A17_NOTES"]

@hookimpl
@blocking
def on_message(event):
    fd = os.open(os.path.join(FOLDER, "handled.txt"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{event.message_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
    time.sleep(8)  # in a thread, longer than reply_timeout: finishes in the background
"""


def test_stopping_worker_keeps_its_lease_while_late_handlers_finish(tmp_path: Path) -> None:
    # A worker stopping (here: replaced by SIGHUP) cancels its lease keeper first, then
    # waits up to max(reply_timeout, handler_timeout) for handlers past their timeout.
    # Its lease (journal_lease) runs out meanwhile: the other worker takes the entry over
    # and handles it again while the first one's handlers still run. Handled once only.
    import signal

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow.py").write_text(SLOW_HANDLER)
    notes = tmp_path / "notes"
    notes.mkdir()
    os.environ["A17_NOTES"] = str(notes)
    config = (
        'journal = "sqlite:///j.db"\nplugins_dir = "plugins"\njournal_lease = 3\n'
        "reply_timeout = 0.5\nhandler_timeout = 12\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    with serve(tmp_path, config, "--workers", "2") as server:
        assert server.request("/sms", body(1), JSON)[0] == 200  # late: finishes later
        server.process.send_signal(signal.SIGHUP)  # both workers replaced, one at a time
        time.sleep(20)
        counts = handled_counts(notes)
        log = server.log_text()
        with sqlite3.connect(tmp_path / "j.db") as db:
            states = [row[0] for row in db.execute("SELECT state FROM events")]
    assert "journal lease lost" not in log  # the event loop was never blocked
    assert states == ["done"]
    assert counts == {"A17-0001": 1}, f"handled {counts} times"


def test_workers_log_level_from_the_command_line_is_kept(tmp_path: Path) -> None:
    # `--log-level` (and `--log-format`) reach the workers only through the environment
    # (RECEIVER_LOG_LEVEL): given on the command line, the workers log at info anyway.
    config = 'journal = "sqlite:///j.db"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    with serve(tmp_path, config, "--workers", "2", "--log-level", "error") as server:
        assert server.request("/sms", body(1), JSON)[0] == 200
        time.sleep(0.5)
        info = [e for e in server.log_events() if e.get("level") in ("info", "warning")]
    assert not info, f"{len(info)} lines below error, e.g. {info[0]['event']!r}"
