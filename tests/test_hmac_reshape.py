"""Issue 13 part 1: a signed request cannot be reshaped into another that still verifies.

OnePoint/DIY's signed string joins AppId, METHOD, URL, Timestamp, Nonce and Base64(body)
without separators, so characters can move across a boundary (the end of a GET query and
the Timestamp, the Timestamp and the Nonce, the Nonce and the body) leaving the signed
string, and so the signature, unchanged. Each reshaped request here is first shown to
sign the very same string as the genuine one (so only the form checks can refuse it), then
sent to a real app with a real SQLite journal: it gets 401 with a reason naming the part
(never its value), and nothing is stored or dispatched. The genuine request is 200,
including one signed at either edge of the ``hmac_window``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, ConfigError, create_app
from receiver.providers import onepoint_signature

APP_ID = "demo-app"
SECRET = "s3cret-for-reshape-tests"
NONCE = "5d41402abc4b2a76b9719d911017c592"
HOST = "http://testserver"
# A GET STOP as OnePoint sends it; its MessageID ends in digits, as real ones do.
STOP_QUERY = (
    "Type=Stop&MessageID=MS131231231230&Source=447700900987&Destination=447537410000"
    "&Message=STOP&Timestamp=2024-05-21T08%3A59%3A01Z&Inbound=true"
)
# The same with the MessageID last: its digits end the query.
ID_LAST = "&".join(sorted(STOP_QUERY.split("&"), key=lambda pair: pair.startswith("MessageID=")))


@dataclass(frozen=True)
class Signed:
    """One request's signed parts: what the Authorization value and the URL carry."""

    method: str
    target: str  # path and query, as sent
    timestamp: str
    nonce: str = NONCE
    body: bytes = b""

    def signed_string(self) -> bytes:
        """AppId + METHOD + URL + Timestamp + Nonce + Base64(body) (sha1/utf8/raw/as-sent)."""
        return (
            f"{APP_ID}{self.method}{HOST}{self.target}{self.timestamp}{self.nonce}".encode()
            + base64.b64encode(self.body)
        )

    def signature(self) -> str:
        mac = hmac.new(SECRET.encode(), self.signed_string(), hashlib.sha1).digest()
        return base64.b64encode(mac).decode()

    def authorization(self, signature: str | None = None) -> str:
        signature = signature or self.signature()
        return f"X-OPG-Signature {APP_ID}:{signature}:{self.nonce}:{self.timestamp}"


