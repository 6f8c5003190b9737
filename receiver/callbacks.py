"""Callbacks built as the providers send them: body, method, headers and credentials.

What ``receiver send`` posts to a running receiver and what :mod:`receiver.testing`
builds for tests: a sample (:mod:`receiver.samples`) or your own body, changed field by
field (:func:`set_fields`), made new (:func:`freshen`) and authenticated as the channel
expects (:func:`build_callback`): its key in the channel's header, query parameter,
``Authorization: Basic``/``Bearer``, or OnePoint/DIY's HMAC signature
(:func:`receiver.providers.onepoint_signature.sign_onepoint`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from receiver import httpclient
from receiver.config import Channel, convert
from receiver.httpclient import Answer, NoAnswer, Unsendable
from receiver.providers.onepoint_signature import (
    OnePointOptions,
    absolute_uri,
    escape_url,
    sign_onepoint,
)

__all__ = [
    "Answer",
    "Callback",
    "NoAnswer",
    "Unsendable",
    "build_callback",
    "freshen",
    "post",
    "set_fields",
]

_KEY_HEADERS = {"whispir": "X-Whispir-Callback-Key"}
"""The header ``auth = "header"`` reads by default, by provider (Provider.key_header)."""


@dataclass(frozen=True)
class Callback:
    """One HTTP request as a provider sends it.

    Attributes:
        method: ``POST`` or ``GET``.
        url: The whole URL, query included.
        headers: Header name -> value (``Content-Type``, the credential).
        body: The body bytes (``b""`` for a GET).
    """

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def build_callback(
    channel: Channel,
    url: str,
    body: bytes,
    *,
    method: str = "POST",
    content_type: str | None = "application/json",
    credentials: Mapping[str, str] | None = None,
    key_header: str | None = None,
    timestamp: int | None = None,
) -> Callback:
    """The callback ``channel`` accepts: ``body`` sent to ``url`` and authenticated with
    the channel's first key (or AppId and Secret), as its provider sends it.

    Args:
        channel: The channel as configured (secrets expanded: :func:`receiver.load_config`).
        url: The channel's whole URL (``http://127.0.0.1:8000/sms``); for a GET the
            callback's fields are ``body`` and go into its query.
        body: A POST's body, or a GET's query string (bytes, as sent).
        method: ``POST`` or ``GET``.
        content_type: The POST's ``Content-Type``.
        credentials: Replace what the configuration says: ``key`` (header, query,
            basic, bearer), ``app_id`` and ``secret`` (hmac): a wrong one gets a 401.
        key_header: The header of ``auth = "header"`` when the channel names none and the
            provider is not a built-in one.
        timestamp: Unix seconds for the HMAC signature (default: now).

    Raises:
        ValueError: the channel's auth mode needs a key it does not have, or is a mode
            receiver cannot build (a plugin provider's own), or the secret is not Base64
            where ``hmac_key_encoding = "base64"``.
    """
    given = dict(credentials or {})
    headers: dict[str, str] = {}
    query = ""
    if method == "GET":
        query, body = body.decode("latin-1"), b""
    elif content_type:
        headers["Content-Type"] = content_type
    auth = channel.auth
    if auth in ("header", "query", "basic", "bearer"):
        key = given["key"] if "key" in given else next((k for k in channel.keys if k), None)
        if key is None:
            raise ValueError(f"auth = {auth!r} and the channel has no key")
        if auth == "header":
            name = channel.header or key_header or _KEY_HEADERS.get(channel.provider)
            if name is None:
                raise ValueError("auth = 'header' and no header name: set the channel's header")
            headers[name] = key
        elif auth == "query":
            pair = f"{quote(channel.param, safe='')}={quote(key, safe='')}"
            query = f"{query}&{pair}" if query else pair
        elif auth == "basic":
            token = base64.b64encode(key.encode()).decode() if ":" in key else key
            headers["Authorization"] = f"Basic {token}"
        else:
            headers["Authorization"] = f"Bearer {key}"
    # Sent (and signed) as an HTTP client sends it: spaces and non-ASCII escaped.
    full_url = escape_url(f"{url}?{query}" if query else url)
    if auth == "hmac":
        options = convert(channel.options, OnePointOptions, "options")
        app_id = given["app_id"] if "app_id" in given else next(iter(options.credentials), None)
        if app_id is None:
            raise ValueError("auth = 'hmac' and the channel has no credentials")
        secret = given["secret"] if "secret" in given else options.credentials.get(app_id, "")
        scheme = "X-DIY-Signature" if channel.provider == "diy" else "X-OPG-Signature"
        target = full_url
        if options.public_url:  # the receiver checks the URL the provider was given
            target = absolute_uri(options.public_url) + (f"?{escape_url(query)}" if query else "")
        try:
            headers["Authorization"] = sign_onepoint(
                method,
                target,
                body,
                app_id=app_id,
                secret=secret,
                options=options,
                timestamp=timestamp,
                scheme=scheme,
            )
        except binascii.Error:  # never the secret itself in the message
            raise ValueError("hmac_key_encoding = 'base64' and the secret is not Base64") from None
    elif auth not in ("none", "header", "query", "basic", "bearer"):
        raise ValueError(f"cannot authenticate auth = {auth!r} (a plugin provider's own mode)")
    return Callback(method, full_url, headers, body)


# Changing a body ---------------------------------------------------------------------------


def set_fields(body: bytes, format: str, changes: Mapping[str, str]) -> bytes:
    """``body`` (``json``, ``xml``, ``form`` or ``query``) with fields set.

    A name is matched ignoring case; in JSON a dotted name reaches into objects
    (``responseMessage.content``) and a value that reads as JSON (``true``, ``3``) is set
    as such where the field held no string; in XML it is the first element of that name
    (its text replaced); a name not in the body is added (not in XML).

    Raises:
        ValueError: the body is not of its format, or an XML element is missing.
    """
    if not changes:
        return body
    if format == "json":
        data = _json(body)
        for name, value in changes.items():
            _set_json(data, name.split("."), value)
        return json.dumps(data, ensure_ascii=False).encode()
    if format in ("form", "query"):
        pairs = parse_qsl(_form_text(body), keep_blank_values=True)
        for name, value in changes.items():
            at = [i for i, (key, _) in enumerate(pairs) if key.lower() == name.lower()]
            if at:
                pairs[at[0]] = (pairs[at[0]][0], value)
            else:
                pairs.append((name, value))
        return urlencode(pairs).encode()
    if format == "xml":
        text = body.decode("utf-8")
        for name, value in changes.items():
            text, found = _set_xml(text, name, value)
            if not found:
                raise ValueError(f"no <{name}> element in the body")
        return text.encode("utf-8")
    raise ValueError(f"unknown format {format!r}")


def freshen(body: bytes, format: str, provider: str) -> bytes:
    """``body`` as a new callback: a new message id and the time now, so that a receiver
    does not answer it as a duplicate of the last one.

    OnePoint/DIY: ``MessageID`` (``MS`` and 13 digits) and ``Timestamp`` (ISO 8601, UTC);
    Whispir: ``messageid`` or ``reportid`` (20 hex digits, also where the old one appears
    in another value: a location URL) and every ``timestamp``/``acknowledged``/
    ``undeliverable`` (``dd/mm/yy HH:MM``, UTC).

    Raises:
        ValueError: the body is not of its format.
    """
    now = datetime.now(UTC)
    whispir = provider == "whispir"
    if whispir:
        new_id = secrets.token_hex(10).upper()
        stamp = now.strftime("%d/%m/%y %H:%M")
        ids: tuple[str, ...] = ("messageid", "reportid")
        times: tuple[str, ...] = ("timestamp", "acknowledged", "undeliverable")
    else:
        new_id = "MS" + str(secrets.randbelow(10**13)).zfill(13)
        stamp = now.isoformat(timespec="microseconds")
        ids = ("messageid",)
        times = ("timestamp",)
    if format == "json":
        data = _json(body)
        old_ids: list[str] = []
        _walk_json(data, ids, new_id, old_ids)
        _walk_json(data, times, stamp, [])
        if whispir:  # the old id inside another value: messageLocation's URL
            data = _replace_json(data, [old for old in old_ids if old.strip()], new_id)
        return json.dumps(data, ensure_ascii=False).encode()
    if format in ("form", "query"):
        pairs = parse_qsl(_form_text(body), keep_blank_values=True)
        changes = {key: new_id for key, _ in pairs if key.lower() in ids}
        changes.update({key: stamp for key, _ in pairs if key.lower() in times})
        return set_fields(body, format, changes)
    if format == "xml":
        text = body.decode("utf-8")
        old_xml = [m[2].strip() for name in ids for m in _element(name).finditer(text)]
        for name in ids:
            text = _set_xml(text, name, new_id, every=True)[0]
        for name in times:
            text = _set_xml(text, name, stamp, every=True)[0]
        if whispir:
            for old in old_xml:
                if old:
                    text = text.replace(old, new_id)
        return text.encode("utf-8")
    raise ValueError(f"unknown format {format!r}")


def _form_text(body: bytes) -> str:
    """A form's text: UTF-8 (so a byte sent unescaped is kept as its character, not
    escaped twice), else Latin-1."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError("the body is not JSON") from None


