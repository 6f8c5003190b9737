"""Tests for the ASGI app: routing, limits, formats, dispatch, replies, config, logging.

Every config here is HMAC-free (``auth = "none"``, ``"header"`` or ``"query"``); signed
requests are covered by tests/test_auth.py and tests/test_e2e.py. Requests go through
Starlette's TestClient, except where a test must see the ASGI messages themselves
(the body limit on a streamed body) or run requests concurrently (``@blocking``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from samples import PAYLOADS
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import (
    Channel,
    Config,
    ConfigError,
    Event,
    EventType,
    Reply,
    blocking,
    create_app,
    hookimpl,
)

WHISPIR_REPLY = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
ONEPOINT_MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
ONEPOINT_RECEIPT = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
DIY_STOP_QUERY = (PAYLOADS / "diy" / "stop.query").read_text().strip()

KEY = "k3y-Wh1spir-0nly"
JSON = {"content-type": "application/json"}


def make_app(*, plugins: Any = (), **options: Any) -> Any:
    """An app with three open channels and one keyed one, plus ``options``."""
    channels = options.pop(
        "channels",
        {
            "w": Channel(provider="whispir", auth="none"),
            "op": Channel(provider="onepoint", auth="none"),
            "diy": Channel(provider="diy", auth="none"),
            "keyed": Channel(provider="whispir", auth="header", keys=[KEY]),
        },
    )
    return create_app(Config(channels=channels, **options), plugins=plugins)


def client_for(*, plugins: Any = (), **options: Any) -> TestClient:
    return TestClient(make_app(plugins=plugins, **options))


class Recorder:
    """Records every hook call as (hook name, event)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Event]] = []

    def hooks(self) -> list[str]:
        return [name for name, _ in self.calls]

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.calls.append(("on_event", event))

    @hookimpl
    def on_message(self, event: Event) -> None:
        self.calls.append(("on_message", event))

    @hookimpl
    def on_receipt(self, event: Event) -> None:
        self.calls.append(("on_receipt", event))

    @hookimpl
    def on_stop(self, event: Event) -> None:
        self.calls.append(("on_stop", event))


class Replier:
    """Answers every message with a fixed reply (a str or a Reply)."""

    def __init__(self, reply: Reply | str) -> None:
        self.reply = reply

    @hookimpl
    def on_message(self, event: Event) -> Reply | str:
        return self.reply


# --- routing ---------------------------------------------------------------------------


def test_app_unknown_channel_is_404_json() -> None:
    response = client_for().post("/nope", content=WHISPIR_REPLY, headers=JSON)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert "nope" not in body["error"]  # an error body never echoes the request


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_app_other_methods_are_405_with_allow(method: str) -> None:
    recorder = Recorder()
    response = client_for(plugins=[recorder]).request(
        method, "/w", content=WHISPIR_REPLY, headers=JSON
    )
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "POST"}
    assert set(response.json()) == {"error"}
    assert method not in response.json()["error"]
    assert recorder.calls == []


def test_app_healthz_is_ok() -> None:
    response = client_for().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- authentication --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Whispir-Callback-Key": "not-the-key"},
        {"X-Whispir-Callback-Key": KEY[:-1]},
        {"X-Whispir-Callback-Key": ""},
        {"X-Other-Header": KEY},
    ],
    ids=["missing", "wrong", "prefix", "empty", "other-header"],
)
def test_app_wrong_or_missing_key_is_401_without_the_key(headers: dict[str, str]) -> None:
    recorder = Recorder()
    response = client_for(plugins=[recorder]).post(
        "/keyed", content=WHISPIR_REPLY, headers={**JSON, **headers}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]
    assert KEY not in response.text
    assert recorder.calls == []


def test_app_right_key_is_accepted() -> None:
    recorder = Recorder()
    response = client_for(plugins=[recorder]).post(
        "/keyed", content=WHISPIR_REPLY, headers={**JSON, "X-Whispir-Callback-Key": KEY}
    )
    assert response.status_code == 200
    assert recorder.hooks() == ["on_message", "on_event"]


