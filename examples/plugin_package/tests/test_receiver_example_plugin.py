"""The example plugin, driven through a real receiver app (run: pytest, in this folder).

The fixtures come from receiver.testing, a pytest plugin installed with receiver:
``receiver_client`` builds an app with only the plugins given, sends it callbacks as the
provider sends them (signed, for an ``hmac`` channel) and records what was dispatched.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from receiver_example_plugin import DEFAULT_JOIN_REPLY, StopAndKeyword

from receiver import ConfigError
from receiver.testing import ReceiverClient, make_event

Client = Callable[..., ReceiverClient]


def make_client(receiver_client: Client, **settings: object) -> ReceiverClient:
    return receiver_client(
        channels={"sms": "onepoint:hmac"},  # signed as OnePoint signs, with a test secret
        settings={"stop_and_keyword": settings},
        plugins=[StopAndKeyword],
    )


def test_join_is_answered(receiver_client: Client) -> None:
    client = make_client(receiver_client)
    response = client.send("sms", "keyword", set={"Message": "join", "Source": "447700900654"})
    assert response.status_code == 200
    client.assert_reply(text=DEFAULT_JOIN_REPLY, destination="447700900654")


def test_other_keyword_is_not_answered(receiver_client: Client) -> None:
    client = make_client(receiver_client)
    client.send("sms", "keyword", set={"Message": "HOURS"})
    client.assert_dispatched("keyword", text="HOURS")
    client.assert_no_reply()


def test_join_reply_from_settings(receiver_client: Client) -> None:
    client = make_client(receiver_client, join_reply="Hi!")
    client.send("sms", "keyword", set={"Message": "JOIN spring"})
    client.assert_reply(text="Hi!")


def test_stop_is_recorded(receiver_client: Client) -> None:
    client = make_client(receiver_client)
    client.send("sms", "stop", set={"Source": "447700900111"})
    client.assert_dispatched("stop", source="447700900111")
    assert client.plugin("stop_and_keyword").stopped == ["447700900111"]


def test_bad_setting_names_the_key(receiver_client: Client) -> None:
    with pytest.raises(ConfigError, match=r"settings\.stop_and_keyword\.join_reply"):
        make_client(receiver_client, join_reply=1)


def test_secret_setting_comes_from_the_environment(
    receiver_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN", "t0ken")
    client = make_client(receiver_client, crm_token="${CRM_TOKEN}")
    assert client.plugin("stop_and_keyword").settings.crm_token == "t0ken"


def test_on_keyword_without_http() -> None:
    plugin = StopAndKeyword()
    assert plugin.on_keyword(make_event("keyword", text="join")).text == DEFAULT_JOIN_REPLY
    assert plugin.on_keyword(make_event("keyword", text="later")) is None
