"""Instructions per request, counted by valgrind: the same figure on a busy host as an idle one.

Run: ``.venv/bin/python bench/instructions.py`` (needs ``valgrind``: ``apt-get install
valgrind``; about a minute). ``--only NAME`` (repeat or comma-separate) limits the rows.

The load benchmark (``bench/load.py``) measures the real thing, but on a small shared
machine its requests/s move by a third from one run to the next. This one drives each
app's ASGI callable directly (no server, no sockets: the part of a request that is the
app's own) in a loop, under ``valgrind --tool=cachegrind``, twice: with ``--requests``
requests and with one. The difference divided by the count is the app's instructions per
request, repeatable to a fraction of a percent. Rows: ``baseline`` (the bare Starlette
route of ``bench/apps.py``), the four journal-off receiver scenarios and the two mounted
ones (receiver in FastAPI, the host's stdlib logging at WARNING and at INFO), each with
the same request bytes as in ``bench/load.py``; the ratio column is baseline's count over
the row's (higher is better, 1.0 = as cheap as the bare route).

``--console`` adds two rows: Whispir JSON, one in flight, journal on, with the operator
console off and on (idle: no page open; ``$BENCH_CONSOLE``).

``--journal`` adds three rows: Whispir JSON with 64 requests in flight, with the journal
off, on SQLite (in a temporary folder) and on PostgreSQL (a new database on
``bench/postgres.py``'s server: a throwaway one of its own, or
``$RECEIVER_BENCH_POSTGRES``), duplicate windows 0 as in the load benchmark: in flight,
the SQLite journal's writer commits many callbacks at a time, as under load. Only the
receiver's process is counted: PostgreSQL's own work is in the server's processes (the
load benchmark's "PG CPU us"), SQLite's in the receiver's (its writer thread).

``--uvloop`` drives every row on uvloop's event loop, as ``receiver serve`` and
``bench/load.py`` serve, instead of asyncio's own (the default, as the recorded figures
were counted): the event loop's cost per wake-up differs, which weighs on a journal that
waits for the network several times per callback.

Instructions are not time (a cache miss costs more than an add), but the count moves
with the work done, which is what a change on the request path changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(ROOT))

from bench.load import HOST, Scenario, scenarios  # noqa: E402
from bench.postgres import Postgres, PostgresError  # noqa: E402
from bench.postgres import server as postgres_server  # noqa: E402

ROWS = (
    "baseline",
    "whispir_json",
    "whispir_xml",
    "onepoint_reply",
    "onepoint_hmac",
    "host_baseline",
    "mounted_warning",
    "mounted_info",
    "mounted_fastapi_warning",
    "mounted_fastapi_info",
)
WARM_UP = 300
UVLOOP = False  # --uvloop: the counted runs drive the app on uvloop
IN_FLIGHT = 64
_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _scenario(name: str) -> Scenario:
    return next(s for s in scenarios() if s.name == name and not s.journal)


async def _drive(name: str, count: int, in_flight: int = 1) -> None:
    """Build ``name``'s app, run its lifespan, and send it ``count`` requests (after a
    warm-up), ``in_flight`` at a time, checking every answer is a 200."""
    scenario = _scenario(name)
    app = getattr(importlib.import_module("bench.apps"), name)()
    headers = [(k.lower().encode(), v.encode()) for k, v in scenario.request_headers(8000).items()]
    headers.append((b"content-length", str(len(scenario.body)).encode()))
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, events.put)
    )
    await events.get()
    message = {"type": "http.request", "body": scenario.body, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(sent: dict[str, Any]) -> None:
        if sent["type"] == "http.response.start":
            statuses.append(sent["status"])

    left = WARM_UP + count

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "server": (HOST, 8000), "client": (HOST, 50000), "scheme": "http",
                "method": "POST", "root_path": "", "path": scenario.path,
                "raw_path": scenario.path.encode(),
                "query_string": b"", "headers": list(headers), "state": {},
            }  # fmt: skip
            await app(scope, receive, send)

    await asyncio.gather(*(client() for _ in range(in_flight)))
    if statuses != [200] * len(statuses):
        raise SystemExit(f"{name}: answers other than 200: {sorted(set(statuses))}")
    await startup.put({"type": "lifespan.shutdown"})
    await lifespan


def _count(
    name: str,
    requests: int,
    in_flight: int = 1,
    journal: bool = False,
    console: bool = False,
    pg: Postgres | None = None,
) -> int:
    """Instructions of a whole process that serves ``requests`` requests to ``name``
    (``in_flight`` at a time; with ``journal``, to a new SQLite journal, or with ``pg`` to
    a new PostgreSQL database)."""
    database = pg.database() if pg is not None else None
    with tempfile.TemporaryDirectory(prefix="receiver-instructions-") as temp:
        if database is not None:
            url = database
        else:
            url = f"sqlite:///{temp}/journal.db" if journal else "none"
        env = {
            **os.environ,
            "PYTHONHASHSEED": "0",
            "BENCH_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL") or "info",
            "BENCH_JOURNAL": url,
            "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1",
            "BENCH_CONSOLE": "1" if console else "",
        }
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--drive", name,
             "--requests", str(requests), "--in-flight", str(in_flight),
             *(["--uvloop"] if UVLOOP else [])],
            capture_output=True, text=True, env=env, cwd=ROOT, check=False,
        )  # fmt: skip
    if pg is not None and database is not None:
        pg.drop(database)
    found = _IREFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = "\n".join(done.stderr.splitlines()[-5:])
        raise SystemExit(f"{name}: the counted run failed ({done.returncode}):\n{tail}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, metavar="N")
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument(
        "--journal",
        action="store_true",
        help=f"add Whispir JSON rows with {IN_FLIGHT} requests in flight, "
        "journal off, on SQLite (group commit) and on PostgreSQL",
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="add Whispir JSON rows, journal on, with the operator console off and on (idle)",
    )
    parser.add_argument(
        "--uvloop", action="store_true", help="drive the apps on uvloop (default: asyncio's loop)"
    )
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--in-flight", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        if args.uvloop:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(_drive(args.drive, args.requests, args.in_flight))
        return 0
    global UVLOOP
    UVLOOP = args.uvloop
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    only = [n for item in args.only for n in item.split(",") if n]
    rows = [n for n in ROWS if not only or n in only or n == "baseline"]
    level = os.environ.get("BENCH_LOG_LEVEL") or "info"
    python = sys.version.split()[0]
    loop = "uvloop" if args.uvloop else "asyncio's event loop"
    print(f"valgrind cachegrind, {args.requests} requests after {WARM_UP} warm-up ones, "
          f"logs at {level}; Python {python}; {loop}")  # fmt: skip
    print(f"{'scenario':<28}{'instructions/request':>22}{'x base':>9}")
    base = None
    runs = [(name, name, 1, False, False, False) for name in rows]
    if args.journal:
        runs += [
            (
                f"whispir_json, {IN_FLIGHT} in flight",
                "whispir_json",
                IN_FLIGHT,
                False,
                False,
                False,
            ),
            ("  the same, journal on", "whispir_json", IN_FLIGHT, True, False, False),
            ("  the same, on PostgreSQL", "whispir_json", IN_FLIGHT, True, False, True),
        ]
    if args.console:
        runs += [
            ("whispir_json, journal on", "whispir_json", 1, True, False, False),
            ("  the same, console on", "whispir_json", 1, True, True, False),
        ]
    with contextlib.ExitStack() as stack:
        pg = None
        if any(run[5] for run in runs):
            try:
                pg = stack.enter_context(postgres_server())
            except PostgresError as exc:
                print(f"no PostgreSQL: {exc}", file=sys.stderr)
                return 1
        for label, name, in_flight, journal, console, on_pg in runs:
            server = pg if on_pg else None
            total = _count(name, args.requests, in_flight, journal, console, server)
            one = _count(name, 1, in_flight, journal, console, server)
            per_request = (total - one) / (args.requests - 1)
            base = base or per_request
            print(f"{label:<28}{per_request:>22,.0f}{base / per_request:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
