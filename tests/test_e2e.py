"""End to end over real HTTP: a uvicorn server on 127.0.0.1, requests sent with httpx2.

One server serves every test in this module (started once, in a background thread).
HMAC signatures are made with receiver.testing.sign_onepoint.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import httpx2
import pytest
import uvicorn
from samples import payload

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.testing import sign_onepoint

WHISPIR_KEY = "e2e-whispir-7d1c0b9a"
QUERY_KEY = "e2e-query-5a4f3e2d"
DIY_KEY = "e2e-diy-3c2b1a09"
APP_ID = "E2E-APP"
SECRET = "e2e-s3cr3t-8e7d6c5b"
MAX_BODY = 64 * 1024
JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"


class Recorder:
    """A plugin that records every event and answers inbound messages."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.sent: list[tuple[Event, Reply]] = []
        self.lock = threading.Lock()

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        return Reply(text=f"Thanks, got {event.message_id}")

    @hookimpl
    def send_reply(self, event: Event, reply: Reply) -> bool:
        with self.lock:
            self.sent.append((event, reply))
        return True

    @hookimpl
    def on_event(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def find(self, message_id: str) -> Event:
        with self.lock:
            found = [event for event in self.events if event.message_id == message_id]
        assert len(found) == 1, f"{len(found)} events with message id {message_id}"
        return found[0]


class Server:
    def __init__(self, base_url: str, recorder: Recorder) -> None:
        self.base_url = base_url
        self.recorder = recorder
        self.client = httpx2.Client(base_url=base_url, timeout=5.0)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    recorder = Recorder()
    config = Config(
        max_body_bytes=MAX_BODY,
        channels={
            "whispir": Channel(provider="whispir", auth="header", keys=[WHISPIR_KEY]),
            "whispir-query": Channel(provider="whispir", auth="query", keys=[QUERY_KEY]),
            "sms": Channel(
                provider="onepoint", auth="hmac", options={"credentials": {APP_ID: SECRET}}
            ),
            "diy": Channel(provider="diy", auth="header", header="X-DIY-Key", keys=[DIY_KEY]),
        },
    )
    app = create_app(config, plugins=[recorder])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not uv.started:
        assert thread.is_alive(), "uvicorn exited while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 5 s"
        time.sleep(0.01)
    running = Server(f"http://127.0.0.1:{port}", recorder)
    try:
        yield running
    finally:
        running.client.close()
        uv.should_exit = True
        thread.join(timeout=5)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def test_e2e_healthz(server: Server) -> None:
    response = server.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_e2e_whispir_json_reply(server: Server) -> None:
    response = server.client.post(
        "/whispir",
        content=payload("whispir", "reply_sms.json"),
        headers={"Content-Type": JSON_TYPE, "X-Whispir-Callback-Key": WHISPIR_KEY},
    )
    assert response.status_code == 200, response.text
    assert response.content == b""

    event = server.recorder.find("3F1C7A9E0B2D4C68A5E1")
    assert event.channel == "whispir"
    assert event.provider == "whispir"
    assert event.type == "message"
    assert event.provider_type == "deliveryresponse"
    assert event.medium == "sms"
    assert event.source == "61412345678"
    assert event.text == "Yes, I accept. Will I need to bring steel cap boots?"
    assert event.location == "https://api.au.whispir.com/messages/3F1C7A9E0B2D4C68A5E1"
    assert event.sender is not None
    assert event.sender.name == "Olivia Nguyen"
    assert event.sender.email == "olivia.nguyen@example.com.au"
    assert event.provider_timestamp == "09/01/13 13:22"
    assert event.occurred_at == datetime(2013, 1, 9, 13, 22, tzinfo=UTC)
    assert event.raw == payload("whispir", "reply_sms.json")
    # Whispir cannot take a reply in the response: the reply went to send_reply.
    sent = [reply for answered, reply in server.recorder.sent if answered.id == event.id]
    assert sent == [Reply(text="Thanks, got 3F1C7A9E0B2D4C68A5E1")]


def test_e2e_whispir_xml_reply(server: Server) -> None:
    body = payload("whispir", "reply_sms_ns2.xml")
    response = server.client.post(
        "/whispir-query",
        params={"Auth": QUERY_KEY},
        content=body,
        headers={"Content-Type": "application/xml"},
    )
    assert response.status_code == 200, response.text
    assert response.content == b""

    event = server.recorder.find("A4B7C0D3E6F94A2B8C5D")
    assert event.channel == "whispir-query"
    assert event.type == "message"
    assert event.provider_type == "deliveryresponse"
    assert event.text == "Yes, I accept. Will I need to bring steel cap boots & gloves?"
    assert event.source == "61412345678"
    assert event.medium == "sms"
    assert event.location == "https://api.au.whispir.com/messages/A4B7C0D3E6F94A2B8C5D"
    assert event.sender is not None and event.sender.name == "Fred Waters"
    assert event.raw == body


def test_e2e_whispir_wrong_key_rejected(server: Server) -> None:
    response = server.client.post(
        "/whispir",
        content=payload("whispir", "reply_sms.json"),
        headers={"Content-Type": JSON_TYPE, "X-Whispir-Callback-Key": QUERY_KEY},
    )
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert WHISPIR_KEY not in response.text and QUERY_KEY not in response.text


def test_e2e_whispir_url_check(server: Server) -> None:
    response = server.client.get("/whispir")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers.get("content-length") == "0"


def test_e2e_onepoint_message_reply(server: Server) -> None:
    body = payload("onepoint", "message_inbound.json")
    nonce = "e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0"
    # The URL exactly as the app sees it: scheme, Host header as sent, path.
    url = f"{server.base_url}/sms"
    authorization = sign_onepoint("POST", url, body, app_id=APP_ID, secret=SECRET, nonce=nonce)
    response = server.client.post(
        "/sms",
        content=body,
        headers={"Content-Type": JSON_TYPE, "Authorization": authorization},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == JSON_TYPE
    assert response.json() == {
        "Source": "447860012345",
        "Destination": "447700900123",
        "Message": "Thanks, got MS1312312312323",
    }

    event = server.recorder.find("MS1312312312323")
    assert event.channel == "sms"
    assert event.provider == "onepoint"
    assert event.type == "message"
    assert event.source == "447700900123"
    assert event.destination == "447860012345"
    assert event.text is not None and event.text.endswith("Cheers, Priya")
    assert event.inbound is True
    assert event.number_type == "mobile"
    assert event.segments == 2
    assert event.metadata == {"RequestID": "REQ7F3A9C21D0E4", "OrgID": 1010}
    assert event.occurred_at == datetime(2024, 3, 5, 15, 2, 47, 881920, tzinfo=UTC)


def test_e2e_onepoint_bad_signature_rejected(server: Server) -> None:
    body = payload("onepoint", "message_inbound.json")
    nonce = "e2e1e2e1e2e1e2e1e2e1e2e1e2e1e2e1"
    url = f"{server.base_url}/sms"  # signed over another body
    authorization = sign_onepoint("POST", url, b"{}", app_id=APP_ID, secret=SECRET, nonce=nonce)
    signature = authorization.split(":")[1]
    response = server.client.post(
        "/sms",
        content=body,
        headers={"Content-Type": JSON_TYPE, "Authorization": authorization},
    )
    assert response.status_code == 401
    assert response.json() == {"error": "wrong credentials: signature does not match"}
    assert set(response.json()) == {"error"}
    assert SECRET not in response.text and signature not in response.text


def test_e2e_diy_form_body(server: Server) -> None:
    body = payload("diy", "message_inbound.form")
    response = server.client.post(
        "/diy", content=body, headers={"Content-Type": FORM_TYPE, "X-DIY-Key": DIY_KEY}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == JSON_TYPE
    assert response.json() == {
        "Source": "447537410000",
        "Destination": "447700900321",
        "Message": "Thanks, got MS1312312313001",
    }

    event = server.recorder.find("MS1312312313001")
    assert event.channel == "diy"
    assert event.provider == "diy"
    assert event.type == "message"
    assert event.text == "Yes, 2pm works. Can I bring my +1? 10/10 service & friendly staff"
    assert event.source == "447700900321"
    assert event.destination == "447537410000"
    assert event.inbound is True
    assert event.test is False
    assert event.lookup is False
    assert event.reachable is True
    assert event.carrier == "Vodafone UK"
    assert event.segments == 1
    assert event.metadata == {"SurveyID": "SV-88213", "Wave": 3, "OrgID": 2020}
    assert event.occurred_at == datetime(
        2024, 5, 20, 12, 34, 56, 789012, tzinfo=timezone(timedelta(hours=1))
    )
    assert event.raw == body


def test_e2e_diy_get_callback(server: Server) -> None:
    query = payload("diy", "message_inbound.query").decode().strip()
    response = server.client.get(f"/diy?{query}", headers={"X-DIY-Key": DIY_KEY})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "Source": "447537410000",
        "Destination": "447700900987",
        "Message": "Thanks, got MS1312312313004",
    }

    event = server.recorder.find("MS1312312313004")
    assert event.channel == "diy"
    assert event.type == "message"
    assert event.text == "Running 10 mins late + parking is full, sorry!"
    assert event.source == "447700900987"
    assert event.destination == "447537410000"
    assert event.carrier == "Three UK"
    assert event.inbound is True
    assert event.test is False
    assert event.lookup is False
    assert event.reachable is True
    assert event.raw == query.encode()


def test_e2e_diy_get_callback_needs_key(server: Server) -> None:
    query = payload("diy", "message_inbound.query").decode().strip()
    response = server.client.get(f"/diy?{query}")
    assert response.status_code == 401
    assert set(response.json()) == {"error"}


def _after_413_server_still_serves(server: Server) -> None:
    response = server.client.post(
        "/whispir",
        content=payload("whispir", "reply_sms_lowercase.json"),
        headers={"Content-Type": JSON_TYPE, "X-Whispir-Callback-Key": WHISPIR_KEY},
    )
    assert response.status_code == 200, response.text
    assert server.client.get("/healthz").status_code == 200


def test_e2e_body_too_large_with_content_length(server: Server) -> None:
    big = b"x" * (2 * 1024 * 1024)
    # A fresh connection: the server may close it after refusing the body.
    with httpx2.Client(base_url=server.base_url, timeout=5.0) as client:
        response = client.post(
            "/whispir",
            content=big,
            headers={"Content-Type": JSON_TYPE, "X-Whispir-Callback-Key": WHISPIR_KEY},
        )
    assert response.status_code == 413
    assert set(response.json()) == {"error"}
    _after_413_server_still_serves(server)


def test_e2e_body_too_large_chunked(server: Server) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes received."""

    def chunks() -> Iterator[bytes]:
        for _ in range(32):
            yield b"y" * (64 * 1024)

    with httpx2.Client(base_url=server.base_url, timeout=5.0) as client:
        response = client.post(
            "/whispir",
            content=chunks(),
            headers={"Content-Type": JSON_TYPE, "X-Whispir-Callback-Key": WHISPIR_KEY},
        )
    assert response.status_code == 413
    _after_413_server_still_serves(server)


def test_e2e_unknown_channel_and_method(server: Server) -> None:
    assert server.client.post("/nope", content=b"{}").status_code == 404
    response = server.client.put("/whispir", content=b"{}")
    assert response.status_code == 405
    assert "POST" in response.headers.get("allow", "")
