"""The proof: `kill -9` mid-burst loses no callback that got a 200, and handles none twice."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import httpx2
from serving import serve

CALLBACKS = 2000
KILL_AFTER = 700  # 200s seen before the kill -9
CONCURRENCY = 64

COUNTING_PLUGIN = """
from pathlib import Path
from receiver import hookimpl

COUNTS = Path(__file__).parent.parent / "handled.txt"

@hookimpl
def on_receipt(event):
    with COUNTS.open("a") as sink:
        sink.write(event.message_id + "\\n")
"""

CONFIG = """
journal = "sqlite:///{db}"

[channels.sms]
provider = "onepoint"
auth = "header"
header = "X-Test-Key"
keys = ["crash-test-key"]
"""


def receipt(n: int) -> bytes:
    return json.dumps(
        {
            "Source": "447700900123",
            "Destination": f"4477009{n:05d}",
            "Type": "Receipt",
            "Status": "Delivered",
            "Timestamp": "2026-11-22T10:00:00.000000+00:00",
            "MessageID": f"MS{n:06d}",
        }
    ).encode()


async def burst(base: str, kill: object) -> set[str]:
    """Send every callback; kill the server once KILL_AFTER have been answered 200."""
    accepted: set[str] = set()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(CALLBACKS):
        queue.put_nowait(n)
    limits = httpx2.Limits(max_connections=CONCURRENCY)
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=10) as client:

        async def sender() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                try:
                    response = await client.post(
                        "/sms",
                        content=receipt(n),
                        headers={
                            "X-Test-Key": "crash-test-key",
                            "Content-Type": "application/json",
                        },
                    )
                except httpx2.HTTPError:
                    continue  # the server is gone: this one was not accepted
                if response.status_code == 200:
                    accepted.add(f"MS{n:06d}")
                    if len(accepted) == KILL_AFTER:
                        kill()  # type: ignore[operator]

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
    return accepted


def test_crash_kill_9_loses_no_accepted_callback_and_handles_each_once(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "counting.py").write_text(COUNTING_PLUGIN)
    db = tmp_path / "journal.db"
    config = CONFIG.format(db=db)

    with serve(tmp_path, config, "--plugins-dir", str(plugins)) as first:
        accepted = asyncio.run(burst(first.base, lambda: first.process.send_signal(signal.SIGKILL)))
        assert first.process.wait(timeout=10) == -signal.SIGKILL
    assert KILL_AFTER <= len(accepted) < CALLBACKS  # killed mid-way, with work in flight

    with serve(tmp_path, config, "--plugins-dir", str(plugins)) as second:
        deadline = time.monotonic() + 20
        while True:  # the restarted server resumes what was committed but not handled
            with sqlite3.connect(db) as connection:
                unfinished = connection.execute(
                    "SELECT count(*) FROM events WHERE state = 'received'"
                ).fetchone()[0]
            if unfinished == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=15) == 0
    assert unfinished == 0

    with sqlite3.connect(db) as connection:
        stored = dict(connection.execute("SELECT message_id, state FROM events").fetchall())
    handled = Counter((tmp_path / "handled.txt").read_text().split())

    lost = accepted - stored.keys()
    assert not lost, f"{len(lost)} callbacks answered 200 are not in the journal"
    not_once = {m: handled[m] for m in accepted if handled[m] != 1}
    assert not not_once, f"accepted callbacks not handled exactly once: {not_once}"
    assert {stored[m] for m in accepted} == {"done"}
    # Everything that was committed, even without a 200, was handled once at least.
    assert all(handled[m] >= 1 for m in stored)
    print(
        f"\n{len(accepted)} answered 200 before kill -9; {len(stored)} in the journal; "
        f"{len(stored) - len(accepted)} committed without a 200 and resumed"
    )
