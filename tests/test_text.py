"""Text read as the sender meant it: byte order marks, declared charsets, invalid bytes.

Issue 11 part 2 (and the XML encodings of part 6, the raw query of part 7). JSON, form
and query callbacks: a leading BOM is not data, a declared ``charset`` is honoured,
bytes not valid in it become U+FFFD instead of refusing the callback, and a JSON escape
of half a surrogate pair becomes U+FFFD. XML: a BOM or the document's encoding
declaration decides; every declaration either works or is a 400.
"""

from __future__ import annotations

import codecs
from typing import Any
from urllib.parse import quote

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, EventType, PayloadError, create_app
from receiver.providers.onepoint import DiyProvider, OnePointProvider
from receiver.providers.whispir import WhispirProvider

FORM = "application/x-www-form-urlencoded"
DIY_STOP = (
    b"Type=Stop&MessageID=MS3000000099002&Source=447700900302&Destination=60777"
    b"&Message=Stop+all&Inbound=true"
)
WHISPIR_REPLY = (
    '{"messageid":"ABC4857BCCF484575FCA","from":{"name":"Fred","mobile":"61400400400"},'
    '"responseMessage":{"channel":"SMS","acknowledged":"09/01/13 13:22",'
    '"content":"%s"}}'
)
WHISPIR_XML = (
    '<?xml version="1.0" encoding="{enc}"?><deliveryresponse>'
    "<messageid>ABC4857BCCF484575FCA</messageid>"
    "<from><name>Fred</name><mobile>61400400400</mobile></from>"
    "<responseMessage><channel>SMS</channel><acknowledged>09/01/13 13:22</acknowledged>"
    "<content>{text}</content></responseMessage></deliveryresponse>"
)


def _client() -> tuple[TestClient, EventRecorder]:
    seen = EventRecorder()
    channels = {
        "w": Channel(provider="whispir", auth="none"),
        "op": Channel(provider="onepoint", auth="none"),
        "diy": Channel(provider="diy", auth="none"),
    }
    return TestClient(create_app(Config(channels=channels), plugins=[seen])), seen


def _post(path: str, body: bytes, content_type: str | None) -> tuple[Any, list[Event]]:
    client, seen = _client()
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=body, headers=headers)
    return response, seen.events


# -- the examples --------------------------------------------------------------


def test_text_diy_form_stop_with_utf8_bom_is_a_stop() -> None:
    response, events = _post("/diy", codecs.BOM_UTF8 + DIY_STOP, FORM)
    assert response.status_code == 200
    assert [e.type for e in events] == [EventType.stop]
    assert events[0].message_id == "MS3000000099002"
    assert events[0].raw == codecs.BOM_UTF8 + DIY_STOP  # the body as received


def test_text_diy_form_latin1_charset_is_honoured() -> None:
    body = (
        b"Type=Message&MessageID=MS3000000099003&Source=447700900303&Destination=60777"
        b"&Message=je+suis+tr%E8s+satisfait&Inbound=true"
    )
    response, events = _post("/diy", body, f"{FORM}; charset=ISO-8859-1")
    assert response.status_code == 200
    assert events[0].text == "je suis très satisfait"
    assert events[0].raw == body


# -- byte order marks: every format, every BOM ------------------------------------------


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", None])
def test_text_json_with_bom_is_read(bom: bytes, encoding: str, content_type: str | None) -> None:
    text = '{"Type":"Stop","MessageID":"MS1","Source":"447700900302","Message":"Stop ça"}'
    body = bom + text.encode(encoding)
    response, events = _post("/op", body, content_type)
    assert response.status_code == 200
    assert events[0].type is EventType.stop
    assert events[0].text == "Stop ça"
    assert events[0].raw == body


def test_text_whispir_json_with_bom_is_read() -> None:
    body = codecs.BOM_UTF8 + (WHISPIR_REPLY % "Yes").encode()
    response, events = _post("/w", body, None)
    assert response.status_code == 200
    assert events[0].type is EventType.message
    assert events[0].text == "Yes"


def test_text_form_without_content_type_with_bom_is_sniffed_as_form() -> None:
    response, events = _post("/diy", codecs.BOM_UTF8 + DIY_STOP, None)
    assert response.status_code == 200
    assert events[0].type is EventType.stop


