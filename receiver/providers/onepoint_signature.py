"""OnePoint/DIY's signature scheme (``auth = "hmac"``) and the options that tune it.

``Authorization: X-OPG-Signature AppId:Signature:Nonce:Timestamp`` (DIY sends
``X-DIY-Signature``): an HMAC over the AppId, method, URL, timestamp, nonce and body,
keyed with the Secret of that AppId. :class:`OnePointOptions` is the ``[channels.NAME.options]``
table of a ``onepoint`` or ``diy`` channel; :func:`signature_check` is the factory that
:attr:`receiver.providers.Provider.authenticators` names for ``"hmac"``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import re
import time
import uuid
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import msgspec

from receiver.asgi import url_of
from receiver.auth import Authenticator, CallbackRequest
from receiver.errors import ConfigError, NotAuthenticated
from receiver.logs import bounded, get_logger

if TYPE_CHECKING:
    from receiver.config import Channel

__all__ = [
    "SIGNATURE_SCHEMES",
    "HmacCheck",
    "OnePointOptions",
    "absolute_uri",
    "escape_url",
    "lower_url_encode",
    "public_base",
    "sign_onepoint",
    "signature_check",
]

log = get_logger(__name__)

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

# The forms of the Authorization value's parts, checked before the signature: the signed
# string joins them without separators, so only fixed forms keep a character from moving
# across a boundary unnoticed. A Nonce is a GUID, as the reference client's
# Guid.NewGuid().ToString("N") makes it (32 hex digits; the hyphenated "D" form too); a
# Timestamp is Unix seconds without a leading zero or sign (a leading zero could come from
# the end of a query and leave the number unchanged). Checked with str methods and a set,
# not regular expressions: this runs on every signed callback.
_GUID_D = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_DIGEST_LENGTHS = (28, 44)  # Base64 of a SHA-1 and of a SHA-256 digest


class OnePointOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ``onepoint`` or ``diy`` channel's options (``[channels.NAME.options]``).

    All of them tune the signature check of ``auth = "hmac"``.

    Attributes:
        credentials: AppId -> Secret (secrets: write ``"${VAR}"`` or ``"file:/path"``).
        hmac_hash: ``sha1`` (OnePoint's documented default) or ``sha256``.
        hmac_key_encoding: The Secret as ``utf8`` text or ``base64``-decoded bytes.
        hmac_body: Sign Base64 of the ``raw`` body or of its ``md5`` digest (an empty
            body signs as nothing).
        hmac_uri: The URL as sent (``as-sent``) or lowercased and URL-encoded as .NET's
            ``HttpUtility.UrlEncode`` does (``lower-urlencoded``).
        public_url: The URL the provider calls, for signature checks behind a proxy.
        hmac_window: Seconds (default 300) the signature's Timestamp may be from the
            time the callback arrives, either way: older or newer is a 401. A signed
            request is so usable for at most twice this after its first arrival, which
            with the default equals ``duplicate_body_window`` (600 s): a replay is
            answered as a duplicate for as long as it would pass. 300 s in the past is
            the reference server's own limit; as much in the future allows for clocks
            minutes apart.
    """

    credentials: dict[str, str] = {}
    hmac_hash: Literal["sha1", "sha256"] = "sha1"
    hmac_key_encoding: Literal["utf8", "base64"] = "utf8"
    hmac_body: Literal["raw", "md5"] = "raw"
    hmac_uri: Literal["as-sent", "lower-urlencoded"] = "as-sent"
    public_url: str | None = None
    hmac_window: float = 300.0


def signature_check(channel: Channel, options: OnePointOptions, name: str) -> HmacCheck:
    """The ``"hmac"`` authenticator of channel ``name`` (an ``AuthenticatorFactory``).

    Raises:
        ConfigError: no credentials, a ``hmac_window`` that is not positive, or a Secret
            that is not Base64 when ``hmac_key_encoding = "base64"`` (the message names
            the key path).
    """
    if not options.hmac_window > 0:
        raise ConfigError(f"channels.{name}.options.hmac_window: must be a positive number")
    if not options.credentials:
        raise ConfigError(
            f"channels.{name}.options.credentials: auth = 'hmac' needs credentials (AppId = Secret)"
        )
    return HmacCheck(options, name)


def lower_url_encode(text: str) -> str:
    """``HttpUtility.UrlEncode(text.ToLower())`` as .NET computes it (UTF-8).

    Lone surrogates from ``surrogateescape`` decoding go back to the bytes they stood for.
    """
    text = text.lower()
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("latin-1")
    return text.translate(_URL_ENCODE)


