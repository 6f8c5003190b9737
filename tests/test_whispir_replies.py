"""The first-party ``whispir_replies`` plugin: replies to Whispir callbacks sent through
Whispir's messages API (``send_reply``).

Each app is built with ``create_app(Config(...))`` (its ``[settings.whispir_replies]``
table turns the plugin on) and driven with real Whispir callback bodies from
tests/payloads/whispir/; a small plugin replies from ``on_message``. Whispir is a real
HTTP server on 127.0.0.1 (tests/sink.py) that records what it is sent.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from samples import payload
from sink import Sink, running_sink
from starlette.testclient import TestClient
from structlog.testing import capture_logs
from test_journal import decode, rows, state_of, wait_until

from receiver import Channel, Config, ConfigError, Event, Reply, create_app, hookimpl, load_config
from receiver.contrib.whispir_replies import MEDIA_TYPE, WhispirReplies, WhispirReplyError
from receiver.journal import REPLY_ONLY

JSON = {"content-type": "application/json"}
REPLY_SMS = payload("whispir", "reply_sms.json")  # from 61412345678, SMS
REPLY_EMAIL = payload("whispir", "reply_email.json")  # from mei.chen@example.com.au
REPLY_CUSTOM = payload("whispir", "reply_sms_custom_parameters.json")
REPLY_VOICE = payload("whispir", "reply_voice.json")
PERSON = "61412345678"
TEXT = "Yes: steel caps required, see you at 7"
API_KEY = "k3y-0f-the-test-account"
USERNAME = "acme.api"
PASSWORD = "pa55-w0rd-not-logged"
WORKSPACE = "9A4C5521FFC7B15B"


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def whispir() -> Iterator[Sink]:
    """A stand-in for Whispir's API: answers 202 with a Location, like Whispir."""
    with running_sink() as sink:
        sink.status = 202
        sink.headers = {
            "Location": f"http://127.0.0.1/workspaces/{WORKSPACE}/messages/ABC?apikey=x",
            "Content-Type": MEDIA_TYPE,
        }
        yield sink


class Replier:
    """on_message answers every Whispir reply with ``reply``."""

    def __init__(self, reply: Reply | str = TEXT) -> None:
        self.reply = reply
        self.calls = 0

    @hookimpl
    def on_message(self, event: Event) -> Reply | str:
        self.calls += 1
        return self.reply


def base_url(sink: Sink) -> str:
    return sink.url.removesuffix("/events")


def settings_for(sink: Sink, **changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "base_url": base_url(sink),
        "api_key": API_KEY,
        "username": USERNAME,
        "password": PASSWORD,
        "workspace": WORKSPACE,
        "backoff": 0.01,
    }
    settings.update(changes)
    return {key: value for key, value in settings.items() if value is not None}


def make_app(
    settings: dict[str, Any],
    *,
    replier: object | None = None,
    tmp_path: Path | None = None,
    channels: tuple[str, ...] = ("w",),
    **options: Any,
) -> Any:
    """Whispir channels (open), the plugin's table, a Replier; a journal in ``tmp_path``."""
    config = Config(
        channels={name: Channel(provider="whispir", auth="none") for name in channels},
        settings={"whispir_replies": settings},
        journal=f"sqlite:///{tmp_path / 'r.db'}" if tmp_path is not None else "none",
        retry_delays=options.pop("retry_delays", [60.0]),
        **options,
    )
    app = create_app(config, plugins=[replier if replier is not None else Replier()])
    if app.state.redelivery is not None:
        app.state.redelivery.poll_interval = 0.02
    return app


def plugin_of(app: Any) -> WhispirReplies:
    plugin = app.state.plugin_manager.get_plugin("whispir_replies")
    assert isinstance(plugin, WhispirReplies)
    return plugin


def post(client: TestClient, body: bytes = REPLY_SMS, channel: str = "w") -> Any:
    response = client.post(f"/{channel}", content=body, headers=JSON)
    assert response.status_code == 200
    assert response.content == b""  # Whispir never gets the reply in the response
    return response


