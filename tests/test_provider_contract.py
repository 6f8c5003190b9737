"""The provider contract: what every provider's channel does with a raw request.

One table of raw requests (method, content type, body or query, headers) and what each
must come to (HTTP status, how many events reach the plugins, and for a valid callback
the event's fields), run through a real app (``create_app`` + Starlette's TestClient)
for each built-in provider (``whispir``, ``onepoint``, ``diy``) and for the third-party
provider of ``examples/custom_provider.py`` (``acme``). Modelled on django-anymail's
``WebhookBasicAuthTestCase`` and courier's ``handlertest.RunIncomingTestCases``: a new
provider joins by adding a :class:`Dialect` (its samples, a body in a format it does not
send, a malformed body) to :data:`DIALECTS`, and then passes the common rows or says why.

Channels take callbacks without credentials (``auth = "none"``) except in the
authentication rows; every channel is built by :func:`channel`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from samples import import_example, payload
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, EventType, create_app, hookimpl

EXAMPLES = Path(__file__).parent.parent / "examples"
PATH = "/hook"
MARKER = "Zq7-do-not-echo"  # in every refused body: an answer must never contain it
LIMIT = 4096  # max_body_bytes of the common rows: every sample fits, the oversize row not
KEY = "contract-test-key-0f9e"

JSON = "application/json"
XML = "application/xml"
FORM = "application/x-www-form-urlencoded"


def channel(provider: str, **options: Any) -> Channel:
    """The one place a contract channel is configured: no credentials unless asked."""
    return Channel(provider=provider, **{"auth": "none", **options})


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Call:
    """One raw request to the channel."""

    method: str = "POST"
    body: bytes = b""
    content_type: str | None = None
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client: TestClient, extra: dict[str, str] | None = None) -> Any:
        headers = dict(self.headers)
        if self.content_type is not None:
            headers["content-type"] = self.content_type
        headers.update(extra or {})
        url = f"{PATH}?{self.query}" if self.query else PATH
        return client.request(self.method, url, content=self.body, headers=headers)


@dataclass(frozen=True)
class Sample:
    """A valid callback and the event it must become (fields not named are not checked)."""

    id: str
    call: Call
    fields: dict[str, Any]


@dataclass(frozen=True)
class Dialect:
    """One provider under the contract."""

    provider: str
    samples: list[Sample]
    foreign: Call  # a body in a format this provider does not send: 415
    malformed: Call  # a body in its format that is not a callback of it: 400
    example: str | None = None  # examples/<name>.py that registers the provider

    def plugins(self, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
        return [] if self.example is None else [load_example(self.example, monkeypatch)]


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import examples/<name>.py afresh as a plugin module (as tests/test_examples.py does)."""
    return import_example(name, monkeypatch, "receiver_contract")


def _post(provider: str, name: str, content_type: str | None) -> Call:
    return Call(body=payload(provider, name), content_type=content_type)


def _get(provider: str, name: str) -> Call:
    return Call(method="GET", query=payload(provider, name).decode("ascii").strip())


_TRUNCATED_JSON = f'{{"MessageID": "{MARKER}", "Type": "Message", "Source": '.encode()
_XML_BODY = f"<Message><MessageID>{MARKER}</MessageID><Type>Message</Type></Message>".encode()

