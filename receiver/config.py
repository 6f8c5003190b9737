"""Configuration: the channels a receiver serves and how each authenticates.

A TOML file decodes into :class:`Config`; unknown keys and wrong types are reported with
their path, and a channel that asks for authentication but has no keys is an error, never
a silently open endpoint. A channel holds generic fields only; what one provider needs
(Whispir's time zone, OnePoint's signature options) is the channel's ``options`` table,
converted to that provider's options struct when the app is built.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec

from receiver.errors import ConfigError
from receiver.logs import get_logger

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "KEY_MODES",
    "Channel",
    "Config",
    "Console",
    "Expanded",
    "Secret",
    "ServerLimits",
    "convert",
    "duration",
    "load_config",
]

log = get_logger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics", "console"})

_T = TypeVar("_T")

Secret = Annotated[str, msgspec.Meta(extra={"secret": True})]
"""The type of a plugin settings field that holds a secret: its value may be written
``"${NAME}"`` (an environment variable) or ``"file:/path"`` (a file's text), expanded
when the app is built. Any other field is taken as written. Declare it in the plugin's
``Settings`` struct::

    class Settings(msgspec.Struct, forbid_unknown_fields=True):
        url: str
        token: receiver.Secret
"""

Expanded = Annotated[str, msgspec.Meta(extra={"variables": True})]
"""The type of a plugin settings field in which ``${NAME}`` is replaced by the environment
variable when the app is built, without being a secret: a path
(``"${STATE_DIRECTORY}/opt_outs.db"``). ``file:`` means nothing here."""


KEY_MODES = ("header", "query", "basic", "bearer")
"""The generic auth modes that compare a shared key: they need ``keys``."""

MOVED_TO_OPTIONS = (
    "credentials",
    "hmac_hash",
    "hmac_key_encoding",
    "hmac_body",
    "hmac_uri",
    "public_url",
    "timezone",
)
"""Keys that older files set on the channel itself and that are now provider options."""


class Channel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One endpoint, served at ``/<name>``.

    Attributes:
        provider: ``"whispir"``, ``"onepoint"``, ``"diy"`` or a plugin provider's name.
        auth: ``header`` | ``query`` | ``basic`` | ``bearer`` | ``none`` (any provider)
            or a mode of the provider's own (``hmac``: OnePoint/DIY's signature);
            checked against the provider's modes when the app is built.
        keys: Accepted keys for header/query/basic/bearer; any of them passes (rotation).
        header: The header ``auth = "header"`` reads; unset: the provider's
            :attr:`~receiver.providers.Provider.key_header` (Whispir's
            ``X-Whispir-Callback-Key``).
        param: The query parameter ``auth = "query"`` reads (name matched ignoring case).
        allow_ips: Client networks allowed to call (empty: any).
        options: The provider's options, ``[channels.NAME.options]``: converted to the
            provider's :attr:`~receiver.providers.Provider.options` struct when the app
            is built (unknown keys and wrong types are errors naming the key path).
            Whispir: ``timezone``; OnePoint/DIY: ``credentials``, ``hmac_hash``,
            ``hmac_key_encoding``, ``hmac_body``, ``hmac_uri``, ``public_url``.
    """

    provider: str
    auth: str
    keys: list[str] = []
    header: str | None = None
    param: str = "auth"
    allow_ips: list[str] = []
    options: dict[str, Any] = {}


class ServerLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How much ``receiver serve`` lets one client hold: the ``[server]`` table.

    They apply to the HTTP server of ``receiver serve`` (a mounted app is served by its
    host's server, which sets its own). See :mod:`receiver.server`.

    Attributes:
        max_header_bytes: Bytes of request line and headers one request may send
            (default 65536, 64 KiB); beyond: 431 and the connection closed, never more
            buffered. A chunked body's trailers are held to it too (413).
        header_timeout: Seconds a connection has to send a whole request line and
            headers (default 5.0), counted from its opening or from the end of the
            previous response: an idle connection is closed, a request still arriving
            gets 408. Bytes that trickle in do not extend it.
        body_timeout: Seconds a request has to send its whole body once its headers are
            in (default 30.0): 408 (or closed, if answered already). A handler that is
            already running is not affected: ``reply_timeout`` bounds it.
        max_connections: Connections held open at once (default 1000). A new one beyond
            closes the connection that has waited longest for a request (idle or still
            sending its headers); when every one is busy, the new one gets 503. Lowered at
            start to fit the process's descriptor limit (less 100 for the journal, logs
            and plugins).
    """

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 5.0
    body_timeout: float = 30.0
    max_connections: int = 1000

    def validate(self, source: str = "config") -> None:
        """Raise :class:`ConfigError` naming the key of a value that is not positive."""
        for key in ("max_header_bytes", "header_timeout", "body_timeout", "max_connections"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: server.{key} must be positive")


class Console(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The operator console (the ``[console]`` table): pages under ``/console/`` of the
    app to see what came in, why it failed, and replay it (README: Operator console).

    Attributes:
        token: The secret an operator types once (kept then in an HttpOnly cookie) or a
            script sends as ``Authorization: Bearer <token>``. Write it ``"${NAME}"`` or
            ``"file:/path"``; at least 16 characters. Never rendered, logged or journaled.
    """

    token: str

    def validate(self, source: str) -> None:
        if len(self.token) < 16:
            raise ConfigError(f"{source}: console.token: use at least 16 characters")


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """A receiver's whole configuration.

    Attributes:
        channels: Channel name -> channel; each is served at ``/<name>``.
        max_body_bytes: Largest body accepted (413 beyond), enforced while reading.
        reply_timeout: Seconds the handlers of a Message/Keyword may take (503 beyond).
        handler_timeout: Seconds the handlers of any other event may take (503 beyond).
            With a journal, a timeout answers 200 and lets the handlers finish (README).
        blocking_threads: Threads for ``@blocking`` handlers; waiting for a free one does
            not count towards the timeouts.
        trusted_proxies: Addresses or networks whose X-Forwarded-For/-Proto/-Host/-Port
            and ``Forwarded`` headers are believed (client address, scheme, host). ``"*"``
            trusts every peer: only behind a proxy that always sets these headers.
        plugins: Dotted module names to load as plugins.
        plugins_dir: A folder whose ``*.py`` files are each loaded as a plugin.
        autoload_plugins: Load installed packages' plugins (entry points in the group
            ``receiver``) into this app; False: only the ones named here or passed.
        disabled_plugins: Plugin names never registered, wherever they come from
            (installed, ``plugins``, ``plugins_dir``, passed), as pytest's ``-p no:name``.
        settings: Per-plugin settings: ``[settings.<plugin>]`` tables. A plugin that
            declares a ``Settings`` struct finds its table converted to it (and its
            :data:`Secret` fields expanded) in the ``config`` its ``configure`` hook gets;
            otherwise it gets the table as written.
        metrics: Serve ``GET /metrics`` (Prometheus text); ``receiver serve`` turns it on.
        journal: ``"none"``, ``"sqlite:///path/receiver.db"`` or
            ``"postgresql://user:${PASSWORD}@host/database"`` (asyncpg, the
            ``postgresql`` extra): every authenticated callback is stored durably before
            it is answered. Unset: none when mounted,
            ``sqlite:///<state_dir>/receiver.db`` for ``receiver serve``.
        state_dir: Where ``receiver serve`` keeps its state by default.
        duplicate_window: Seconds within which a re-sent callback (same provider key) is
            a duplicate: answered as the original was, not dispatched again (0: off).
        duplicate_body_window: Seconds within which an identical body is a duplicate
            (0: off).
        retry_delays: Seconds before each retry of a failed event; after the last one
            the event is a dead letter.
        journal_lease: Seconds a process's lease on its work in the journal lasts (at
            least 1): renewed every third of it; a process that has not renewed it for this
            long (crashed, hung, cut off) is taken for dead, and its unfinished callbacks
            are handled by another process sharing the journal (``serve --workers N``,
            replicas on PostgreSQL). A process of the same machine that is gone is
            taken over at once. Longer: fewer false alarms on a paused process; shorter:
            its work is picked up sooner.
        server: ``receiver serve``'s limits on slow, idle and greedy clients
            (:class:`ServerLimits`, the ``[server]`` table).
        retention: A duration (``"30d"``, ``"12h"``): the server prunes done, rejected,
            recovered and dead entries older than this, at start and then hourly
            (unset: never; ``receiver prune`` does it by hand); never sooner than the
            duplicate windows (see :attr:`retention_seconds`).
        console: The operator console (:class:`Console`, the ``[console]`` table);
            None (the default): off, nothing of it is built.
    """

    channels: dict[str, Channel] = {}
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    reply_timeout: float = 10.0
    handler_timeout: float = 25.0
    blocking_threads: int = 40
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    plugins: list[str] = []
    plugins_dir: str | None = None
    autoload_plugins: bool = True
    disabled_plugins: list[str] = []
    settings: dict[str, Any] = {}
    metrics: bool = False
    journal: str | None = None
    state_dir: str = "state"
    duplicate_window: float = 48 * 3600.0
    duplicate_body_window: float = 600.0
    retry_delays: list[float] = msgspec.field(default_factory=lambda: [10.0, 60.0, 300.0, 1800.0])
    journal_lease: float = 15.0
    server: ServerLimits = msgspec.field(default_factory=ServerLimits)
    retention: str | None = None
    console: Console | None = None

    @property
    def source(self) -> str:
        """Where this configuration was read from (the file's path), for error messages;
        ``"config"`` when it was built in Python."""
        return str(vars(self).get("_source", "config"))

    @property
    def secrets_optional(self) -> bool:
        """True when read for a command that never serves (``load_config(...,
        channel_secrets=False)``): a plugin secret that is not set is then a warning."""
        return bool(vars(self).get("_secrets_optional", False))

    @property
    def retention_seconds(self) -> float | None:
        """:attr:`retention` in seconds (None: unset), never less than the duplicate
        windows: an entry is what a re-send (or a replayed signed request) is recognized
        by, so the server keeps it at least that long whatever ``retention`` says."""
        if self.retention is None:
            return None
        return max(duration(self.retention), self.duplicate_window, self.duplicate_body_window)

    def validate(self, source: str = "config") -> None:
        """Check what types alone cannot; raise :class:`ConfigError` naming the key."""
        if self.max_body_bytes <= 0:
            raise ConfigError(f"{source}: max_body_bytes must be positive")
        if self.journal is not None and not (
            self.journal == "none"
            or self.journal.startswith(("sqlite:///", "postgresql://", "postgres://"))
        ):
            raise ConfigError(
                f"{source}: journal: use 'none', 'sqlite:///path/to/file.db' or "
                "'postgresql://user:${PASSWORD}@host/database'"
            )
        if self.retention is not None:
            try:
                retention = duration(self.retention)
            except ValueError as exc:
                raise ConfigError(f"{source}: retention: {exc}") from None
            if retention <= 0:
                raise ConfigError(f"{source}: retention: must be longer than 0")
        if any(delay < 0 for delay in self.retry_delays):
            raise ConfigError(f"{source}: retry_delays must not be negative")
        for key in ("reply_timeout", "handler_timeout", "blocking_threads"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: {key} must be positive")
        if not 1 <= self.journal_lease <= 24 * 3600:
            raise ConfigError(f"{source}: journal_lease: seconds, from 1 to 86400")
        self.server.validate(source)
        if self.console is not None:
            self.console.validate(source)
        for table, value in self.settings.items():
            if not isinstance(value, dict | msgspec.Struct):
                raise ConfigError(f"{source}: settings.{table}: must be a table")
        for name, channel in self.channels.items():
            where = f"{source}: channels.{name}"
            if not name or "/" in name or name in RESERVED_NAMES:
                raise ConfigError(f"{where}: not a usable channel name")
            if channel.auth in KEY_MODES and not [k for k in channel.keys if k]:
                raise ConfigError(f"{where}: auth = '{channel.auth}' needs at least one key")
            _check_networks(channel.allow_ips, f"{where}.allow_ips")
        _check_networks([p for p in self.trusted_proxies if p != "*"], f"{source}: trusted_proxies")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s``, ``0.5s`` (or plain seconds) -> seconds.

    Raises:
        ValueError: not such a duration (the message says what one looks like).
    """
    unit = _UNITS.get(text[-1:].lower())
    try:
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 90s") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 90s")
    return seconds


def _check_networks(networks: list[str], where: str) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: {network!r} is not an address or network") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    channel_secrets: bool = True,
    plugin_secrets: bool | None = None,
) -> Config:
    """Read and validate a TOML configuration.

    With no ``path``: ``$RECEIVER_CONFIG``, then ``./receiver.toml``. Relative paths in
    the file are relative to its folder (:func:`resolve_paths`). ``channel_secrets``
    False: a channel secret whose variable is unset or file unreadable does not stop the
    load (see :func:`expand_secret`); the operator commands read the journal so.
    ``plugin_secrets`` (default: as ``channel_secrets``) False: the same for the
    :data:`Secret` fields of plugin settings, when the app is built (``replay`` runs the
    plugins, so it needs theirs).

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
    unset: list[str] | None = None if channel_secrets else []
    data = expand_config_secrets(data, str(path), unset=unset)
    if unset:
        log.warning(
            "channel secrets not set here: fine for reading the journal, serve needs them",
            source=str(path),
            keys=unset,
        )
    resolve_paths(data, Path(path).resolve().parent)
    apply_environment(data)
    config = config_from_dict(data, str(path))
    if not (channel_secrets if plugin_secrets is None else plugin_secrets):
        vars(config)["_secrets_optional"] = True
    return config


def resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Make the file's relative paths (``state_dir``, ``plugins_dir``, a ``sqlite:///``
    journal) relative to ``folder``, the configuration file's, not the current directory:
    ``serve`` and the operator commands then find the same journal from anywhere.
    ``state_dir`` unset is ``folder/state``."""
    data.setdefault("state_dir", "state")
    for key in ("state_dir", "plugins_dir"):
        value = data.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            data[key] = str(folder / value)
    journal = data.get("journal")
    if isinstance(journal, str) and journal.startswith(_SQLITE):
        file = journal[len(_SQLITE) :]
        if file and not os.path.isabs(file) and not file.startswith(":"):
            data["journal"] = _SQLITE + str(folder / file)


_SQLITE = "sqlite:///"
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_PREFIX = "RECEIVER_"
_ENV_OPTIONS = (
    "max_body_bytes",
    "reply_timeout",
    "handler_timeout",
    "plugins_dir",
    "journal",
    "state_dir",
    "retention",
    "journal_lease",
)


SECRET_PLACES = (
    "journal",
    "channels.<name>.keys",
    "channels.<name>.options",
    "console",
)
"""Where a configuration file's ``${NAME}`` and ``file:/path`` are expanded (with the
fields of plugin settings declared :data:`Secret`); everywhere else text is text."""

PATH_PLACES = ("state_dir", "plugins_dir")
"""Paths in which ``${NAME}`` (only) is expanded, as in plugin settings declared
:data:`Expanded`."""


def expand_config_secrets(
    data: dict[str, Any], source: str, *, unset: list[str] | None = None
) -> dict[str, Any]:
    """``data`` (a decoded file) with its secrets expanded, in :data:`SECRET_PLACES`
    only: the ``journal`` URL, each channel's ``keys`` and every string under its
    ``options`` (credentials, signing secrets; older files' ``credentials`` on the
    channel itself too), and the ``[console]`` table (its ``token``). A keyword reply
    ``"Reply ${NAME} to join"`` stays as written.

    Raises:
        ConfigError: see :func:`expand_secret`.
    """
    data = dict(data)
    if "journal" in data:
        data["journal"] = expand_secret(data["journal"], source, "journal")
    for key in PATH_PLACES:  # paths: ${NAME} (systemd's $STATE_DIRECTORY), never file:
        if key in data:
            data[key] = expand_secret(data[key], source, key, files=False)
    channels = data.get("channels")
    if isinstance(channels, dict):
        expanded = {}
        for name, channel in channels.items():
            if isinstance(channel, dict):
                channel = dict(channel)
                for key in ("keys", "options", "credentials"):
                    if key in channel:
                        path = f"channels.{name}.{key}"
                        channel[key] = expand_secret(channel[key], source, path, unset=unset)
            expanded[name] = channel
        data["channels"] = expanded
    if "console" in data:
        data["console"] = expand_secret(data["console"], source, "console", unset=unset)
    return data


def expand_secret(
    value: Any, source: str, path: str, *, unset: list[str] | None = None, files: bool = True
) -> Any:
    """``value`` with ``${VAR}`` replaced by the environment variable and a whole
    ``file:/path`` by the file's text (both stripped of surrounding line breaks); lists
    and tables are walked. ``files`` False: ``${VAR}`` only (in a path, ``file:`` would
    be part of a name).

    So a configuration can be committed while its keys live in the environment or in
    mounted secret files. An expanded value is never expanded again. A variable that is
    not set, or a file that cannot be read, is a :class:`ConfigError` naming the key
    path (never the value); with ``unset`` a list (a command that never serves: channel
    keys and plugin secrets are not needed to read the journal), the value is instead
    replaced by a random one that no request will present, and its key path is appended
    to ``unset``.
    """
    if isinstance(value, dict):
        return {
            key: expand_secret(item, source, f"{path}.{key}", unset=unset, files=files)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            expand_secret(item, source, f"{path}[{i}]", unset=unset, files=files)
            for i, item in enumerate(value)
        ]
    if not isinstance(value, str):
        return value
    if files and value.startswith("file:"):
        try:
            return Path(value[5:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            if unset is not None:
                unset.append(path)
                return _stand_in()
            raise ConfigError(
                f"{source}: {path}: cannot read {value[5:]}: {exc.strerror}"
            ) from None

    def lookup(match: re.Match[str]) -> str:
        found = os.environ.get(match[1])
        if found is None:
            if unset is not None:
                unset.append(path)
                return _stand_in()
            raise ConfigError(f"{source}: {path}: environment variable {match[1]} is not set")
        # As a file's text is stripped: a trailing newline (a secret exported from a
        # file, a Kubernetes secret) would never match and breaks HTTP headers.
        return found.strip("\r\n")

    return _REFERENCE.sub(lookup, value)


def _stand_in() -> str:
    """A secret for a command that never serves: random, valid as text and as Base64."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


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
    """Build and validate a :class:`Config` from plain data (a decoded TOML file).

    Provider options written on a channel itself, as older files do (``credentials``,
    ``hmac_*``, ``public_url``, ``timezone``), are moved into its ``options`` with one
    warning per channel that says where to write them.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values (naming the key path),
            or an old-style key also set in the channel's options.
    """
    channels = data.get("channels", {})
    if isinstance(channels, dict):  # one by one, so that errors name the channel
        channels = {
            name: _move_old_options(channel, str(name), source)
            for name, channel in channels.items()
        }
        data = {**data, "channels": channels}
        for name, channel in channels.items():
            _convert(channel, Channel, source, f"channels.{name}")
    config = _convert(data, Config, source, "")
    config.validate(source)
    vars(config)["_source"] = source
    return config


