"""The example plugin, driven through a real receiver app (run: pytest, in this folder)."""

from __future__ import annotations

import json

import pytest
from receiver_example_plugin import DEFAULT_JOIN_REPLY, StopAndKeyword
from starlette.testclient import TestClient

from receiver import Channel, Config, ConfigError, create_app

STOP = {"Type": "Stop", "Source": "447700900654", "Destination": "60777", "Message": "STOP"}
JOIN = {"Type": "Keyword", "Source": "447700900654", "Destination": "60777", "Message": "join"}
CHANNELS = {"sms": Channel(provider="onepoint", auth="none")}


def make_client(**settings: object) -> tuple[TestClient, StopAndKeyword]:
    plugin = StopAndKeyword()
    config = Config(channels=CHANNELS, settings={"stop_and_keyword": settings})
    # autoload=False: only the plugins given (this one is also installed, once pip-installed)
    return TestClient(create_app(config, plugins=[plugin], autoload=False)), plugin


def test_join_is_answered() -> None:
    client, _ = make_client()
    response = client.post("/sms", content=json.dumps(JOIN))
    assert response.status_code == 200
    assert response.json() == {
        "Source": "60777",
        "Destination": "447700900654",
        "Message": DEFAULT_JOIN_REPLY,
    }


def test_join_reply_from_settings() -> None:
    client, _ = make_client(join_reply="Hi!")
    assert client.post("/sms", content=json.dumps(JOIN)).json()["Message"] == "Hi!"


def test_stop_is_recorded() -> None:
    client, plugin = make_client()
    assert client.post("/sms", content=json.dumps(STOP)).status_code == 200
    assert plugin.stopped == ["447700900654"]


def test_bad_setting_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"settings\.stop_and_keyword\.join_reply"):
        make_client(join_reply=1)


def test_secret_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", "t0ken")
    _, plugin = make_client(crm_token="${CRM_TOKEN}")
    assert plugin.settings.crm_token == "t0ken"