DIALECTS = [
    Dialect(
        provider="whispir",
        samples=[
            Sample(
                "reply-json",
                _post("whispir", "reply_sms.json", JSON),
                {
                    "type": EventType.message,
                    "message_id": "3F1C7A9E0B2D4C68A5E1",
                    "source": "61412345678",
                    "destination": None,
                    "text": "Yes, I accept. Will I need to bring steel cap boots?",
                    "medium": "sms",
                    "status": None,
                },
            ),
            Sample(
                "status-xml",
                _post("whispir", "status_sent.xml", XML),
                {
                    "type": EventType.receipt,
                    "message_id": "7E8F9A0B1C2D43E4F5A6",
                    "destination": "61430984567",
                    "status": "sent",
                    "previous_status": "pending",
                    "text": None,
                },
            ),
            Sample(
                "undeliverable-json",
                _post("whispir", "undeliverable.json", JSON),
                {
                    "type": EventType.undeliverable,
                    "message_id": "6E0B9A3D7C5F48A2B1E9",
                    "source": "61491570156",
                    "status": "failed",
                },
            ),
            Sample(
                "report-xml",
                _post("whispir", "report_completion.xml", XML),
                {"type": EventType.report, "report_id": "D3C2B1A0F9E84D7C6B5A", "message_id": None},
            ),
        ],
        foreign=Call(body=f"messageId={MARKER}&content=yes".encode(), content_type=FORM),
        malformed=Call(body=f'{{"messageId": "{MARKER}", "from": '.encode(), content_type=JSON),
    ),
    Dialect(
        provider="onepoint",
        samples=[
            Sample(
                "message-json",
                _post("onepoint", "message_inbound.json", JSON),
                {
                    "type": EventType.message,
                    "message_id": "MS1312312312323",
                    "source": "447700900123",
                    "destination": "447860012345",
                    "status": None,
                    "inbound": True,
                },
            ),
            Sample(
                "receipt-json",
                _post("onepoint", "receipt_delivered.json", JSON),
                {
                    "type": EventType.receipt,
                    "message_id": "MS1312312312323",
                    "source": "OPGDemo",
                    "destination": "447700900123",
                    "status": "delivered",
                    "provider_status": "delivered",
                },
            ),
            Sample(
                "stop-json",
                _post("onepoint", "stop.json", JSON),
                {
                    "type": EventType.stop,
                    "message_id": "MS1312312312903",
                    "source": "447700900654",
                    "destination": "60777",
                    "text": "STOP",
                },
            ),
        ],
        foreign=Call(body=_XML_BODY, content_type=XML),
        malformed=Call(body=_TRUNCATED_JSON, content_type=JSON),
    ),
    Dialect(
        provider="diy",
        samples=[
            Sample(
                "message-form",
                _post("diy", "message_inbound.form", FORM),
                {
                    "type": EventType.message,
                    "message_id": "MS1312312313001",
                    "source": "447700900321",
                    "destination": "447537410000",
                    "text": "Yes, 2pm works. Can I bring my +1? 10/10 service & friendly staff",
                },
            ),
            Sample(
                "receipt-form",
                _post("diy", "receipt_failed.form", FORM),
                {
                    "type": EventType.receipt,
                    "message_id": "MS1312312313002",
                    "source": "DIYSurveys",
                    "destination": "447700900322",
                    "status": "failed",
                },
            ),
            Sample(
                "stop-get",
                _get("diy", "stop.query"),
                {
                    "type": EventType.stop,
                    "message_id": "MS1312312313007",
                    "source": "447700900989",
                    "destination": "60777",
                    "text": "Stop all",
                },
            ),
        ],
        foreign=Call(body=_XML_BODY, content_type=XML),
        malformed=Call(body=_TRUNCATED_JSON, content_type=JSON),
    ),
    Dialect(
        provider="acme",
        example="custom_provider",
        samples=[
            Sample(
                "message-json",
                Call(
                    body=b'{"id": "m-123", "from": "+61400000000", "text": "hello there"}',
                    content_type=JSON,
                ),
                {
                    "type": EventType.message,
                    "message_id": "m-123",
                    "source": "+61400000000",
                    "text": "hello there",
                    "medium": "sms",
                },
            ),
        ],
        foreign=Call(body=_XML_BODY, content_type=XML),
        malformed=Call(body=f'{{"id": "{MARKER}", "from": "+61400000000"}}'.encode()),
    ),
]
SAMPLES = [(dialect, sample) for dialect in DIALECTS for sample in dialect.samples]


@dataclass(frozen=True)
class Row:
    """A common contract row: a request made for a dialect -> status, events dispatched."""

    id: str
    request: Callable[[Dialect], Call]
    status: int
    dispatched: int


def _first(dialect: Dialect) -> Call:
    return dialect.samples[0].call


