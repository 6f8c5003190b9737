"""Small value normalizers shared by the provider parsers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from functools import lru_cache

__all__ = ["canonical", "parse_dmy_timestamp", "parse_iso_timestamp", "snake", "squash"]

_SEPARATORS = str.maketrans("", "", " _-")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def squash(value: str) -> str:
    """Lowercase ``value`` and drop spaces, underscores and hyphens: a lookup key."""
    return value.translate(_SEPARATORS).lower()


@lru_cache(maxsize=1024)
def snake(value: str) -> str:
    """Convert a provider's status-like word to lowercase snake_case, mechanically.

    ``LandlineUnknown`` -> ``landline_unknown``, ``No Route`` -> ``no_route``,
    ``SENT`` -> ``sent``. Cached: providers send few distinct values.
    """
    return _NON_WORD.sub("_", _CAMEL.sub("_", value.strip()).lower()).strip("_")


def canonical(value: str, aliases: Mapping[str, str]) -> str:
    """Normalize ``value`` through ``aliases`` (keyed by :func:`squash`), else :func:`snake`.

    Aliases catch what mechanics cannot: ``Failure`` and ``Failed`` both become
    ``failed``, ``Timedout`` becomes ``timed_out``.
    """
    return aliases.get(squash(value)) or snake(value)


def parse_dmy_timestamp(value: str, tz: tzinfo = UTC) -> datetime | None:
    """Parse Whispir's ``dd/mm/yy HH:MM`` (day first), in zone ``tz``.

    Also takes a four-digit year and optional seconds. Returns None for anything else:
    a timestamp receiver cannot read is kept raw, never a reason to drop the callback.
    """
    date, _, clock = value.strip().partition(" ")
    parts = date.split("/")
    hms = clock.strip().split(":")
    if len(parts) != 3 or not 2 <= len(hms) <= 3:
        return None
    try:
        day, month, year = int(parts[0]), int(parts[1]), int(parts[2])
        if len(parts[2]) <= 2:
            year += 2000
        second = int(hms[2]) if len(hms) == 3 else 0
        return datetime(year, month, day, int(hms[0]), int(hms[1]), second, tzinfo=tz)
    except (ValueError, OverflowError):  # out of range, or too big for C's int
        return None


def parse_iso_timestamp(value: str) -> datetime | None:
    """Parse an ISO-8601 timestamp; one without an offset is taken as UTC.

    Returns None when ``value`` is not ISO-8601 (the raw value is kept by the caller).
    """
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (ValueError, OverflowError):
        # A form or query value whose offset's "+" was not percent-encoded arrives as a
        # space ("...:33.645773 00:00"): read it as the "+" it was.
        head, space, offset = value.strip().rpartition(" ")
        if not space or "T" not in head:
            return None
        try:
            parsed = datetime.fromisoformat(f"{head}+{offset}")
        except (ValueError, OverflowError):
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
