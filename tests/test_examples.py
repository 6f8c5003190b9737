"""The examples in examples/ work as documented: each is imported from its file and called.

The DIY channel of the mount examples is signed (``X-DIY-Signature``); the signature is
computed here from the scheme OnePoint/DIY document (HMAC-SHA1 over AppId + METHOD +
URL + Timestamp + Nonce + Base64(body)), over the URL the provider calls, which for a
mounted app includes the mount prefix.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from samples import PAYLOADS, import_example
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, EventType, Reply, create_app, hookimpl
from receiver.errors import ConfigError
from receiver.testing import sign_onepoint

EXAMPLES = Path(__file__).parent.parent / "examples"
WHISPIR_REPLY = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
DIY_MESSAGE_FORM = (PAYLOADS / "diy" / "message_inbound.form").read_bytes().strip()
DIY_STOP_QUERY = (PAYLOADS / "diy" / "stop.query").read_text().strip()

WHISPIR_KEY = "whispir-test-key"
DIY_APP_ID = "diy-test-app"
DIY_SECRET = "diy-test-secret"
MOUNTS = ["starlette_mount", "fastapi_mount"]


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import examples/<name>.py afresh, with the test keys in the environment."""
    monkeypatch.setenv("WHISPIR_KEY", WHISPIR_KEY)
    monkeypatch.setenv("DIY_APP_ID", DIY_APP_ID)
    monkeypatch.setenv("DIY_SECRET", DIY_SECRET)
    monkeypatch.setenv("ACME_KEY", "acme-test-key")
    return import_example(name, monkeypatch, "receiver_example")


def diy_signature(
    method: str, url: str, body: bytes, *, nonce: str = "9a8b7c6d5e4f30211203f4e5d6c7b8a9"
) -> str:
    return sign_onepoint(
        method,
        url,
        body,
        app_id=DIY_APP_ID,
        secret=DIY_SECRET,
        nonce=nonce,
        scheme="X-DIY-Signature",
    )


# --- the mount examples ------------------------------------------------------------------