ROWS = [
    Row("valid-sample", _first, 200, 1),
    Row("empty-body", lambda d: Call(content_type=_first(d).content_type), 400, 0),
    Row("blank-body", lambda d: Call(body=b" \r\n\t", content_type=_first(d).content_type), 400, 0),
    Row("foreign-format", lambda d: d.foreign, 415, 0),
    Row("malformed-body", lambda d: d.malformed, 400, 0),
    Row("get-url-check", lambda d: Call(method="GET"), 200, 0),
    Row("get-unrelated-query", lambda d: Call(method="GET", query=f"check={MARKER}"), 200, 0),
    Row("head", lambda d: Call(method="HEAD"), 200, 0),
    Row("head-with-sample", lambda d: Call("HEAD", _first(d).body, _first(d).content_type), 200, 0),
    Row(
        "oversize",
        lambda d: Call(body=MARKER.encode() * (LIMIT // len(MARKER) + 1), content_type=JSON),
        413,
        0,
    ),
    Row("put", lambda d: Call("PUT", _first(d).body, _first(d).content_type), 405, 0),
]


# --------------------------------------------------------------------------- harness


class Recorder:
    """Every event the plugins are given, in order; never replies."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)


@dataclass
class Harness:
    client: TestClient
    recorder: Recorder


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Harness]]:
    """Builds a running app (lifespan on) with one channel, ``/hook``, for a dialect."""
    with ExitStack() as running:

        def build(
            dialect: Dialect, channel_options: dict[str, Any] | None = None, **config: Any
        ) -> Harness:
            hook = channel(dialect.provider, **(channel_options or {}))
            recorder = Recorder()
            app = create_app(
                Config(channels={"hook": hook}, **config),
                plugins=[*dialect.plugins(monkeypatch), recorder],
            )
            return Harness(running.enter_context(TestClient(app)), recorder)

        yield build


def _by_id(value: Any) -> str:
    return value.provider if isinstance(value, Dialect) else getattr(value, "id", str(value))


PAIRS = [pytest.param(d, s, id=f"{d.provider}-{s.id}") for d, s in SAMPLES]


def assert_error(response: Any, status: int, sent: bytes) -> None:
    """``{"error": "<one line>"}`` that echoes nothing of the refused request."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(JSON)
    body = response.json()
    assert set(body) == {"error"}
    reason = body["error"]
    assert isinstance(reason, str) and reason
    assert "\n" not in reason and "\r" not in reason
    assert MARKER not in response.text
    if sent.strip():
        assert sent.decode("utf-8", "replace") not in response.text


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("row", ROWS, ids=_by_id)
@pytest.mark.parametrize("dialect", DIALECTS, ids=_by_id)
def test_contract_row(dialect: Dialect, row: Row, harness: Callable[..., Harness]) -> None:
    app = harness(dialect, max_body_bytes=LIMIT)
    call = row.request(dialect)
    response = call.send(app.client)
    assert len(app.recorder.events) == row.dispatched
    if row.status >= 400:
        if call.method == "PUT":
            assert response.status_code == 405
            assert "POST" in response.headers["allow"]
        else:
            assert_error(response, row.status, call.body)
    else:
        assert response.status_code == row.status, response.text
        if row.dispatched == 0:
            assert response.content == b""


@pytest.mark.parametrize(("dialect", "sample"), PAIRS)
def test_contract_sample_becomes_its_event(
    dialect: Dialect, sample: Sample, harness: Callable[..., Harness]
) -> None:
    app = harness(dialect)
    response = sample.call.send(app.client)
    assert response.status_code == 200, response.text
    assert response.content == b""  # no plugin replied
    [event] = app.recorder.events
    assert event.provider == dialect.provider
    assert event.channel == "hook"
    # The body exactly as received; a GET callback's fields are its query string.
    assert event.raw == (sample.call.body or sample.call.query.encode())
    assert {name: getattr(event, name) for name in sample.fields} == sample.fields


@pytest.mark.parametrize(("dialect", "sample"), PAIRS)
def test_contract_resend_is_a_duplicate(
    dialect: Dialect, sample: Sample, harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """With the journal on, the same callback sent twice is answered twice, handled once."""
    app = harness(dialect, journal=f"sqlite:///{tmp_path / 'journal.db'}")
    first = sample.call.send(app.client)
    again = sample.call.send(app.client)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content
    [event] = app.recorder.events
    assert event.message_id == sample.fields.get("message_id", event.message_id)


@pytest.mark.parametrize("dialect", DIALECTS, ids=_by_id)
def test_contract_credentials_checked_before_the_body(
    dialect: Dialect, harness: Callable[..., Harness]
) -> None:
    """A channel with a key refuses a request without it (401) whatever its body."""
    app = harness(dialect, channel_options={"auth": "bearer", "keys": [KEY]})
    sample = _first(dialect)
    for call in (sample, dialect.malformed, dialect.foreign):
        for headers in ({}, {"Authorization": f"Bearer {KEY}x"}):
            assert_error(call.send(app.client, headers), 401, call.body)
    assert app.recorder.events == []
    ok = sample.send(app.client, {"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text
    assert len(app.recorder.events) == 1
