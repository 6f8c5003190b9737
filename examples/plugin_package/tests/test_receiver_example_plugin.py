"""The example plugin, driven through a real receiver app (run: pytest, in this folder)."""

from __future__ import annotations

import json

import pytest
import receiver_example_plugin
from starlette.testclient import TestClient

from receiver import Channel, Config, create_app

STOP = {"Type": "Stop", "Source": "447700900654", "Destination": "60777", "Message": "STOP"}
JOIN = {"Type": "Keyword", "Source": "447700900654", "Destination": "60777", "Message": "join"}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    # Installed plugins (this one too, once pip-installed) would load by themselves:
    # turn that off so that the test sees exactly the plugins it passes.
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    config = Config(channels={"sms": Channel(provider="onepoint", auth="none")})
    return TestClient(create_app(config, plugins=[receiver_example_plugin]))


def test_join_is_answered(client: TestClient) -> None:
    response = client.post("/sms", content=json.dumps(JOIN))
    assert response.status_code == 200
    assert response.json() == {
        "Source": "60777",
        "Destination": "447700900654",
        "Message": receiver_example_plugin.DEFAULT_JOIN_REPLY,
    }


def test_stop_is_recorded(client: TestClient) -> None:
    response = client.post("/sms", content=json.dumps(STOP))
    assert response.status_code == 200
    assert receiver_example_plugin.stopped == ["447700900654"]