@pytest.mark.parametrize("name", MOUNTS)
def test_examples_mount_keeps_own_route_and_health(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(load_example(name, monkeypatch).app)
    own = client.get("/")
    assert own.status_code == 200
    assert "my app's own page" in own.text
    health = client.get("/hooks/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}


@pytest.mark.parametrize("name", MOUNTS)
def test_examples_mount_whispir_callback(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(name, monkeypatch)
    client = TestClient(example.app)
    response = client.post(
        "/hooks/whispir",
        content=WHISPIR_REPLY,
        headers={"content-type": "application/json", "X-Whispir-Callback-Key": WHISPIR_KEY},
    )
    assert response.status_code == 200
    assert response.content == b""
    [event] = example.inbox.events
    assert event.channel == "whispir"
    assert event.provider == "whispir"
    assert event.type is EventType.message
    assert event.message_id == "3F1C7A9E0B2D4C68A5E1"


@pytest.mark.parametrize("name", MOUNTS)
def test_examples_mount_whispir_needs_the_key(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(name, monkeypatch)
    client = TestClient(example.app)
    for headers in ({}, {"X-Whispir-Callback-Key": "change-me"}):
        response = client.post(
            "/hooks/whispir",
            content=WHISPIR_REPLY,
            headers={"content-type": "application/json", **headers},
        )
        assert response.status_code == 401
    assert example.inbox.events == []


@pytest.mark.parametrize("name", MOUNTS)
def test_examples_mount_diy_signed_message_gets_reply(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(name, monkeypatch)
    client = TestClient(example.app)
    url = "http://testserver/hooks/diy"  # what DIY calls, and so what it signs
    response = client.post(
        "/hooks/diy",
        content=DIY_MESSAGE_FORM,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "Authorization": diy_signature("POST", url, DIY_MESSAGE_FORM),
        },
    )
    assert response.status_code == 200, response.text
    [event] = example.inbox.events
    assert event.provider == "diy"
    assert event.type is EventType.message
    assert event.message_id == "MS1312312313001"
    assert response.json() == {
        "Source": "447537410000",
        "Destination": "447700900321",
        "Message": f"Thanks, we got your message: {event.text}",
    }


@pytest.mark.parametrize("name", MOUNTS)
def test_examples_mount_diy_signed_get_callback(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(name, monkeypatch)
    client = TestClient(example.app)
    url = f"http://testserver/hooks/diy?{DIY_STOP_QUERY}"
    response = client.get(
        f"/hooks/diy?{DIY_STOP_QUERY}",
        headers={"Authorization": diy_signature("GET", url, b"")},
    )
    assert response.status_code == 200, response.text
    [event] = example.inbox.events
    assert event.type is EventType.stop
    assert event.message_id == "MS1312312313007"


@pytest.mark.parametrize("name", MOUNTS)
def test_examples_mount_diy_bad_signature_is_401(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(name, monkeypatch)
    client = TestClient(example.app)
    url = "http://testserver/hooks/diy"
    signature = diy_signature("POST", url, DIY_MESSAGE_FORM + b"&tampered=1")
    response = client.post(
        "/hooks/diy",
        content=DIY_MESSAGE_FORM,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "Authorization": signature,
        },
    )
    assert response.status_code == 401
    assert example.inbox.events == []


# --- the custom provider -----------------------------------------------------------------


class Recorder:
    def __init__(self, reply: Reply | str | None = None) -> None:
        self.events: list[Event] = []
        self.reply = reply

    @hookimpl
    def on_message(self, event: Event) -> Reply | str | None:
        self.events.append(event)
        return self.reply


def acme_client(module: ModuleType, recorder: Any) -> TestClient:
    config = Config(channels={"acme-in": Channel(provider="acme", auth="none")})
    return TestClient(create_app(config, plugins=[module, recorder]))


def test_examples_custom_provider_parses_acme_message(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("custom_provider", monkeypatch)
    recorder = Recorder()
    client = acme_client(module, recorder)
    body = b'{"id": "m-123", "from": "+61400000000", "text": "hello there"}'
    response = client.post("/acme-in", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.content == b""
    [event] = recorder.events
    assert event.provider == "acme"
    assert event.channel == "acme-in"
    assert event.type is EventType.message
    assert event.message_id == "m-123"
    assert event.source == "+61400000000"
    assert event.text == "hello there"
    assert event.raw == body
    assert len(event.id) == 36


def test_examples_custom_provider_reply_in_response(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("custom_provider", monkeypatch)
    client = acme_client(module, Recorder(reply="got it"))
    body = b'{"id": "m-124", "from": "+61400000001", "text": "ping"}'
    response = client.post("/acme-in", content=body)  # no content type: sniffed as JSON
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"to": "+61400000001", "text": "got it"}


def test_examples_custom_provider_rejects_bad_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("custom_provider", monkeypatch)
    recorder = Recorder()
    client = acme_client(module, recorder)
    missing = client.post("/acme-in", content=b'{"id": "m-1", "from": "+61400000000"}')
    assert missing.status_code == 400
    assert "text" in missing.json()["error"]
    xml = client.post(
        "/acme-in", content=b"<message/>", headers={"content-type": "application/xml"}
    )
    assert xml.status_code == 415
    assert recorder.events == []


def test_examples_custom_provider_module_app(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("custom_provider", monkeypatch)
    client = TestClient(module.app)
    body = b'{"id": "m-9", "from": "+61400000009", "text": "hi"}'
    ok = client.post("/acme", content=body, headers={"X-Acme-Key": "acme-test-key"})
    assert ok.status_code == 200
    refused = client.post("/acme", content=body, headers={"X-Acme-Key": "change-me"})
    assert refused.status_code == 401


# --- the custom provider's own signature scheme and options --------------------------------

ACME_SECRET = "acme-signing-s3cret"
ACME_BODY = b'{"id": "m-77", "from": "+61400000077", "text": "signed"}'


def acme_signature(body: bytes, secret: str = ACME_SECRET) -> str:
    """Acme's signature as its documentation states it, computed here (not by the example)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def acme_signed_client(module: ModuleType, recorder: Any, **options: Any) -> TestClient:
    channel = Channel(
        provider="acme",
        auth="signature",
        options={"signing_secret": ACME_SECRET, **options},
    )
    return TestClient(create_app(Config(channels={"acme": channel}), plugins=[module, recorder]))


def test_examples_custom_provider_own_signature_right_is_200_wrong_is_401(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_example("custom_provider", monkeypatch)
    recorder = Recorder()
    client = acme_signed_client(module, recorder, medium="whatsapp")
    signed = {"X-Acme-Signature": acme_signature(ACME_BODY)}
    right = client.post("/acme", content=ACME_BODY, headers=signed)
    assert right.status_code == 200, right.text
    assert [event.message_id for event in recorder.events] == ["m-77"]
    assert recorder.events[0].medium == "whatsapp"  # the option reached from_channel
    for headers in (
        {"X-Acme-Signature": acme_signature(ACME_BODY, secret="not-the-secret")},
        {"X-Acme-Signature": acme_signature(ACME_BODY + b" ")},
        {"X-Acme-Key": ACME_SECRET},
        {},
    ):
        wrong = client.post("/acme", content=ACME_BODY, headers=headers)
        assert wrong.status_code == 401, headers
        assert ACME_SECRET not in wrong.text
    assert len(recorder.events) == 1


def test_examples_custom_provider_signature_from_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = load_example("custom_provider", monkeypatch)
    monkeypatch.setenv("ACME_SECRET", ACME_SECRET)
    path = tmp_path / "receiver.toml"
    path.write_text(
        '[channels.acme]\nprovider = "acme"\nauth = "signature"\n'
        '[channels.acme.options]\nsigning_secret = "${ACME_SECRET}"\n'
    )
    client = TestClient(create_app(path, plugins=[module, Recorder()]))
    signed = {"X-Acme-Signature": acme_signature(ACME_BODY)}
    assert client.post("/acme", content=ACME_BODY, headers=signed).status_code == 200
    unsigned = {"X-Acme-Signature": acme_signature(b"{}")}
    assert client.post("/acme", content=ACME_BODY, headers=unsigned).status_code == 401


def test_examples_custom_provider_unknown_option_is_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_example("custom_provider", monkeypatch)
    with pytest.raises(ConfigError, match=r"^channels\.acme\.options\.signing_secrets: ") as info:
        acme_signed_client(module, Recorder(), signing_secrets=[ACME_SECRET])
    assert "medium, signing_secret" in str(info.value)  # what the provider does take
    assert ACME_SECRET not in str(info.value)


def test_examples_custom_provider_own_mode_needs_its_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_example("custom_provider", monkeypatch)
    with pytest.raises(ConfigError, match=r"channels\.acme\.options\.signing_secret: "):
        acme_signed_client(module, Recorder(), signing_secret="")
    # Another provider does not get acme's mode: the error lists the modes it has.
    config = Config(channels={"w": Channel(provider="whispir", auth="signature", keys=["k"])})
    with pytest.raises(ConfigError, match=r"channels\.w\.auth: 'signature' .*basic, bearer"):
        create_app(config, plugins=[module])
