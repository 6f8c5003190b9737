"""Authentication of callbacks: shared keys (Whispir) and HMAC signatures (OnePoint/DIY).

One :class:`Authenticator` is built per channel at start-up; ``check`` runs on every
callback against the raw request, before the body is parsed. Keys are compared in
constant time against every configured key (so rotation costs nothing and timing says
nothing). Failures raise :class:`NotAuthenticated` with a reason that names what was
missing or wrong, never a key, a signature or an expected value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import structlog

from receiver.config import Channel
from receiver.errors import ConfigError, NotAuthenticated

__all__ = [
    "Authenticator",
    "Request",
    "build_authenticator",
    "header_index",
    "lower_url_encode",
    "request_url",
]

log = structlog.get_logger()

SIGNATURE_SCHEMES = (b"x-opg-signature", b"x-diy-signature")

# HttpUtility.UrlEncode (.NET, System.Web): these bytes stay, a space becomes "+", every
# other byte of the UTF-8 text becomes "%xx" with lowercase hex. Unlike Python's
# quote_plus, "~" is escaped and "!*()" are not. Indexed by byte value, for str.translate.
_URL_SAFE = frozenset(b"!()*-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
_URL_ENCODE = [
    chr(byte) if byte in _URL_SAFE else "+" if byte == 0x20 else f"%{byte:02x}"
    for byte in range(256)
]
_EMPTY_MD5 = binascii.b2a_base64(hashlib.md5(b"").digest(), newline=False)
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def lower_url_encode(text: str) -> str:
    """``HttpUtility.UrlEncode(text.ToLower())`` as .NET computes it (UTF-8).

    Lone surrogates from ``surrogateescape`` decoding go back to the bytes they stood for.
    """
    text = text.lower()
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("latin-1")
    return text.translate(_URL_ENCODE)


class Request:
    """What authentication looks at: the ASGI scope (headers, query, URL) and the body."""

    __slots__ = ("body", "headers", "scope")

    def __init__(
        self, scope: dict[str, Any], body: bytes, headers: dict[bytes, bytes] | None = None
    ) -> None:
        self.scope = scope
        self.body = body
        self.headers: dict[bytes, bytes] = (
            headers if headers is not None else header_index(scope["headers"])
        )
        """The request's headers by lowercase name, the first value of each."""

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        return self.headers.get(name)

    @property
    def query(self) -> str:
        query: bytes = self.scope.get("query_string", b"")
        return query.decode("latin-1")


def request_url(scope: dict[str, Any]) -> str:
    """The full URL the client called, as this process sees it.

    The path is the request target as sent (``raw_path``; a mounted app's ``path``
    already holds its mount prefix), the host is the Host header (after trusted proxy
    headers are applied) or the server address.
    """
    return _url(scope, header_index(scope["headers"]).get(b"host"))


