"""Shared fixtures: payload samples live in tests/payloads/<provider>/."""

from __future__ import annotations

from pathlib import Path

import pytest

PAYLOADS = Path(__file__).parent / "payloads"


def payload(provider: str, name: str) -> bytes:
    """The bytes of one sample, exactly as stored."""
    return (PAYLOADS / provider / name).read_bytes()


@pytest.fixture
def load_payload():  # type: ignore[no-untyped-def]
    return payload
