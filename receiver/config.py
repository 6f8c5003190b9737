"""Configuration: the channels a receiver serves and how each authenticates.

A TOML file decodes into :class:`Config`; unknown keys and wrong types are reported with
their path, and a channel that asks for authentication but has no keys is an error, never
a silently open endpoint.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from receiver.errors import ConfigError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "Channel", "Config", "load_config"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics"})

_T = TypeVar("_T")

AuthMode = Literal["header", "query", "basic", "bearer", "hmac", "none"]


class Channel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One endpoint, served at ``/<name>``.

    Attributes:
        provider: ``"whispir"``, ``"onepoint"``, ``"diy"`` or a plugin provider's name.
        auth: ``header`` | ``query`` | ``basic`` | ``bearer`` | ``hmac`` | ``none``.
        keys: Accepted keys for header/query/basic/bearer; any of them passes (rotation).
        header: The header ``auth = "header"`` reads.
        param: The query parameter ``auth = "query"`` reads (name matched ignoring case).
        credentials: ``auth = "hmac"``: AppId -> Secret.
        hmac_hash: ``sha1`` (OnePoint's documented default) or ``sha256``.
        hmac_key_encoding: The Secret as ``utf8`` text or ``base64``-decoded bytes.
        hmac_body: Sign Base64 of the ``raw`` body or of its ``md5`` digest.
        hmac_uri: The URL as sent (``as-sent``) or lowercased and URL-encoded
            (``lower-urlencoded``).
        public_url: The URL the provider calls, for HMAC checks behind a proxy.
        allow_ips: Client networks allowed to call (empty: any).
        timezone: Whispir only: zone of the payload's timestamps.
    """

    provider: str
    auth: AuthMode
    keys: list[str] = []
    header: str = "X-Whispir-Callback-Key"
    param: str = "auth"
    credentials: dict[str, str] = {}
    hmac_hash: Literal["sha1", "sha256"] = "sha1"
    hmac_key_encoding: Literal["utf8", "base64"] = "utf8"
    hmac_body: Literal["raw", "md5"] = "raw"
    hmac_uri: Literal["as-sent", "lower-urlencoded"] = "as-sent"
    public_url: str | None = None
    allow_ips: list[str] = []
    timezone: str = "UTC"


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A receiver's whole configuration.

    Attributes:
        channels: Channel name -> channel; each is served at ``/<name>``.
        max_body_bytes: Largest body accepted (413 beyond), enforced while reading.
        reply_timeout: Seconds the handlers of a Message/Keyword may take (503 beyond).
        handler_timeout: Seconds the handlers of any other event may take (503 beyond).
    """

    channels: dict[str, Channel] = {}
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    reply_timeout: float = 10.0
    handler_timeout: float = 25.0

    def validate(self, source: str = "config") -> None:
        """Check what types alone cannot; raise :class:`ConfigError` naming the key."""
        if self.max_body_bytes <= 0:
            raise ConfigError(f"{source}: max_body_bytes must be positive")
        for key in ("reply_timeout", "handler_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive")
        for name, channel in self.channels.items():
            where = f"{source}: channels.{name}"
            if not name or "/" in name or name in RESERVED_NAMES:
                raise ConfigError(f"{where}: not a usable channel name")
            if channel.auth == "hmac" and not channel.credentials:
                raise ConfigError(f"{where}: auth = 'hmac' needs credentials (AppId = Secret)")
            if channel.auth not in ("hmac", "none") and not [k for k in channel.keys if k]:
                raise ConfigError(f"{where}: auth = '{channel.auth}' needs at least one key")
            for network in channel.allow_ips:
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError:
                    raise ConfigError(f"{where}.allow_ips: {network!r} is not a network") from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a TOML configuration.

    With no ``path``: ``$RECEIVER_CONFIG``, then ``./receiver.toml``.

    Raises:
        ConfigError: no file, unreadable TOML, unknown keys or wrong types (with path).
    """
    if path is None:
        path = os.environ.get("RECEIVER_CONFIG") or "receiver.toml"
        if not Path(path).is_file():
            raise ConfigError(
                f"no configuration: {path} not found (pass config=, set RECEIVER_CONFIG "
                "or create ./receiver.toml)"
            )
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = config_from_dict(data, str(path))
    return config


def config_from_dict(data: dict[str, object], source: str = "config") -> Config:
    """Build and validate a :class:`Config` from plain data (a decoded TOML file)."""
    channels = data.get("channels", {})
    if isinstance(channels, dict):  # one by one, so that errors name the channel
        for name, channel in channels.items():
            _convert(channel, Channel, source, f"channels.{name}")
    config = _convert(data, Config, source, "")
    config.validate(source)
    return config


def _convert(data: object, kind: type[_T], source: str, prefix: str) -> _T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `$")
        where = ".".join(part for part in (prefix, path.rstrip("`").lstrip(".")) if part)
        raise ConfigError(f"{source}: {where + ': ' if where else ''}{reason}") from None
