"""How long a duplicate received by another process waits after its original is handled.

Two apps on one journal stand for two processes. The original goes to the first, whose
handler takes 50 ms, 300 ms or 1 s; a re-send goes to the second 20 ms later and waits
for the original's reply, polling the journal (receiver/endpoint.py ``_reply_of``: 10 ms,
doubling to 50 ms). Printed: how long after the original's handlers finished the
duplicate was answered (median and worst of 8).

    python bench/cross_duplicates.py sqlite:////tmp/dup.db
    python bench/cross_duplicates.py postgresql://user:password@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time

from starlette.testclient import TestClient

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.samples import read

JSON = {"content-type": "application/json"}


class Slow:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished: dict[str, float] = {}

    @hookimpl
    async def on_message(self, event: Event) -> Reply:
        await asyncio.sleep(self.seconds)
        self.finished[event.message_id or ""] = time.monotonic()
        return Reply(text="thanks")


def measure(url: str, seconds: float, rounds: int = 8) -> list[float]:
    slow = Slow(seconds)
    config = Config(channels={"sms": Channel(provider="onepoint", auth="none")}, journal=url)
    first = create_app(config, plugins=[slow], autoload=False)
    second = create_app(config, plugins=[Slow(0)], autoload=False)
    sample = json.loads(read("onepoint", "message_inbound.json"))
    lags = []
    with TestClient(first) as a, TestClient(second) as b:
        for n in range(rounds):
            message_id = f"LAG-{seconds}-{n}-{time.time_ns()}"
            body = json.dumps({**sample, "MessageID": message_id}).encode()
            original = threading.Thread(
                target=a.post, args=("/sms",), kwargs={"content": body, "headers": JSON}
            )
            original.start()
            time.sleep(0.02)
            b.post("/sms", content=body, headers=JSON)
            answered = time.monotonic()
            original.join()
            lags.append((answered - slow.finished[message_id]) * 1000)
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("journal", help="a journal URL (sqlite:///... or postgresql://...)")
    args = parser.parse_args()
    for seconds in (0.05, 0.3, 1.0):
        lags = measure(args.journal, seconds)
        print(
            f"handler {seconds * 1000:5.0f} ms: duplicate answered "
            f"{statistics.median(lags):3.0f} ms (median), {max(lags):3.0f} ms (worst) after "
            "the original's handlers finished"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