def header_index(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """ASGI request headers by name, the first value of each (one C-level pass)."""
    return dict(reversed(headers))


# Host header -> the host as the URL has it, per scheme: callers use few hosts.
_HTTP_HOSTS: dict[bytes, str] = {}
_HTTPS_HOSTS: dict[bytes, str] = {}


def _host(host_header: bytes, scheme: str) -> str:
    """A Host header's value in lower case, without ``scheme``'s default port."""
    host = host_header.decode("latin-1").lower()
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is not None and host.endswith(default_port):
        host = host[: -len(default_port)]
    return host


def _url(scope: dict[str, Any], host_header: bytes | None) -> str:
    """:func:`request_url` with the Host header already looked up.

    As .NET's ``Uri.AbsoluteUri`` writes it (what OnePoint/DIY sign): the host in lower
    case and without the scheme's default port.
    """
    scheme = scope.get("scheme", "http")
    if host_header is not None:
        hosts = _HTTPS_HOSTS if scheme == "https" else _HTTP_HOSTS
        host = hosts.get(host_header)
        if host is None:
            host = _host(host_header, scheme)
            if len(hosts) >= 256:
                hosts.clear()
            hosts[host_header] = host
    else:
        server = scope.get("server") or ("localhost", None)
        default = 443 if scheme == "https" else 80
        host = server[0] if server[1] in (None, default) else f"{server[0]}:{server[1]}"
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query = scope.get("query_string", b"")
    url = f"{scheme}://{host}{path}"
    return f"{url}?{query.decode('latin-1')}" if query else url


class Authenticator:
    """Checks one channel's callbacks; see :func:`build_authenticator`."""

    def check(self, request: Request) -> None:
        """Return when ``request`` is authentic; raise :class:`NotAuthenticated` if not."""


class _KeyCheck(Authenticator):
    """A shared key taken from somewhere in the request, compared with every key."""

    def __init__(self, keys: Iterable[str], find: Callable[[Request], bytes | None], where: str):
        self.keys = [key.encode() for key in keys if key]
        self.find = find
        self.where = where

    def check(self, request: Request) -> None:
        presented = self.find(request)
        if presented is None:
            raise NotAuthenticated(f"missing credentials: {self.where}")
        if not _matches_any(presented, self.keys):
            raise NotAuthenticated(f"wrong credentials: {self.where}")


def _matches_any(presented: bytes, keys: list[bytes]) -> bool:
    """Constant-time comparison with every key (no early exit)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def _header_value(name: str) -> Callable[[Request], bytes | None]:
    wanted = name.lower().encode("latin-1")
    return lambda request: request.header(wanted)


def _query_value(param: str) -> Callable[[Request], bytes | None]:
    wanted = param.lower()

    def find(request: Request) -> bytes | None:
        for name, value in parse_qsl(request.query, keep_blank_values=True):
            if name.lower() == wanted:
                return value.encode()
        return None

    return find


def _authorization(scheme: str) -> Callable[[Request], bytes | None]:
    prefix = scheme.lower().encode() + b" "

    def find(request: Request) -> bytes | None:
        value = request.header(b"authorization")
        if value is None or value[: len(prefix)].lower() != prefix:
            return None
        return value[len(prefix) :].strip()

    return find


class _BasicCheck(_KeyCheck):
    """``Authorization: Basic <key>``: the token as sent, or its decoded ``user:password``."""

    def check(self, request: Request) -> None:
        presented = self.find(request)
        if presented is None:
            raise NotAuthenticated(f"missing credentials: {self.where}")
        try:
            decoded = base64.b64decode(presented, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        # Both comparisons always run: the time taken does not tell which form matched.
        as_sent = _matches_any(presented, self.keys)
        as_decoded = _matches_any(decoded, self.keys)
        if not (as_sent or as_decoded):
            raise NotAuthenticated(f"wrong credentials: {self.where}")


class HmacCheck(Authenticator):
    """OnePoint/DIY ``Authorization: X-OPG-Signature AppId:Signature:Nonce:Timestamp``.

    signature = Base64(HMAC-<hash>(key = Secret, message = AppId + METHOD + URI +
    Timestamp + Nonce + Base64(body or MD5(body)))), each part chosen by the channel's
    ``hmac_*`` options. With ``lower-urlencoded`` and ``md5`` this is the signer OnePoint's
    scheme comes from (an ASP.NET Web API sample): URI =
    ``HttpUtility.UrlEncode(Uri.AbsoluteUri.ToLower())`` and, for a request without
    content, nothing at all for the body. No replay window: OnePoint says its timestamp
    and nonce checks do not apply to callbacks.
    """

    def __init__(self, channel: Channel, channel_name: str) -> None:
        decode = base64.b64decode if channel.hmac_key_encoding == "base64" else str.encode
        digest = hashlib.sha256 if channel.hmac_hash == "sha256" else hashlib.sha1
        try:
            # One keyed HMAC per AppId, copied per request: the key set-up is done once.
            self.macs = {
                app: hmac.new(decode(secret), digestmod=digest)
                for app, secret in channel.credentials.items()
            }
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"channels.{channel_name}.credentials: hmac_key_encoding = 'base64' "
                "but a Secret is not valid Base64"
            ) from None
        self.md5_body = channel.hmac_body == "md5"
        self.lower_urlencoded = channel.hmac_uri == "lower-urlencoded"
        self.public_url = channel.public_url.rstrip("/") if channel.public_url else None
        self.channel_name = channel_name
        # The encoded URL without its query, by URL: a channel is called at few URLs.
        self._encoded: dict[str, str] = {}

    def url(self, request: Request) -> str:
        """The URL the signature covers: ``public_url`` (plus the query) when set."""
        if self.public_url is None:
            return _url(request.scope, request.header(b"host"))
        query = request.scope.get("query_string", b"")
        return f"{self.public_url}?{query.decode('latin-1')}" if query else self.public_url

    def signed_uri(self, request: Request) -> str:
        """The URI part of the signed message (``hmac_uri`` applied to :meth:`url`)."""
        url = self.url(request)
        if not url.isascii():
            # Bytes beyond ASCII in the request (a .NET sender escapes them) are taken as
            # UTF-8, the text the sender would have had; url() decoded them as Latin-1.
            if self.public_url is None:
                url = url.encode("latin-1").decode("utf-8", "surrogateescape")
            else:
                query = request.scope.get("query_string", b"")
                url = self.public_url + ("?" + _utf8(query) if query else "")
        if not self.lower_urlencoded:
            return url
        base, mark, query_text = url.partition("?")
        encoded = self._encoded.get(base)
        if encoded is None:
            if len(self._encoded) >= 64:
                self._encoded.clear()
            encoded = self._encoded[base] = lower_url_encode(base)
        return f"{encoded}%3f{lower_url_encode(query_text)}" if mark else encoded

    def signature(self, request: Request, app_id: str, nonce: str, timestamp: str) -> bytes:
        """The signature this request should carry (for tests and for providers' SDKs)."""
        return self._sign(request, app_id, nonce, timestamp, self._body(request.body))

    def _body(self, body: bytes) -> bytes:
        """Base64 of the body or of its MD5; no content is signed as nothing (as the
        reference checks it: ``content.Length != 0`` before hashing)."""
        if self.md5_body and body:
            body = hashlib.md5(body).digest()
        return binascii.b2a_base64(body, newline=False)

    def _sign(
        self, request: Request, app_id: str, nonce: str, timestamp: str, body_part: bytes
    ) -> bytes:
        uri = self.signed_uri(request)
        mac = self.macs[app_id].copy()
        mac.update(
            f"{app_id}{request.scope['method']}{uri}{timestamp}{nonce}".encode(
                "utf-8", "surrogateescape"
            )
        )
        mac.update(body_part)
        return binascii.b2a_base64(mac.digest(), newline=False)

    def check(self, request: Request) -> None:
        value = request.header(b"authorization")
        if value is None:
            raise NotAuthenticated("missing credentials: Authorization signature header")
        scheme, _, rest = value.partition(b" ")
        if scheme.lower() not in SIGNATURE_SCHEMES:
            raise NotAuthenticated(
                "wrong credentials: expected an X-OPG-Signature or X-DIY-Signature"
            )
        parts = rest.strip().decode("latin-1").split(":", 3)
        if len(parts) != 4:
            raise NotAuthenticated("malformed signature: expected AppId:Signature:Nonce:Timestamp")
        app_id, presented, nonce, timestamp = parts
        if app_id not in self.macs:
            raise NotAuthenticated("wrong credentials: unknown AppId")
        given = presented.encode("latin-1")
        expected = self._sign(request, app_id, nonce, timestamp, self._body(request.body))
        matched = hmac.compare_digest(given, expected)
        if self.md5_body and not request.body:
            # The reference client hashes empty content it was given (a POST of ""), where
            # its server signs nothing: both forms of an empty body pass, both compared.
            other = self._sign(request, app_id, nonce, timestamp, _EMPTY_MD5)
            matched |= hmac.compare_digest(given, other)
        if not matched:
            log.warning(
                "hmac signature mismatch",
                channel=self.channel_name,
                signed_url=self.url(request),
                hint=(
                    "the signature was checked against signed_url; if the provider calls a "
                    "different URL (a proxy in front), set public_url on this channel"
                ),
            )
            raise NotAuthenticated("wrong credentials: signature does not match")


def _utf8(data: bytes) -> str:
    """Request bytes as the text a sender had: UTF-8, other bytes kept as surrogates."""
    return data.decode("utf-8", "surrogateescape")


class _Open(Authenticator):
    def check(self, request: Request) -> None:
        return None


def build_authenticator(channel: Channel, name: str) -> Authenticator:
    """The authenticator for ``channel`` (validated config: keys present where needed)."""
    if channel.auth == "header":
        return _KeyCheck(channel.keys, _header_value(channel.header), f"{channel.header} header")
    if channel.auth == "query":
        return _KeyCheck(channel.keys, _query_value(channel.param), f"'{channel.param}' parameter")
    if channel.auth == "basic":
        return _BasicCheck(channel.keys, _authorization("Basic"), "Authorization: Basic")
    if channel.auth == "bearer":
        return _KeyCheck(channel.keys, _authorization("Bearer"), "Authorization: Bearer")
    if channel.auth == "hmac":
        return HmacCheck(channel, name)
    return _Open()
