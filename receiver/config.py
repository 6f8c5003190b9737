"""Configuration: the channels a receiver serves and how each authenticates.

A TOML file decodes into :class:`Config`; unknown keys and wrong types are reported with
their path, and a channel that asks for authentication but has no keys is an error, never
a silently open endpoint.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

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
        hmac_body: Sign Base64 of the ``raw`` body or of its ``md5`` digest (an empty
            body signs as nothing).
        hmac_uri: The URL as sent (``as-sent``) or lowercased and URL-encoded as .NET's
            ``HttpUtility.UrlEncode`` does (``lower-urlencoded``).
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
        trusted_proxies: Addresses or networks whose X-Forwarded-For/-Proto/-Host/-Port
            and ``Forwarded`` headers are believed (client address, scheme, host). ``"*"``
            trusts every peer: only behind a proxy that always sets these headers.
        plugins: Dotted module names to load as plugins.
        plugins_dir: A folder whose ``*.py`` files are each loaded as a plugin.
        settings: Per-plugin settings, ``[settings.<plugin>]`` tables, read by plugins.
        metrics: Serve ``GET /metrics`` (Prometheus text); ``receiver serve`` turns it on.
        journal: ``"none"`` or ``"sqlite:///path/receiver.db"``: every authenticated
            callback is stored durably before it is answered. Unset: none when mounted,
            ``sqlite:///<state_dir>/receiver.db`` for ``receiver serve``.
        state_dir: Where ``receiver serve`` keeps its state by default.
        duplicate_window: Seconds within which a re-sent callback (same provider key) is
            a duplicate: answered as the original was, not dispatched again (0: off).
        duplicate_body_window: Seconds within which an identical body is a duplicate
            (0: off).
        retry_delays: Seconds before each retry of a failed event; after the last one
            the event is a dead letter.
    """

    channels: dict[str, Channel] = {}
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    reply_timeout: float = 10.0
    handler_timeout: float = 25.0
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    plugins: list[str] = []
    plugins_dir: str | None = None
    settings: dict[str, dict[str, Any]] = {}
    metrics: bool = False
    journal: str | None = None
    state_dir: str = "state"
    duplicate_window: float = 48 * 3600.0
    duplicate_body_window: float = 600.0
    retry_delays: list[float] = msgspec.field(default_factory=lambda: [10.0, 60.0, 300.0, 1800.0])

    def validate(self, source: str = "config") -> None:
        """Check what types alone cannot; raise :class:`ConfigError` naming the key."""
        if self.max_body_bytes <= 0:
            raise ConfigError(f"{source}: max_body_bytes must be positive")
        if self.journal is not None and not (
            self.journal == "none" or self.journal.startswith("sqlite:///")
        ):
            raise ConfigError(f"{source}: journal: use 'none' or 'sqlite:///path/to/file.db'")
        if any(delay < 0 for delay in self.retry_delays):
            raise ConfigError(f"{source}: retry_delays must not be negative")
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
            _check_networks(channel.allow_ips, f"{where}.allow_ips")
        _check_networks([p for p in self.trusted_proxies if p != "*"], f"{source}: trusted_proxies")


def _check_networks(networks: list[str], where: str) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: {network!r} is not an address or network") from None


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
    data = expand_secrets(data, str(path))
    apply_environment(data)
    return config_from_dict(data, str(path))


_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_PREFIX = "RECEIVER_"
_ENV_OPTIONS = (
    "max_body_bytes",
    "reply_timeout",
    "handler_timeout",
    "plugins_dir",
    "journal",
    "state_dir",
)


def expand_secrets(data: Any, source: str, path: str = "") -> Any:
    """Replace ``${VAR}`` with the environment variable and ``file:/path`` with the file.

    So a configuration can be committed while its keys live in the environment or in
    mounted secret files. A variable that is not set, or a file that cannot be read, is
    a :class:`ConfigError` naming the key (never the value).
    """
    if isinstance(data, dict):
        return {
            key: expand_secrets(value, source, f"{path}.{key}" if path else key)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [expand_secrets(item, source, f"{path}[{i}]") for i, item in enumerate(data)]
    if not isinstance(data, str):
        return data
    if data.startswith("file:"):
        try:
            return Path(data[5:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{source}: {path}: cannot read {data[5:]}: {exc.strerror}") from None

    def lookup(match: re.Match[str]) -> str:
        value = os.environ.get(match[1])
        if value is None:
            raise ConfigError(f"{source}: {path}: environment variable {match[1]} is not set")
        return value

    return _REFERENCE.sub(lookup, data)


def apply_environment(data: dict[str, Any]) -> None:
    """Let ``RECEIVER_<OPTION>`` environment variables override top-level options."""
    for option in _ENV_OPTIONS:
        value = os.environ.get(ENV_PREFIX + option.upper())
        if value:
            data[option] = value
    proxies = os.environ.get(ENV_PREFIX + "TRUSTED_PROXIES")
    if proxies:
        data["trusted_proxies"] = [p.strip() for p in proxies.split(",") if p.strip()]


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
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `$")
        where = ".".join(part for part in (prefix, path.rstrip("`").lstrip(".")) if part)
        raise ConfigError(f"{source}: {where + ': ' if where else ''}{reason}") from None
