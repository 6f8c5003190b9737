"""The dispatcher (issue 12): one loop for every kind of implementation, wrappers refused
at start-up, and redelivery usable without an ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from receiver import Channel, Config, ConfigError, Event, EventType, blocking, create_app, hookimpl
from receiver.dispatch import Dispatcher
from receiver.events import new_event_id
from receiver.journal import SQLiteJournal
from receiver.plugins import make_plugin_manager
from receiver.redelivery import Redelivery


def _event(kind: EventType = EventType.message) -> Event:
    return Event(
        id=new_event_id(),
        received_at=datetime.now(UTC),
        channel="c",
        provider="onepoint",
        type=kind,
        raw=b"{}",
        text="hi",
    )


class _Wrapper:
    @hookimpl(wrapper=True)
    def on_message(self, event: Event) -> Generator[None, Any, Any]:
        return (yield)


def test_dispatch_hook_wrapper_is_refused_at_app_build() -> None:
    config = Config(channels={"op": Channel(provider="onepoint", auth="none")})
    with pytest.raises(ConfigError, match="wrapper"):
        create_app(config, plugins=[_Wrapper()])


def test_dispatch_one_loop_mixes_kinds_in_pluggy_order_with_first_reply() -> None:
    calls: list[str] = []

    class Sync:
        @hookimpl
        def on_message(self, event: Event) -> None:
            calls.append("sync")

    class Async:
        @hookimpl
        async def on_message(self, event: Event) -> str:
            calls.append("async")
            return "from async"

    class Blocking:
        @hookimpl
        @blocking
        def on_message(self, event: Event) -> str:
            calls.append("blocking")
            return "from blocking"

    class Every:
        @hookimpl
        def on_event(self, event: Event) -> None:
            calls.append("event")

    # pluggy calls the last registered first: Blocking, Async (stops the type hook), ...
    dispatcher = Dispatcher(make_plugin_manager([Every(), Sync(), Async(), Blocking()]))
    reply = asyncio.run(dispatcher.dispatch(_event()))
    assert reply is not None and reply.text == "from blocking"
    assert calls == ["blocking", "event"]


def test_dispatch_only_named_plugins_are_retried() -> None:
    calls: list[str] = []

    class One:
        @hookimpl
        def on_receipt(self, event: Event) -> None:
            calls.append("one")

    class Two:
        @hookimpl
        def on_receipt(self, event: Event) -> None:
            calls.append("two")

    manager = make_plugin_manager([])
    manager.register(One(), name="one")
    manager.register(Two(), name="two")
    asyncio.run(Dispatcher(manager).dispatch(_event(EventType.receipt), only={"two"}))
    assert calls == ["two"]


def test_dispatch_redelivery_retries_without_an_asgi_app(tmp_path: Path) -> None:
    seen: list[str] = []

    class Flaky:
        def __init__(self) -> None:
            self.fail = True

        @hookimpl
        def on_receipt(self, event: Event) -> None:
            if self.fail:
                raise RuntimeError("down")
            seen.append(event.id)

    flaky = Flaky()
    manager = make_plugin_manager([])
    manager.register(flaky, name="flaky")

    async def scenario() -> tuple[str, list[str]]:
        journal = SQLiteJournal(tmp_path / "j.db")
        await journal.start()
        redelivery = Redelivery(journal, Dispatcher(manager), [0.0])
        event = _event(EventType.receipt)
        await journal.record(event, {}, None)
        (entry,) = await _entries(journal)
        assert not await redelivery.retry(entry)  # fails: scheduled again
        flaky.fail = False
        (entry,) = await _entries(journal)
        assert entry.state == "failed" and entry.failed_plugins == ["flaky"]
        assert await redelivery.retry(entry)
        (entry,) = await _entries(journal)
        await journal.stop()
        return entry.state, seen

    state, dispatched = asyncio.run(scenario())
    assert state == "done"
    assert len(dispatched) == 1


async def _entries(journal: SQLiteJournal) -> list[Any]:
    return await journal.entries(limit=None)


def test_dispatch_firstresult_is_what_the_hookspec_declares() -> None:
    """Issue 15: the dispatcher's "first reply wins" comes from each hookspec's
    ``firstresult`` flag, not from a list of its own."""
    from receiver.dispatch import Dispatcher
    from receiver.plugins import make_plugin_manager

    plugin = type(
        "AllHooks",
        (),
        {f"on_{t.value}": hookimpl(lambda self, event: None) for t in EventType},
    )()
    manager = make_plugin_manager([("all", plugin)])
    dispatcher = Dispatcher(manager)
    for event_type in EventType:
        hook = f"on_{event_type.value}"
        declared = bool(getattr(manager.hook, hook).spec.opts.get("firstresult"))
        (impl,) = [i for i in dispatcher.plan(event_type).impls if i.hook == hook]
        assert impl.answers is declared, hook
    assert {t.value for t in EventType if t.is_response_type} == {"message", "keyword"}


class _SlowSender:
    """Replies to every message; its send_reply hangs past reply_timeout."""

    name = "slow_sender"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @hookimpl
    def on_message(self, event: Event) -> str:
        return "thanks"

    @hookimpl
    @blocking
    def send_reply(self, event: Event, reply: Any) -> bool:
        import time

        time.sleep(self.seconds)
        return True


def test_dispatch_send_reply_is_bounded_by_reply_timeout(tmp_path: Path) -> None:
    """A send_reply that hangs does not hold the callback: past reply_timeout the
    delivery has failed (kept with the entry for a retry), and Whispir gets its 200."""
    import sqlite3
    import time

    from samples import payload
    from starlette.testclient import TestClient

    database = tmp_path / "r.db"
    config = Config(
        channels={"w": Channel(provider="whispir", auth="none")},
        journal=f"sqlite:///{database}",
        reply_timeout=0.3,
        retry_delays=[60.0],
    )
    app = create_app(config, plugins=[_SlowSender(3.0)], autoload=False)
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post(
            "/w",
            content=payload("whispir", "reply_sms.json"),
            headers={"Content-Type": "application/json"},
        )
        took = time.monotonic() - started
    assert response.status_code == 200
    assert took < 2.0
    with sqlite3.connect(database) as conn:
        (state,) = conn.execute("SELECT state FROM events").fetchone()
        errors = [row[0] for row in conn.execute("SELECT error_type FROM attempts")]
    assert state == "reply_failed"
    assert errors == ["TimeoutError"]