def test_app_allow_ips_refuses_a_client_that_is_not_an_ip() -> None:
    # TestClient's scope["client"] is ("testclient", 50000): not an address, so even a
    # channel allowing every network refuses it (fail closed).
    recorder = Recorder()
    channels = {
        "w": Channel(provider="whispir", auth="none", allow_ips=["0.0.0.0/0", "::/0"]),
    }
    response = client_for(plugins=[recorder], channels=channels).post(
        "/w", content=WHISPIR_REPLY, headers=JSON
    )
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert recorder.calls == []


def test_app_allow_ips_checks_the_client_address() -> None:
    recorder = Recorder()
    channels = {"w": Channel(provider="whispir", auth="none", allow_ips=["203.0.113.0/24"])}
    app = make_app(plugins=[recorder], channels=channels)
    inside = TestClient(app, client=("203.0.113.7", 50000))
    outside = TestClient(app, client=("198.51.100.7", 50000))
    assert outside.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 401
    assert recorder.calls == []
    assert inside.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
    assert recorder.hooks() == ["on_message", "on_event"]


def test_app_allow_ips_ignores_forged_forwarded_for() -> None:
    # The peer is not a trusted proxy, so its X-Forwarded-For is not believed.
    channels = {"w": Channel(provider="whispir", auth="none", allow_ips=["203.0.113.0/24"])}
    client = TestClient(make_app(channels=channels), client=("198.51.100.7", 50000))
    response = client.post(
        "/w", content=WHISPIR_REPLY, headers={**JSON, "X-Forwarded-For": "203.0.113.7"}
    )
    assert response.status_code == 401


# --- body size ------------------------------------------------------------------------


def test_app_body_over_limit_with_content_length_is_413() -> None:
    recorder = Recorder()
    body = b'{"messageId": "' + b"x" * 200_000 + b'"}'
    response = client_for(plugins=[recorder], max_body_bytes=100_000).post(
        "/w", content=body, headers=JSON
    )
    assert response.status_code == 413
    assert set(response.json()) == {"error"}
    assert recorder.calls == []


def test_app_body_at_limit_is_read() -> None:
    body = WHISPIR_REPLY
    response = client_for(max_body_bytes=len(body)).post("/w", content=body, headers=JSON)
    assert response.status_code == 200


def test_app_chunked_body_over_limit_is_413() -> None:
    sent: list[int] = []

    def chunks() -> Any:
        for _ in range(32):  # 32 x 64 KiB = 2 MiB
            sent.append(1)
            yield b"x" * 65536

    recorder = Recorder()
    response = client_for(plugins=[recorder], max_body_bytes=100_000).post(
        "/w", content=chunks(), headers=JSON
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert set(response.json()) == {"error"}
    assert recorder.calls == []


def _scope(path: str, *, method: str = "POST", headers: Any = (), query: bytes = b"") -> Any:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"receiver.test"), *headers],
        "client": ("192.0.2.10", 40000),
        "server": ("receiver.test", 80),
    }


