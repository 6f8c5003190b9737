"""What a handler's kind costs per event: plain sync (inline), async, and @blocking (thread).

Run: ``.venv/bin/python bench/dispatch.py``. Each row dispatches one Whispir reply to
one no-op ``on_message`` implementation through receiver's dispatcher, N times, in one
event loop; the figure is microseconds per event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from receiver import blocking, hookimpl
from receiver.dispatch import Dispatcher
from receiver.plugins import make_plugin_manager
from receiver.providers import WhispirProvider

BODY = (
    b'{"messageId":"ABC4857BCCF484575FCA","from":{"mobile":"61412345678"},'
    b'"responseMessage":{"channel":"SMS","acknowledged":"09/01/13 13:22","content":"Yes"}}'
)


class Inline:
    @hookimpl
    def on_message(self, event: Any) -> None:
        return None


class Async:
    @hookimpl
    async def on_message(self, event: Any) -> None:
        return None


class Threaded:
    @hookimpl
    @blocking
    def on_message(self, event: Any) -> None:
        return None


async def per_event(plugin: object, count: int) -> float:
    dispatcher = Dispatcher(make_plugin_manager([plugin]))
    event = WhispirProvider().parse(BODY)
    for _ in range(100):
        await dispatcher.dispatch(event)
    start = time.perf_counter()
    for _ in range(count):
        await dispatcher.dispatch(event)
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    print(f"{'handler':<12}{'us/event':>10}")
    for name, plugin, count in (
        ("sync", Inline(), 50_000),
        ("async", Async(), 50_000),
        ("@blocking", Threaded(), 5_000),
    ):
        print(f"{name:<12}{asyncio.run(per_event(plugin, count)):>10.2f}")


if __name__ == "__main__":
    main()
