"""Attack 21: a take-over counting an attempt and its dead letter (``Redelivery._work``,
``_died_handling``), SQLite ``DoneLedger.unheld`` clearing the slots it reads.

Each test asserts the right behaviour; those that fail on the code they were written
against are findings (see each docstring); guards say so. Real parts: real SQLite
files, the real PostgreSQL server (tests/postgres.py), real processes that record or
take over and die without a word, TestClient apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from postgres import postgres_server, postgres_url
from starlette.testclient import TestClient
from test_journal_postgres import event, journal_url

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.journal import open_journal

__all__ = ["journal_url", "postgres_server", "postgres_url"]  # fixtures, used by name


class Counting:
    """Counts what it handles; ``delay`` seconds per message (``started``: ids begun)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.started: list[str] = []
        self.handled: list[str] = []

    @hookimpl
    async def on_message(self, event: Event) -> Reply:
        self.started.append(event.id)
        await asyncio.sleep(self.delay)
        self.handled.append(event.id)
        return Reply(text="ok")


def config(url: str, **extra: Any) -> Config:
    return Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=url,
        journal_lease=1.0,
        **extra,
    )


async def _entries(url: str) -> dict[str, Any]:
    journal = open_journal(url)
    assert journal is not None
    try:
        return {entry.id: entry for entry in await journal.entries(limit=None)}
    finally:
        await journal.stop()


