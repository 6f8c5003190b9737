"""No authenticated input ever gets a 500 (issue 11 part 6), found and kept so by hypothesis.

Two layers, each bounded (``max_examples``; the whole file runs in well under a minute):

- every provider parser, on raw bytes and on structured bodies built from the fields it
  reads (JSON, form, query, XML with any encoding declaration), may raise nothing but
  :class:`PayloadError`;
- the endpoint, through a real app with a real SQLite journal, answers 200, 400, 413 or
  415, never a 5xx; its error body is one line that never echoes the input; every event
  it accepts was stored.

Plus the examples the fuzz found, each with its right value.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recorder import EventRecorder
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, EventType, PayloadError, create_app
from receiver.normalize import parse_dmy_timestamp, parse_iso_timestamp
from receiver.providers.onepoint import DiyProvider, OnePointProvider
from receiver.providers.whispir import WhispirProvider

MARK = "ECHOMARK"
PROVIDERS = [WhispirProvider(), OnePointProvider(), DiyProvider()]
BOUNDED = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ONEPOINT_FIELDS = [
    "Source", "Destination", "Message", "Type", "Timestamp", "Inbound", "Lookup", "Test",
    "Status", "MetaData", "MessageID", "Carrier", "Reachable", "NumberType", "Segments",
    "type", "messageid", "METADATA", "MetaData[Key]", "MetaData.Other",
]  # fmt: skip
WHISPIR_FIELDS = [
    "messageid", "messageId", "messagelocation", "location", "from", "responseMessage",
    "responsemessage", "oldStatus", "newStatus", "newstatus", "reportId", "outputLocation",
    "timestamp", "customParameters", "customParamters", "callbackParameters", "status",
    "channel", "acknowledged", "undeliverable", "content", "mobile", "email", "name", "mri",
    "deliveryResponse", "statuscallback", "entry", "key", "value",
]  # fmt: skip
TYPES = ["Message", "Receipt", "Stop", "Keyword", "Click", "Lookup", "not killed", "Bogus"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-16",
    "application/json; charset=iso-8859-1",
    "application/json; charset=no-such",
    "application/json; charset=utf-7",
    "application/json; charset=rot13",
    "application/json; charset=undefined",
    "application/x-www-form-urlencoded; charset=utf-7",
    "application/x-www-form-urlencoded; charset=base64",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=windows-1252",
    "text/xml",
    "application/vnd.whispir.message+json",
    "text/plain",
    "multipart/form-data; boundary=x",
]
ENCODINGS = [
    "UTF-8", "UTF-16", "ISO-8859-1", "Shift_JIS", "GB2312", "bogus", "ascii", "UTF-32",
    "UTF-7", "rot13", "ISO-2022-JP", "undefined", "KOI8-R",
]  # fmt: skip

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 3, max_value=2**200),
    st.integers(min_value=-(2**200), max_value=-(2**63) + 3),
    st.floats(allow_nan=False),
)
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from([*TYPES, "Delivered", "09/01/13 13:22", "2024-05-01T10:00:00 01:00"]),
    st.from_regex(r"\d{1,30}/\d{1,30}/\d{1,30} \d{1,30}:\d{1,30}(:\d{1,30})?", fullmatch=True),
    st.just(MARK),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)


def _json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), children, max_size=6),
        ),
        max_leaves=20,
    )


def _json_bodies(keys: list[str]) -> st.SearchStrategy[bytes]:
    tree = st.dictionaries(st.sampled_from(keys), _json_values(keys), max_size=8)
    return tree.map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def _xml_bodies(draw: st.DrawFn) -> bytes:
    def element(depth: int) -> str:
        name = draw(st.sampled_from(WHISPIR_FIELDS))
        if depth > 3 or draw(st.booleans()):
            return f"<{name}>{_escape(draw(texts))}</{name}>"
        inner = "".join(element(depth + 1) for _ in range(draw(st.integers(0, 4))))
        return f"<ns2:{name} xmlns:ns2='urn:x'>{inner}</ns2:{name}>"

    encoding = draw(st.sampled_from(ENCODINGS))
    document = f'<?xml version="1.0" encoding="{encoding}"?>{element(0)}'
    codec = {"UTF-16": "utf-16", "UTF-32": "utf-32"}.get(encoding, encoding)
    if encoding in ("bogus", "rot13", "undefined"):
        codec = "utf-8"
    try:
        return document.encode(codec)
    except UnicodeError:
        return document.encode("utf-8", "surrogatepass")


@st.composite
def _form_bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(ONEPOINT_FIELDS) | st.text(max_size=6), texts), max_size=8
        )
    )
    if draw(st.booleans()):
        return urlencode(pairs).encode()
    return "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")


def _prefix(draw: st.DrawFn) -> bytes:
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"  \n"]))


any_body = st.one_of(
    st.binary(max_size=200),
    _json_bodies(ONEPOINT_FIELDS),
    _json_bodies(WHISPIR_FIELDS),
    _xml_bodies(),
    _form_bodies(),
)


def _parse_only_payload_errors(provider: Any, body: bytes, content_type: str | None) -> None:
    try:
        event = provider.parse(body, content_type=content_type)
    except PayloadError as exc:
        reason = str(exc)
        assert "\n" not in reason
        assert MARK not in reason
    else:
        assert isinstance(event, Event)


# -- the parsers ----------------------------------------------------------------------


@BOUNDED
@given(body=any_body, content_type=st.sampled_from(CONTENT_TYPES), prefix=st.data())
def test_fuzz_every_parser_raises_only_payload_errors(
    body: bytes, content_type: str | None, prefix: st.DataObject
) -> None:
    body = prefix.draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"  \n"])) + body
    for provider in PROVIDERS:
        _parse_only_payload_errors(provider, body, content_type)


@BOUNDED
@given(query=_form_bodies())
def test_fuzz_get_callbacks_raise_only_payload_errors(query: bytes) -> None:
    for provider in PROVIDERS[1:]:
        try:
            provider.parse(b"", query=query)
        except PayloadError as exc:
            assert MARK not in str(exc)


@BOUNDED
@given(stamp=texts | st.text(max_size=40))
def test_fuzz_timestamps_never_raise(stamp: str) -> None:
    parsed = parse_dmy_timestamp(stamp)
    assert parsed is None or parsed.tzinfo is not None
    parsed = parse_iso_timestamp(stamp)
    assert parsed is None or parsed.tzinfo is not None


# -- the endpoint, journal on -----------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    journal = tmp_path_factory.mktemp("fuzz") / "journal.db"
    seen = EventRecorder()
    channels = {
        "w": Channel(provider="whispir", auth="none"),
        "op": Channel(provider="onepoint", auth="none"),
        "diy": Channel(provider="diy", auth="none"),
    }
    config = Config(
        channels=channels,
        journal=f"sqlite:///{journal}",
        max_body_bytes=4096,
        duplicate_window=0,
        duplicate_body_window=0,
    )
    with TestClient(create_app(config, plugins=[seen]), raise_server_exceptions=False) as client:
        yield client, seen


def _encode(body: bytes, coding: str | None) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "deflate":
        return zlib.compress(body)
    return body


@settings(BOUNDED, max_examples=300)
@given(
    path=st.sampled_from(["/w", "/op", "/diy"]),
    body=any_body,
    content_type=st.sampled_from(CONTENT_TYPES),
    coding=st.sampled_from([None, None, None, "gzip", "deflate", "br", "gzip, deflate"]),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "HEAD"]),
)
def test_fuzz_endpoint_never_answers_5xx(
    fuzz_client: Any,
    path: str,
    body: bytes,
    content_type: str | None,
    coding: str | None,
    method: str,
) -> None:
    client, seen = fuzz_client
    headers = {}
    if content_type:
        headers["content-type"] = content_type
    if coding and coding != "gzip, deflate":
        headers["content-encoding"] = coding
    before = len(seen.events)
    if method == "POST":
        response = client.post(path, content=_encode(body, coding), headers=headers)
    else:
        query = quote(body.decode("latin-1"), safe="=&")
        response = client.request(method, f"{path}?{query}")
    assert response.status_code in (200, 400, 413, 415), response.text
    if response.status_code >= 400:
        reason = response.json()["error"]
        assert "\n" not in reason
        assert MARK not in reason
    elif len(seen.events) > before:
        event = seen.events[-1]
        stored = asyncio.run(client.app.state.journal.entries(ids=[event.id], limit=1))
        assert stored and stored[0].state in ("received", "done")


# -- what the fuzz found, each with its right value ---------------------------------------


def test_fuzz_found_whispir_timestamp_out_of_range_is_kept_raw() -> None:
    body = (
        b'{"messageid":"M1","from":{"mobile":"61400000000"},"responseMessage":'
        b'{"channel":"SMS","acknowledged":"01/01/99999999999999999999 10:00","content":"hi"}}'
    )
    event = WhispirProvider().parse(body)
    assert event.type is EventType.message
    assert event.occurred_at is None
    assert event.provider_timestamp == "01/01/99999999999999999999 10:00"


@pytest.mark.parametrize(
    "stamp", ["99999999999/01/24 10:00", "01/01/24 99999999999999999999:00", "1/1/1 1:1:9e9"]
)
def test_fuzz_found_dmy_timestamp_overflow_is_none(stamp: str) -> None:
    assert parse_dmy_timestamp(stamp) is None


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ('{"Big": 123456789012345678901234567890}', {"Big": "123456789012345678901234567890"}),
        ('[{"Neg": -99999999999999999999}]', {"Neg": "-99999999999999999999"}),
        ('{"Deep": [1, {"x": 18446744073709551616}]}',
         {"Deep": [1, {"x": "18446744073709551616"}]}),
        ('{"Max": 18446744073709551615, "Min": -9223372036854775808}',
         {"Max": 18446744073709551615, "Min": -9223372036854775808}),
    ],
)  # fmt: skip
def test_fuzz_found_onepoint_metadata_big_integer_is_kept_as_text(
    metadata: str, expected: dict[str, Any], tmp_path: Path
) -> None:
    body = f'{{"Type":"Message","MessageID":"MS1","Message":"hi","MetaData":{metadata}}}'
    seen = EventRecorder()
    config = Config(
        channels={"op": Channel(provider="onepoint", auth="none")},
        journal=f"sqlite:///{tmp_path / 'j.db'}",
    )
    with TestClient(create_app(config, plugins=[seen])) as client:
        response = client.post("/op", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200
        stored = asyncio.run(client.app.state.journal.entries(limit=None))  # type: ignore[attr-defined]
    assert seen.events[0].metadata == expected
    assert [entry.state for entry in stored] == ["done"]
    assert stored[0].event is not None
    assert stored[0].event.metadata == expected


def test_fuzz_found_onepoint_segments_beyond_64_bits_keeps_the_callback() -> None:
    body = (
        b'{"Type":"Receipt","MessageID":"MS1","Status":"Delivered","Segments":99999999999999999999}'
    )
    event = OnePointProvider().parse(body)
    assert event.type is EventType.receipt
    assert event.segments is None
    assert b"99999999999999999999" in event.raw


def test_fuzz_found_form_metadata_json_big_integer_is_kept_as_text() -> None:
    query = "Type=Message&MessageID=MS2&MetaData=" + quote('{"n": 123456789012345678901234567890}')
    event = DiyProvider().parse(b"", query=query)
    assert event.metadata == {"n": "123456789012345678901234567890"}


def test_fuzz_found_error_reasons_do_not_echo_input() -> None:
    cases = [
        (WhispirProvider(), f"<{MARK}>x</{MARK}>".encode(), "text/xml"),
        (WhispirProvider(), f"<{MARK}><a>1</a></{MARK}>".encode(), "text/xml"),
        (WhispirProvider(), f'{{"{MARK}": 1}}'.encode(), "application/json"),
        (WhispirProvider(), f'["{MARK}"]'.encode(), "application/json"),
        (OnePointProvider(), f'{{"{MARK}": "{MARK}"}}'.encode(), "application/json"),
        (OnePointProvider(), f'{{"Type": "Message", "MetaData": ["{MARK}"]}}'.encode(), None),
        (OnePointProvider(), f'{{"Type": "Message", "Segments": "{MARK}"}}'.encode(), None),
        (DiyProvider(), f"Type=Message&MetaData=%5B{MARK}".encode(), None),
    ]
    for provider, body, content_type in cases:
        with pytest.raises(PayloadError) as info:
            provider.parse(body, content_type=content_type, received_at=datetime.now(UTC))
        assert MARK not in str(info.value), (body, str(info.value))
