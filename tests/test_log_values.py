"""Values a request chose reach a log line only through ``receiver.logs.bounded``: at most
40 characters (a few wider fields: ids, addresses, the signed URL), non-printables escaped.

Each test sends a value that is long and holds a line break, a NUL, a right-to-left
override or a backslash, and checks every captured line: no field longer than its bound,
no raw control character, no more of the value than its first characters.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, create_app
from receiver.logs import bounded

NASTY = "Z" * 5000 + "\n\x00\u202e\\end"
"""A value no log line should show whole: long, a line break, NUL, RTL override, '\\'."""


def _client(metrics: bool = False) -> TestClient:
    config = Config(
        channels={
            "sms": Channel(provider="onepoint", auth="none"),
            "hmac": Channel(
                provider="onepoint", auth="hmac", options={"credentials": {"APP": "s3cret"}}
            ),
        },
        metrics=metrics,
    )
    return TestClient(create_app(config), raise_server_exceptions=False)


def _assert_bounded(lines: list[dict[str, Any]], limit: int = 64) -> None:
    """No field of any line longer than ``limit`` (+ the cut marker), no raw control."""
    assert lines
    for line in lines:
        for name, value in line.items():
            if not isinstance(value, str) or name == "hint":
                continue
            assert len(value) <= limit + len("...(+99999)"), (name, len(value))
            assert value.isprintable(), (name, value)
            assert "ZZZZZ" * 30 not in value


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Receipt", "Receipt"),
        (None, None),
        (b"utf-8", "utf-8"),
        ("a\nb", "a\\nb"),
        ("nul\x00", "nul\\x00"),
        ("\u202eevil", "\\u202eevil"),
        ("back\\slash", "back\\\\slash"),
        ("é", "\\xe9"),
        ("x" * 41, "x" * 40 + "...(+1)"),
        ("x" * 40, "x" * 40),
    ],
)
def test_log_values_bounded_cuts_and_escapes(value: str | bytes | None, shown: str | None) -> None:
    assert bounded(value) == shown


def test_log_values_bounded_keeps_its_limit_after_escaping() -> None:
    assert bounded("\n" * 1000) == "\\n" * 40 + "...(+960)"
    assert bounded("id-" * 30, 64) == ("id-" * 30)[:64] + "...(+26)"


def test_log_values_unknown_type_is_bounded() -> None:
    body = json.dumps({"Type": NASTY, "MessageID": "MS1", "Source": "447700900123"})
    with capture_logs() as logs:
        answer = _client().post("/sms", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    (line,) = [line for line in logs if line["event"] == "unknown callback type"]
    assert line["provider_type"] == "Z" * 40 + f"...(+{len(NASTY) - 40})"
    _assert_bounded(logs)


def test_log_values_unknown_type_in_a_get_callback_is_bounded() -> None:
    with capture_logs() as logs:
        answer = _client().get("/sms", params={"Type": NASTY, "MessageID": "MS2"})
    assert answer.status_code == 200
    (line,) = [line for line in logs if line["event"] == "unknown callback type"]
    assert line["provider_type"].startswith("Z" * 40 + "...")
    _assert_bounded(logs)


def test_log_values_message_id_is_bounded() -> None:
    body = json.dumps({"Type": "Receipt", "MessageID": NASTY, "Status": "Delivered"})
    with capture_logs() as logs:
        answer = _client().post("/sms", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    (line,) = [line for line in logs if line["event"] == "callback"]
    assert line["message_id"] == "Z" * 64 + f"...(+{len(NASTY) - 64})"
    _assert_bounded(logs)


def test_log_values_unknown_charset_is_bounded() -> None:
    charset = "x-" + "q" * 300 + "\\\u00e9"
    content_type = f"application/json; charset={charset}".encode("latin-1")
    body = b'{"Type": "Stop", "MessageID": "MS3", "Source": "447700900123"}'
    with capture_logs() as logs:
        answer = _client().post("/sms", content=body, headers={b"Content-Type": content_type})
    assert answer.status_code == 200
    (line,) = [line for line in logs if line["event"] == "unknown charset: read as UTF-8"]
    assert line["charset"].startswith(charset[:40] + "...(+")
    _assert_bounded(logs)


def test_log_values_unknown_channel_and_method_are_bounded() -> None:
    client = _client()
    with capture_logs() as logs:
        assert client.get("/" + "c" * 5000).status_code == 404
        assert client.request("X" * 300, "/sms").status_code == 405
    lines = [line for line in logs if line["event"] == "callback"]
    assert [line["channel"] for line in lines] == ["c" * 40 + "...(+4960)", "sms"]
    assert lines[1]["method"] == "X" * 40 + "...(+260)"
    _assert_bounded(logs)


def test_log_values_hmac_mismatch_names_a_bounded_url_without_its_query() -> None:
    host = "h" * 500 + ".example.com"
    query = "Type=Message&Source=447700900555&Message=my+secret+text"
    with capture_logs() as logs:
        answer = _client().get(
            f"/hmac?{query}",
            headers={
                "Host": host,
                # Well formed (a GUID nonce, now), so the signature itself is compared.
                "Authorization": f"X-OPG-Signature APP:{'A' * 27}=:{'0' * 32}:{int(time.time())}",
            },
        )
    assert answer.status_code == 401
    (line,) = [line for line in logs if line["event"] == "hmac signature mismatch"]
    assert (
        line["signed_url"]
        == f"http://{host}"[:120] + f"...(+{len('http://' + host + '/hmac') - 120})"
    )
    text = json.dumps(logs)
    assert "447700900555" not in text and "secret" not in text
    _assert_bounded(logs, 120)