def _wait(condition: Any, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(condition())


_RECORD_AND_DIE = textwrap.dedent(
    """
    import asyncio, os, sys
    from receiver.journal import open_journal
    from receiver.testing import make_event

    async def main():
        journal = open_journal(sys.argv[1], lease=3600.0)
        await journal.start()
        for name in sys.argv[2:]:
            event = make_event("message", text=name, message_id=name)
            await journal.record(event, {}, None)
            print(event.id, flush=True)
        os._exit(0)  # no stop, no release: as kill -9 would leave it

    asyncio.run(main())
    """
)

_TAKE_OVER_AND_DIE = textwrap.dedent(
    """
    import asyncio, os, sys
    from receiver.journal import open_journal

    async def main():
        journal = open_journal(sys.argv[1], lease=3600.0)
        await journal.start()
        taken = await journal.take_over()
        print(" ".join(entry.id for entry in taken), flush=True)
        os._exit(0)  # died on the first of them (the oldest), before the next one's turn

    asyncio.run(main())
    """
)


def _run(script: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


# -- 1. a take-over counts an attempt: healthy callbacks made dead letters -------------------


def test_takeover_healthy_callback_behind_a_poison_one_is_not_a_dead_letter(
    journal_url: str,
) -> None:
    """FINDING. Default ``retry_delays`` (4). Worker W1 records callback P (a poison: its
    handling kills the process, a segfaulting C extension, the OOM killer), then,
    while P is being handled, a healthy callback H; P kills W1 with H in flight. Each
    following worker takes both over (``attempts = attempts + 1`` for both), dispatches
    the oldest first (``_taken`` is sorted by receipt: P) and dies on it before H's
    turn. After four such workers P and H both have ``attempts`` 5, and the next
    worker's ``_work`` makes both dead letters (``attempts > len(retry_delays)``)
    without dispatching either. P is rightly a dead letter; H was answered 200, killed
    no one, and was never dispatched since W1: it is left dead for an operator who may
    never look (Whispir does not send it again). With ``retry_delays = []`` two
    take-overs suffice. The attempt is counted at the take-over, not when the taking
    process starts dispatching the entry, so an entry waiting its turn is blamed for
    the crash of the one before it. Expected: H handled, ``done``."""
    poison, healthy = _run(_RECORD_AND_DIE, journal_url, "POISON", "HEALTHY")
    for _ in range(4):  # four workers each take both over and die on P
        assert sorted(_run(_TAKE_OVER_AND_DIE, journal_url)) == sorted([poison, healthy])
    counting = Counting()
    app = create_app(config(journal_url), plugins=[counting], autoload=False)
    with TestClient(app):
        _wait(lambda: healthy in counting.handled, 6)
    entries = asyncio.run(_entries(journal_url))
    # (These workers died before dispatching either: neither counts a death. The poison's
    # bound is test_attack20's test_workers_poison_callback_is_not_retried_without_bound.)
    assert (healthy in counting.handled, entries[healthy].state) == (True, "done")


def test_takeover_clean_restart_during_a_slow_retry_is_not_a_dead_letter(
    journal_url: str,
) -> None:
    """FINDING. ``retry_delays = []`` (no retries: the README's supported setting, for
    which the last commit promises "a process's crash alone does not make its
    callbacks dead letters"). A process dies with callback X received (a host reboot,
    an unrelated OOM kill). Its successor takes X over (attempts 1) and dispatches it;
    the plugin is slow (a downstream API taking seconds), and the successor is stopped
    cleanly meanwhile (``systemctl restart`` for a deploy, a ``kill -HUP`` of serve
    --workers): the handler past its timeout is cancelled at shutdown, X left
    ``received`` and the lease given up. The next process takes X over (attempts 2)
    and makes it a dead letter ("its process stopped or died while handling it")
    without dispatching it: a healthy callback, interrupted by an operator's restart
    that the stopping process knew was a clean stop, never handled. Expected: X
    dispatched and ``done``."""
    (left,) = _run(_RECORD_AND_DIE, journal_url, "SLOW")
    slow = Counting(delay=5.0)
    app = create_app(
        config(journal_url, retry_delays=[], reply_timeout=0.3, handler_timeout=0.3),
        plugins=[slow],
        autoload=False,
    )
    with TestClient(app):
        assert _wait(lambda: left in slow.started)
        time.sleep(0.5)  # past its timeout: running on, then the clean stop
    assert slow.handled == []
    counting = Counting()
    app = create_app(config(journal_url, retry_delays=[]), plugins=[counting], autoload=False)
    with TestClient(app):
        _wait(lambda: left in counting.handled, 6)
    entries = asyncio.run(_entries(journal_url))
    assert (counting.handled, entries[left].state) == ([left], "done")


# -- 5. SQLite: DoneLedger.unheld clears the slots it reads ----------------------------------


def _dead_pid() -> int:
    """A pid no process has (one just reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_sqlite_ledger_ids_survive_a_take_over_whose_transaction_is_rolled_back(
    tmp_path: Path,
) -> None:
    """FINDING. Process G handled callback X but could not write its ``done`` (the disk
    was full: the very case the done ledger is for), noted X in its ledger slot
    (``j.db-done.1``) and died. A live process's take-over reads the unheld slots
    (``DoneLedger.unheld``), which now zeroes each slot and ``fdatasync``s it at once,
    inside the writer's transaction, before ``_mark_done`` is committed. That
    transaction is a group commit: when anything in the batch fails (another
    operation raising, the COMMIT itself on a still-full disk), the writer rolls it
    back and runs each operation again alone (``Writer._run_batch``). The take-over's
    second run finds the slot empty: X is not marked done, it is taken over as
    ``received`` and handled a second time (the reply sent twice, the ticket opened
    twice). Before this change the slot was re-read (not cleared) and X marked done.
    Expected: X ``done``, not among the entries taken over. (Here the batch partner
    fails with "database or disk is full".)"""
    from receiver.journal import _host

    path = tmp_path / "j.db"

    async def scenario() -> tuple[list[str], str]:
        journal = open_journal(f"sqlite:///{path}")
        assert journal is not None
        await journal.start()  # holds ledger slot 0
        try:
            x = event(1)
            await journal.record(x, {}, None)
            with contextlib.closing(sqlite3.connect(path)) as db, db:
                db.execute(
                    "INSERT INTO processes (id, host, pid, since, lease_until) "
                    "VALUES ('gone-g', ?, ?, 0, 0)",
                    (_host(), _dead_pid()),
                )
                db.execute("UPDATE events SET owner = 'gone-g' WHERE id = ?", (x.id,))
            (tmp_path / "j.db-done.1").write_bytes(x.id.encode() + b"\n")

            def full(connection: sqlite3.Connection) -> None:
                raise sqlite3.OperationalError("database or disk is full")

            submit = journal._submit  # type: ignore[attr-defined]
            # One batch: the writer is busy a moment, both are queued meanwhile.
            busy = asyncio.ensure_future(submit(lambda c: time.sleep(0.3), durable=False))
            await asyncio.sleep(0.1)
            taking = asyncio.ensure_future(journal.take_over())
            await asyncio.sleep(0.02)
            failing = asyncio.ensure_future(submit(full, durable=False))
            await busy
            taken = await taking
            with contextlib.suppress(Exception):
                await failing
            [entry] = await journal.entries(ids=[x.id])
            return [e.id for e in taken], entry.state
        finally:
            await journal.stop()

    assert asyncio.run(scenario()) == ([], "done")


# -- 2. claim(): a done entry with its next attempt ahead -------------------------------------


def test_journal_claim_done_entry_renewed_after_its_done_is_replayable(journal_url: str) -> None:
    """FINDING (low: for one lease). Process A's retry worker handles due entry X; its
    lease keeper computes ``held()`` while X is ``_retrying`` (its ``done`` submitted,
    not yet committed) and renews: the renewal's ``UPDATE ... SET next_attempt_at =
    now + lease WHERE id IN held AND state != 'received'`` runs after the ``done`` (the
    writer's queue order on SQLite, another connection on PostgreSQL). X is ``done``,
    owned by A (``done`` keeps the owner), its next attempt a lease ahead. ``claim()``
    now calls any non-received/failed entry with a live owner and a next attempt
    ahead "being handled": an operator's replay of X (``receiver replay``, the
    console) is refused, "being handled by another process: left alone", though
    nothing handles it (and prune skips it). Expected: a done entry nobody handles is
    replayable."""

    async def scenario() -> bool:
        journal_a = open_journal(journal_url)
        journal_b = open_journal(journal_url)
        assert journal_a is not None and journal_b is not None
        await journal_a.start()
        await journal_b.start()
        try:
            x = event(1)
            await journal_a.record(x, {}, None)
            await journal_a.fail(x.id, "boom", None, time.time() - 1)
            assert [e.id for e in await journal_a.due(time.time())] == [x.id]
            await journal_a.complete(x.id, None)  # the retry succeeded
            await journal_a.renew([x.id])  # held() snapshot taken before the done
            [entry] = await journal_b.entries(ids=[x.id])
            assert entry.state == "done"
            return await journal_b.claim(entry)
        finally:
            await journal_a.stop()
            await journal_b.stop()

    assert asyncio.run(scenario()) is True


def test_journal_claim_dead_letter_of_a_take_over_is_replayable(journal_url: str) -> None:
    """GUARD. A dead letter made by ``_died_handling`` (``fail`` with no next attempt
    after a take-over) is free to claim for a replay by another live process."""

    async def scenario() -> bool:
        journal_a = open_journal(journal_url)
        journal_b = open_journal(journal_url)
        assert journal_a is not None and journal_b is not None
        await journal_a.start()
        await journal_b.start()
        try:
            x = event(1)
            await journal_a.record(x, {}, None)
            await journal_a.renew()
            await journal_a.fail(x.id, "its process died", None, None)
            [entry] = await journal_b.entries(ids=[x.id])
            assert entry.state == "dead"
            return await journal_b.claim(entry)
        finally:
            await journal_a.stop()
            await journal_b.stop()

    assert asyncio.run(scenario()) is True


# -- 3. PostgreSQL _FAILED only on this owner's or unowned entries -----------------------------


def test_journal_failed_replay_of_another_process_entry_is_stored(journal_url: str) -> None:
    """GUARD. Process A records X and handles it (done; its owner stays A). An
    operator's replay in process B (the console) claims X and its plugin fails: the
    failure is stored (B owns X by its claim), not dropped by ``_FAILED``'s owner
    condition; so is the endpoint's first failure after a record, and a retry's after
    ``due()``."""

    async def scenario() -> tuple[str, str, int]:
        journal_a = open_journal(journal_url)
        journal_b = open_journal(journal_url)
        assert journal_a is not None and journal_b is not None
        await journal_a.start()
        await journal_b.start()
        try:
            x, y = event(1), event(2)
            await journal_a.record(x, {}, None)
            await journal_a.complete(x.id, None)
            [entry] = await journal_b.entries(ids=[x.id])
            assert await journal_b.claim(entry)
            await journal_b.fail(x.id, "replay failed", None, time.time() + 60)
            await journal_a.record(y, {}, None)
            await journal_a.fail(y.id, "first", None, time.time() - 1)  # the endpoint's
            assert [e.id for e in await journal_b.due(time.time())] == [y.id]
            await journal_b.fail(y.id, "retry", None, time.time() + 60)  # after due()
            entries = {e.id: e for e in await journal_a.entries(limit=None)}
            return entries[x.id].state, entries[y.id].state, entries[y.id].attempts
        finally:
            await journal_a.stop()
            await journal_b.stop()

    assert asyncio.run(scenario()) == ("failed", "failed", 2)


# -- 4. status_row / STATUS_ID_LIMIT ---------------------------------------------------------


def test_journal_status_of_a_long_multibyte_id_within_the_limit_is_tracked(
    journal_url: str,
) -> None:
    """GUARD. A message id and recipient of 512 characters together, each of four bytes
    in UTF-8 (2,048 bytes, not compressible), are still tracked: the later, lower
    status is flagged out of order, and PostgreSQL's ``message_status`` key holds them
    (under its 2,704-byte B-tree limit). Over the limit: stored, not tracked."""
    from receiver.events import EventType

    long_id = "".join(chr(0x1F600 + n % 80) for n in range(400))
    party = "".join(chr(0x1F300 + n % 200) for n in range(112))
    over = long_id + "x"

    async def scenario() -> tuple[bool, bool, int]:
        journal = open_journal(journal_url)
        assert journal is not None
        await journal.start()
        try:
            statuses = []
            for number, (message_id, status) in enumerate(
                [(long_id, "delivered"), (long_id, "sent"), (over, "delivered"), (over, "sent")]
            ):
                recorded = await journal.record(
                    event(
                        number,
                        type=EventType.receipt,
                        status=status,
                        message_id=message_id,
                        source=party,
                    ),
                    {},
                    None,
                )
                statuses.append(recorded.event.out_of_order)
            return statuses[1], statuses[3], len(await journal.entries(limit=None))
        finally:
            await journal.stop()

    assert asyncio.run(scenario()) == (True, False, 4)