def test_app_streamed_body_over_limit_stops_reading() -> None:
    """Without Content-Length, the app counts bytes as they come and stops at the limit."""
    app = make_app(max_body_bytes=100_000)
    chunk = b"x" * 65536
    total_chunks = 32  # 2 MiB
    pulled: list[int] = []
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if len(pulled) >= total_chunks:
            return {"type": "http.disconnect"}
        pulled.append(len(chunk))
        more = len(pulled) < total_chunks
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = _scope("/w", headers=[(b"content-type", b"application/json")])
    anyio.run(app, scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    assert start["status"] == 413
    # It stopped as soon as the count passed the limit: 2 chunks, not all 32.
    assert len(pulled) <= 2
    assert sum(pulled) <= 100_000 + len(chunk)


def test_app_lying_content_length_does_not_lift_the_limit() -> None:
    app = make_app(max_body_bytes=100_000)
    chunk = b"x" * 65536
    pulled: list[int] = []
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        pulled.append(1)
        return {"type": "http.request", "body": chunk, "more_body": len(pulled) < 32}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = _scope(
        "/w", headers=[(b"content-type", b"application/json"), (b"content-length", b"10")]
    )
    anyio.run(app, scope, receive, send)
    assert messages[0]["status"] == 413
    assert len(pulled) <= 2


# --- body formats -----------------------------------------------------------------------


def test_app_unparseable_json_is_400_with_one_line_reason() -> None:
    recorder = Recorder()
    secret = "SENSITIVE-BODY-TEXT-4711"
    body = b'{"messageId": "ABC", "responseMessage": {"content": "' + secret.encode() + b'"'
    response = client_for(plugins=[recorder]).post("/op", content=body, headers=JSON)
    assert response.status_code == 400
    reason = response.json()["error"]
    assert reason
    assert "\n" not in reason
    assert secret not in response.text
    assert recorder.calls == []
    response = client_for(plugins=[recorder]).post("/w", content=body, headers=JSON)
    assert response.status_code == 400
    assert "\n" not in response.json()["error"]
    assert secret not in response.text


def test_app_form_body_to_whispir_is_415() -> None:
    recorder = Recorder()
    response = client_for(plugins=[recorder]).post(
        "/w",
        content=b"messageId=ABC&content=hello",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert set(response.json()) == {"error"}
    assert recorder.calls == []


def test_app_unrecognizable_body_without_content_type_is_415() -> None:
    recorder = Recorder()
    client = client_for(plugins=[recorder])
    for path in ("/w", "/op", "/diy"):
        response = client.post(path, content=b"\x00\x01garbage")
        assert response.request.headers.get("content-type") is None
        assert response.status_code == 415, path
        assert set(response.json()) == {"error"}
    assert recorder.calls == []


def test_app_json_without_content_type_is_sniffed() -> None:
    recorder = Recorder()
    client = client_for(plugins=[recorder])
    response = client.post("/w", content=WHISPIR_REPLY)
    assert response.request.headers.get("content-type") is None
    assert response.status_code == 200
    response = client.post("/op", content=ONEPOINT_RECEIPT)
    assert response.status_code == 200
    assert recorder.hooks() == ["on_message", "on_event", "on_receipt", "on_event"]


def test_app_whispir_vendor_content_type_is_accepted() -> None:
    recorder = Recorder()
    response = client_for(plugins=[recorder]).post(
        "/w",
        content=WHISPIR_REPLY,
        headers={"content-type": "application/vnd.whispir.message-v1+json"},
    )
    assert response.status_code == 200
    assert recorder.hooks() == ["on_message", "on_event"]
    assert recorder.calls[0][1].message_id == "3F1C7A9E0B2D4C68A5E1"


# --- GET, HEAD and the plain 200 -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/w", "/op", "/diy", "/keyed"])
def test_app_get_and_head_without_callback_fields_are_200_and_not_dispatched(path: str) -> None:
    recorder = Recorder()
    client = client_for(plugins=[recorder])
    for response in (client.get(path), client.head(path), client.get(path + "?hello=1")):
        assert response.status_code == 200
        assert response.content == b""
    assert recorder.calls == []


def test_app_diy_get_with_callback_fields_is_dispatched() -> None:
    recorder = Recorder()
    response = client_for(plugins=[recorder]).get("/diy?" + DIY_STOP_QUERY)
    assert response.status_code == 200
    assert response.content == b""
    assert recorder.hooks() == ["on_stop", "on_event"]
    event = recorder.calls[0][1]
    assert event.type is EventType.stop
    assert event.provider == "diy"
    assert event.channel == "diy"
    assert event.message_id == "MS1312312313007"
    assert event.source == "447700900989"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/w", WHISPIR_REPLY), ("/op", ONEPOINT_MESSAGE), ("/op", ONEPOINT_RECEIPT)],
)
def test_app_accepted_callback_without_reply_is_exactly_200_empty(path: str, body: bytes) -> None:
    response = client_for(plugins=[Recorder()]).post(path, content=body, headers=JSON)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


# --- dispatch ---------------------------------------------------------------------------


def test_app_type_hook_is_called_before_on_event() -> None:
    recorder = Recorder()
    client = client_for(plugins=[recorder])
    assert client.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
    assert client.post("/op", content=ONEPOINT_RECEIPT, headers=JSON).status_code == 200
    assert recorder.hooks() == ["on_message", "on_event", "on_receipt", "on_event"]
    assert recorder.calls[0][1] is recorder.calls[1][1]
    assert recorder.calls[0][1].channel == "w"
    assert recorder.calls[2][1].type is EventType.receipt


def test_app_str_reply_goes_back_in_onepoint_response() -> None:
    response = client_for(plugins=[Replier("Monday 10:00 works")]).post(
        "/op", content=ONEPOINT_MESSAGE, headers=JSON
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "Source": "447860012345",  # the event's destination
        "Destination": "447700900123",  # the event's source
        "Message": "Monday 10:00 works",
    }


def test_app_reply_object_overrides_and_adds_fields() -> None:
    reply = Reply(
        text="See you then",
        source="X",
        destination="Y",
        when="2024-03-06T09:00:00Z",
        metadata={"A": "1"},
    )
    response = client_for(plugins=[Replier(reply)]).post(
        "/op", content=ONEPOINT_MESSAGE, headers=JSON
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {
        "Source": "X",
        "Destination": "Y",
        "Message": "See you then",
        "When": "2024-03-06T09:00:00Z",
        "MetaData": [{"A": "1"}],
    }


def test_app_first_non_none_async_reply_wins() -> None:
    called: list[str] = []

    class Never:
        @hookimpl
        async def on_message(self, event: Event) -> str:
            called.append("never")
            return "too late"

    class Hi:
        @hookimpl
        async def on_message(self, event: Event) -> str:
            called.append("hi")
            return "hi"

    class Nothing:
        @hookimpl
        async def on_message(self, event: Event) -> None:
            called.append("none")
            return None

    # pluggy calls the last registered first: Nothing, then Hi; Never is not reached.
    response = client_for(plugins=[Never(), Hi(), Nothing()]).post(
        "/op", content=ONEPOINT_MESSAGE, headers=JSON
    )
    assert response.status_code == 200
    assert response.json()["Message"] == "hi"
    assert called == ["none", "hi"]


def test_app_whispir_reply_goes_to_send_reply() -> None:
    taken: list[tuple[Event, Reply]] = []

    class Sender:
        @hookimpl
        def send_reply(self, event: Event, reply: Reply) -> bool:
            taken.append((event, reply))
            return True

    response = client_for(plugins=[Sender(), Replier("Yes, bring boots")]).post(
        "/w", content=WHISPIR_REPLY, headers=JSON
    )
    assert response.status_code == 200
    assert response.content == b""
    assert len(taken) == 1
    event, reply = taken[0]
    assert event.provider == "whispir"
    assert event.message_id == "3F1C7A9E0B2D4C68A5E1"
    assert reply == Reply(text="Yes, bring boots")


def test_app_whispir_reply_without_send_reply_is_dropped_with_warning() -> None:
    with capture_logs() as logs:
        response = client_for(plugins=[Replier("nobody sends this")]).post(
            "/w", content=WHISPIR_REPLY, headers=JSON
        )
    assert response.status_code == 200
    assert response.content == b""
    dropped = [e for e in logs if "reply dropped" in e["event"]]
    assert len(dropped) == 1
    assert dropped[0]["log_level"] == "warning"
    assert dropped[0]["channel"] == "w"


def test_app_slow_reply_handler_is_503() -> None:
    class Slow:
        @hookimpl
        async def on_message(self, event: Event) -> str:
            await anyio.sleep(1)
            return "too slow"

    started = time.perf_counter()
    response = client_for(plugins=[Slow()], reply_timeout=0.2).post(
        "/op", content=ONEPOINT_MESSAGE, headers=JSON
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert set(response.json()) == {"error"}
    assert elapsed < 0.9


def test_app_failing_hook_is_500_logged_and_others_still_run() -> None:
    recorder = Recorder()

    class Broken:
        @hookimpl
        def on_message(self, event: Event) -> None:
            raise RuntimeError("plugin bug")

    with capture_logs() as logs:
        response = client_for(plugins=[recorder, Broken()]).post(
            "/w", content=WHISPIR_REPLY, headers=JSON
        )
    assert response.status_code == 500
    assert set(response.json()) == {"error"}
    assert "plugin bug" not in response.text
    assert "on_event" in recorder.hooks()
    event_id = recorder.calls[-1][1].id
    failures = [e for e in logs if e["event"] == "handler failed"]
    assert len(failures) == 1
    assert failures[0]["event_id"] == event_id
    assert failures[0]["log_level"] == "error"
    assert failures[0].get("exc_info")


def test_app_blocking_hook_runs_in_a_worker_thread() -> None:
    threads: dict[str, int] = {}

    class Plugin:
        @hookimpl
        async def on_event(self, event: Event) -> None:
            threads["loop"] = threading.get_ident()

        @hookimpl
        @blocking
        def on_message(self, event: Event) -> None:
            time.sleep(0.05)
            threads["blocking"] = threading.get_ident()

    response = client_for(plugins=[Plugin()]).post("/w", content=WHISPIR_REPLY, headers=JSON)
    assert response.status_code == 200
    assert set(threads) == {"loop", "blocking"}
    assert threads["blocking"] != threads["loop"]
    assert threads["blocking"] != threading.main_thread().ident


def test_app_blocking_hook_does_not_stall_other_requests() -> None:
    class Sleepy:
        @hookimpl
        @blocking
        def on_message(self, event: Event) -> None:
            time.sleep(0.5)

    app = make_app(plugins=[Sleepy()])
    statuses: list[int] = []

    async def post(client: httpx2.AsyncClient) -> None:
        response = await client.post("/w", content=WHISPIR_REPLY, headers=JSON)
        statuses.append(response.status_code)

    async def main() -> float:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://r.test") as client:
            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                group.start_soon(post, client)
                group.start_soon(post, client)
            return time.perf_counter() - started

    elapsed = anyio.run(main)
    assert statuses == [200, 200]
    assert elapsed < 0.9  # two 0.5 s sleeps overlapped


# --- configuration ----------------------------------------------------------------------


def test_app_header_auth_without_keys_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"channels\.sms"):
        create_app(Config(channels={"sms": Channel(provider="whispir", auth="header")}))
    with pytest.raises(ConfigError, match="key"):
        create_app(Config(channels={"sms": Channel(provider="whispir", auth="header", keys=[""])}))


def test_app_hmac_without_credentials_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"channels\.op.*credentials"):
        create_app(Config(channels={"op": Channel(provider="onepoint", auth="hmac")}))


def test_app_unknown_provider_is_config_error_listing_known() -> None:
    with pytest.raises(ConfigError) as info:
        create_app(Config(channels={"x": Channel(provider="twilio", auth="none")}))
    message = str(info.value)
    assert "twilio" in message
    assert "channels.x" in message
    for known in ("whispir", "onepoint", "diy"):
        assert known in message


def test_app_toml_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text(
        '[channels.sms]\nprovider = "diy"\nauth = "none"\nallowed_ips = ["10.0.0.0/8"]\n'
    )
    with pytest.raises(ConfigError) as info:
        create_app(path)
    message = str(info.value)
    assert str(path) in message
    assert "channels.sms" in message
    assert "allowed_ips" in message


def test_app_toml_unknown_top_level_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text('max_body = 5\n[channels.sms]\nprovider = "diy"\nauth = "none"\n')
    with pytest.raises(ConfigError) as info:
        create_app(str(path))
    assert str(path) in str(info.value)
    assert "max_body" in str(info.value)


def test_app_toml_wrong_type_names_key(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text('max_body_bytes = "big"\n[channels.sms]\nprovider = "diy"\nauth = "none"\n')
    with pytest.raises(ConfigError) as info:
        create_app(path)
    assert str(path) in str(info.value)
    assert "max_body_bytes" in str(info.value)
    path.write_text('[channels.sms]\nprovider = "whispir"\nauth = "header"\nkeys = "abc"\n')
    with pytest.raises(ConfigError) as info:
        create_app(path)
    assert "channels.sms.keys" in str(info.value)


def test_app_config_from_receiver_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(
        f'[channels.from-env]\nprovider = "whispir"\nauth = "header"\nkeys = ["{KEY}"]\n'
    )
    monkeypatch.setenv("RECEIVER_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    recorder = Recorder()
    client = TestClient(create_app(plugins=[recorder]))
    response = client.post(
        "/from-env", content=WHISPIR_REPLY, headers={**JSON, "X-Whispir-Callback-Key": KEY}
    )
    assert response.status_code == 200
    assert recorder.hooks() == ["on_message", "on_event"]
    assert client.post("/from-env", content=WHISPIR_REPLY, headers=JSON).status_code == 401


def test_app_open_channel_warns_at_create_app() -> None:
    with capture_logs() as logs:
        create_app(Config(channels={"open": Channel(provider="diy", auth="none")}))
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("channel") == "open"]
    assert len(warnings) == 1
    assert "authentication" in warnings[0]["event"]
    with capture_logs() as logs:
        create_app(Config(channels={"k": Channel(provider="whispir", auth="header", keys=[KEY])}))
    assert [e for e in logs if e["log_level"] == "warning"] == []


# --- logging ----------------------------------------------------------------------------


def test_app_logs_one_callback_line_and_never_the_key() -> None:
    secret = "s3cr3t-key"
    wrong = "wr0ng-k3y-guess"
    channels = {"w": Channel(provider="whispir", auth="query", keys=[secret])}
    client = client_for(channels=channels)

    with capture_logs() as good_logs:
        good = client.post(f"/w?auth={secret}", content=WHISPIR_REPLY, headers=JSON)
    with capture_logs() as bad_logs:
        bad = client.post(f"/w?auth={wrong}", content=WHISPIR_REPLY, headers=JSON)
    assert good.status_code == 200
    assert bad.status_code == 401
    assert secret not in bad.text
    assert wrong not in bad.text

    for entry in [*good_logs, *bad_logs]:
        assert secret not in repr(entry)
        assert wrong not in repr(entry)

    [line] = [e for e in good_logs if e["event"] == "callback"]
    assert line["channel"] == "w"
    assert line["provider"] == "whispir"
    assert line["type"] == "message"
    assert line["message_id"] == "3F1C7A9E0B2D4C68A5E1"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0

    # Rejected before parsing: the line has the channel and status, no event fields.
    [line] = [e for e in bad_logs if e["event"] == "callback"]
    assert line["channel"] == "w"
    assert line["provider"] == "whispir"
    assert line["status"] == 401
    assert isinstance(line["duration_ms"], int | float)
    assert line["log_level"] == "warning"


# --- request ids and the front door -------------------------------------------------------


class ContextSpy:
    """Records structlog's context variables as a handler sees them."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    def on_message(self, event: Event) -> None:
        import structlog

        self.seen.append(structlog.contextvars.get_contextvars())


def _with_user_middleware(app: Any) -> Any:
    class Passthrough:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.inner(scope, receive, send)

    app.add_middleware(Passthrough)
    return app


@pytest.mark.parametrize("way", ["front door", "router"])
def test_app_request_id_is_kept_echoed_and_bound_for_handlers(way: str) -> None:
    spy = ContextSpy()
    app = make_app(plugins=[spy])
    if way == "router":  # user middleware: callbacks take Starlette's usual way
        app = _with_user_middleware(app)
    client = TestClient(app)
    with capture_logs() as logs:
        kept = client.post(
            "/w", content=WHISPIR_REPLY, headers={**JSON, "X-Request-ID": "proxy-abc.123"}
        )
        made = client.post("/w", content=WHISPIR_REPLY, headers=JSON)
        refused = client.post(
            "/w", content=WHISPIR_REPLY, headers={**JSON, "X-Request-ID": "bad id\twith space"}
        )
    assert kept.status_code == made.status_code == refused.status_code == 200
    assert kept.headers["x-request-id"] == "proxy-abc.123"
    assert made.headers["x-request-id"] and made.headers["x-request-id"] != "proxy-abc.123"
    assert refused.headers["x-request-id"] not in ("", "bad id\twith space")
    assert made.headers["x-request-id"] != refused.headers["x-request-id"]
    # The handler ran with the id in structlog's context, and nothing leaks afterwards.
    assert [seen["request_id"] for seen in spy.seen] == [
        "proxy-abc.123",
        made.headers["x-request-id"],
        refused.headers["x-request-id"],
    ]
    import structlog

    assert "request_id" not in structlog.contextvars.get_contextvars()
    assert len([e for e in logs if e["event"] == "callback"]) == 3


def test_app_request_id_is_on_error_answers_too() -> None:
    client = client_for()
    response = client.post("/keyed", content=WHISPIR_REPLY, headers={**JSON, "X-Request-ID": "r-1"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "r-1"
    other = client.get("/healthz", headers={"X-Request-ID": "r-2"})
    assert other.headers["x-request-id"] == "r-2"


@pytest.mark.parametrize("way", ["front door", "router"])
def test_app_forwarded_for_from_a_trusted_proxy_sets_the_client(way: str) -> None:
    # The peer is a trusted proxy (127.0.0.1, the default); only the forwarded address
    # is allowed.
    channels = {"w": Channel(provider="whispir", auth="none", allow_ips=["203.0.113.0/24"])}
    app = make_app(channels=channels)
    if way == "router":
        app = _with_user_middleware(app)
    client = TestClient(app, client=("127.0.0.1", 40000))
    direct = client.post("/w", content=WHISPIR_REPLY, headers=JSON)
    with capture_logs() as logs:
        forwarded = client.post(
            "/w", content=WHISPIR_REPLY, headers={**JSON, "X-Forwarded-For": "203.0.113.9"}
        )
    assert direct.status_code == 401
    assert forwarded.status_code == 200, forwarded.text
    [line] = [e for e in logs if e["event"] == "callback"]
    assert line["client"] == "203.0.113.9"


def test_app_callback_line_names_client_type_and_event() -> None:
    client = client_for()
    with capture_logs() as logs:
        response = client.post("/op", content=ONEPOINT_RECEIPT, headers=JSON)
        refused = client.post("/op", content=b"{not json", headers=JSON)
    assert response.status_code == 200 and refused.status_code == 400
    good, bad = [e for e in logs if e["event"] == "callback"]
    assert good["log_level"] == "info"
    assert good["type"] == "receipt"
    assert good["client"] == "testclient"
    assert good["event_id"] and good["channel"] == "op" and good["provider"] == "onepoint"
    assert bad["log_level"] == "warning"
    assert bad["method"] == "POST" and bad["client"] == "testclient"
    assert bad["reason"] and "{not json" not in bad["reason"]
