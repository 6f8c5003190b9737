"""What :class:`receiver.server.HttpProtocol` adds to each request, next to uvicorn's own
httptools protocol: no sockets, no app work, just the protocol.

Run: ``.venv/bin/python bench/protocol.py`` (about 20 s); ``--instructions`` counts
instructions per request with valgrind instead (the same on a busy host; about a minute).

One connection of each class is driven on a uvloop loop through a fake transport: the
Whispir JSON request of ``bench/load.py`` goes in through ``data_received``, an ASGI app
that reads the body and answers 200 runs, the response comes out; ``--requests`` times in
a row (keep-alive), timed, ``--rounds`` times alternating the classes. The figure is the
best round of each (the least disturbed by the host), in microseconds per request, and
the difference: the cost of the limits, to set against a whole request's CPU time in
``bench/load.py`` (the "CPU us" column). With ``--instructions``, each class is run once
under ``valgrind --tool=cachegrind`` with ``--requests`` requests and once with a tenth
of them: the difference over the count is its instructions per request, to set against
``bench/instructions.py``'s figures (the app's own work, without the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from receiver.server import HttpProtocol  # noqa: E402

BODY = (ROOT / "receiver" / "samples" / "whispir" / "reply_sms.json").read_bytes()
REQUEST = (
    b"POST /sms HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"X-Whispir-Callback-Key: bench-whispir-key\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b""})


async def run(cls: type[HttpToolsProtocol], requests: int) -> float:
    """Seconds per request of ``requests`` on one keep-alive connection of ``cls``."""
    config = Config(app=app, lifespan="off", access_log=False, log_config=None)
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    sleep = asyncio.sleep
    started = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        while protocol.cycle.response_complete is False:
            await sleep(0)
    elapsed = time.perf_counter() - started
    assert transport.written == 2 * requests, transport.written
    protocol.connection_lost(None)
    return elapsed / requests


CLASSES: dict[str, type[HttpToolsProtocol]] = {
    "HttpToolsProtocol": HttpToolsProtocol,
    "HttpProtocol": HttpProtocol,
}


def instructions(name: str, requests: int) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--drive",
            name,
            "--requests",
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    assert found, done.stderr[-500:]
    return int(found[1].replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per request with valgrind"
    )
    parser.add_argument("--drive", choices=CLASSES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:  # one run, under valgrind
        loop = uvloop.new_event_loop()
        loop.run_until_complete(run(CLASSES[args.drive], args.requests))
        return 0
    if args.instructions:
        few = max(1, args.requests // 10)
        counts = {
            name: (instructions(name, args.requests) - instructions(name, few))
            / (args.requests - few)
            for name in CLASSES
        }
        plain, limited = counts["HttpToolsProtocol"], counts["HttpProtocol"]
        print(
            f"valgrind cachegrind, instructions per request ({args.requests:,} requests "
            f"less {few:,}):"
        )
        print(f"  uvicorn HttpToolsProtocol      {plain:9,.0f}")
        print(f"  receiver.server.HttpProtocol   {limited:9,.0f}")
        print(
            f"  the limits cost                {limited - plain:+9,.0f} "
            f"({(limited - plain) / plain:+.1%} of the protocol's)"
        )
        return 0
    loop = uvloop.new_event_loop()
    best: dict[str, float] = {}
    classes: list[type[HttpToolsProtocol]] = [HttpToolsProtocol, HttpProtocol]
    for _ in range(args.rounds):
        for cls in classes:
            seconds = loop.run_until_complete(run(cls, args.requests))
            best[cls.__name__] = min(best.get(cls.__name__, seconds), seconds)
    loop.close()
    plain, limited = best["HttpToolsProtocol"] * 1e6, best["HttpProtocol"] * 1e6
    print(f"{args.requests:,} keep-alive requests per round, best of {args.rounds} rounds:")
    print(f"  uvicorn HttpToolsProtocol      {plain:6.2f} us per request")
    print(f"  receiver.server.HttpProtocol   {limited:6.2f} us per request")
    print(f"  the limits cost                {limited - plain:+6.2f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