def sent(sink: Sink, index: int = 0) -> dict[str, Any]:
    return json.loads(sink.requests[index].body)  # type: ignore[no-any-return]


def header(sink: Sink, name: str, index: int = 0) -> str | None:
    lowered = {key.lower(): value for key, value in sink.requests[index].headers.items()}
    return lowered.get(name.lower())


def whispir_body(base: bytes = REPLY_SMS, **changes: Any) -> bytes:
    data = json.loads(base)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data).encode()


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port: int = listener.getsockname()[1]
    return port  # nothing listens there any more: connection refused


# -- the request Whispir gets ---------------------------------------------------------------


def test_whispir_replies_sms_reply_is_posted_to_workspace_messages(whispir: Sink) -> None:
    with capture_logs() as logs:
        post(TestClient(make_app(settings_for(whispir))))
    (request,) = whispir.requests
    assert request.head.startswith(f"POST /workspaces/{WORKSPACE}/messages HTTP/1.1".encode())
    assert request.path == f"/workspaces/{WORKSPACE}/messages"  # no query: no ?apikey=
    assert header(whispir, "x-api-key") == API_KEY
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert header(whispir, "Authorization") == f"Basic {basic}"
    assert header(whispir, "Content-Type") == "application/vnd.whispir.message-v1+json"
    assert header(whispir, "Accept") == "application/vnd.whispir.message-v1+json"
    assert sent(whispir) == {"to": PERSON, "subject": "", "body": TEXT}
    (done,) = [e for e in logs if e["event"] == "whispir reply sent"]
    assert done["attempts"] == 1
    assert done["to"] == "********678"
    # The Location is logged without its query (a legacy ?apikey= would be a secret).
    assert done["location"] == f"http://127.0.0.1/workspaces/{WORKSPACE}/messages/ABC"


def test_whispir_replies_without_workspace_posts_to_messages_under_base_path(
    whispir: Sink,
) -> None:
    settings = settings_for(whispir, workspace=None, base_url=base_url(whispir) + "/api/")
    post(TestClient(make_app(settings)))
    assert whispir.requests[0].path == "/api/messages"


def test_whispir_replies_callback_id_and_custom_parameters_are_carried(whispir: Sink) -> None:
    settings = settings_for(whispir, callback_id="receiver replies", subject="Acme")
    post(TestClient(make_app(settings)), REPLY_CUSTOM)
    assert sent(whispir) == {
        "to": "61467890123",
        "subject": "Acme",
        "body": TEXT,
        "callbackId": "receiver replies",
        "callbackParameters": {"CustomID": "7f3a9c2e5b1d4e8f", "CustomID2": "ticket-55120"},
    }


def test_whispir_replies_custom_parameters_only_with_carry_parameters(whispir: Sink) -> None:
    settings = settings_for(whispir, callback_id="cb", carry_parameters=False)
    post(TestClient(make_app(settings)), REPLY_CUSTOM)
    assert sent(whispir)["callbackId"] == "cb"
    assert "callbackParameters" not in sent(whispir)


def test_whispir_replies_without_callback_id_sends_no_callback_fields(whispir: Sink) -> None:
    post(TestClient(make_app(settings_for(whispir))), REPLY_CUSTOM)
    assert "callbackId" not in sent(whispir)
    assert "callbackParameters" not in sent(whispir)


def test_whispir_replies_email_reply_uses_the_email_channel(whispir: Sink) -> None:
    post(TestClient(make_app(settings_for(whispir))), REPLY_EMAIL)
    assert sent(whispir) == {
        "to": "mei.chen@example.com.au",
        "subject": "Re: your message",
        "email": {"type": "text/plain", "body": TEXT},
    }


def test_whispir_replies_reply_destination_and_extra_fields_win(whispir: Sink) -> None:
    reply = Reply(text="hi", destination="61400000001", extra={"label": "auto-reply"})
    post(TestClient(make_app(settings_for(whispir), replier=Replier(reply))))
    assert sent(whispir) == {
        "to": "61400000001",
        "subject": "",
        "body": "hi",
        "label": "auto-reply",
    }


