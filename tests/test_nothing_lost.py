"""Issue 14, parts 1, 3 and 5: nothing a handler produced is lost, timeouts that do not
duplicate side effects, and a 503 (not uvicorn's 500) for a callback cut off at shutdown.

Real apps (TestClient, or ``httpx2.ASGITransport`` for concurrent requests), real SQLite
files read back through a connection of our own, and a real ``receiver serve``.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from samples import PAYLOADS
from serving import serve
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, Reply, blocking, create_app, hookimpl
from receiver.journal import REPLY_ONLY

WHISPIR_REPLY = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
ONEPOINT_MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
ONEPOINT_DELIVERED = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
ONEPOINT_SENT = (PAYLOADS / "onepoint" / "receipt_sent.json").read_bytes()
JSON = {"content-type": "application/json"}

# The journal tests' helpers: one SQLite file, read through a connection of our own.
from test_journal import db_path, decode, onepoint, rows, state_of, wait_until  # noqa: E402


def make_app(tmp_path: Path, *, plugins: Any = (), journal: bool = True, **options: Any) -> Any:
    """``/w``: Whispir (a reply goes to send_reply); ``/sms``: OnePoint (in the body)."""
    channels = {
        "w": Channel(provider="whispir", auth="none"),
        "sms": Channel(provider="onepoint", auth="none"),
    }
    url = f"sqlite:///{db_path(tmp_path)}" if journal else "none"
    app = create_app(Config(channels=channels, journal=url, **options), plugins=plugins)
    if app.state.redelivery is not None:
        app.state.redelivery.poll_interval = 0.02
    return app


class Replier:
    """on_message replies "reply N"; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        self.calls += 1
        return Reply(text=f"reply {self.calls}")


class FlakySender:
    """send_reply raises the first ``failures`` times (always when None), then takes it."""

    def __init__(self, failures: int | None = None) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str | None, float]] = []

    @hookimpl
    def send_reply(self, event: Event, reply: Reply) -> bool:
        self.calls.append((event.id, reply.text, time.monotonic()))
        if self.failures is None or len(self.calls) <= self.failures:
            raise ConnectionError("provider API down")
        return True


# -- 1. a reply that could not be delivered is kept and retried ------------------------


def test_undelivered_reply_is_kept_retried_with_backoff_then_done(tmp_path: Path) -> None:
    replier, sender = Replier(), FlakySender(failures=2)
    app = make_app(tmp_path, plugins=[replier, sender], retry_delays=[0.4, 0.1, 0.1])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        first = client.post("/w", content=WHISPIR_REPLY, headers=JSON)
        assert first.status_code == 200  # the event is safe
        (row,) = rows(db)
        assert row["state"] == "reply_failed"  # visible in `receiver events`
        assert decode(row["reply"])["text"] == "reply 1"
        assert decode(row["failed_plugins"]) == [REPLY_ONLY]
        assert "send_reply failed" in row["error"]
        assert row["attempts"] == 1
        # A re-send meanwhile is a duplicate: the handlers do not run again.
        again = client.post("/w", content=WHISPIR_REPLY, headers=JSON)
        assert again.status_code == 200
        assert wait_until(lambda: state_of(db, row["id"]) == "done", timeout=5)
    (row,) = rows(db)
    assert row["attempts"] == 3
    assert row["error"] is None and row["failed_plugins"] is None
    assert decode(row["reply"])["text"] == "reply 1"
    assert replier.calls == 1  # the handlers ran exactly once; only the reply was re-sent
    assert [(event_id, text) for event_id, text, _ in sender.calls] == [(row["id"], "reply 1")] * 3
    assert sender.calls[1][2] - sender.calls[0][2] >= 0.35  # after the first delay


def test_undelivered_reply_becomes_a_dead_letter_and_replay_resends_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    replier, sender = Replier(), FlakySender()
    app = make_app(tmp_path, plugins=[replier, sender], retry_delays=[0.02, 0.02])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
        event_id = rows(db)[0]["id"]
        assert wait_until(lambda: state_of(db, event_id) == "dead")
        time.sleep(0.1)  # a dead letter is not retried any more
    (row,) = rows(db)
    assert row["attempts"] == 3
    assert decode(row["failed_plugins"]) == [REPLY_ONLY]
    assert len(sender.calls) == 3
    assert replier.calls == 1

    # `receiver replay --dead` re-sends the stored reply; the handlers do not run.
    sender.failures = 0
    app = make_app(tmp_path, plugins=[replier, sender])

    async def replay() -> None:
        entry = (await app.state.journal.entries(ids=[event_id]))[0]
        try:
            assert await app.state.redelivery.retry(entry, all_plugins=True)
        finally:
            await app.state.journal.stop()

    asyncio.run(replay())
    assert state_of(db, event_id) == "done"
    assert replier.calls == 1
    assert len(sender.calls) == 4


