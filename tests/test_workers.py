"""``receiver serve --workers N`` on one journal, and SIGHUP (issue 17, parts 1 and 2).

Real processes on loopback, a real SQLite file; a plugin in ``plugins_dir`` notes each
event it handles, with its process id, in a file (O_APPEND: one line per event).
The load tests (HUP under load, PostgreSQL, replicas) are in test_availability.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from samples import PAYLOADS
from serving import serve, wait_for

MESSAGE = json.loads((PAYLOADS / "onepoint" / "message_inbound.json").read_bytes())
JSON = {"content-type": "application/json"}

PLUGIN = """
import os
from receiver import hookimpl

NOTES = os.environ["COUNT_FILE"]

@hookimpl
def on_message(event):
    fd = os.open(NOTES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{event.message_id} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""


def setup(tmp_path: Path) -> str:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "count.py").write_text(PLUGIN)
    os.environ["COUNT_FILE"] = str(tmp_path / "handled.txt")
    return (
        'journal = "sqlite:///j.db"\n'
        'plugins_dir = "plugins"\n'
        "journal_lease = 2\n"
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )


def body(number: int) -> bytes:
    return json.dumps({**MESSAGE, "MessageID": f"W{number:04d}"}).encode()


def handled(tmp_path: Path) -> Counter[str]:
    notes = tmp_path / "handled.txt"
    lines = notes.read_text().splitlines() if notes.exists() else []
    return Counter(line.split()[0] for line in lines)


def children(pid: int) -> set[int]:
    found = subprocess.run(
        ["ps", "-ww", "--ppid", str(pid), "-o", "pid=,args="], capture_output=True, text=True
    ).stdout
    return {int(line.split()[0]) for line in found.splitlines() if "spawn_main" in line}


def test_workers_share_the_sqlite_journal_and_survive_hup(tmp_path: Path) -> None:
    with serve(tmp_path, setup(tmp_path), "--workers", "2") as server:
        assert wait_for(lambda: len(children(server.process.pid)) == 2)
        before = children(server.process.pid)
        for n in range(30):
            assert server.request("/sms", body(n), JSON)[0] == 200
        server.process.send_signal(signal.SIGHUP)
        # Replaced one at a time: two new workers, the old ones gone.
        assert wait_for(lambda: len(children(server.process.pid) - before) == 2, 40)
        assert wait_for(lambda: children(server.process.pid).isdisjoint(before), 20)
        for n in range(30, 60):
            assert server.request("/sms", body(n), JSON)[0] == 200
        assert wait_for(lambda: len(handled(tmp_path)) == 60)
        with sqlite3.connect(tmp_path / "j.db") as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM events GROUP BY state"))
            owners = db.execute("SELECT COUNT(DISTINCT owner) FROM events").fetchone()[0]
    assert states == {"done": 60}
    assert set(handled(tmp_path).values()) == {1}  # each handled exactly once
    assert owners >= 2  # recorded by more than one process
    assert "Received SIGHUP" in server.log_text()


def test_serve_single_process_ignores_hup(tmp_path: Path) -> None:
    with serve(tmp_path, setup(tmp_path)) as server:
        server.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert server.process.poll() is None  # not killed by the signal's default action
        assert server.request("/sms", body(1), JSON)[0] == 200
        assert wait_for(lambda: "SIGHUP ignored" in server.log_text(), 5)