def test_text_get_query_with_escaped_bom_is_a_stop() -> None:
    client, seen = _client()
    response = client.get("/diy?%EF%BB%BF" + DIY_STOP.decode())
    assert response.status_code == 200
    assert seen.events[0].type is EventType.stop


@pytest.mark.parametrize("bom", [codecs.BOM_UTF8, codecs.BOM_UTF16_LE])
def test_text_whispir_xml_with_bom_is_read(bom: bytes) -> None:
    encoding = "utf-8" if bom == codecs.BOM_UTF8 else "utf-16-le"
    declared = "UTF-8" if encoding == "utf-8" else "UTF-16"
    document = WHISPIR_XML.format(enc=declared, text="Oui très")
    response, events = _post("/w", bom + document.encode(encoding), "application/xml")
    assert response.status_code == 200
    assert events[0].text == "Oui très"


# -- declared charsets ------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252", "latin1", '"ISO-8859-1"'])
def test_text_json_declared_charset_is_honoured(charset: str) -> None:
    body = '{"Type":"Message","MessageID":"MS2","Message":"très"}'.encode("latin-1")
    response, events = _post("/op", body, f"application/json; charset={charset}")
    assert response.status_code == 200
    assert events[0].text == "très"
    assert events[0].raw == body


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_text_json_declared_wide_charset_is_honoured(encoding: str) -> None:
    body = (WHISPIR_REPLY % "Sí").encode(encoding)
    response, events = _post("/w", body, f"application/json; charset={encoding}")
    assert response.status_code == 200
    assert events[0].text == "Sí"


def test_text_form_declared_charset_decodes_raw_bytes_and_escapes() -> None:
    body = "Type=Message&MessageID=MS4&Message=été+%E0+Paris".encode("cp1252")
    response, events = _post("/diy", body, f"{FORM}; charset=windows-1252")
    assert response.status_code == 200
    assert events[0].text == "été à Paris"


def test_text_form_declared_utf8_charset_reads_utf8() -> None:
    body = b"Type=Message&MessageID=MS5&Message=caf%C3%A9"
    response, events = _post("/diy", body, f"{FORM}; charset=utf-8")
    assert response.status_code == 200
    assert events[0].text == "café"


def test_text_unknown_charset_is_read_as_utf8() -> None:
    body = '{"Type":"Message","MessageID":"MS6","Message":"café"}'.encode()
    response, events = _post("/op", body, "application/json; charset=x-no-such-charset")
    assert response.status_code == 200
    assert events[0].text == "café"


# -- invalid bytes and escapes become U+FFFD, never a refusal ----------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"caf\xe9", "caf\ufffd"),
        (b"\xff\xfeok", "\ufffd\ufffdok"),
        (b"half \xe2\x82", "half \ufffd"),
    ],
)
def test_text_json_invalid_utf8_is_replaced(message: bytes, expected: str) -> None:
    body = b'{"Type":"Message","MessageID":"MS7","Message":"' + message + b'"}'
    response, events = _post("/op", body, "application/json")
    assert response.status_code == 200
    assert events[0].text == expected
    assert events[0].raw == body


@pytest.mark.parametrize(
    ("escape", "expected"),
    [
        (rb"\ud800", "\ufffd"),
        (rb"\uDC00x", "\ufffdx"),
        (rb"a\udbff", "a\ufffd"),
        (rb"\ude00\ud83d\ude00", "\ufffd\U0001f600"),
        (rb"\\ud800", "\\ud800"),  # a literal backslash, then text: nothing to replace
    ],
)
def test_text_json_lone_surrogate_escape_is_replaced(escape: bytes, expected: str) -> None:
    body = b'{"Type":"Message","MessageID":"MS8","Message":"' + escape + b'"}'
    response, events = _post("/op", body, "application/json")
    assert response.status_code == 200
    assert events[0].text == expected


def test_text_whispir_json_lone_surrogate_escape_is_replaced() -> None:
    response, events = _post("/w", (WHISPIR_REPLY % r"smile \ud83d").encode(), None)
    assert response.status_code == 200
    assert events[0].text == "smile \ufffd"