def _set_json(data: Any, path: list[str], value: str) -> None:
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    name = next((key for key in data if key.lower() == path[0].lower()), path[0])
    if len(path) > 1:
        _set_json(data.setdefault(name, {}), path[1:], value)
        return
    old = data.get(name)
    if old is not None and not isinstance(old, str):
        try:
            data[name] = json.loads(value)
            return
        except ValueError:
            pass
    data[name] = value


def _walk_json(data: Any, names: tuple[str, ...], value: str, old: list[str]) -> None:
    if isinstance(data, dict):
        for key in list(data):
            if key.lower() in names and isinstance(data[key], str):
                old.append(data[key])
                data[key] = value
            else:
                _walk_json(data[key], names, value, old)
    elif isinstance(data, list):
        for item in data:
            _walk_json(item, names, value, old)


def _replace_json(data: Any, old: list[str], new: str) -> Any:
    """``data`` with each of ``old`` replaced by ``new`` inside every string value."""
    if isinstance(data, dict):
        return {key: _replace_json(value, old, new) for key, value in data.items()}
    if isinstance(data, list):
        return [_replace_json(item, old, new) for item in data]
    if isinstance(data, str):
        for text in old:
            data = data.replace(text, new)
    return data


def _element(name: str) -> re.Pattern[str]:
    tag = r"(?:[A-Za-z_][\w.-]*:)?" + re.escape(name)
    return re.compile(rf"(<{tag}(?:\s[^>]*)?>)([^<]*)(</{tag}\s*>)", re.IGNORECASE)


def _set_xml(text: str, name: str, value: str, every: bool = False) -> tuple[str, bool]:
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    new, count = _element(name).subn(
        lambda match: match[1] + escaped + match[3], text, count=0 if every else 1
    )
    return new, count > 0


# Sending -----------------------------------------------------------------------------------


def post(callback: Callback, timeout: float = 10.0) -> Answer:
    """Send ``callback`` and return the answer, whatever its status (redirects are not
    followed), the whole exchange within ``timeout`` seconds.

    Raises:
        NoAnswer: refused, timed out, reset, or not HTTP (the message says which).
    """
    return httpclient.post(
        callback.url,
        callback.body,
        callback.headers,
        timeout=timeout,
        method=callback.method,
        max_bytes=16 * 1024 * 1024,
    )
