"""OnePoint/DIY ``MetaData``: the free-form mapping a sender attaches to a message.

It arrives as a list of one-key objects, an object, a JSON string (form and GET
callbacks) or ``MetaData[Key]=value`` pairs; :func:`flatten_metadata` makes one mapping
of it, :func:`decode_metadata` reads a form's JSON text.
"""

from __future__ import annotations

from typing import Any

import msgspec

from receiver.errors import PayloadError
from receiver.formats import TOO_DEEP, repair_json

__all__ = ["INT_MAX", "INT_MIN", "decode_metadata", "flatten_metadata"]

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""The integers every store and JSON consumer keeps exactly (int64 and uint64)."""

_JSON = msgspec.json.Decoder()


def decode_metadata(text: str) -> Any:
    """A form's ``MetaData`` value: JSON when it looks like JSON, else the text itself.

    A JSON escape of half a surrogate pair becomes U+FFFD, as in a JSON body.
    """
    if text.lstrip()[:1] in ("[", "{"):
        encoded = text.encode("utf-8", "replace")
        try:
            return _JSON.decode(encoded)
        except msgspec.DecodeError:
            repaired = repair_json(encoded)
            try:
                if repaired is not None:
                    return _JSON.decode(repaired)
            except msgspec.DecodeError:
                pass
            raise PayloadError("MetaData: not valid JSON") from None
        except RecursionError:
            raise PayloadError(f"MetaData: {TOO_DEEP}") from None
    return text


def flatten_metadata(value: list[Any] | dict[str, Any] | str | None) -> dict[str, Any]:
    """MetaData as one mapping: a list of one-key objects is merged, the last key winning.

    Integers beyond 64 bits (which no store or JSON consumer can be relied on to keep)
    are kept exactly, as their decimal text.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        return {"MetaData": value}
    if isinstance(value, dict):
        merged = dict(value)
    else:
        merged = {}
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise PayloadError(f"MetaData[{index}]: expected an object")
            merged.update(item)
    for key, item in merged.items():  # one cheap look per value: most are text
        kind = type(item)
        if kind is str or (kind is int and INT_MIN <= item <= INT_MAX):
            continue
        merged[key] = _bounded(item)
    return merged


def _bounded(value: Any) -> Any:
    """``value`` (copied) with integers beyond 64 bits as their decimal text."""
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bounded(item) for item in value]
    if type(value) is int and not INT_MIN <= value <= INT_MAX:
        return str(value)
    return value