def test_send_reply_failure_without_journal_is_200_and_runs_handlers_once(
    tmp_path: Path,
) -> None:
    replier, sender = Replier(), FlakySender()
    app = make_app(tmp_path, plugins=[replier, sender], journal=False)
    with TestClient(app) as client:
        response = client.post("/w", content=WHISPIR_REPLY, headers=JSON)
    assert response.status_code == 200  # a 5xx would have the handlers run again
    assert replier.calls == 1
    assert len(sender.calls) == 1


# -- 1. the retry worker survives ------------------------------------------------------


class FailOnce:
    """on_receipt raises on each event's first call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.calls.append(event.id)
        if self.calls.count(event.id) == 1:
            raise RuntimeError("first time")


def test_retry_worker_survives_an_entry_whose_retry_raises(tmp_path: Path) -> None:
    plugin = FailOnce()
    app = make_app(tmp_path, plugins=[plugin], retry_delays=[0.3, 0.05, 0.05])
    db = db_path(tmp_path)
    journal = app.state.journal
    complete = journal.complete
    poisoned: list[str] = []

    async def broken_complete(event_id: str, reply: Reply | None) -> None:
        if event_id == poisoned[0] and poisoned.count(event_id) == 1:
            poisoned.append(event_id)
            raise RuntimeError("journal hiccup")  # inside the worker, not a handler
        await complete(event_id, reply)

    journal.complete = broken_complete
    with TestClient(app) as client:
        for body in (ONEPOINT_DELIVERED, ONEPOINT_SENT):
            assert client.post("/sms", content=body, headers=JSON).status_code == 200
        first, second = (row["id"] for row in rows(db))
        poisoned.append(first)
        assert wait_until(lambda: state_of(db, second) == "done", timeout=5)  # next entry
        assert wait_until(lambda: state_of(db, first) == "done", timeout=5)  # and again
        assert app.state.redelivery.problem() is None
        assert client.get("/readyz").status_code == 200
    assert poisoned == [first, first]
    assert sorted(plugin.calls) == sorted([first, first, first, second, second])


def test_readyz_is_503_when_the_retry_worker_died(tmp_path: Path) -> None:
    class Fatal(BaseException):
        pass

    app = make_app(tmp_path, plugins=[Replier()])

    async def dying_due(now: float, limit: int = 100) -> list[Any]:
        raise Fatal("the worker's own bug")

    app.state.journal.due = dying_due
    with TestClient(app) as client:
        assert wait_until(lambda: app.state.redelivery.problem() is not None)
        response = client.get("/readyz")
    assert response.status_code == 503
    (problem,) = response.json()["problems"]
    assert "retry worker stopped" in problem and "Fatal" in problem


# -- 3. timeouts that do not duplicate side effects ------------------------------------


class SlowBlocking:
    """A @blocking on_message sleeping ``seconds``, then replying (or raising, per call)."""

    def __init__(self, seconds: float, fail_first: bool = False) -> None:
        self.seconds = seconds
        self.fail_first = fail_first
        self.calls = 0
        self.finished = 0
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    @hookimpl
    @blocking
    def on_message(self, event: Event) -> str:
        with self.lock:
            self.calls += 1
            calls = self.calls
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.seconds if calls == 1 else 0)
            if self.fail_first and calls == 1:
                raise RuntimeError("failed after the timeout")
            return f"late reply {calls}"
        finally:
            with self.lock:
                self.running -= 1
                self.finished += 1


class Sent:
    @hookimpl
    def send_reply(self, event: Event, reply: Reply) -> bool:
        self.replies = [*getattr(self, "replies", []), (event.id, reply.text)]
        return True


def test_blocking_handler_past_timeout_is_200_finishes_and_is_done(tmp_path: Path) -> None:
    slow, sent = SlowBlocking(0.6), Sent()
    app = make_app(tmp_path, plugins=[slow, sent], reply_timeout=0.2, retry_delays=[0.05])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        elapsed = time.monotonic() - started
        assert response.status_code == 200  # the event is safe
        assert response.content == b""  # no reply in time: it goes to send_reply
        assert elapsed < 0.5
        (row,) = rows(db)
        assert row["state"] == "received"  # still running, not marked failed
        assert wait_until(lambda: state_of(db, row["id"]) == "done")
        time.sleep(0.2)  # and is not retried
    (row,) = rows(db)
    assert row["attempts"] == 1
    assert decode(row["reply"])["text"] == "late reply 1"
    assert slow.calls == slow.finished == 1
    assert sent.replies == [(row["id"], "late reply 1")]


def test_blocking_handler_failing_after_timeout_is_recorded_failed_and_retried(
    tmp_path: Path,
) -> None:
    slow = SlowBlocking(0.4, fail_first=True)
    app = make_app(tmp_path, plugins=[slow, Sent()], reply_timeout=0.1, retry_delays=[0.2])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON).status_code == 200
        event_id = rows(db)[0]["id"]
        assert wait_until(lambda: state_of(db, event_id) == "failed")
        assert wait_until(lambda: state_of(db, event_id) == "done")
    (row,) = rows(db)
    assert row["attempts"] == 2
    assert slow.calls == 2
    assert slow.most_at_once == 1  # never run twice at once


def test_duplicate_while_late_handler_runs_does_not_run_it_again(tmp_path: Path) -> None:
    slow = SlowBlocking(0.6)
    app = make_app(tmp_path, plugins=[slow, Sent()], reply_timeout=0.1)
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON).status_code == 200
        client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)  # waits as before
        assert wait_until(lambda: [r["state"] for r in rows(db)] == ["done"])
    assert slow.calls == 1


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_time_waiting_for_a_thread_does_not_count(tmp_path: Path, journal: bool) -> None:
    class Each:
        calls = 0

        @hookimpl
        @blocking
        def on_message(self, event: Event) -> str:
            time.sleep(0.35)
            return "in time"

    app = make_app(
        tmp_path, plugins=[Each()], journal=journal, reply_timeout=0.6, blocking_threads=1
    )
    second_body = onepoint(ONEPOINT_MESSAGE, Message="another message")

    async def scenario() -> list[tuple[int, bytes, float]]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://r.test") as client:

            async def post(body: bytes) -> tuple[int, bytes, float]:
                started = time.monotonic()
                response = await client.post("/sms", content=body, headers=JSON)
                return response.status_code, response.content, time.monotonic() - started

            try:
                return await asyncio.gather(post(ONEPOINT_MESSAGE), post(second_body))
            finally:
                if journal:
                    await app.state.redelivery.stop()
                    await app.state.journal.stop()

    results = asyncio.run(scenario())
    assert sorted(elapsed for *_, elapsed in results)[1] > 0.6  # one queued behind the other
    for status, content, _ in results:
        assert status == 200
        assert msgspec.json.decode(content)["Message"] == "in time"


def test_without_journal_a_timeout_is_still_503(tmp_path: Path) -> None:
    slow = SlowBlocking(0.5)
    app = make_app(tmp_path, plugins=[slow], journal=False, reply_timeout=0.1)
    with TestClient(app) as client:
        response = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
    assert response.status_code == 503


# -- 5. shutdown -----------------------------------------------------------------------

SHUTDOWN_CONFIG = """
[channels.open]
provider = "diy"
auth = "none"
"""

DIY_GET = "/open?Type=Stop&Source=447700900123&Destination=60777&MessageID=MS1"

STUCK_PLUGIN = """
import asyncio
from pathlib import Path
from receiver import hookimpl

