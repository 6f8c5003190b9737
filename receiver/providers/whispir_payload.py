"""Whispir's callback bodies: every documented spelling of every field, as structs.

JSON in those spellings decodes straight into :class:`Body` (:data:`FAST`); anything else
(another casing, a root wrapper, numbers where text is due, an XML tree) is read the slow
way by :func:`read_tree`. :mod:`receiver.providers.whispir` turns a :class:`Body` into an
event.
"""

from __future__ import annotations

from typing import Any

import msgspec

from receiver.errors import PayloadError
from receiver.formats import TOO_DEEP

__all__ = [
    "FAST",
    "Body",
    "Sender",
    "decode_json",
    "kind_of",
    "lower_keys",
    "read_tree",
    "scalar_text",
]

_ROOTS = frozenset({"deliveryresponse", "statuscallback", "reportcompletion"})


class _View(msgspec.Struct, forbid_unknown_fields=True):
    """Base of the structs below: only the documented keys, so anything else is noticed."""


class Sender(_View):
    name: str | None = None
    mri: str | None = None
    mobile: str | None = None
    email: str | None = None
    voice: str | None = None


class _ResponseMessage(_View):
    channel: str | None = None
    acknowledged: str | None = None
    undeliverable: str | None = None
    content: str | None = None


class _StatusChange(_View):
    status: str | None = None
    timestamp: str | None = None


_Custom = dict[str, Any] | list[Any] | None


class Body(_View):
    """Every documented spelling of every field of every Whispir callback.

    JSON in these spellings decodes straight into this struct. Any other key (another
    casing, a root wrapper, a new field) makes that fail, and the body is then read the
    slow way: keys lowercased, unknown keys dropped, and converted into this struct.
    """

    messageid: str | None = None
    messageId: str | None = None
    messagelocation: str | None = None
    messageLocation: str | None = None
    location: str | None = None
    sender: Sender | None = msgspec.field(default=None, name="from")
    responsemessage: _ResponseMessage | None = None
    responseMessage: _ResponseMessage | None = None
    oldstatus: _StatusChange | None = None
    oldStatus: _StatusChange | None = None
    newstatus: _StatusChange | None = None
    newStatus: _StatusChange | None = None
    reportid: str | None = None
    reportId: str | None = None
    outputlocation: str | None = None
    outputLocation: str | None = None
    timestamp: str | None = None
    customparameters: _Custom = None
    customParameters: _Custom = None
    customparamters: _Custom = None
    customParamters: _Custom = None
    callbackparameters: _Custom = None
    callbackParameters: _Custom = None


_SECTIONS: dict[str, frozenset[str]] = {
    "from": frozenset(Sender.__struct_fields__),
    "responsemessage": frozenset(_ResponseMessage.__struct_fields__),
    "oldstatus": frozenset(_StatusChange.__struct_fields__),
    "newstatus": frozenset(_StatusChange.__struct_fields__),
}
_CUSTOM_KEYS = frozenset({"customparameters", "customparamters", "callbackparameters"})
_TEXT_KEYS = (
    frozenset(
        name for name in Body.__struct_fields__ if name.islower() and name not in _CUSTOM_KEYS
    )
    - _SECTIONS.keys()
    - {"sender"}
)
FAST = msgspec.json.Decoder(Body)


def decode_json(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise PayloadError(str(exc)) from None
    except RecursionError:
        raise PayloadError(TOO_DEEP) from None


def read_tree(tree: Any, kind: str | None) -> tuple[Body, str | None]:
    """The slow path: any key casing, an optional root wrapper, numbers as text."""
    if not isinstance(tree, dict):
        raise PayloadError(f"expected a JSON object, got {kind_of(tree)}")
    top = lower_keys(tree)
    if len(top) == 1:  # a body wrapped in its root name, e.g. {"deliveryResponse": {...}}
        ((only, inner),) = top.items()
        if only in _ROOTS and isinstance(inner, dict):
            kind, top = only, lower_keys(inner)
    clean: dict[str, Any] = {}
    for key, value in top.items():
        if value is None or value == "":
            continue
        fields = _SECTIONS.get(key)
        if fields is not None:
            if isinstance(value, dict):
                value = {
                    low: item if isinstance(item, str) else scalar_text(item)
                    for name, item in value.items()
                    if (low := name.lower()) in fields and item is not None
                }
        elif key in _TEXT_KEYS:
            if not isinstance(value, str):
                value = scalar_text(value)
        elif key not in _CUSTOM_KEYS:
            continue
        clean[key] = value
    try:
        return msgspec.convert(clean, Body), kind
    except msgspec.ValidationError as exc:
        raise PayloadError(str(exc)) from None


def scalar_text(value: Any) -> Any:
    """Numbers and booleans as text; anything else unchanged (for the struct to judge)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def lower_keys(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in mapping.items()}


def kind_of(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a scalar"
