"""Per-callback parse + normalize time, next to the raw decode of the same bytes.

Run: ``.venv/bin/python bench/parse.py`` (``--quick`` for a smoke run). Prints, for a
Whispir JSON reply, a Whispir XML reply and an OnePoint JSON receipt, the time of
``provider.parse`` (called as the HTTP layer calls it), the time of the raw decode
(``msgspec.json.Decoder().decode`` / ``xml.etree.ElementTree.fromstring``) in the same
run, and their ratio. Targets: JSON within 4x, XML within 2x.
"""

from __future__ import annotations

import argparse
import timeit
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from receiver.providers import OnePointProvider, WhispirProvider

WHISPIR_JSON = b"""{
    "messageId": "ABC4857BCCF484575FCA",
    "messageLocation": "https://api.whispir.com/messages/ABC4857BCCF484575FCA",
    "from": {
        "name": "Fred Waters",
        "mri": "Fred_Waters.528798.Sandbox@Contact.whispir.com",
        "mobile": "61412345678",
        "email": "fred.waters@example.com",
        "voice": "61412345678"
    },
    "responseMessage": {
        "channel": "SMS",
        "acknowledged": "09/01/13 13:22",
        "content": "Yes, I accept. Will I need to bring steel cap boots?"
    }
}"""

WHISPIR_XML = b"""<ns2:deliveryresponse xmlns:ns2="http://schemas.api.whispir.com">
    <messageid>ABC4857BCCF484575FCA</messageid>
    <location>https://api.whispir.com/messages/ABC4857BCCF484575FCA</location>
    <from>
        <name>Fred Waters</name>
        <mri>Fred_Waters.528798.Sandbox@Contact.whispir.com</mri>
        <mobile>61412345678</mobile>
        <email>fred.waters@example.com</email>
        <voice>61412345678</voice>
    </from>
    <responsemessage>
        <channel>SMS</channel>
        <acknowledged>09/01/13 13:22</acknowledged>
        <content>Yes, I accept. Will I need to bring steel cap boots?</content>
    </responsemessage>
</ns2:deliveryresponse>"""

ONEPOINT_RECEIPT = b"""{
  "Source": "447700900123",
  "Destination": "447700900456",
  "Message": "Your survey link: https://diy.example/s/abc",
  "Type": "Receipt",
  "Timestamp": "2020-02-04T11:47:33.645773+00:00",
  "Inbound": false,
  "Lookup": true,
  "Test": false,
  "Status": "Delivered",
  "MetaData": [
    {"RequestID": "1234567890DEFED"},
    {"OrgID": 1010},
    {"Instance": "ETRERT"},
    {"Campaign": 1242},
    {"TimeStamp": "2020-02-04T11:47:33.645773+00:00"}
  ],
  "MessageID": "MS1312312312323",
  "Carrier": "EE",
  "Reachable": true,
  "NumberType": "Mobile"
}"""


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Best-of-5 microseconds per call, each repeat running about ``seconds / 5``."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * seconds / 5 / 0.2))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    seconds = 0.25 if args.quick else 2.0

    whispir, onepoint = WhispirProvider(), OnePointProvider()
    decoder = msgspec.json.Decoder()
    now = datetime.now(UTC)
    cases = [
        ("Whispir JSON reply", whispir, WHISPIR_JSON, "application/json", decoder.decode, 4.0),
        ("Whispir XML reply", whispir, WHISPIR_XML, "application/xml", ET.fromstring, 2.0),
        (
            "OnePoint JSON receipt",
            onepoint,
            ONEPOINT_RECEIPT,
            "application/json",
            decoder.decode,
            4.0,
        ),
    ]
    print(f"{'callback':<24}{'parse us':>10}{'raw us':>9}{'ratio':>8}{'target':>8}")
    for label, provider, body, ctype, raw_decode, target in cases:
        event = provider.parse(body, content_type=ctype, channel="bench", received_at=now)
        assert event.message_id, label

        def parse(p=provider, b=body, c=ctype) -> object:  # type: ignore[no-untyped-def]
            return p.parse(b, content_type=c, channel="bench", received_at=now)

        ours = per_call(parse, seconds)
        raw = per_call(lambda b=body, d=raw_decode: d(b), seconds)  # type: ignore[misc]
        ok = "ok" if ours / raw <= target else "MISSED"
        print(f"{label:<24}{ours:>10.2f}{raw:>9.2f}{ours / raw:>7.2f}x{target:>7.1f}x {ok}")


if __name__ == "__main__":
    main()