def test_whispir_replies_unknown_channel_is_answered_on_the_senders_mobile(whispir: Sink) -> None:
    post(TestClient(make_app(settings_for(whispir))), payload("whispir", "reply_channel_na.json"))
    (request,) = whispir.requests
    assert "body" in json.loads(request.body)


# -- replies it does not take ---------------------------------------------------------------


def test_whispir_replies_voice_reply_is_not_taken(whispir: Sink) -> None:
    with capture_logs() as logs:
        post(TestClient(make_app(settings_for(whispir))), REPLY_VOICE)
    assert whispir.requests == []
    events = [e["event"] for e in logs]
    assert "whispir reply not sent: medium not supported" in events
    assert "reply dropped: no send_reply plugin took it" in events  # never silent


def test_whispir_replies_channels_limit_which_events_are_taken(whispir: Sink) -> None:
    app = make_app(settings_for(whispir, channels=["w"]), channels=("w", "w2"))
    with capture_logs() as logs:
        post(TestClient(app), channel="w2")
    assert whispir.requests == []
    assert any(e["event"] == "reply dropped: no send_reply plugin took it" for e in logs)
    post(TestClient(app), channel="w")
    assert len(whispir.requests) == 1


def test_whispir_replies_other_provider_event_is_not_taken(whispir: Sink) -> None:
    plugin = plugin_of(make_app(settings_for(whispir)))
    event = msgspec.convert(
        {
            "id": "e1",
            "received_at": "2026-01-01T00:00:00Z",
            "channel": "w",
            "provider": "onepoint",
            "type": "message",
            "raw": "",
            "source": PERSON,
            "medium": "sms",
        },
        Event,
    )
    assert plugin.send_reply(event, Reply(text="x")) is None
    assert whispir.requests == []


def test_whispir_replies_event_without_address_is_a_failure(whispir: Sink, tmp_path: Path) -> None:
    app = make_app(settings_for(whispir), tmp_path=tmp_path)
    with capture_logs() as logs, TestClient(app) as client:
        post(client, whispir_body(**{"from": None}))
    assert whispir.requests == []
    (row,) = rows(tmp_path / "r.db")
    assert row["state"] == "reply_failed"
    assert any(e["event"] == "whispir reply has no address to go to" for e in logs)


# -- failures: each makes send_reply raise; the journal keeps the reply ----------------------


def failed_row(tmp_path: Path) -> dict[str, Any]:
    (row,) = rows(tmp_path / "r.db")
    assert row["state"] == "reply_failed"
    assert decode(row["failed_plugins"]) == [REPLY_ONLY]
    assert decode(row["reply"])["text"] == TEXT
    assert "send_reply failed" in row["error"]
    return row


def test_whispir_replies_server_error_is_retried_then_fails(whispir: Sink, tmp_path: Path) -> None:
    whispir.status = 500
    app = make_app(settings_for(whispir, retries=2), tmp_path=tmp_path)
    with capture_logs() as logs, TestClient(app) as client:
        post(client)
    assert len(whispir.requests) == 3  # one call: the first attempt and two retries
    failed_row(tmp_path)
    (error,) = [e for e in logs if e["event"] == "whispir reply not sent"]
    assert error["reason"] == "answered 500"
    assert error["attempts"] == 3


def test_whispir_replies_server_error_then_accepted_is_sent(whispir: Sink, tmp_path: Path) -> None:
    whispir.statuses = [503, 502]
    app = make_app(settings_for(whispir, retries=2), tmp_path=tmp_path)
    with TestClient(app) as client:
        post(client)
    assert len(whispir.requests) == 3
    assert [sent(whispir, i) for i in range(3)] == [sent(whispir)] * 3
    (row,) = rows(tmp_path / "r.db")
    assert row["state"] == "done"