class App:
    """A real app (``make run``'s sms channel: onepoint, hmac sha1/utf8/raw/as-sent) over
    a real SQLite journal; ``recorder`` holds what was dispatched."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.db = tmp_path / "journal.db"
        self.recorder = EventRecorder()
        channel = Channel(
            provider="onepoint",
            auth="hmac",
            options={"credentials": {APP_ID: SECRET}, **options},
        )
        config = Config(channels={"sms": channel}, journal=f"sqlite:///{self.db}")
        self.client = TestClient(create_app(config, plugins=[self.recorder]))

    def send(self, request: Signed, authorization: str | None = None) -> Any:
        value = authorization or request.authorization()
        headers: dict[str, Any] = {"Authorization": value.encode("latin-1")}
        if request.body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self.client.request(
            request.method, request.target, content=request.body or None, headers=headers
        )

    def stored(self) -> int:
        with closing(sqlite3.connect(self.db)) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.fixture
def app(tmp_path: Path) -> Any:
    application = App(tmp_path)
    with application.client:
        yield application


def now() -> str:
    return str(int(time.time()))


def genuine_get(timestamp: str | None = None) -> Signed:
    return Signed("GET", f"/sms?{STOP_QUERY}", timestamp or now())


def assert_refused(app: App, forged: Signed, signature: str, part: str) -> None:
    """``forged`` carries ``signature`` (the genuine one), is a 401 naming ``part``, and
    leaves no trace in the journal or the plugins."""
    stored, dispatched = app.stored(), len(app.recorder.events)
    with capture_logs() as logs:
        response = app.send(forged, forged.authorization(signature))
    assert response.status_code == 401, response.text
    reason = response.json()["error"]
    assert part in reason
    for value in (forged.timestamp, forged.nonce, signature):
        assert value not in response.text
        assert all(value not in str(line) for line in logs)
    assert (app.stored(), len(app.recorder.events)) == (stored, dispatched)


def test_hmac_reshape_genuine_get_stop_accepted(app: App) -> None:
    response = app.send(genuine_get())
    assert response.status_code == 200, response.text
    assert [event.type for event in app.recorder.events] == ["stop"]


@pytest.mark.parametrize("moved", ["0", "30", "230"])
def test_hmac_reshape_query_end_into_timestamp_refused(app: App, moved: str) -> None:
    """The issue's forgery: the query's last characters become the Timestamp's first
    (a MessageID of another message). A moved "0" alone leaves the number unchanged."""
    genuine = Signed("GET", f"/sms?{ID_LAST}", now())
    assert genuine.target.endswith(moved)
    forged = replace(
        genuine, target=genuine.target[: -len(moved)], timestamp=moved + genuine.timestamp
    )
    assert forged.signed_string() == genuine.signed_string()
    assert_refused(app, forged, genuine.signature(), "Timestamp")


@pytest.mark.parametrize("moved", [1, 2])
def test_hmac_reshape_timestamp_start_into_query_refused(app: App, moved: int) -> None:
    genuine = genuine_get()
    forged = replace(
        genuine,
        target=genuine.target + genuine.timestamp[:moved],
        timestamp=genuine.timestamp[moved:],
    )
    assert forged.signed_string() == genuine.signed_string()
    assert_refused(app, forged, genuine.signature(), "Timestamp")


@pytest.mark.parametrize("moved", [1, 3])
def test_hmac_reshape_timestamp_end_into_nonce_refused(app: App, moved: int) -> None:
    genuine = genuine_get()
    forged = replace(
        genuine,
        timestamp=genuine.timestamp[:-moved],
        nonce=genuine.timestamp[-moved:] + genuine.nonce,
    )
    assert forged.signed_string() == genuine.signed_string()
    assert_refused(app, forged, genuine.signature(), "Nonce")


@pytest.mark.parametrize("nonce", ["0" + NONCE[1:], "12" + NONCE[2:]])
def test_hmac_reshape_nonce_start_into_timestamp_refused(app: App, nonce: str) -> None:
    """A Nonce that starts with digits could give them to the Timestamp."""
    genuine = replace(genuine_get(), nonce=nonce)
    digits = len(nonce) - len(nonce.lstrip("0123456789"))
    forged = replace(genuine, timestamp=genuine.timestamp + nonce[:digits], nonce=nonce[digits:])
    assert forged.signed_string() == genuine.signed_string()
    assert_refused(app, forged, genuine.signature(), "")


def test_hmac_reshape_body_start_into_nonce_refused(app: App) -> None:
    """Base64(body) follows the Nonce: four of its characters (three body bytes) can join
    the Nonce, leaving a shorter body that is still a callback (``Type=`` -> ``e=``...)."""
    body = b"Typ" + b"e=Stop&MessageID=MS1&Source=447700900987&Message=STOP"
    genuine = Signed("POST", "/sms", now(), body=body)
    assert app.send(genuine).status_code == 200
    head = base64.b64encode(body[:3]).decode()
    forged = replace(genuine, nonce=genuine.nonce + head, body=body[3:])
    assert forged.signed_string() == genuine.signed_string()
    assert_refused(app, forged, genuine.signature(), "Nonce")


def test_hmac_reshape_issue_example_stores_one_stop(app: App) -> None:
    """One genuine signed GET STOP and three reshaped variants: one STOP stored, one
    dispatched (the issue's run stored four, with four MessageIDs)."""
    genuine = Signed("GET", f"/sms?{ID_LAST}", now())
    variants = [
        replace(
            genuine, target=genuine.target[:-n], timestamp=genuine.target[-n:] + genuine.timestamp
        )
        for n in (1, 2, 3)
    ]
    assert {v.signed_string() for v in variants} == {genuine.signed_string()}
    answers = [app.send(genuine).status_code] + [
        app.send(v, v.authorization(genuine.signature())).status_code for v in variants
    ]
    assert answers == [200, 401, 401, 401]
    assert app.stored() == 1
    assert [event.message_id for event in app.recorder.events] == ["MS131231231230"]


def test_hmac_reshape_replayed_identical_request_is_a_duplicate(app: App) -> None:
    """Within the window an identical signed request passes the check; the journal
    answers it as the original was answered and dispatches nothing again."""
    genuine = genuine_get()
    first, again = app.send(genuine), app.send(genuine)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content
    assert len(app.recorder.events) == 1
    assert app.stored() == 1


# --------------------------------------------------------------------------- the window


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> float:
    """The check's clock, frozen at a whole second."""
    instant = float(int(time.time()))
    monkeypatch.setattr(onepoint_signature, "now", lambda: instant)
    return instant


@pytest.mark.parametrize("offset", [-300, -299, 0, 299, 300])
def test_hmac_window_signed_at_the_edge_accepted(app: App, frozen: float, offset: int) -> None:
    response = app.send(genuine_get(str(int(frozen) + offset)))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("offset", [-601, 601, -86400])
def test_hmac_window_signed_outside_refused(app: App, frozen: float, offset: int) -> None:
    request = genuine_get(str(int(frozen) + offset))
    response = app.send(request)
    assert response.status_code == 401
    assert response.json() == {"error": "expired signature: Timestamp is more than 300 s from now"}
    assert app.stored() == 0


def test_hmac_window_is_configurable(tmp_path: Path, frozen: float) -> None:
    narrow = App(tmp_path, hmac_window=30)
    with narrow.client:
        assert narrow.send(genuine_get(str(int(frozen) - 30))).status_code == 200
        response = narrow.send(genuine_get(str(int(frozen) - 31)))
    assert response.status_code == 401
    assert "30 s" in response.json()["error"]


@pytest.mark.parametrize("window", [0, -5, float("nan")])
def test_hmac_window_not_positive_is_a_config_error(window: float) -> None:
    channel = Channel(
        provider="onepoint",
        auth="hmac",
        options={"credentials": {APP_ID: SECRET}, "hmac_window": window},
    )
    with pytest.raises(ConfigError, match=r"channels\.sms\.options\.hmac_window"):
        create_app(Config(channels={"sms": channel}))


# --------------------------------------------------------------------------- part forms


@pytest.mark.parametrize(
    ("field", "value", "part"),
    [
        ("timestamp", "+{now}", "Timestamp"),
        ("timestamp", " {now}", "Timestamp"),
        ("timestamp", "{now}.0", "Timestamp"),
        ("timestamp", "0{now}", "Timestamp"),
        ("timestamp", "-{now}", "Timestamp"),
        ("timestamp", "{now}:1", "Timestamp"),
        ("timestamp", "", "Timestamp"),
        ("timestamp", "\xb2{now}", "Timestamp"),  # "²": str.isdigit() takes it
        ("timestamp", "1_{now}", "Timestamp"),  # int() takes underscores too
        ("timestamp", "99999999999999", "Timestamp"),
        ("nonce", NONCE[:-1], "Nonce"),
        ("nonce", NONCE + "0", "Nonce"),
        ("nonce", "n0nce", "Nonce"),
        ("nonce", "g" + NONCE[1:], "Nonce"),
        ("nonce", "", "Nonce"),
        ("nonce", "5d41402a-bc4b-2a76-b971-9d911017c59", "Nonce"),
    ],
)
def test_hmac_part_of_wrong_form_refused_naming_the_part(
    app: App, field: str, value: str, part: str
) -> None:
    """Each part's form is checked before the signature, which is computed over the very
    value sent: so a 401 here comes from the form check, and names the part."""
    value = value.format(now=now())
    request = replace(genuine_get(), **{field: value})
    with capture_logs() as logs:
        response = app.send(request)  # signed over the malformed value itself
    assert response.status_code == 401
    reason = response.json()["error"]
    assert reason.startswith("malformed signature: ") and part in reason
    if value.strip():
        assert value.strip() not in response.text
        assert all(value.strip() not in str(line) for line in logs)
    assert app.stored() == 0


@pytest.mark.parametrize("nonce", [NONCE, NONCE.upper(), "5d41402a-bc4b-2a76-b971-9d911017c592"])
def test_hmac_nonce_in_guid_forms_accepted(app: App, nonce: str) -> None:
    response = app.send(replace(genuine_get(), nonce=nonce))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("signature", ["abc", "!" * 28, "A" * 28, "A" * 44 + "="])
def test_hmac_signature_of_wrong_form_refused(app: App, signature: str) -> None:
    request = genuine_get()
    response = app.send(request, request.authorization(signature))
    assert response.status_code == 401
    assert response.json() == {"error": "malformed signature: Signature is not a Base64 digest"}
