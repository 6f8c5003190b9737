"""Mount receiver inside a FastAPI app.

FastAPI keeps its own routes (``GET /``); receiver serves callbacks under ``/hooks``:

* ``POST /hooks/whispir``: Whispir callbacks, authenticated by the
  ``X-Whispir-Callback-Key`` header (the key comes from ``$WHISPIR_KEY``);
* ``POST /hooks/diy`` (or ``GET`` with the fields in the query): DIY Surveys callbacks,
  signed with ``X-DIY-Signature`` (AppId and Secret from ``$DIY_APP_ID``/``$DIY_SECRET``);
* ``GET /hooks/healthz``.

Run it::

    WHISPIR_KEY=... DIY_APP_ID=... DIY_SECRET=... uvicorn examples.fastapi_mount:app

The mounted app does not appear in FastAPI's OpenAPI schema: it is a plain ASGI app.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from receiver import Channel, Config, Event, create_app, hookimpl


class Inbox:
    """A tiny plugin: keeps every event and thanks DIY senders in the HTTP response."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)

    @hookimpl
    def on_message(self, event: Event) -> str | None:
        if event.provider == "diy":  # DIY takes the reply in the response
            return f"Thanks, we got your message: {event.text}"
        return None  # a Whispir reply would need a send_reply plugin


DIY_APP_ID = os.environ.get("DIY_APP_ID", "diy-app")
config = Config(
    channels={
        "whispir": Channel(
            provider="whispir",
            auth="header",
            keys=[os.environ.get("WHISPIR_KEY", "change-me")],
        ),
        "diy": Channel(
            provider="diy",
            auth="hmac",
            options={"credentials": {DIY_APP_ID: os.environ.get("DIY_SECRET", "change-me")}},
        ),
    }
)

inbox = Inbox()

app = FastAPI()


@app.get("/")
async def homepage() -> dict[str, str]:
    return {"app": "my app's own page"}


app.mount("/hooks", create_app(config, plugins=[inbox]))
