"""Content-Encoding: a compressed body undone, within the body size limit.

Callbacks are authenticated on the bytes as sent (a signer signs what it sends), then
decoded here, then parsed. ``gzip`` (and its old name ``x-gzip``) and ``deflate`` (zlib,
or the raw deflate some senders mean by it) are read with :mod:`zlib`; ``identity`` is
nothing to undo. The decoded size is held to the same limit as the body itself, and
decompression stops as soon as it would pass it, so a small "zip bomb" costs at most
``limit`` bytes of memory and never more CPU than that much output.
"""

from __future__ import annotations

import re
import zlib

from receiver.errors import BodyTooLarge, PayloadError, UnsupportedPayload

__all__ = ["decode_content"]

_GZIP = 16 + zlib.MAX_WBITS
_ZLIB = zlib.MAX_WBITS
_RAW = -zlib.MAX_WBITS
_TOKEN = re.compile(r"[a-z0-9][a-z0-9.+-]{0,31}")
_MAX_CODINGS = 4
_MAX_MEMBERS = 64
"""Most gzip members in a row: each costs a copy of what follows it."""


def decode_content(body: bytes, header: bytes, limit: int) -> bytes:
    """``body`` with the codings of a Content-Encoding ``header`` undone, last first.

    Args:
        body: The body as received.
        header: The Content-Encoding header's value, e.g. ``b"gzip"``.
        limit: Most bytes the body may have once decoded (``max_body_bytes``).

    Raises:
        UnsupportedPayload: a coding other than gzip, x-gzip, deflate and identity
            (answered 415; the reason names it when it is a plain token).
        BodyTooLarge: the decoded body is larger than ``limit`` (413).
        PayloadError: the body is not valid in its coding (400).
    """
    codings = [c.strip().lower() for c in header.decode("latin-1").split(",") if c.strip()]
    if len(codings) > _MAX_CODINGS:
        raise UnsupportedPayload(f"more than {_MAX_CODINGS} content codings")
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, _GZIP, limit, "gzip")
        elif coding == "deflate":
            try:
                body = _inflate(body, _ZLIB, limit, "deflate")
            except PayloadError:  # no zlib header: raw deflate
                body = _inflate(body, _RAW, limit, "deflate")
        else:
            named = f"Content-Encoding {coding}" if _TOKEN.fullmatch(coding) else "this coding"
            raise UnsupportedPayload(f"{named} is not supported: send gzip, deflate or identity")
    return body


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    """Decompress ``data`` (gzip members may follow one another), at most ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    for _ in range(_MAX_MEMBERS):
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(data, limit + 1 - size)
            size += len(chunk)
            out.append(chunk)
            if size > limit or inflater.unconsumed_tail:
                raise BodyTooLarge(f"body larger than {limit} bytes once decoded")
            chunk = inflater.flush()
        except zlib.error:
            raise PayloadError(f"body is not valid {name} data") from None
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes once decoded")
        out.append(chunk)
        if not inflater.eof:
            raise PayloadError(f"body is not valid {name} data: it ends early")
        data = inflater.unused_data
        if wbits != _GZIP or not data.strip(b"\0"):
            return b"".join(out)
    raise PayloadError(f"body is not valid {name} data: more than {_MAX_MEMBERS} members")
