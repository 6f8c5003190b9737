"""The apps ``bench/load.py`` serves: one factory per scenario, for ``uvicorn --factory``.

Each factory builds its app in code (no configuration file). The receiver scenarios log
JSON lines to stderr at ``$BENCH_LOG_LEVEL`` (default ``info``: one line per callback, as
``receiver serve`` does) and journal to ``$BENCH_JOURNAL`` (``none`` when unset). The
journal's duplicate windows are 0 so that wrk's identical bodies are stored as new
events rather than answered as duplicates.

Each factory imports what its scenario uses, when called: a server loads FastAPI and
pydantic only for ``naive`` and receiver only for receiver's scenarios, so the peak-RSS
column compares like with like. Every channel is served at ``/sms``; the keys and secrets
are the constants below, which ``bench/load.py`` uses to sign its requests.

The ``mounted_*`` scenarios are receiver as an application's owner mounts it (at
``/hooks``, so the callback path is ``/hooks/sms``) in a Starlette app (``mounted_*``) or
a FastAPI app (``mounted_fastapi_*``) with one route of its own, which has configured the
standard library's ``logging`` (JSON lines to stderr through :class:`JsonLines`, a
formatter such a host writes) and not structlog: the root logger at WARNING or at INFO.
"""

import hmac
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from fastapi import FastAPI

    from receiver import Channel

__all__ = [
    "APP_ID",
    "CHANNEL",
    "KEY_HEADER",
    "MOUNT",
    "ONEPOINT_KEY",
    "SECRET",
    "WHISPIR_KEY",
    "JsonLines",
    "baseline",
    "host_baseline",
    "mounted_fastapi_info",
    "mounted_fastapi_warning",
    "mounted_info",
    "mounted_warning",
    "naive",
    "onepoint_hmac",
    "onepoint_reply",
    "whispir_json",
    "whispir_xml",
]

CHANNEL = "sms"
WHISPIR_KEY = "bench-whispir-key"
KEY_HEADER = "X-Callback-Key"
ONEPOINT_KEY = "bench-onepoint-key"
APP_ID = "bench"
SECRET = "bench-secret"
MOUNT = "/hooks"


# -- baseline: the least an ASGI app can do with a callback ------------------------------


async def _read_and_answer(request: Request) -> Response:
    await request.body()
    return Response(status_code=200)


def baseline() -> Starlette:
    """A bare Starlette app: one POST route that reads the body and answers 200, empty."""
    return Starlette(routes=[Route(f"/{CHANNEL}", _read_and_answer, methods=["POST"])])


# -- naive: what a user writes by hand for Whispir replies ------------------------------


def naive() -> "FastAPI":
    """FastAPI + a pydantic model of the Whispir JSON reply + a callback-key check."""
    from typing import Annotated

    from fastapi import FastAPI, Header, HTTPException
    from fastapi import Response as FastAPIResponse
    from pydantic import BaseModel, Field

    class WhispirSender(BaseModel):
        name: str | None = None
        mri: str | None = None
        mobile: str | None = None
        email: str | None = None
        voice: str | None = None

    class WhispirResponseMessage(BaseModel):
        channel: str | None = None
        acknowledged: str | None = None
        content: str | None = None

    class WhispirReply(BaseModel):
        messageId: str
        messageLocation: str | None = None
        sender: WhispirSender = Field(alias="from")
        responseMessage: WhispirResponseMessage

    def handle_reply(reply: WhispirReply) -> None:
        """The user's business logic: nothing, here."""

    app = FastAPI()

    @app.post(f"/{CHANNEL}")
    async def whispir_callback(
        reply: WhispirReply,
        x_whispir_callback_key: Annotated[str | None, Header()] = None,
    ) -> FastAPIResponse:
        if x_whispir_callback_key is None or not hmac.compare_digest(
            x_whispir_callback_key, WHISPIR_KEY
        ):
            raise HTTPException(status_code=401, detail="bad callback key")
        handle_reply(reply)
        return FastAPIResponse(status_code=200)

    return app


# -- receiver -----------------------------------------------------------------------------


def _plugin(answer: str | None) -> object:
    """A plugin handling messages (answering ``answer``) and receipts (doing nothing)."""
    from receiver import Event, hookimpl

    class BenchPlugin:
        @hookimpl
        def on_message(self, event: Event) -> str | None:
            return answer

        @hookimpl
        def on_receipt(self, event: Event) -> None:
            return None

    return BenchPlugin()


