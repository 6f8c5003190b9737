"""Body formats: which one a request carries, its text as UTF-8, and safe readers.

The content type is trusted when it names a format receiver reads; anything else (or
nothing) is sniffed from the first bytes of the body (after a byte order mark).

Text: JSON and form bodies reach the providers' parsers as UTF-8 without a byte order
mark (:func:`as_utf8`): a declared ``charset`` is honoured, a BOM is not data, and bytes
not valid in the charset become U+FFFD instead of refusing the callback. XML is left to
expat, which reads BOMs and the document's own encoding declaration.
"""

from __future__ import annotations

import codecs
import enum
import pyexpat
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode

from receiver.errors import PayloadError
from receiver.logs import bounded, encodable, get_logger

__all__ = [
    "MARKS",
    "MAX_XML_DEPTH",
    "TOO_DEEP",
    "BodyFormat",
    "as_utf8",
    "charset_of",
    "detect_format",
    "parse_xml",
    "repair_json",
]

log = get_logger(__name__)

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
    start = _first_byte(body)
    if start in (b"{", b"["):
        return BodyFormat.json
    if start == b"<":
        return BodyFormat.xml
    if _looks_like_form(body):
        return BodyFormat.form
    return None


def _first_byte(body: bytes) -> bytes:
    """The first byte of ``body`` that is not whitespace, read past a byte order mark."""
    if body[:1] in _BOM_STARTS:
        for bom, encoding in _BOMS:
            if body.startswith(bom):
                text = body[len(bom) : len(bom) + 64].decode(encoding, "ignore")
                return text.lstrip().encode("ascii", "replace")[:1]
    return body.lstrip(_WHITESPACE)[:1]


def _looks_like_form(body: bytes) -> bool:
    body = body.removeprefix(codecs.BOM_UTF8)
    first = body.partition(b"&")[0]
    name, eq, _ = first.partition(b"=")
    return bool(eq) and bool(name) and all(32 < c < 127 and c != 0x3C for c in name)


_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_BOM_STARTS = frozenset(bom[:1] for bom, _ in _BOMS)
_FORM_BOM = b"%EF%BB%BF"
MARKS = frozenset({*(bom[0] for bom, _ in _BOMS), _FORM_BOM[0]})
"""First bytes of a body that :func:`as_utf8` may have to change (a BOM, an escaped one)."""


def charset_of(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header, lowercase, or None."""
    if not content_type or ";" not in content_type:
        return None
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None


@lru_cache(maxsize=64)
def _codec(charset: str) -> str | None:
    """Python's name for text encoding ``charset``; None for UTF-8 (nothing to do) and for
    a name that is no text encoding Python can decode (unknown, or a bytes-to-bytes codec
    such as ``base64`` or ``zlib``): those bodies are read as UTF-8."""
    try:
        name = codecs.lookup(charset).name
        b"text".decode(name, "replace")  # refuses bytes-to-bytes and 'undefined' codecs
    except (LookupError, UnicodeError, ValueError, TypeError):
        log.warning("unknown charset: read as UTF-8", charset=bounded(charset))
        return None
    return None if name == "utf-8" else name


def _text(body: bytes, encoding: str) -> str:
    """``body`` decoded, invalid bytes and lone surrogates (UTF-7 and UTF-16 can yield
    them) as U+FFFD: a string that always encodes to UTF-8."""
    try:
        return encodable(body.decode(encoding, "replace"))
    except UnicodeError:  # a codec that ignores "replace" (punycode): read as UTF-8
        return body.decode("utf-8", "replace")


def as_utf8(body: bytes, charset: str | None, fmt: BodyFormat) -> bytes:
    """``body`` (JSON or form) as UTF-8 without a byte order mark; ``body`` itself when it
    already is.

    A BOM (UTF-8, -16 or -32) decides the encoding and is dropped; otherwise a declared
    ``charset`` is honoured (an unknown one is read as UTF-8). Bytes not valid in the
    encoding become U+FFFD. A form's percent-escapes are read in the charset too and
    written back as UTF-8; a form or query string starting with an escaped UTF-8 BOM
    (``%EF%BB%BF``) loses it.
    """
    encoding = None
    if body[:1] in _BOM_STARTS:
        for bom, name in _BOMS:
            if body.startswith(bom):
                body, encoding = body[len(bom) :], name
                break
    if encoding is None and charset is not None:
        encoding = _codec(charset)
    if fmt is BodyFormat.form:
        if body[:1] == b"%" and body[:9].upper() == _FORM_BOM:
            body = body[9:]
        if encoding is not None and encoding != "utf-8":
            pairs = parse_qsl(
                _text(body, encoding), keep_blank_values=True, encoding=encoding, errors="replace"
            )
            return urlencode(encodable(pairs)).encode()
        return body
    if encoding is not None and encoding != "utf-8":
        return _text(body, encoding).encode()
    return body


# Every escape, left to right (so an escaped backslash is never read as the start of
# one): a high-low surrogate pair, a lone surrogate (group 1), or any other escape.
_ESCAPES = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
    r"|\\."
)


def _lone_to_replacement(match: re.Match[str]) -> str:
    return "\\ufffd" if match[1] is not None else match[0]


def repair_json(body: bytes) -> bytes | None:
    """``body`` with its text faults replaced by U+FFFD, or None when it has none.

    The faults: bytes that are not UTF-8, and ``\\u`` escapes that are grammatical
    but name half of a surrogate pair (not a Unicode scalar). A body that is malformed
    in any other way is left for the JSON decoder to refuse.
    """
    text = body.decode("utf-8", "replace")
    repaired = _ESCAPES.sub(_lone_to_replacement, text) if "\\u" in text else text
    fixed = repaired.encode()
    return fixed if fixed != body else None


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


_DECLARED_ENCODING = re.compile(
    rb"""^\s*<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]{1,40})["']"""
)


