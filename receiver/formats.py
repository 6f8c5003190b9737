"""Body formats: which one a request carries, and safe readers for each.

The content type is trusted when it names a format receiver reads; anything else (or
nothing) is sniffed from the first bytes of the body.
"""

from __future__ import annotations

import enum
import pyexpat
from typing import Any

from receiver.types import PayloadError

__all__ = ["MAX_XML_DEPTH", "TOO_DEEP", "BodyFormat", "detect_format", "parse_xml"]

MAX_XML_DEPTH = 32
"""Deepest XML nesting accepted; callbacks nest three or four levels."""


TOO_DEEP = "body nested too deeply"


class BodyFormat(enum.StrEnum):
    """The encodings callbacks arrive in."""

    json = "json"
    xml = "xml"
    form = "form"


_TRUSTED = {
    "application/json": BodyFormat.json,
    "text/json": BodyFormat.json,
    "application/xml": BodyFormat.xml,
    "text/xml": BodyFormat.xml,
    "application/x-www-form-urlencoded": BodyFormat.form,
}
_WHITESPACE = b" \t\r\n"


def detect_format(content_type: str | None, body: bytes) -> BodyFormat | None:
    """Return the format of ``body``, or None when it is not one receiver reads.

    A known content type is trusted (including Whispir's
    ``application/vnd.whispir.*+json`` and ``+xml`` forms); otherwise the body is sniffed:
    ``{`` or ``[`` is JSON, ``<`` is XML, ``name=value`` is a form.
    """
    if content_type:
        known = _TRUSTED.get(content_type)
        if known is not None:
            return known
        media = content_type.partition(";")[0].strip().lower()
        known = _TRUSTED.get(media)
        if known is not None:
            return known
        if media.endswith("+json"):
            return BodyFormat.json
        if media.endswith("+xml"):
            return BodyFormat.xml
    start = body.lstrip(_WHITESPACE)[:1]
    if start in (b"{", b"["):
        return BodyFormat.json
    if start == b"<":
        return BodyFormat.xml
    if _looks_like_form(body):
        return BodyFormat.form
    return None


def _looks_like_form(body: bytes) -> bool:
    first = body.partition(b"&")[0]
    name, eq, _ = first.partition(b"=")
    return bool(eq) and bool(name) and all(32 < c < 127 and c != 0x3C for c in name)


class _Forbidden(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _forbid_doctype(*_: object) -> None:
    raise _Forbidden("a DOCTYPE")


def _forbid_entity(*_: object) -> None:
    raise _Forbidden("an entity declaration")


def _forbid_external(*_: object) -> int:
    raise _Forbidden("an external entity reference")


def parse_xml(body: bytes) -> tuple[str, Any]:
    """Parse an XML document into ``(root name, value)`` without any DTD processing.

    Element names lose their namespace prefix (``ns2:deliveryresponse`` ->
    ``deliveryresponse``) but keep their case. An element with child elements becomes
    a dict of child name -> value (a list when a name repeats); a leaf becomes its text
    without surrounding whitespace (pretty-printing is not data). Attributes are ignored.

    Safety: a document with a DOCTYPE is refused before any of it is processed, which
    rules out entity declarations, external entities (XXE) and entity expansion
    ("billion laughs"): without a DTD, expat knows only the five predefined entities.
    Nesting deeper than :data:`MAX_XML_DEPTH` is refused.

    Raises:
        PayloadError: malformed XML, a DTD, or too deep a nesting.
    """
    parser = pyexpat.ParserCreate()
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _forbid_doctype
    parser.EntityDeclHandler = _forbid_entity
    parser.UnparsedEntityDeclHandler = _forbid_entity
    parser.ExternalEntityRefHandler = _forbid_external
    # Each open element is [name, children or None, where its text starts in ``texts``].
    # Character data goes straight onto ``texts`` (a C-level append, no Python call per
    # chunk); a leaf's text is what arrived between its start and its end.
    stack: list[list[Any]] = []
    root: list[Any] = []
    texts: list[str] = []

    def start(tag: str, _attrs: object) -> None:
        if len(stack) >= MAX_XML_DEPTH:
            raise _Forbidden(f"nesting deeper than {MAX_XML_DEPTH} elements")
        stack.append([tag.rpartition(":")[2], None, len(texts)])

    def end(_tag: str) -> None:
        name, children, first = stack.pop()
        value = children if children is not None else "".join(texts[first:]).strip()
        if not stack:
            root.append(name)
            root.append(value)
            return
        parent = stack[-1]
        siblings = parent[1]
        if siblings is None:
            parent[1] = {name: value}
        elif name in siblings:
            previous = siblings[name]
            if isinstance(previous, _Repeated):
                previous.append(value)
            else:
                siblings[name] = _Repeated((previous, value))
        else:
            siblings[name] = value

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = texts.append
    try:
        parser.Parse(body, True)
    except _Forbidden as exc:
        raise PayloadError(f"XML with {exc.what} is not accepted") from None
    except pyexpat.ExpatError as exc:
        raise PayloadError(
            f"malformed XML: {pyexpat.errors.messages[exc.code]} "
            f"at line {exc.lineno}, column {exc.offset}"
        ) from None
    if not root:
        raise PayloadError("malformed XML: no root element")
    return root[0], root[1]


class _Repeated(list[Any]):
    """The values of an element name that occurs more than once under one parent."""
