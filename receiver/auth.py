"""Authentication of callbacks: the generic credential checks and how one is chosen.

One :class:`Authenticator` is built per channel at start-up; ``check`` runs on every
callback against the raw request, before the body is parsed. The generic modes, which
every provider accepts, are here: a shared key in a header, a query parameter, an
``Authorization: Basic`` or ``Bearer`` value, or ``none``. A provider adds modes of its
own (OnePoint/DIY's signature, ``auth = "hmac"``, lives in
:mod:`receiver.providers.onepoint_signature`) through
:attr:`receiver.providers.Provider.authenticators`. Keys are compared in constant time
against every configured key (so rotation costs nothing and timing says nothing).
Failures raise :class:`NotAuthenticated` with a reason that names what was missing or
wrong, never a key, a signature or an expected value.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote_plus

from receiver.asgi import header_index
from receiver.config import KEY_MODES, Channel
from receiver.errors import ConfigError, NotAuthenticated
from receiver.logs import get_logger

if TYPE_CHECKING:
    from receiver.providers.base import Provider

__all__ = [
    "GENERIC_MODES",
    "Authenticator",
    "AuthenticatorFactory",
    "CallbackRequest",
    "auth_modes",
    "build_authenticator",
    "is_key_param",
    "without_key_param",
]

log = get_logger(__name__)


class CallbackRequest:
    """What authentication looks at: the ASGI scope (headers, query, URL) and the body as
    received (before any Content-Encoding is undone: a signer signs what it sends)."""

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


class Authenticator:
    """Checks one channel's callbacks; see :func:`build_authenticator`."""

    def check(self, request: CallbackRequest) -> None:
        """Return when ``request`` is authentic; raise :class:`NotAuthenticated` if not."""


class _KeyCheck(Authenticator):
    """A shared key taken from somewhere in the request, compared with every key."""

    def __init__(
        self, keys: Iterable[str], find: Callable[[CallbackRequest], bytes | None], where: str
    ) -> None:
        self.keys = [key.encode() for key in keys if key]
        self.find = find
        self.where = where

    def check(self, request: CallbackRequest) -> None:
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


def _header_value(name: str) -> Callable[[CallbackRequest], bytes | None]:
    wanted = name.lower().encode("latin-1")
    return lambda request: request.header(wanted)


def is_key_param(name: str, param: str) -> bool:
    """Whether a query parameter written ``name`` (as sent: percent-escapes, ``+``) is
    the key parameter ``param`` (lowercase) of ``auth = "query"``.

    The one decision both sides use: :func:`_query_value` takes the key from the first
    such parameter, and :func:`without_key_param` removes every one of them from what is
    kept, so the two can never disagree on a spelling. The name is percent-decoded as
    UTF-8 (``+`` as a space, as a form decoder reads it) and matched ignoring case:
    ``auth``, ``AUTH``, ``%61uth`` and ``a%75th`` are one parameter; ``au+th`` and
    ``auth%3D...`` are not, and only ``&`` separates parameters (never ``;``).
    """
    return unquote_plus(name).lower() == param


def without_key_param(query: str, param: str) -> str:
    """``query`` without every parameter :func:`is_key_param` names (with or without a
    value); every other pair kept exactly as sent, in order. ``""`` when nothing is left.
    """
    return "&".join(
        pair for pair in query.split("&") if not is_key_param(pair.partition("=")[0], param)
    )


def _query_value(param: str) -> Callable[[CallbackRequest], bytes | None]:
    wanted = param.lower()

    def find(request: CallbackRequest) -> bytes | None:
        for pair in request.query.split("&"):
            name, _, value = pair.partition("=")
            if pair and is_key_param(name, wanted):
                return unquote_plus(value).encode()
        return None

    return find


def _authorization(scheme: str) -> Callable[[CallbackRequest], bytes | None]:
    prefix = scheme.lower().encode() + b" "

    def find(request: CallbackRequest) -> bytes | None:
        value = request.header(b"authorization")
        if value is None or value[: len(prefix)].lower() != prefix:
            return None
        return value[len(prefix) :].strip()

    return find


class _BasicCheck(_KeyCheck):
    """``Authorization: Basic <key>``: the token as sent, or its decoded ``user:password``."""

    def check(self, request: CallbackRequest) -> None:
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


class _Open(Authenticator):
    def check(self, request: CallbackRequest) -> None:
        return None


AuthenticatorFactory: TypeAlias = Callable[[Channel, Any, str], Authenticator]
"""Builds one channel's authenticator at start-up: ``factory(channel, options, name)``.

``options`` is the channel's options table converted to the provider's
:attr:`~receiver.providers.Provider.options` struct, ``name`` the channel's name (for
messages). Raises :class:`ConfigError` (naming the key path, ``channels.NAME.options.KEY``)
when the options do not allow a working check.
"""

GENERIC_MODES = (*KEY_MODES, "none")
"""The auth modes every provider accepts."""


def auth_modes(provider: type[Provider]) -> list[str]:
    """Every auth mode a channel of ``provider`` may name, sorted."""
    return sorted({*GENERIC_MODES, *provider.authenticators})


def build_authenticator(
    channel: Channel, name: str, provider: type[Provider], options: Any
) -> Authenticator:
    """The authenticator of channel ``name`` (a validated config: keys present where needed).

    ``channel.auth`` is looked up first in ``provider.authenticators`` (so a provider may
    replace a generic mode), then among :data:`GENERIC_MODES`. ``options`` is the
    channel's options as ``provider.options`` (see :meth:`Provider.read_options`).

    Raises:
        ConfigError: ``auth`` is a mode neither generic nor the provider's (the message
            lists the choices), ``auth = "header"`` without a header name (the channel's
            ``header``, or the provider's :attr:`~Provider.key_header`), or the
            provider's factory refused the options.
    """
    auth = channel.auth
    factory = provider.authenticators.get(auth)
    if factory is not None:
        return factory(channel, options, name)
    if auth == "header":
        header = channel.header or provider.key_header
        if not header:
            raise ConfigError(
                f"channels.{name}.header: auth = 'header' needs the header's name and "
                f'provider {provider.name!r} has no default: write header = "<the header '
                'your provider sends>" on the channel (header = "X-Whispir-Callback-Key" '
                "reads the header such a channel used to read)"
            )
        return _KeyCheck(channel.keys, _header_value(header), f"{header} header")
    if auth == "query":
        return _KeyCheck(channel.keys, _query_value(channel.param), f"'{channel.param}' parameter")
    if auth == "basic":
        return _BasicCheck(channel.keys, _authorization("Basic"), "Authorization: Basic")
    if auth == "bearer":
        return _KeyCheck(channel.keys, _authorization("Bearer"), "Authorization: Bearer")
    if auth == "none":
        return _Open()
    raise ConfigError(
        f"channels.{name}.auth: {auth!r} is not an auth mode of provider {provider.name!r} "
        f"(choices: {', '.join(auth_modes(provider))})"
    )