HERE = Path(__file__).parent

@hookimpl
async def on_stop(event):
    if (HERE / "stuck").exists():
        (HERE / "entered").touch()
        await asyncio.sleep(60)
    with open(HERE / "handled", "a") as handled:
        handled.write(event.id + "\\n")
"""


def test_callback_cut_off_at_shutdown_is_503_and_resumed_at_next_start(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stuck.py").write_text(STUCK_PLUGIN)
    (plugins / "stuck").touch()
    args = ("--plugins-dir", str(plugins), "--shutdown-timeout", "1")
    with serve(tmp_path, SHUTDOWN_CONFIG, *args) as server:
        results: list[tuple[int, bytes]] = []
        client = threading.Thread(target=lambda: results.append(server.request(DIY_GET)))
        client.start()
        wait_until(lambda: (plugins / "entered").exists(), timeout=10)
        assert (plugins / "entered").exists()
        server.process.send_signal(signal.SIGTERM)
        client.join(timeout=15)
        assert server.process.wait(timeout=15) == 0
    assert len(results) == 1
    status, body = results[0]
    assert status == 503, server.log_text()
    assert b"shutting down" in body
    assert "Exception in ASGI application" not in server.log_text()
    db = tmp_path / "state" / "receiver.db"
    (row,) = rows(db)
    assert row["state"] == "received"  # left for the next start

    (plugins / "stuck").unlink()
    with serve(tmp_path, SHUTDOWN_CONFIG, *args):
        assert wait_until(lambda: state_of(db, row["id"]) == "done", timeout=10)
    assert (plugins / "handled").read_text().split() == [row["id"]]


class CrmDown:
    """on_event raises until ``up`` is set: a plugin beside the one that replies."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.calls += 1
        if not self.up:
            raise RuntimeError("crm down")


def test_reply_of_one_plugin_still_answered_when_another_plugin_fails(tmp_path: Path) -> None:
    """Issue 14 part 1 (found while fixing it): a reply one plugin gave was dropped when
    another plugin for the same event raised. It is answered (OnePoint: in the body); the
    failed plugin alone is retried, and the replier is not run again."""
    replier, crm = Replier(), CrmDown()
    app = make_app(tmp_path, plugins=[replier, crm], retry_delays=[0.05])
    with TestClient(app) as client:
        response = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        assert response.status_code == 200
        assert "reply 1" in response.text
        ((entry_id, state),) = [(row["id"], row["state"]) for row in rows(db_path(tmp_path))]
        assert state == "failed"
        crm.up = True
        assert wait_until(lambda: state_of(db_path(tmp_path), entry_id) == "done")
    assert (replier.calls, crm.calls) == (1, 2)