def test_text_json_malformed_for_other_reasons_is_still_refused() -> None:
    body = b'{"Type":"Message","Message":"caf\xe9"'  # truncated, and not UTF-8
    response, events = _post("/op", body, "application/json")
    assert response.status_code == 400
    assert events == []
    assert "caf" not in response.text


def test_text_form_invalid_escape_bytes_are_replaced() -> None:
    response, events = _post("/diy", b"Type=Message&MessageID=MS9&Message=%FF%FEhi", FORM)
    assert response.status_code == 200
    assert events[0].text == "\ufffd\ufffdhi"


def test_text_get_query_invalid_escape_bytes_are_replaced() -> None:
    client, seen = _client()
    response = client.get("/diy?Type=Message&MessageID=MS10&Message=tr%E8s")
    assert response.status_code == 200
    assert seen.events[0].text == "tr\ufffds"


def test_text_mounted_raw_utf8_query_reads_as_utf8() -> None:
    """A raw (unescaped) UTF-8 query string reaches a mounted app as bytes: read as UTF-8."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    seen = EventRecorder()
    inner = create_app(
        Config(channels={"diy": Channel(provider="diy", auth="none")}), plugins=[seen]
    )
    outer = Starlette(routes=[Mount("/hooks", app=inner)])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/hooks/diy",
        "raw_path": b"/hooks/diy",
        "root_path": "",
        "query_string": "Type=Message&MessageID=MS11&Message=café".encode(),
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    import anyio

    anyio.run(outer, scope, receive, send)
    assert sent[0]["status"] == 200
    assert seen.events[0].text == "café"


# -- XML: every encoding declaration works or is a 400 ------------------------------------


@pytest.mark.parametrize(
    ("declared", "codec", "text"),
    [
        ("Shift_JIS", "shift_jis", "はい"),
        ("EUC-JP", "euc_jp", "はい"),
        ("GB2312", "gb2312", "是的"),
        ("Big5", "big5", "是的"),
        ("ISO-8859-1", "latin-1", "très"),
        ("windows-1252", "cp1252", "€ très"),
        ("UTF-8", "utf-8", "très ✓"),
    ],
)
def test_text_xml_encoding_declaration_is_honoured(declared: str, codec: str, text: str) -> None:
    body = WHISPIR_XML.format(enc=declared, text=text).encode(codec)
    response, events = _post("/w", body, "text/xml")
    assert response.status_code == 200
    assert events[0].text == text


@pytest.mark.parametrize("declared", ["bogus-encoding", "x-unknown", "UTF-7x"])
def test_text_xml_unknown_encoding_is_a_400_without_echo(declared: str) -> None:
    body = WHISPIR_XML.format(enc=declared, text="hi").encode()
    response, events = _post("/w", body, "text/xml")
    assert response.status_code == 400
    assert events == []
    assert declared not in response.text


def test_text_xml_wrong_wide_declaration_is_a_400() -> None:
    body = WHISPIR_XML.format(enc="UTF-16", text="hi").encode()  # 8-bit bytes, no BOM
    response, _ = _post("/w", body, "text/xml")
    assert response.status_code == 400


# -- the parsers directly (a plugin author's view) ---------------------------------------


def test_text_parser_keeps_raw_as_received_after_transcoding() -> None:
    body = codecs.BOM_UTF8 + b'{"Type":"Stop","MessageID":"MS12"}'
    for provider in (OnePointProvider(), DiyProvider()):
        event = provider.parse(body)
        assert event.type is EventType.stop
        assert event.raw == body


def test_text_parser_accepts_query_as_bytes_or_text() -> None:
    event = DiyProvider().parse(b"", query="Type=Message&MessageID=M&Message=é".encode())
    assert event.text == "é"
    event = DiyProvider().parse(b"", query="Type=Message&MessageID=M&Message=é")
    assert event.text == "é"


def test_text_whispir_xml_root_name_is_not_echoed() -> None:
    with pytest.raises(PayloadError) as info:
        WhispirProvider().parse(b"<secretrootname>text</secretrootname>")
    assert "secretrootname" not in str(info.value)


def test_text_form_metadata_json_lone_surrogate_escape_is_replaced() -> None:
    query = "Type=Message&MessageID=MS13&MetaData=" + quote('{"Name":"Zo\\ud800"}')
    event = DiyProvider().parse(b"", query=query)
    assert event.metadata == {"Name": "Zo\ufffd"}


def test_text_form_metadata_json_still_malformed_is_refused() -> None:
    with pytest.raises(PayloadError):
        DiyProvider().parse(b"", query="Type=Message&MessageID=MS14&MetaData=%7B%22a")


# -- found by attacking the fixes: the rest of the kind ----------------------------------


@pytest.mark.parametrize(
    "charset", ["rot13", "hex", "base64", "zlib", "uu", "undefined", "idna", "bz2"]
)
def test_text_json_charset_naming_no_text_encoding_is_read_as_utf8(charset: str) -> None:
    body = (WHISPIR_REPLY % "Oui très").encode()
    response, events = _post("/w", body, f"application/json; charset={charset}")
    assert response.status_code == 200
    assert events[0].text == "Oui très"


@pytest.mark.parametrize("charset", ["undefined", "utf-7", "rot13"])
def test_text_form_odd_charset_never_500(charset: str) -> None:
    body = b"Type=Message&MessageID=MS20&Message=%2B2AA-+hi"
    response, events = _post("/diy", body, f"{FORM}; charset={charset}")
    assert response.status_code == 200
    assert events[0].message_id == "MS20"
    events[0].text.encode()  # always valid text: no lone surrogate


def test_text_utf7_lone_surrogate_becomes_replacement_in_json_and_xml() -> None:
    body = b'{"Type":"Message","MessageID":"MS21","Message":"a+2AA-b"}'
    response, events = _post("/op", body, "application/json; charset=utf-7")
    assert response.status_code == 200
    assert events[0].text == "a\ufffdb"
    document = WHISPIR_XML.format(enc="UTF-7", text="a+2AA-b").encode()
    response, events = _post("/w", document, "text/xml")
    assert response.status_code == 200
    assert events[0].text == "a\ufffdb"


def test_text_json_escaped_backslash_before_lone_surrogate_is_repaired() -> None:
    body = b'{"Type":"Message","MessageID":"MS22","Message":"\\\\uD800\\uDC00x"}'
    response, events = _post("/op", body, "application/json")
    assert response.status_code == 200
    assert events[0].text == "\\uD800\ufffdx"


@pytest.mark.parametrize(
    ("declared", "codec", "bom"),
    [
        ("UTF-32", "utf-32-le", codecs.BOM_UTF32_LE),
        ("UTF-32", "utf-32-be", codecs.BOM_UTF32_BE),
        ("ISO-2022-JP", "iso2022_jp", b""),
        ("KOI8-R", "koi8_r", b""),
    ],
)
def test_text_xml_encodings_expat_does_not_read_are_decoded(
    declared: str, codec: str, bom: bytes
) -> None:
    text = "はい" if "2022" in declared or "32" in declared else "да"
    body = bom + WHISPIR_XML.format(enc=declared, text=text).encode(codec)
    response, events = _post("/w", body, "text/xml")
    assert response.status_code == 200
    assert events[0].text == text


@pytest.mark.parametrize("declared", ["rot13", "base64", "undefined"])
def test_text_xml_declaring_no_text_encoding_is_a_400(declared: str) -> None:
    response, events = _post("/w", WHISPIR_XML.format(enc=declared, text="x").encode(), None)
    assert response.status_code == 400
    assert events == []
    assert declared not in response.text


def test_text_codec_that_ignores_replace_never_500() -> None:
    """punycode ignores errors='replace': its bodies are read as UTF-8, never a 500."""
    body = '{"Type":"Message","MessageID":"MS30","Message":"très"}'.encode()
    response, events = _post("/op", body, "application/json; charset=punycode")
    assert response.status_code == 200
    assert events[0].message_id == "MS30"
    document = WHISPIR_XML.format(enc="punycode", text="très").encode()
    response, _ = _post("/w", document, "text/xml")
    assert response.status_code in (200, 400)