def test_whispir_replies_backoff_doubles_between_attempts(whispir: Sink) -> None:
    whispir.status = 429
    app = make_app(settings_for(whispir, retries=3, backoff=0.25))
    waits: list[float] = []
    plugin_of(app).sleep = waits.append
    post(TestClient(app))
    assert len(whispir.requests) == 4
    assert waits == [0.25, 0.5, 1.0]


def test_whispir_replies_backoff_really_waits(whispir: Sink) -> None:
    whispir.status = 500
    app = make_app(settings_for(whispir, retries=1, backoff=0.2))
    started = time.monotonic()
    post(TestClient(app))
    assert time.monotonic() - started >= 0.2
    assert len(whispir.requests) == 2


def test_whispir_replies_timeout_is_retried_then_fails(whispir: Sink, tmp_path: Path) -> None:
    whispir.delay = 1.0  # past the timeout
    app = make_app(settings_for(whispir, timeout=0.2, retries=1), tmp_path=tmp_path)
    with capture_logs() as logs, TestClient(app) as client:
        started = time.monotonic()
        post(client)
        assert time.monotonic() - started < 1.5  # bounded: 2 x 0.2 s and the backoff
    assert len(whispir.requests) == 2
    failed_row(tmp_path)
    (error,) = [e for e in logs if e["event"] == "whispir reply not sent"]
    assert "timed out" in error["reason"]


def test_whispir_replies_connection_refused_is_retried_then_fails(tmp_path: Path) -> None:
    settings = {
        "base_url": f"http://127.0.0.1:{closed_port()}",
        "api_key": API_KEY,
        "username": USERNAME,
        "password": PASSWORD,
        "retries": 2,
        "backoff": 0.01,
    }
    app = make_app(settings, tmp_path=tmp_path)
    with capture_logs() as logs, TestClient(app) as client:
        post(client)
    failed_row(tmp_path)
    attempts = [e for e in logs if e["event"] == "whispir reply attempt failed"]
    assert [e["attempt"] for e in attempts] == [1, 2, 3]
    assert "refused" in attempts[0]["reason"].lower()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_whispir_replies_client_error_is_not_retried_but_fails(
    whispir: Sink, tmp_path: Path, status: int
) -> None:
    whispir.status = status
    app = make_app(settings_for(whispir, retries=2), tmp_path=tmp_path)
    with TestClient(app) as client:
        post(client)
    assert len(whispir.requests) == 1
    failed_row(tmp_path)


def test_whispir_replies_redirect_is_not_followed(whispir: Sink, tmp_path: Path) -> None:
    whispir.status = 301
    app = make_app(settings_for(whispir, retries=2), tmp_path=tmp_path)
    with TestClient(app) as client:
        post(client)
    assert [r.path for r in whispir.requests] == [f"/workspaces/{WORKSPACE}/messages"]
    failed_row(tmp_path)


def test_whispir_replies_failed_reply_is_redelivered_by_the_journal(
    whispir: Sink, tmp_path: Path
) -> None:
    whispir.statuses = [500]  # the first call fails (no retries in it), the next is taken
    replier = Replier()
    app = make_app(
        settings_for(whispir, retries=0), replier=replier, tmp_path=tmp_path, retry_delays=[0.1]
    )
    db = tmp_path / "r.db"
    with TestClient(app) as client:
        post(client)
        (row,) = rows(db)
        assert row["state"] == "reply_failed"
        assert wait_until(lambda: state_of(db, row["id"]) == "done", timeout=5)
    assert len(whispir.requests) == 2
    assert sent(whispir, 0) == sent(whispir, 1) == {"to": PERSON, "subject": "", "body": TEXT}
    assert replier.calls == 1  # only the reply was sent again