def _receiver(channel: "Channel", plugin: object) -> Starlette:
    from receiver import Config, create_app
    from receiver.config import Console
    from receiver.logs import configure_logging

    configure_logging("json", os.environ.get("BENCH_LOG_LEVEL") or "info")
    console = Console(token="bench-console-token") if os.environ.get("BENCH_CONSOLE") else None
    config = Config(
        channels={CHANNEL: channel},
        journal=os.environ.get("BENCH_JOURNAL") or "none",
        duplicate_window=0,
        duplicate_body_window=0,
        console=console,
    )
    return create_app(config, plugins=[plugin])


def _whispir() -> Starlette:
    from receiver import Channel

    channel = Channel(provider="whispir", auth="header", keys=[WHISPIR_KEY])
    return _receiver(channel, _plugin(None))


def whispir_json() -> Starlette:
    """receiver, Whispir channel with header auth; the bench posts a JSON reply."""
    return _whispir()


def whispir_xml() -> Starlette:
    """receiver, Whispir channel with header auth; the bench posts an XML reply."""
    return _whispir()


def onepoint_reply() -> Starlette:
    """receiver, OnePoint channel (header-key auth); a Message answered "thanks" in the body.

    (The HMAC check is measured on its own by :func:`onepoint_hmac`.)
    """
    from receiver import Channel

    channel = Channel(provider="onepoint", auth="header", header=KEY_HEADER, keys=[ONEPOINT_KEY])
    return _receiver(channel, _plugin("thanks"))


def onepoint_hmac() -> Starlette:
    """receiver, OnePoint channel with HMAC signatures; the bench posts a receipt."""
    from receiver import Channel

    channel = Channel(provider="onepoint", auth="hmac", options={"credentials": {APP_ID: SECRET}})
    return _receiver(channel, _plugin(None))


# -- mounted: receiver in a FastAPI app that configured stdlib logging ----------------------

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every field a record
    carries besides the standard ones (``extra``: receiver's fields land there)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "timestamp": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _mounted(level: int, host: str = "starlette") -> Starlette:
    """receiver's Whispir channel at ``/hooks`` in a ``host`` app ("starlette" or
    "fastapi") whose root logger writes :class:`JsonLines` to stderr at ``level``."""
    from starlette.routing import Mount

    from receiver import Channel, Config, create_app

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    channel = Channel(provider="whispir", auth="header", keys=[WHISPIR_KEY])
    config = Config(
        channels={CHANNEL: channel},
        journal=os.environ.get("BENCH_JOURNAL") or "none",
        duplicate_window=0,
        duplicate_body_window=0,
    )
    hooks = create_app(config, plugins=[_plugin(None)])

    async def home(request: Request) -> Response:
        return Response("the host's own page")

    if host == "fastapi":
        from fastapi import FastAPI

        app = FastAPI()
        app.add_api_route("/", home, methods=["GET"])
        app.mount(MOUNT, hooks)
        return app
    return Starlette(routes=[Route("/", home), Mount(MOUNT, app=hooks)])


def host_baseline() -> Starlette:
    """The bare route of :func:`baseline` mounted as receiver is in ``mounted_*``: what the
    host's own routing costs, without receiver (so a mounted row can be judged against the
    same host with a bare endpoint too)."""
    from starlette.routing import Mount

    async def home(request: Request) -> Response:
        return Response("the host's own page")

    return Starlette(routes=[Route("/", home), Mount(MOUNT, app=baseline())])


def mounted_warning() -> Starlette:
    """receiver's Whispir channel mounted in a Starlette app; its logging at WARNING."""
    return _mounted(logging.WARNING)


def mounted_info() -> Starlette:
    """receiver's Whispir channel mounted in a Starlette app; its logging at INFO."""
    return _mounted(logging.INFO)


def mounted_fastapi_warning() -> Starlette:
    """receiver's Whispir channel mounted in a FastAPI app; its logging at WARNING."""
    return _mounted(logging.WARNING, "fastapi")


def mounted_fastapi_info() -> Starlette:
    """receiver's Whispir channel mounted in a FastAPI app; its logging at INFO."""
    return _mounted(logging.INFO, "fastapi")