def _move_old_options(channel: object, name: str, source: str) -> object:
    """``channel`` (plain data) with its old-style provider options moved into ``options``."""
    if not isinstance(channel, dict):
        return channel
    moved = [key for key in MOVED_TO_OPTIONS if key in channel]
    options = channel.get("options", {})
    if not moved or not isinstance(options, dict):
        return channel
    for key in moved:
        if key in options:
            raise ConfigError(
                f"{source}: channels.{name}.{key}: also set in [channels.{name}.options]; "
                f"keep only the one under [channels.{name}.options] and delete {key} from "
                f"[channels.{name}]"
            )
    log.warning(
        "provider options set on the channel: move them to its options table",
        channel=name,
        source=source,
        keys=moved,
        write=f"[channels.{name}.options] with {', '.join(moved)} (same values)",
    )
    kept = {key: value for key, value in channel.items() if key not in moved}
    return {**kept, "options": {**options, **{key: channel[key] for key in moved}}}


def replace_config(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with ``changes`` (field=value), keeping :attr:`Config.source`."""
    copy = msgspec.structs.replace(config, **changes)
    vars(copy).update(vars(config))
    return copy


def expand_declared(
    value: Any, kind: Any, source: str, path: str, unset: list[str] | None = None
) -> Any:
    """``value`` (plain data for ``kind``, a type) with the strings that ``kind`` declares
    :data:`Secret` expanded (:func:`expand_secret`), in structs, tables, lists and
    unions of them; everything else as it is.

    Raises:
        ConfigError: a variable not set, a file not readable (naming the key path).
    """
    return _expand_info(value, msgspec.inspect.type_info(kind), source, path, unset)


def _expand_info(
    value: Any,
    info: msgspec.inspect.Type,
    source: str,
    path: str,
    unset: list[str] | None = None,
) -> Any:
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        extra = info.extra or {}
        if isinstance(value, str) and extra.get("secret"):
            return expand_secret(value, source, path, unset=unset)
        if isinstance(value, str) and extra.get("variables"):
            return expand_secret(value, source, path, files=False)
        return _expand_info(value, info.type, source, path, unset)
    if isinstance(info, inspect.UnionType):
        for member in info.types:
            if _fits(value, member):
                return _expand_info(value, member, source, path, unset)
        return value
    if isinstance(info, inspect.StructType) and info.array_like and isinstance(value, list):
        return _expand_items(value, [field.type for field in info.fields], source, path, unset)
    if isinstance(
        info, inspect.StructType | inspect.DataclassType | inspect.TypedDictType
    ) and isinstance(value, dict):
        fields = {field.encode_name: field.type for field in info.fields}
        return {
            key: _expand_info(item, fields[key], source, f"{path}.{key}", unset)
            if key in fields
            else item
            for key, item in value.items()
        }
    if isinstance(info, inspect.DictType) and isinstance(value, dict):
        return {
            key: _expand_info(item, info.value_type, source, f"{path}.{key}", unset)
            for key, item in value.items()
        }
    if isinstance(info, _SEQUENCES) and isinstance(value, list):
        return _expand_items(value, [info.item_type] * len(value), source, path, unset)
    if isinstance(info, inspect.TupleType) and isinstance(value, list):
        return _expand_items(value, list(info.item_types), source, path, unset)
    return value


def _expand_items(
    values: list[Any],
    kinds: list[msgspec.inspect.Type],
    source: str,
    path: str,
    unset: list[str] | None,
) -> list[Any]:
    """A list whose items are of ``kinds`` (position by position; extra items as they are)."""
    return [
        _expand_info(item, kinds[i], source, f"{path}[{i}]", unset) if i < len(kinds) else item
        for i, item in enumerate(values)
    ]


_SEQUENCES = (
    msgspec.inspect.ListType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
    msgspec.inspect.VarTupleType,
)


def _fits(value: Any, info: msgspec.inspect.Type) -> bool:
    """Whether plain ``value`` could be of ``info``'s shape (to pick a union's member;
    a tagged struct only when ``value`` carries its tag)."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.Metadata):
        return _fits(value, info.type)
    if isinstance(value, str):
        return isinstance(info, inspect.StrType)
    if isinstance(value, dict):
        if isinstance(info, inspect.StructType) and info.tag_field is not None:
            return bool(value.get(info.tag_field) == info.tag)
        return isinstance(
            info,
            inspect.StructType | inspect.DataclassType | inspect.DictType | inspect.TypedDictType,
        )
    if isinstance(value, list):
        return isinstance(info, (*_SEQUENCES, inspect.TupleType)) or (
            isinstance(info, inspect.StructType) and info.array_like
        )
    return False


def convert(data: object, kind: type[_T], where: str = "") -> _T:
    """``msgspec.convert`` as configuration reads values: strings convert to numbers and
    booleans (environment variables are strings).

    Raises:
        ConfigError: ``"<where>.<path>: <reason>"``, the path of the value at fault.
    """
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).partition(" - at `$")
        at = ".".join(part for part in (where, path.rstrip("`").lstrip(".")) if part)
        raise ConfigError(f"{at + ': ' if at else ''}{reason}") from None


def _convert(data: object, kind: type[_T], source: str, prefix: str) -> _T:
    try:
        return convert(data, kind, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
