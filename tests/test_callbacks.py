"""receiver.callbacks: changing a body (set_fields, freshen), building and posting a callback."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
from datetime import datetime
from urllib.parse import parse_qs, parse_qsl

import pytest

from receiver import samples
from receiver.callbacks import Callback, NoAnswer, build_callback, freshen, post, set_fields
from receiver.config import Channel

# set_fields ---------------------------------------------------------------------------------


def test_callbacks_set_fields_xml_escapes_markup() -> None:
    body = samples.find("whispir", "reply-sms-camel").body
    changed = set_fields(body, "xml", {"content": "a <b> & c"}).decode()
    assert "<content>a &lt;b&gt; &amp; c</content>" in changed
    assert changed.count("<content>") == 1


def test_callbacks_set_fields_xml_missing_element_is_an_error() -> None:
    body = samples.find("whispir", "undeliverable.xml").body
    with pytest.raises(ValueError, match="no <nosuch> element"):
        set_fields(body, "xml", {"nosuch": "x"})


def test_callbacks_set_fields_json_dotted_case_insensitive_and_typed() -> None:
    body = samples.find("onepoint", "message").body
    changed = json.loads(
        set_fields(
            body,
            "json",
            {"message": "hi", "Inbound": "false", "Carrier": "123", "Extra.Depth": "x"},
        )
    )
    assert changed["Message"] == "hi" and "message" not in changed  # the name as sent
    assert changed["Inbound"] is False  # it held a boolean: the value read as JSON
    assert changed["Carrier"] == "123"  # it held a string: kept a string
    assert changed["Extra"] == {"Depth": "x"}
    whispir = samples.find("whispir", "reply-sms-location").body
    reply = json.loads(set_fields(whispir, "json", {"responseMessage.content": "Y"}))
    assert reply["responseMessage"]["content"] == "Y"


def test_callbacks_set_fields_json_into_a_string_is_an_error() -> None:
    body = samples.find("onepoint", "message").body
    with pytest.raises(ValueError, match="not a JSON object"):
        set_fields(body, "json", {"Message.part": "x"})
    with pytest.raises(ValueError, match="not JSON"):
        set_fields(b"<xml/>", "json", {"a": "b"})


def test_callbacks_set_fields_form_keeps_the_rest_and_adds_new_names() -> None:
    body = samples.find("diy", "message").body
    changed = set_fields(body, "form", {"message": "caf\u00e9 & more", "New": "1"})
    before, after = dict(parse_qsl(body.decode())), dict(parse_qsl(changed.decode()))
    assert after.pop("Message") == "caf\u00e9 & more"
    assert after.pop("New") == "1"
    before.pop("Message")
    assert after == before
    assert changed.isascii()


def test_callbacks_set_fields_form_keeps_an_unescaped_utf8_byte() -> None:
    # A sender's raw UTF-8 byte is its character, not escaped twice as Latin-1 text.
    changed = set_fields("Message=caf\u00e9&Type=Message".encode(), "form", {"Type": "Stop"})
    assert parse_qs(changed.decode())["Message"] == ["caf\u00e9"]


def test_callbacks_set_fields_unknown_format_and_no_changes() -> None:
    assert set_fields(b"anything", "yaml", {}) == b"anything"
    with pytest.raises(ValueError, match="unknown format"):
        set_fields(b"a: b", "yaml", {"a": "c"})


# freshen ------------------------------------------------------------------------------------


def test_callbacks_freshen_whispir_json_changes_the_id_in_message_location_too() -> None:
    sample = samples.find("whispir", "reply-email")
    old = json.loads(sample.body)
    new = json.loads(freshen(sample.body, "json", "whispir"))
    assert re.fullmatch(r"[0-9A-F]{20}", new["messageId"])
    assert new["messageId"] != old["messageId"]
    assert new["messageLocation"] == old["messageLocation"].replace(
        old["messageId"], new["messageId"]
    )
    stamp = new["responseMessage"]["acknowledged"]
    assert datetime.strptime(stamp, "%d/%m/%y %H:%M")  # Whispir's form
    assert stamp != old["responseMessage"]["acknowledged"]
    again = json.loads(freshen(sample.body, "json", "whispir"))
    assert again["messageId"] != new["messageId"]


def test_callbacks_freshen_whispir_xml_and_report() -> None:
    body = samples.find("whispir", "undeliverable.xml").body
    text = freshen(body, "xml", "whispir").decode()
    new_id = re.search(r"<messageid>(\w+)</messageid>", text)
    assert new_id is not None and new_id[1] != "2D7A4E9B0F3C46D8A5B2"
    assert f"/messages/{new_id[1]}</location>" in text
    assert "2D7A4E9B0F3C46D8A5B2" not in text
    assert "01/07/24 11:45" not in text  # the undeliverable time is part of the key
    report = json.loads(samples.find("whispir", "report-completion").body)
    fresh = json.loads(freshen(json.dumps(report).encode(), "json", "whispir"))
    assert fresh["reportId"] != report["reportId"]
    assert fresh["reportId"] in fresh["outputLocation"]
    assert fresh["timestamp"] != report["timestamp"]


def test_callbacks_freshen_whispir_empty_id_leaves_other_values_alone() -> None:
    body = b'{"messageid": "", "location": "https://x/messages/", "timestamp": "01/01/24 10:00"}'
    fresh = json.loads(freshen(body, "json", "whispir"))
    assert fresh["location"] == "https://x/messages/"
    assert fresh["messageid"]


def test_callbacks_freshen_onepoint_json_and_diy_form() -> None:
    sample = samples.find("onepoint", "message")
    old = json.loads(sample.body)
    new = json.loads(freshen(sample.body, "json", "onepoint"))
    assert re.fullmatch(r"MS\d{13}", new["MessageID"]) and new["MessageID"] != old["MessageID"]
    assert datetime.fromisoformat(new["Timestamp"]) > datetime.fromisoformat(old["Timestamp"])
    for name in ("MessageID", "Timestamp"):
        old.pop(name), new.pop(name)
    assert new == old  # nothing else changed
    form = samples.find("diy", "message").body
    before, after = (
        dict(parse_qsl(form.decode())),
        dict(parse_qsl(freshen(form, "form", "diy").decode())),
    )
    assert after["MessageID"] != before["MessageID"]
    assert after["Timestamp"] != before["Timestamp"]
    for name in ("MessageID", "Timestamp"):
        before.pop(name), after.pop(name)
    assert after == before


# build_callback -----------------------------------------------------------------------------


def test_callbacks_build_basic_bearer_query_header() -> None:
    url = "http://127.0.0.1:8000/sms"
    basic = build_callback(Channel(provider="whispir", auth="basic", keys=["u:p"]), url, b"{}")
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    token = build_callback(Channel(provider="whispir", auth="basic", keys=["dTpw"]), url, b"{}")
    assert token.headers["Authorization"] == "Basic dTpw"  # a token is sent as is
    bearer = build_callback(Channel(provider="diy", auth="bearer", keys=["", "k"]), url, b"{}")
    assert bearer.headers["Authorization"] == "Bearer k"  # the first key set
    query = build_callback(
        Channel(provider="diy", auth="query", keys=["a b&c"], param="key"),
        url,
        b"Type=Stop&MessageID=MS1",
        method="GET",
    )
    assert query.url == url + "?Type=Stop&MessageID=MS1&key=a%20b%26c"
    assert query.body == b"" and "Content-Type" not in query.headers
    header = build_callback(Channel(provider="whispir", auth="header", keys=["k"]), url, b"{}")
    assert header.headers == {"Content-Type": "application/json", "X-Whispir-Callback-Key": "k"}


def test_callbacks_build_given_credentials_even_empty() -> None:
    channel = Channel(provider="whispir", auth="header", keys=["k"])
    empty = build_callback(channel, "http://h/w", b"{}", credentials={"key": ""})
    assert empty.headers["X-Whispir-Callback-Key"] == ""  # as given: a missing key's 401


def test_callbacks_build_refuses_what_it_cannot_authenticate() -> None:
    url = "http://h/c"
    with pytest.raises(ValueError, match="no header name"):
        build_callback(Channel(provider="onepoint", auth="header", keys=["k"]), url, b"{}")
    with pytest.raises(ValueError, match="has no key"):
        build_callback(Channel(provider="onepoint", auth="bearer", keys=[]), url, b"{}")
    with pytest.raises(ValueError, match="plugin provider's own"):
        build_callback(Channel(provider="custom", auth="token", keys=["k"]), url, b"{}")
    with pytest.raises(ValueError, match="no credentials"):
        build_callback(Channel(provider="onepoint", auth="hmac"), url, b"{}")
    base64_channel = Channel(
        provider="diy",
        auth="hmac",
        options={"credentials": {"app": "c2VjcmV0"}, "hmac_key_encoding": "base64"},
    )
    with pytest.raises(ValueError, match="not Base64") as raised:
        build_callback(base64_channel, url, b"{}", credentials={"secret": "s3cr3t!"})
    assert "s3cr3t!" not in str(raised.value)


def test_callbacks_build_hmac_scheme_and_public_url() -> None:
    options = {"credentials": {"app": "secret"}, "public_url": "https://example.com/hooks/c"}
    diy = build_callback(
        Channel(provider="diy", auth="hmac", options=options), "http://h/c", b"{}", timestamp=1
    )
    assert diy.headers["Authorization"].startswith("X-DIY-Signature app:")
    assert diy.url == "http://h/c"  # sent here, signed for the public URL
    onepoint = build_callback(
        Channel(provider="onepoint", auth="hmac", options=options),
        "http://h/c",
        b"{}",
        timestamp=1,
    )
    assert onepoint.headers["Authorization"].startswith("X-OPG-Signature app:")
    assert onepoint.headers["Authorization"].endswith(":1")


# post ---------------------------------------------------------------------------------------


def test_callbacks_post_something_not_http_is_an_oserror() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def answer_garbage() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"not http at all\r\n\r\n")

    thread = threading.Thread(target=answer_garbage)
    thread.start()
    try:
        with pytest.raises(NoAnswer):
            post(Callback("POST", f"http://127.0.0.1:{port}/c", {}, b"{}"), timeout=5)
    finally:
        thread.join(5)
        listener.close()
