"""One outcome vocabulary (issue 12): the error table, the failure log line and the metrics
say the same word, and a bug of receiver's own is ``internal_error``, never a plugin's
``handler_error``."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, Event, create_app, hookimpl
from receiver.errors import RESPONSES, Outcome, classify

BODY = b'{"Type":"Receipt","MessageID":"MS1","Status":"Delivered"}'


class _Raises:
    @hookimpl
    def on_receipt(self, event: Event) -> None:
        raise RuntimeError("plugin bug")


def _client(plugins: Any = ()) -> TestClient:
    config = Config(channels={"op": Channel(provider="onepoint", auth="none")}, metrics=True)
    return TestClient(create_app(config, plugins=list(plugins)), raise_server_exceptions=False)


def _counted(client: TestClient, outcome: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("receiver_callbacks_total{") and f'outcome="{outcome}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_outcomes_every_table_entry_is_an_outcome() -> None:
    assert all(isinstance(outcome, Outcome) for _, outcome in RESPONSES.values())
    assert classify(RuntimeError()) == (500, Outcome.internal_error)


def test_outcomes_receivers_own_bug_is_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client()
    provider = client.app.state.endpoint.channels["op"].provider  # type: ignore[attr-defined]

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug in receiver")

    monkeypatch.setattr(provider, "parse", broken)
    with capture_logs() as logs:
        response = client.post("/op", content=BODY)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert _counted(client, "internal_error") == 1
    assert _counted(client, "handler_error") == 0
    assert [e["outcome"] for e in logs if e.get("event") == "callback"] == ["internal_error"]


def test_outcomes_plugin_failure_is_handler_error() -> None:
    client = _client([_Raises()])
    with capture_logs() as logs:
        response = client.post("/op", content=BODY)
    assert response.status_code == 500
    assert _counted(client, "handler_error") == 1
    assert [e["outcome"] for e in logs if e.get("event") == "callback"] == ["handler_error"]


def test_outcomes_url_check_and_accepted_are_told_apart() -> None:
    client = _client()
    assert client.get("/op").status_code == 200
    assert client.post("/op", content=BODY).status_code == 200
    assert _counted(client, "url_check") == 1
    assert _counted(client, "accepted") == 1
