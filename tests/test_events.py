"""Tests for the event model's helpers: event ids."""

from __future__ import annotations

import time
import uuid

from receiver.events import new_event_id


def test_event_id_is_a_uuid7_string() -> None:
    for _ in range(1000):
        text = new_event_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_event_id_is_unique_and_carries_the_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(100_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    stamps = [uuid.UUID(text).int >> 80 for text in ids]
    assert before <= min(stamps) and max(stamps) <= after
    assert stamps == sorted(stamps)  # time-ordered across milliseconds


def test_event_id_later_millisecond_sorts_after() -> None:
    first = new_event_id()
    time.sleep(0.002)
    assert new_event_id() > first


def test_events_old_module_name_is_an_alias() -> None:
    import receiver.errors
    import receiver.events
    import receiver.types

    assert receiver.types.Event is receiver.events.Event
    assert receiver.types.PayloadError is receiver.errors.PayloadError
    assert receiver.types.UnsupportedPayload is receiver.errors.UnsupportedPayload