def absolute_uri(url: str) -> str:
    """``url`` as .NET's ``Uri.AbsoluteUri`` writes it (what the sender signs): scheme and
    host in lower case, the scheme's default port left out, ``/`` for an empty path, a
    space or a character beyond ASCII in the path or query as ``%XX`` of its UTF-8 (as an
    HTTP client sends it); anything else as it is."""
    parts = urlsplit(escape_url(url))
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{parts.port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{parts.path or '/'}{query}"


_UNSAFE = re.compile(r"[^\x21-\x7e]+")


def escape_url(url: str) -> str:
    """``url`` with each space, control character and character beyond ASCII of its path
    and query written as ``%XX`` of its UTF-8 bytes (upper-case hex), as HTTP clients and
    .NET's ``Uri`` send and sign it; ``%`` escapes already there, and the host, are kept."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    authority, slash, tail = rest.partition("/")
    tail = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), tail)
    return f"{scheme}{separator}{authority}{slash}{tail}"


def public_base(url: str) -> str:
    """A channel's ``public_url`` as the signature check uses it: :func:`absolute_uri`,
    without a trailing ``/`` (the query is appended to it)."""
    normalized = absolute_uri(url)
    path = normalized.partition("://")[2].partition("/")[2]
    return normalized[:-1] if normalized.endswith("/") and path else normalized


def sign_onepoint(
    method: str,
    url: str,
    body: bytes,
    *,
    app_id: str,
    secret: str,
    options: OnePointOptions | None = None,
    nonce: str | None = None,
    timestamp: int | str | None = None,
    scheme: str = "X-OPG-Signature",
) -> str:
    """The ``Authorization`` value OnePoint/DIY send with a callback, built as their
    reference client builds it (OnePoint "Callbacks", *Authentication*; the ASP.NET
    sample it comes from): ``"<scheme> AppId:Signature:Nonce:Timestamp"``.

    Signature = Base64(HMAC-<hash>(Secret, AppId + METHOD + URI + Timestamp + Nonce +
    Base64(body or MD5(body)))), with URI the :func:`absolute_uri` of ``url`` (query
    included), lowercased and URL-encoded as .NET's ``HttpUtility.UrlEncode`` with
    ``hmac_uri = "lower-urlencoded"``; an empty body signs nothing for the body.

    Args:
        method: ``"POST"`` or ``"GET"`` (upper case, as sent).
        url: The whole URL the callback goes to, as the receiver will see it (behind a
            proxy: the public one).
        body: The body bytes as sent (``b""`` for a GET).
        app_id: The AppId (a key of the channel's ``credentials``).
        secret: Its Secret, as written in ``credentials``.
        options: The channel's options (``hmac_hash``, ``hmac_key_encoding``,
            ``hmac_body``, ``hmac_uri``); default: OnePoint's documented scheme.
        nonce: Default: a new GUID, 32 hex digits (``Guid.NewGuid().ToString("N")``).
        timestamp: Unix seconds; default: now.
        scheme: ``X-OPG-Signature`` (OnePoint) or ``X-DIY-Signature`` (DIY Surveys).

    Raises:
        binascii.Error: ``hmac_key_encoding = "base64"`` and ``secret`` is not Base64.
    """
    options = options or OnePointOptions()
    nonce = nonce if nonce is not None else uuid.uuid4().hex
    timestamp = str(timestamp if timestamp is not None else int(time.time()))
    uri = absolute_uri(url)
    if options.hmac_uri == "lower-urlencoded":
        uri = lower_url_encode(uri)
    if options.hmac_body == "md5" and body:
        body = hashlib.md5(body).digest()
    key = (
        base64.b64decode(secret, validate=True)
        if options.hmac_key_encoding == "base64"
        else secret.encode("utf-8")
    )
    digest = hashlib.sha256 if options.hmac_hash == "sha256" else hashlib.sha1
    message = f"{app_id}{method}{uri}{timestamp}{nonce}".encode() + base64.b64encode(body)
    signature = base64.b64encode(hmac.new(key, message, digest).digest()).decode("ascii")
    return f"{scheme} {app_id}:{signature}:{nonce}:{timestamp}"


class HmacCheck(Authenticator):
    """OnePoint/DIY ``Authorization: X-OPG-Signature AppId:Signature:Nonce:Timestamp``.

    signature = Base64(HMAC-<hash>(key = Secret, message = AppId + METHOD + URI +
    Timestamp + Nonce + Base64(body or MD5(body)))), each part chosen by the channel's
    ``hmac_*`` options. With ``lower-urlencoded`` and ``md5`` this is the signer OnePoint's
    scheme comes from (an ASP.NET Web API sample): URI =
    ``HttpUtility.UrlEncode(Uri.AbsoluteUri.ToLower())`` and, for a request without
    content, nothing at all for the body.

    Before the signature, each part of the value is checked for its form (the signed
    string joins them without separators): the AppId is a configured one, the Signature
    Base64 of a SHA-1 or SHA-256 digest, the Nonce a GUID (32 hex digits, or the
    hyphenated form), the Timestamp Unix seconds (digits, no leading zero) within
    ``hmac_window`` seconds of now. A replay within the window is the same callback
    again: the journal answers it as a duplicate.

    Raises:
        ConfigError: (at construction) a Secret is not valid Base64 with
            ``hmac_key_encoding = "base64"``.
    """

    def __init__(self, options: OnePointOptions, channel_name: str) -> None:
        decode = base64.b64decode if options.hmac_key_encoding == "base64" else str.encode
        digest = hashlib.sha256 if options.hmac_hash == "sha256" else hashlib.sha1
        try:
            # One keyed HMAC per AppId, copied per request: the key set-up is done once.
            self.macs = {
                app: hmac.new(decode(secret), digestmod=digest)
                for app, secret in options.credentials.items()
            }
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"channels.{channel_name}.options.credentials: hmac_key_encoding = 'base64' "
                "but a Secret is not valid Base64"
            ) from None
        self.md5_body = options.hmac_body == "md5"
        self.lower_urlencoded = options.hmac_uri == "lower-urlencoded"
        # lower-urlencoded signs the URL lowercased: the same Authorization value would
        # verify a request whose path or query differs in letter case. Each (AppId, Nonce)
        # is remembered with the exact request it signed for as long as it can verify;
        # another request under it is refused (a replay of the same one is let through:
        # the journal answers it as a duplicate). The reference server keeps its nonces.
        self._used: collections.OrderedDict[str, tuple[bytes, float]] | None = (
            collections.OrderedDict() if self.lower_urlencoded else None
        )
        # As the sender's Uri.AbsoluteUri writes it (host lowercase, no default port,
        # "/" for no path, non-ASCII escaped): written any other way, every callback
        # would be refused.
        self.public_url = absolute_uri(options.public_url) if options.public_url else None
        # Also the same URL without its trailing "/" (how earlier versions read it):
        # a provider told ".../sms" and a public_url written ".../sms/" still match.
        trimmed = public_base(options.public_url) if options.public_url else None
        self._other_url = trimmed if trimmed != self.public_url else None
        self.window = options.hmac_window
        self.channel_name = channel_name
        # The encoded URL without its query, by URL: a channel is called at few URLs.
        self._encoded: dict[str, str] = {}

    def url(self, request: CallbackRequest, public_url: str | None = None) -> str:
        """The URL the signature covers: ``public_url`` (plus the query) when set."""
        public_url = public_url or self.public_url
        if public_url is None:
            return url_of(request.scope, request.header(b"host"))
        query = request.scope.get("query_string", b"")
        return f"{public_url}?{query.decode('latin-1')}" if query else public_url

    def signed_uri(self, request: CallbackRequest, public_url: str | None = None) -> str:
        """The URI part of the signed message (``hmac_uri`` applied to :meth:`url`)."""
        public_url = public_url or self.public_url
        url = self.url(request, public_url)
        if not url.isascii():
            # Bytes beyond ASCII in the request (a .NET sender escapes them) are taken as
            # UTF-8, the text the sender would have had; url() decoded them as Latin-1.
            if public_url is None:
                url = url.encode("latin-1").decode("utf-8", "surrogateescape")
            else:
                query = request.scope.get("query_string", b"")
                url = public_url + ("?" + _utf8(query) if query else "")
        if not self.lower_urlencoded:
            return url
        base, mark, query_text = url.partition("?")
        encoded = self._encoded.get(base)
        if encoded is None:
            if len(self._encoded) >= 64:
                self._encoded.clear()
            encoded = self._encoded[base] = lower_url_encode(base)
        return f"{encoded}%3f{lower_url_encode(query_text)}" if mark else encoded

    def signature(self, request: CallbackRequest, app_id: str, nonce: str, timestamp: str) -> bytes:
        """The signature this request should carry (for tests and for providers' SDKs)."""
        return self._sign(request, app_id, nonce, timestamp, self._body(request.body))

    def _body(self, body: bytes) -> bytes:
        """Base64 of the body or of its MD5; no content is signed as nothing (as the
        reference checks it: ``content.Length != 0`` before hashing)."""
        if self.md5_body and body:
            body = hashlib.md5(body).digest()
        return binascii.b2a_base64(body, newline=False)

    def _sign(
        self,
        request: CallbackRequest,
        app_id: str,
        nonce: str,
        timestamp: str,
        body_part: bytes,
        public_url: str | None = None,
    ) -> bytes:
        uri = self.signed_uri(request, public_url)
        mac = self.macs[app_id].copy()
        mac.update(
            f"{app_id}{request.scope['method']}{uri}{timestamp}{nonce}".encode(
                "utf-8", "surrogateescape"
            )
        )
        mac.update(body_part)
        return binascii.b2a_base64(mac.digest(), newline=False)

    def check(self, request: CallbackRequest) -> None:
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
        if len(presented) not in _DIGEST_LENGTHS or not presented.endswith("="):
            raise NotAuthenticated("malformed signature: Signature is not a Base64 digest")
        if not (len(nonce) == 32 and nonce.isalnum() and _is_hex(nonce)) and not (
            len(nonce) == 36 and _GUID_D.fullmatch(nonce) is not None
        ):
            raise NotAuthenticated("malformed signature: Nonce is not a GUID")
        if not (
            0 < len(timestamp) <= 12
            and timestamp.isascii()
            and timestamp.isdigit()
            and timestamp[0] != "0"
        ):
            raise NotAuthenticated("malformed signature: Timestamp is not Unix seconds")
        if abs(now() - int(timestamp)) > self.window:
            raise NotAuthenticated(
                f"expired signature: Timestamp is more than {self.window:g} s from now"
            )
        given = presented.encode("latin-1")
        expected = self._sign(request, app_id, nonce, timestamp, self._body(request.body))
        matched = hmac.compare_digest(given, expected)
        if self.md5_body and not request.body:
            # The reference client hashes empty content it was given (a POST of ""), where
            # its server signs nothing: both forms of an empty body pass, both compared.
            other = self._sign(request, app_id, nonce, timestamp, _EMPTY_MD5)
            matched |= hmac.compare_digest(given, other)
        if not matched and self._other_url is not None:
            body_part = self._body(request.body)
            other = self._sign(request, app_id, nonce, timestamp, body_part, self._other_url)
            matched = hmac.compare_digest(given, other)
        if matched and self._used is not None:
            self._remember(request, f"{app_id}:{nonce.lower()}")
        if not matched:
            log.warning(
                "hmac signature mismatch",
                channel=self.channel_name,
                # Without its query (it holds people's data); the host is the request's.
                signed_url=bounded(self.url(request).partition("?")[0], 120),
                hint=(
                    "the signature was checked against signed_url (and the query); if the "
                    "provider calls a different URL (a proxy in front), set "
                    "options.public_url on this channel"
                ),
            )
            raise NotAuthenticated("wrong credentials: signature does not match")

    def _remember(self, request: CallbackRequest, key: str) -> None:
        """Refuse a second, different request under a nonce already used (case-malleable
        URL); remember this one until its signature could no longer verify."""
        used = self._used
        assert used is not None
        scope = request.scope
        signed = hashlib.blake2b(
            b"%s %s?%s"
            % (
                scope["method"].encode("latin-1"),
                scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape"),
                scope.get("query_string", b""),
            ),
            digest_size=16,
        ).digest()
        clock = now()
        while used:  # forget what can no longer verify (oldest first), and bound memory
            oldest = next(iter(used.values()))
            if oldest[1] > clock and len(used) < _MAX_NONCES:
                break
            used.popitem(last=False)
        seen = used.get(key)
        if seen is not None and seen[0] != signed:
            raise NotAuthenticated("replayed signature: its Nonce was used for another request")
        if seen is None:
            used[key] = (signed, clock + 2 * self.window)


_MAX_NONCES = 200_000
"""Nonces remembered per channel at most (a few MB): beyond, the oldest are forgotten."""

now = time.time
"""Seconds since the epoch, read once per signature check (a name tests can replace)."""


def _is_hex(text: str) -> bool:
    """``text`` (letters and digits only: ``bytes.fromhex`` would skip spaces) is hex."""
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _utf8(data: bytes) -> str:
    """Request bytes as the text a sender had: UTF-8, other bytes kept as surrogates."""
    return data.decode("utf-8", "surrogateescape")
