"""How long a prune of a big SQLite journal holds the write lock, and how long a callback
recorded by another process meanwhile waits: one transaction (as before) and batched.

Run: ``.venv/bin/python bench/prune.py`` (``--entries 1000000``, ``--batch 1000``).

A journal file (made by :class:`~receiver.journal.sqlite.SQLiteJournal`) gets
``--entries`` old ``done`` entries (a 300-byte body each, one in ten with an attempt)
and a few thousand recent ones, by direct inserts in one transaction; each scenario runs
on a copy of it. While the prune runs, another process (this script with ``--writer``:
a journal object of its own on the same file, as a ``serve --workers`` worker) records
one callback every 20 ms and reports how long each ``record()`` took, and how many
failed (``database is locked`` past SQLite's 5 s ``busy_timeout``: a 503).

Scenarios:

* ``one transaction``: the statements of the prune before it was batched (every old
  entry's attempts, then the entries, in one transaction), on a connection as the
  journal's (``busy_timeout`` 5 s);
* ``batched N Pms``: :meth:`SQLiteJournal.prune` with ``prune_batch = N`` and
  ``prune_pause = P`` ms (``--pause``; its ``on_commit`` observer gives the longest
  transaction).

Printed: the prune's total seconds, its longest and median write transaction, how many
transactions,
and the concurrent writer's records, worst and 99th percentile wait, failures. Figures
only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from receiver.errors import JournalUnavailable
from receiver.events import Event, EventType, new_event_id
from receiver.journal import PRUNE_PAUSE
from receiver.journal.sqlite import SQLiteJournal
from receiver.journal.sqlite_io import connect

FINISHED = "('done', 'rejected', 'recovered', 'dead')"


def build(path: Path, entries: int) -> None:
    """A journal with ``entries`` old done entries (and attempts), and 5000 recent ones."""

    async def create() -> None:
        journal = SQLiteJournal(path)
        await journal.start()
        await journal.stop()

    asyncio.run(create())
    now = time.time()
    old = now - 90 * 86400
    raw = b"x" * 300
    with connect(path) as connection:
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO events (id, channel, provider, type, state, received_at, raw, "
            "body_hash, attempts) VALUES (?, 'sms', 'onepoint', 'message', 'done', ?, ?, ?, 1)",
            ((f"old-{n:08d}", old + n * 0.001, raw, n.to_bytes(32, "big")) for n in range(entries)),
        )
        connection.executemany(
            "INSERT INTO attempts (event_id, attempt, at, error_type, message) "
            "VALUES (?, 1, ?, 'RuntimeError', 'boom')",
            ((f"old-{n:08d}", old) for n in range(0, entries, 10)),
        )
        connection.executemany(
            "INSERT INTO events (id, channel, provider, type, state, received_at, raw, "
            "body_hash) VALUES (?, 'sms', 'onepoint', 'message', 'done', ?, ?, ?)",
            (
                (f"new-{n:08d}", now - n, raw, (entries + n).to_bytes(32, "big"))
                for n in range(5000)
            ),
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def writer(path: Path, stop: Path, interval: float) -> None:
    """Record a callback every ``interval`` seconds until ``stop`` exists; print the
    seconds each took (JSON) and the failures."""

    async def go() -> dict[str, Any]:
        journal = SQLiteJournal(path)
        started = time.perf_counter()
        await journal.start()
        start_s = time.perf_counter() - started
        waits: list[float] = []
        failures = 0
        number = 0
        print("ready", flush=True)
        while not stop.exists():
            number += 1
            event = Event(
                id=new_event_id(),
                received_at=datetime.now(UTC),
                channel="sms",
                provider="onepoint",
                type=EventType.message,
                raw=f'{{"writer": {number}, "pid": {os.getpid()}}}'.encode(),
            )
            began = time.perf_counter()
            try:
                await journal.record(event, {}, None)
            except JournalUnavailable:
                failures += 1
            waits.append(time.perf_counter() - began)
            await asyncio.sleep(interval)
        await journal.stop()
        return {"start_s": start_s, "waits": waits, "failures": failures}

    print(json.dumps(asyncio.run(go())), flush=True)


def one_transaction(path: Path, older_than: float) -> tuple[int, list[float]]:
    """The prune as it was before batches: one transaction (its statements)."""
    with connect(path) as connection:
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "DELETE FROM attempts WHERE event_id IN (SELECT id FROM events "
            f"WHERE received_at < ? AND state IN {FINISHED})",
            (older_than,),
        )
        count = connection.execute(
            f"DELETE FROM events WHERE received_at < ? AND state IN {FINISHED}", (older_than,)
        ).rowcount
        connection.execute("DELETE FROM message_status WHERE updated_at < ?", (older_than,))
        connection.execute("COMMIT")
        return count, [time.perf_counter() - started]


def batched(path: Path, older_than: float, batch: int, pause: float) -> tuple[int, list[float]]:
    commits: list[float] = []

    async def go() -> int:
        journal = SQLiteJournal(path)
        journal.prune_batch = batch
        journal.prune_pause = pause
        await journal.start()
        journal.on_commit = commits.append
        try:
            return await journal.prune(older_than)
        finally:
            await journal.stop()

    return asyncio.run(go()), commits


def scenario(source: Path, folder: Path, name: str, batch: int | None, pause: float = 0.0) -> None:
    path = folder / "run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(source, path)
    stop = folder / "stop"
    stop.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, __file__, "--writer", str(path), "--stop", str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "ready"
    time.sleep(0.3)
    older_than = time.time() - 86400
    started = time.perf_counter()
    if batch is None:
        count, commits = one_transaction(path, older_than)
    else:
        count, commits = batched(path, older_than, batch, pause)
    took = time.perf_counter() - started
    time.sleep(0.3)
    stop.touch()
    report = json.loads(process.stdout.readline())
    process.wait()
    waits = sorted(report["waits"])
    p99 = waits[int(len(waits) * 0.99)] if waits else 0.0
    median = sorted(commits)[len(commits) // 2]
    print(
        f"{name:<22} {count:>9} {took:>8.2f} {max(commits) * 1000:>11.1f}"
        f" {median * 1000:>10.1f} {len(commits):>6}"
        f" {len(waits):>8} {max(waits) * 1000:>9.1f} {p99 * 1000:>8.1f} {report['failures']:>6}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", default="500,1000,5000", help="batch sizes, comma separated")
    parser.add_argument(
        "--pause",
        default=str(PRUNE_PAUSE),
        help=f"seconds between batches, comma separated (default {PRUNE_PAUSE})",
    )
    parser.add_argument("--no-single", action="store_true", help="skip the one transaction")
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(Path(args.writer), Path(args.stop), 0.02)
        return
    with tempfile.TemporaryDirectory(prefix="prune-bench-") as folder:
        source = Path(folder) / "source.db"
        started = time.perf_counter()
        build(source, args.entries)
        print(
            f"journal: {args.entries} old done entries, built in "
            f"{time.perf_counter() - started:.1f} s, "
            f"{source.stat().st_size / 2**20:.0f} MiB",
            flush=True,
        )
        print(
            f"{'prune':<22} {'entries':>9} {'total s':>8} {'longest ms':>11}"
            f" {'median ms':>10} {'txns':>6}"
            f" {'records':>8} {'wait max':>9} {'wait p99':>8} {'failed':>6}"
        )
        if not args.no_single:
            scenario(source, Path(folder), "one transaction", None)
        for batch in (int(b) for b in args.batch.split(",")):
            for pause in (float(p) for p in args.pause.split(",")):
                name = f"batched {batch} {pause * 1000:g}ms"
                scenario(source, Path(folder), name, batch, pause)


if __name__ == "__main__":
    main()