def _parser(encoding: str | None) -> Any:
    """An expat parser with every DTD feature refused (see :func:`parse_xml`)."""
    parser = pyexpat.ParserCreate(encoding)
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _forbid_doctype
    parser.EntityDeclHandler = _forbid_entity
    parser.UnparsedEntityDeclHandler = _forbid_entity
    parser.ExternalEntityRefHandler = _forbid_external
    return parser


_EXPAT_NATIVE = frozenset({"utf-8", "utf-16", "iso8859-1", "ascii"})
_CANNOT_READ = "XML declares an encoding receiver cannot read"


@lru_cache(maxsize=64)
def _xml_codec(declared: str) -> str | None:
    """Python's codec for an XML encoding declaration; None when expat reads it itself.

    Raises:
        PayloadError: no text encoding Python knows has that name.
    """
    try:
        name = codecs.lookup(declared).name
        b"<".decode(name, "replace")  # refuses bytes-to-bytes and 'undefined' codecs
    except (LookupError, UnicodeError, ValueError, TypeError):
        raise PayloadError(_CANNOT_READ) from None
    return None if name in _EXPAT_NATIVE else name


def _foreign_encoding(body: bytes) -> str | None:
    """The Python codec to decode ``body`` with before expat sees it, or None.

    expat itself reads UTF-8, UTF-16 and Latin-1 (and US-ASCII); every other encoding,
    by a UTF-32 byte order mark or the encoding declaration, is decoded by Python's
    codecs (expat's own fallback takes only some single-byte ones).
    """
    first = body[:1]
    if first == b"<":
        if body[1:5] != b"?xml":
            return None
        end = body.find(b"?>", 5, 512)
        return _prolog_codec(body[:end] if end > 0 else body[:512])
    if first in _BOM_STARTS:
        if body.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            return "utf-32"
        return None
    return _prolog_codec(body[:512])


@lru_cache(maxsize=64)
def _prolog_codec(prolog: bytes) -> str | None:
    """:func:`_foreign_encoding` by the document's first bytes (senders repeat theirs)."""
    declared = _DECLARED_ENCODING.match(prolog)
    return None if declared is None else _xml_codec(declared[1].decode("ascii").lower())


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

    Encodings: a byte order mark or the document's encoding declaration decides, as the
    XML specification says; expat reads UTF-8, UTF-16 and Latin-1, and every other
    encoding Python knows (UTF-32, Shift_JIS, ISO-2022-JP, GB2312, Big5, windows-1252...)
    is decoded by Python's codecs first. Bytes not valid in it become U+FFFD.

    Raises:
        PayloadError: malformed XML, a DTD, too deep a nesting, or an encoding
            declaration that names no encoding Python knows.
    """
    codec = _foreign_encoding(body)
    if codec is not None:  # told UTF-8, expat ignores the declaration
        return _parse_xml(_text(body, codec).encode(), "UTF-8")
    try:
        return _parse_xml(body, None)
    except (LookupError, ValueError) as exc:  # no declaration matched, yet expat refused
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(_CANNOT_READ) from None


def _parse_xml(body: bytes, encoding: str | None) -> tuple[str, Any]:
    """:func:`parse_xml` with expat told the encoding (None: the document says)."""
    parser = _parser(encoding)
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
