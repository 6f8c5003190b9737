"""Content-Encoding (issue 11 part 5): gzip and deflate undone within max_body_bytes.

A compressed callback is authenticated on the bytes as sent, then decoded, then parsed;
the decoded size is held to ``max_body_bytes`` (a decompression bomb is a fast 413 with
bounded memory), and any other coding is a 415 that names it.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient

from receiver import Channel, Config, EventType, create_app
from receiver.codings import decode_content
from receiver.errors import BodyTooLarge, PayloadError, UnsupportedPayload

RECEIPT = (
    b'{"Type":"Receipt","MessageID":"MS7000000000001","Source":"60777",'
    b'"Destination":"447700900123","Status":"Delivered","Timestamp":"2024-05-01T10:00:00Z"}'
)
KEY = "a-shared-key-for-tests"


def _client(**options: object) -> tuple[TestClient, EventRecorder]:
    seen = EventRecorder()
    channels = {
        "op": Channel(provider="onepoint", auth="none"),
        "w": Channel(provider="whispir", auth="header", keys=[KEY]),
    }
    config = Config(channels=channels, **options)  # type: ignore[arg-type]
    return TestClient(create_app(config, plugins=[seen])), seen


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_codings_onepoint_gzip_receipt_is_read() -> None:
    client, seen = _client()
    response = client.post(
        "/op",
        content=gzip.compress(RECEIPT),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert [e.type for e in seen.events] == [EventType.receipt]
    assert seen.events[0].status == "delivered"
    assert seen.events[0].raw == RECEIPT


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _raw_deflate),
        ("identity", lambda data: data),
        ("gzip, identity", gzip.compress),
        ("deflate, gzip", lambda data: gzip.compress(zlib.compress(data))),
    ],
)
def test_codings_each_supported_coding_is_undone(coding: str, encode: object) -> None:
    client, seen = _client()
    body = encode(RECEIPT)  # type: ignore[operator]
    response = client.post("/op", content=body, headers={"content-encoding": coding})
    assert response.status_code == 200
    assert seen.events[0].message_id == "MS7000000000001"


def test_codings_gzip_members_in_a_row_are_one_body() -> None:
    half = len(RECEIPT) // 2
    body = gzip.compress(RECEIPT[:half]) + gzip.compress(RECEIPT[half:])
    assert decode_content(body, b"gzip", 10_000) == RECEIPT


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
def test_codings_other_coding_is_415_naming_it(coding: str) -> None:
    client, seen = _client()
    response = client.post("/op", content=RECEIPT, headers={"content-encoding": coding})
    assert response.status_code == 415
    assert coding.split(",")[-1].strip() in response.json()["error"]
    assert seen.events == []


def test_codings_odd_coding_name_is_415_without_echo() -> None:
    client, _ = _client()
    odd = "<script>alert(1)</script>"
    response = client.post("/op", content=RECEIPT, headers={"content-encoding": odd})
    assert response.status_code == 415
    assert "script" not in response.text


def test_codings_decompression_bomb_is_a_fast_413_with_bounded_memory() -> None:
    limit = 64 * 1024
    bomb = gzip.compress(b"\0" * 100_000_000)  # 100 MB of zeros in ~100 KB
    client, seen = _client(max_body_bytes=len(bomb) + 1)
    tracemalloc.start()
    started = time.perf_counter()
    response = client.post("/op", content=bomb, headers={"content-encoding": "gzip"})
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert response.status_code == 413
    assert seen.events == []
    # Decoding stopped near the limit: never the 100 MB (generous bounds, not timings).
    assert peak < 20 * (len(bomb) + 1) + 16 * 1024 * 1024
    assert elapsed < 5
    with pytest.raises(BodyTooLarge):
        decode_content(bomb, b"gzip", limit)


def test_codings_decoded_size_is_held_to_max_body_bytes() -> None:
    body = b'{"Type":"Message","MessageID":"MS1","Message":"' + b"x" * 5000 + b'"}'
    client, _ = _client(max_body_bytes=2000)
    response = client.post("/op", content=gzip.compress(body), headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert "decoded" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(RECEIPT)[:-6], b"\x1f\x8b\x08\x00garbage"],
)
def test_codings_corrupt_body_is_a_400_kept_as_rejected(body: bytes, tmp_path: Path) -> None:
    client, seen = _client(journal=f"sqlite:///{tmp_path / 'j.db'}")
    with client:
        response = client.post("/op", content=body, headers={"content-encoding": "gzip"})
        assert response.status_code == 400
        journal = client.app.state.journal  # type: ignore[attr-defined]
        rejected = asyncio.run(journal.entries(state="rejected", limit=None))
    assert len(rejected) == 1
    assert seen.events == []


def test_codings_are_undone_after_authentication() -> None:
    """A compressed body is authenticated first: no key, no decompression (401)."""
    client, _ = _client()
    bomb = gzip.compress(b"\0" * 10_000_000)
    response = client.post("/w", content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 401
    body = gzip.compress(
        b'{"messageid":"M1","responseMessage":{"channel":"SMS","content":"Hi",'
        b'"acknowledged":"01/02/24 10:00"},"from":{"mobile":"61400000000"}}'
    )
    response = client.post(
        "/w", content=body, headers={"content-encoding": "gzip", "x-whispir-callback-key": KEY}
    )
    assert response.status_code == 200


def test_codings_decode_content_errors_are_payload_errors() -> None:
    with pytest.raises(UnsupportedPayload):
        decode_content(b"x", b"br", 100)
    with pytest.raises(PayloadError):
        decode_content(b"x", b"deflate", 100)
    with pytest.raises(UnsupportedPayload):
        decode_content(b"x", b"gzip, gzip, gzip, gzip, gzip", 100)


def test_codings_many_gzip_members_are_refused_fast() -> None:
    """Each member costs a copy of what follows it: their number is bounded (64)."""
    empty = gzip.compress(b"")
    inner = empty * 52_000
    started = time.perf_counter()
    with pytest.raises(PayloadError):
        decode_content(gzip.compress(inner), b"gzip, gzip", 2_000_000)
    assert time.perf_counter() - started < 1
    assert decode_content(empty * 60 + gzip.compress(RECEIPT), b"gzip", 10_000) == RECEIPT