class Keep:
    """on_message keeps the events and answers none (the test calls send_reply itself)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_message(self, event: Event) -> None:
        self.events.append(event)


def test_whispir_replies_second_call_for_a_sent_reply_sends_nothing(whispir: Sink) -> None:
    keep = Keep()
    app = make_app(settings_for(whispir), replier=keep)
    post(TestClient(app))
    plugin = plugin_of(app)
    assert plugin.send_reply(keep.events[0], Reply(text=TEXT)) is True
    assert plugin.send_reply(keep.events[0], Reply(text=TEXT)) is True
    assert len(whispir.requests) == 1
    assert plugin.send_reply(keep.events[0], Reply(text="another reply")) is True
    assert len(whispir.requests) == 2


def test_whispir_replies_failure_raises_whispir_reply_error(whispir: Sink) -> None:
    whispir.status = 500
    keep = Keep()
    app = make_app(settings_for(whispir, retries=0), replier=keep)
    post(TestClient(app))
    assert whispir.requests == []
    with pytest.raises(WhispirReplyError, match="answered 500") as raised:
        plugin_of(app).send_reply(keep.events[0], Reply(text=TEXT))
    assert len(whispir.requests) == 1
    assert base_url(whispir) in str(raised.value)
    assert API_KEY not in str(raised.value) and PERSON not in str(raised.value)


# -- secrets ----------------------------------------------------------------------------------


def write_config(tmp_path: Path, sink: Sink, **extra: str) -> Path:
    lines = [
        f'journal = "sqlite:///{tmp_path / "r.db"}"',
        "retry_delays = [60]",
        "[channels.w]",
        'provider = "whispir"',
        'auth = "none"',
        "[settings.whispir_replies]",
        f'base_url = "{base_url(sink)}"',
        'api_key = "${WHISPIR_TEST_KEY}"',
        'username = "${WHISPIR_TEST_USER}"',
        'password = "${WHISPIR_TEST_PASSWORD}"',
        f'workspace = "{WORKSPACE}"',
        "retries = 1",
        "backoff = 0.01",
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    path = tmp_path / "receiver.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPIR_TEST_KEY", API_KEY)
    monkeypatch.setenv("WHISPIR_TEST_USER", USERNAME)
    monkeypatch.setenv("WHISPIR_TEST_PASSWORD", PASSWORD)


def test_whispir_replies_secrets_come_from_environment_in_toml(
    whispir: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch)
    config = load_config(write_config(tmp_path, whispir))
    with TestClient(create_app(config, plugins=[Replier()])) as client:
        post(client)
    assert header(whispir, "x-api-key") == API_KEY
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert header(whispir, "Authorization") == f"Basic {basic}"


def test_whispir_replies_secrets_never_logged_nor_journaled(
    whispir: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch)
    whispir.statuses = [500, 500]  # fail once (two attempts), kept for redelivery
    config = load_config(write_config(tmp_path, whispir))
    basic = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    with capture_logs() as logs:
        app = create_app(config, plugins=[Replier()])
        with TestClient(app) as client:
            post(client)
            post(client, REPLY_CUSTOM)
    assert len(whispir.requests) == 3
    failed = [e for e in logs if e["event"] == "whispir reply not sent"]
    assert len(failed) == 1
    assert any(e["event"] == "plugin on" and e.get("plugin") == "whispir_replies" for e in logs)
    text = repr(logs)
    for secret in (API_KEY, PASSWORD, basic, "WHISPIR_TEST"):
        assert secret not in text
    assert TEXT not in text  # nor the reply text
    assert PERSON not in json.dumps([e.get("to") for e in logs])  # addresses masked
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("r.db*"))
    assert stored  # the journal is there, with the reply
    for secret in (API_KEY, PASSWORD, basic):
        assert secret.encode() not in stored


def test_whispir_replies_unset_secret_variable_is_a_config_error(
    whispir: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch)
    monkeypatch.delenv("WHISPIR_TEST_PASSWORD")
    config = load_config(write_config(tmp_path, whispir))
    with pytest.raises(ConfigError, match=r"settings\.whispir_replies\.password") as raised:
        create_app(config, plugins=[Replier()])
    assert API_KEY not in str(raised.value)


def test_whispir_replies_secret_from_file(
    whispir: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch)
    (tmp_path / "key").write_text("key-from-a-file\n")
    path = write_config(tmp_path, whispir)
    path.write_text(path.read_text().replace("${WHISPIR_TEST_KEY}", f"file:{tmp_path / 'key'}"))
    with TestClient(create_app(load_config(path), plugins=[Replier()])) as client:
        post(client)
    assert header(whispir, "x-api-key") == "key-from-a-file"


# -- one process, two apps --------------------------------------------------------------------


def test_whispir_replies_two_apps_each_send_with_their_own_settings() -> None:
    with running_sink() as first, running_sink() as second:
        first.status = second.status = 202
        one = make_app(settings_for(first, api_key="key-one", callback_id="one"))
        two = make_app(settings_for(second, api_key="key-two", workspace=None, subject="Two"))
        post(TestClient(one))
        post(TestClient(two))
        post(TestClient(one), REPLY_EMAIL)
    assert [header(first, "x-api-key", i) for i in range(2)] == ["key-one", "key-one"]
    assert [r.path for r in first.requests] == [f"/workspaces/{WORKSPACE}/messages"] * 2
    assert sent(first)["callbackId"] == "one"
    assert header(second, "x-api-key") == "key-two"
    assert second.requests[0].path == "/messages"
    assert sent(second) == {"to": PERSON, "subject": "Two", "body": TEXT}
    assert plugin_of(one) is not plugin_of(two)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"timeout": "soon"}, "settings.whispir_replies.timeout"),
        ({"timeout": 0}, "settings.whispir_replies.timeout"),
        ({"retries": -1}, "settings.whispir_replies.retries"),
        ({"retries": 1.5}, "settings.whispir_replies.retries"),
        ({"backoff": -0.5}, "settings.whispir_replies.backoff"),
        ({"channels": "w"}, "settings.whispir_replies.channels"),
        ({"api_key": None}, "api_key"),
        ({"apikey": "x"}, "apikey"),
        ({"base_url": "ftp://api.au.whispir.com"}, "settings.whispir_replies.base_url"),
        ({"base_url": "https://u:p@api.au.whispir.com"}, "settings.whispir_replies.base_url"),
        ({"base_url": "https://api.au.whispir.com?apikey=x"}, "settings.whispir_replies.base_url"),
        ({"workspace": "../users"}, "settings.whispir_replies.workspace"),
        ({"password": ""}, "settings.whispir_replies.password"),
    ],
)
def test_whispir_replies_bad_settings_are_config_errors(
    whispir: Sink, change: dict[str, Any], where: str
) -> None:
    settings = settings_for(whispir)
    settings.update(change)
    settings = {key: value for key, value in settings.items() if value is not None}
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        make_app(settings)


def test_whispir_replies_settings_strings_convert_and_default(whispir: Sink) -> None:
    app = make_app(settings_for(whispir, timeout="2.5", retries="1", backoff=None))
    settings = plugin_of(app).settings
    assert settings is not None
    assert (settings.timeout, settings.retries, settings.backoff) == (2.5, 1, 0.5)
    assert settings.callback_id is None and settings.channels is None


def test_whispir_replies_slow_worst_case_is_warned(whispir: Sink) -> None:
    with capture_logs() as logs:
        app = make_app(settings_for(whispir, timeout=20, retries=2, backoff=1))
    assert plugin_of(app).worst_case == 63.0
    (warning,) = [e for e in logs if "longer than Whispir waits" in e["event"]]
    assert warning["log_level"] == "warning"
    with capture_logs() as logs:
        make_app(settings_for(whispir))
    assert not [e for e in logs if "longer than Whispir waits" in e["event"]]


def test_whispir_replies_off_without_its_table() -> None:
    app = create_app(Config(channels={"w": Channel(provider="whispir", auth="none")}))
    assert app.state.plugin_manager.get_plugin("whispir_replies") is None
    plugin = WhispirReplies()
    plugin.configure(Config())
    assert plugin.settings is None
