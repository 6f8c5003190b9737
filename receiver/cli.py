"""The ``receiver`` command: serve, check a configuration, list plugins, send a signed
sample to a running receiver; the operator commands (events, replay, prune) are
:mod:`receiver.operations`.

Every option of ``serve`` and the configuration's ``--config``/``--plugins-dir`` also
come from a ``RECEIVER_*`` environment variable (the flag wins); ``send`` reads
``RECEIVER_HOST``/``RECEIVER_PORT`` as ``serve`` does, to find the receiver.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import receiver
from receiver.config import Config, duration, load_config, replace_config
from receiver.errors import ConfigError
from receiver.journal import STATES
from receiver.logs import get_logger
from receiver.samples import FORMATS

if TYPE_CHECKING:
    import asyncio

    from receiver.httpclient import Answer

__all__ = ["main"]

log = get_logger(__name__)

# Settings the worker processes of ``serve --workers N`` read back from the environment.
_WORKER_CONFIG = "RECEIVER_CONFIG"
_WORKER_PLUGINS_DIR = "RECEIVER_PLUGINS_DIR"


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get("RECEIVER_" + name, default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="receiver",
        description="Receive Whispir, OnePoint and DIY Surveys callbacks: authenticate, "
        "normalize, dispatch to plugins.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {receiver.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            default=_env("CONFIG"),
            help="TOML configuration (default: $RECEIVER_CONFIG, then ./receiver.toml)",
        )
        sub.add_argument(
            "--plugins-dir",
            default=_env("PLUGINS_DIR"),
            help="load every *.py in this folder as a plugin ($RECEIVER_PLUGINS_DIR)",
        )

    serve = commands.add_parser("serve", help="run the receiver as an HTTP service")
    with_config(serve)
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=int(_env("PORT", 8000)), help="default 8000")
    serve.add_argument(
        "--workers", type=int, default=int(_env("WORKERS", 1)), help="worker processes"
    )
    serve.add_argument(
        "--fd",
        type=int,
        default=int(_env("FD")) if _env("FD") else None,
        help="serve on this inherited listening socket (systemd's LISTEN_FDS is honoured "
        "without it); --host/--port are then not used",
    )
    serve.add_argument(
        "--uds", default=_env("UDS"), help="serve on this Unix socket instead of --host/--port"
    )
    serve.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=_env("LOG_FORMAT"),
        help="default: console on a terminal, JSON lines otherwise",
    )
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), help="default info")
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=float(_env("SHUTDOWN_TIMEOUT", 25)),
        help="seconds in-flight callbacks get to finish on SIGTERM (default 25)",
    )

    check = commands.add_parser("check-config", help="validate a configuration, serve nothing")
    with_config(check)

    plugins = commands.add_parser("plugins", help="list the plugins loaded and their hooks")
    with_config(plugins)

    events = commands.add_parser("events", help="list journal entries, or show one")
    with_config(events)
    events.add_argument("show", nargs="*", metavar="show ID", help="'show ID': one entry in full")
    events.add_argument("--channel")
    events.add_argument("--type")
    events.add_argument(
        "--state",
        "--status",  # its first name; a journal entry has a state, an event a status
        dest="state",
        choices=STATES,
        help="entries in this state",
    )
    events.add_argument("--since", type=_age, help="e.g. 2h, 7d, 30m, 90s")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument(
        "--json", action="store_true", help="one JSON object per entry and line (no body)"
    )

    replay = commands.add_parser(
        "replay", help="dispatch journal entries again through the current plugins"
    )
    with_config(replay)
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--dead", action="store_true", help="every dead letter")
    replay.add_argument("--failed", action="store_true", help="every failed entry")
    replay.add_argument(
        "--rejected",
        action="store_true",
        help="every rejected body: parse it again with its channel's current parser; what "
        "parses now is recorded as a new event and dispatched",
    )
    replay.add_argument(
        "--since",
        type=_age,
        help="every entry received since, e.g. 2h (with --rejected: the rejected ones only)",
    )
    replay.add_argument("--dry-run", action="store_true", help="list, dispatch nothing")
    replay.add_argument(
        "--only-loaded",
        action="store_true",
        help="replay entries even when a plugin they failed in is not loaded (by default "
        "replay refuses, exit 2, and names the missing plugins)",
    )

    migrate = commands.add_parser(
        "migrate",
        help="create the journal's schema, or bring it up to this version's, and exit "
        "(serve does it at start; for operators who migrate separately)",
    )
    with_config(migrate)

    prune = commands.add_parser(
        "prune", help="delete old done, rejected, recovered and dead entries"
    )
    with_config(prune)
    prune.add_argument("--older-than", type=_age, required=True, help="e.g. 30d")
    prune.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")

    send = commands.add_parser(
        "send",
        help="send a sample callback, authenticated as the provider would, to a running receiver",
        description="Build a callback for CHANNEL's provider (a named sample, a FILE, or - for "
        "stdin), authenticate it with the channel's configured credentials exactly as the "
        "provider does, send it to a running receiver and print what it answered: "
        "'STATUS REASON  request-id=ID', then 'duplicate of EVENT_ID' when the receiver "
        "answered it as a re-send of an earlier callback (nothing dispatched), then the "
        "reply body if any. Exit status: 0 for a 2xx answer, 1 for any other status, "
        "2 for a usage or configuration error, 3 when the receiver cannot be reached.",
        epilog="--set auth.key=VALUE, auth.app_id=VALUE and auth.secret=VALUE replace the "
        "channel's key (header, query, basic, bearer) or its HMAC AppId and Secret, e.g. to "
        "see a wrong one refused with 401; every other --set NAME=VALUE changes a field of "
        "the body (a dotted name reaches into JSON objects: responseMessage.content).",
    )
    with_config(send)
    send.add_argument("channel", nargs="?", metavar="CHANNEL", help="a configured channel")
    send.add_argument(
        "sample",
        nargs="?",
        default="message",
        metavar="SAMPLE|FILE|-",
        help="a sample name (default message; see --list), a file (.json, .xml, .form, "
        ".query, or name --format), or - for stdin",
    )
    send.add_argument(
        "--list", action="store_true", help="name the samples of each provider, send nothing"
    )
    send.add_argument(
        "--url",
        help="the receiver's base URL, the channel path appended (default: "
        "http://HOST:PORT from --host/--port); include a mount prefix: "
        "https://example.com/hooks",
    )
    send.add_argument(
        "--host",
        default=_env("HOST", "127.0.0.1"),
        help="the receiver's host, as given to serve (default 127.0.0.1, $RECEIVER_HOST)",
    )
    send.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", 8000)),
        help="the receiver's port (default 8000, $RECEIVER_PORT)",
    )
    send.add_argument(
        "--set",
        dest="changes",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a body field, or a credential: auth.key, auth.app_id, auth.secret",
    )
    send.add_argument(
        "--fresh",
        action="store_true",
        help="a new message id and timestamp, so it is not answered as a duplicate",
    )
    send.add_argument(
        "--method",
        type=str.upper,
        choices=["GET", "POST"],
        help="default: as the provider sends the sample; GET sends a form's fields as a query",
    )
    send.add_argument(
        "--format",
        choices=list(FORMATS),
        help="the format of a FILE without a known extension, or of stdin (default json)",
    )
    send.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)"
    )
    return parser


def _age(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s`` (or plain seconds) -> seconds
    (:func:`receiver.config.duration`)."""
    try:
        return duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30d, 12h or 90s") from None


def _load(
    args: argparse.Namespace,
    *,
    standalone: bool = False,
    channel_secrets: bool = True,
    plugin_secrets: bool | None = None,
) -> Config:
    """The configuration, with the command line's overrides.

    ``standalone``: as ``receiver serve`` runs it: metrics on, and the SQLite journal
    under ``state_dir`` unless the configuration says otherwise. ``channel_secrets``
    False: for commands that never serve (the channels' keys need not be set).
    """
    config = load_config(
        args.config, channel_secrets=channel_secrets, plugin_secrets=plugin_secrets
    )
    if args.plugins_dir:
        config = replace_config(config, plugins_dir=args.plugins_dir)
    return _standalone(config) if standalone else config


def _standalone(config: Config) -> Config:
    """``config`` as ``receiver serve`` (and each of its ``--workers``) runs it: metrics
    on, and the SQLite journal under ``state_dir`` unless it says otherwise."""
    journal = config.journal
    if journal is None:
        journal = f"sqlite:///{os.path.abspath(os.path.join(config.state_dir, 'receiver.db'))}"
    return replace_config(config, metrics=True, journal=journal)


def _channel_table(config: Config) -> str:
    rows = [("channel", "provider", "auth")] + [
        (f"/{name}", channel.provider, channel.auth) for name, channel in config.channels.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from receiver.app import create_app
    from receiver.logs import configure_logging

    log_format = configure_logging(args.log_format, args.log_level)
    listen = _listening_socket(args)
    config = _load(args, standalone=True)
    if args.workers < 1:
        raise ConfigError("--workers: at least 1")
    app = create_app(config)  # fail here, in the parent, on any configuration error
    _refuse_unwritable_journal(app)
    http_protocol = _server_limits(config)
    if log_format == "console":  # in JSON, every line is JSON: the "serving" line says it
        print(f"receiver listening on {listen['url']}", file=sys.stderr)
        print(_channel_table(config), file=sys.stderr, flush=True)
    log.info(
        "serving",
        url=listen["url"],
        channels={name: channel.provider for name, channel in config.channels.items()},
        workers=args.workers,
        journal=_shown_journal(config.journal),
    )
    options: dict[str, Any] = {
        **listen["uvicorn"],
        "access_log": False,  # the receiver logs each callback itself, without secrets
        "proxy_headers": False,  # trusted_proxies are applied by the app itself
        "log_config": None,
        "timeout_graceful_shutdown": args.shutdown_timeout,
        "server_header": False,
        "http": http_protocol,  # httptools, with the [server] limits
    }
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before it: make that a clean exit, not a death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if args.workers > 1:
        # uvicorn's supervisor: on SIGHUP it replaces the workers one at a time, each
        # new one serving before the old one stops (README: "Deploying").
        if args.config:
            os.environ[_WORKER_CONFIG] = os.path.abspath(args.config)
        if args.plugins_dir:
            os.environ[_WORKER_PLUGINS_DIR] = os.path.abspath(args.plugins_dir)
        # The command line's logging, as the workers read it (they parse no arguments).
        os.environ["RECEIVER_LOG_FORMAT"] = log_format
        os.environ["RECEIVER_LOG_LEVEL"] = args.log_level
        return _supervise(args.workers, options)
    else:
        signal.signal(signal.SIGHUP, _hup_alone)
        uvicorn.run(app, **options)
    return 0


def _supervise(workers: int, options: dict[str, Any]) -> int:
    """Run ``workers`` worker processes under :class:`receiver.supervisor.Supervisor`
    (uvicorn's, as ``uvicorn.run`` does with ``workers``) until a signal stops them; the
    exit status.

    A worker that dies once serving is replaced. One that cannot start (its app, or its
    journal) is started again later while another serves; when none does, they all stop,
    and ``serve`` says so in one line and exits :data:`~receiver.supervisor.WORKER_FAILED`,
    not 0 (uvicorn's own ``run`` returns as after a signal), so that a service manager
    sees a failure (systemd's ``Restart=on-failure`` starts it again).
    """
    from uvicorn import Config

    from receiver.supervisor import WORKER_FAILED, Supervisor

    config = Config("receiver.cli:worker_app", factory=True, workers=workers, **options)
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    try:
        supervisor.run()
    finally:
        if config.uds and os.path.exists(config.uds):
            os.remove(config.uds)
    if supervisor.failed is None:
        return 0
    reason = f"worker process {supervisor.failed} could not start (its log says why): stopped"
    print(f"receiver: {reason}", file=sys.stderr, flush=True)
    return WORKER_FAILED


def _hup_alone(signum: int, frame: object) -> None:
    """SIGHUP to a single process: not a reason to die (the default action) with
    callbacks in flight."""
    log.warning(
        "SIGHUP ignored: replacing the process needs --workers 2 or more "
        "(or a restart on an inherited socket: README, Deploying)"
    )


SD_LISTEN_FDS_START = 3
"""The first descriptor systemd passes to a socket-activated service (sd_listen_fds(3))."""


def _listening_socket(args: argparse.Namespace) -> dict[str, Any]:
    """Where ``serve`` listens: ``--fd``, ``--uds``, systemd's socket (``LISTEN_FDS`` and
    ``LISTEN_PID`` naming this process, as sd_listen_fds(3) reads them; the variables are
    then removed so that no child takes them for its own), else ``--host``/``--port``.
    Returns ``{"url": for logs, "uvicorn": uvicorn.run's keyword arguments}``.

    With an inherited socket, the socket outlives the process: while one receiver is
    replaced by the next, connections wait in the kernel's backlog instead of being
    refused (README: "Restarts that refuse nothing").

    Raises:
        ConfigError: the descriptor is not an open listening stream socket.
    """
    fd = args.fd
    if fd is None and args.uds is None:
        count, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
        if count and pid == str(os.getpid()):
            for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                os.environ.pop(name, None)
            if count != "1":
                log.warning("systemd passed several sockets: serving on the first", count=count)
            fd = SD_LISTEN_FDS_START
    if fd is not None:
        import socket

        try:
            with socket.socket(fileno=os.dup(fd)) as probe:
                listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                kind = probe.type
        except OSError as exc:
            raise ConfigError(f"--fd {fd}: not an open socket ({exc.strerror})") from None
        if not listening or kind != socket.SOCK_STREAM:
            raise ConfigError(f"--fd {fd}: not a listening stream socket")
        return {"url": f"fd://{fd}", "uvicorn": {"fd": fd}}
    if args.uds is not None:
        return {"url": f"unix:{args.uds}", "uvicorn": {"uds": args.uds}}
    return {
        "url": f"http://{args.host}:{args.port}",
        "uvicorn": {"host": args.host, "port": args.port},
    }


def _shown_journal(journal: str | None) -> str | None:
    """The journal setting as logged: a URL without its password."""
    if journal is not None and journal.startswith(("postgresql://", "postgres://")):
        from receiver.journal.postgres import redact_url

        return redact_url(journal)
    return journal


def _migrate(args: argparse.Namespace) -> int:
    """``receiver migrate``: create or migrate the journal's schema (under the advisory
    lock for PostgreSQL; a SQLite file is created or brought up to date), print it."""
    import asyncio

    from receiver.journal import open_journal

    config = _load(args, standalone=True, channel_secrets=False, plugin_secrets=False)
    journal = open_journal(config.journal)
    if journal is None:
        raise ConfigError("journal = 'none': there is no journal to migrate")

    async def run() -> str:
        try:
            from receiver.journal.postgres import PostgresJournal

            if isinstance(journal, PostgresJournal):
                found, now = await journal.migrate()
                was = "none" if found is None else str(found)
                return f"{journal.where}: schema version {now} (was {was})"
            await journal.start()
            return f"{_shown_journal(config.journal)}: schema up to date"
        finally:
            await journal.stop()

    print(asyncio.run(run()))
    return 0


def _refuse_unwritable_journal(app: Any) -> None:
    """Open and close the app's journal once: one that cannot be written stops ``serve``
    here with one line (its path and why: :class:`ConfigError`), not in uvicorn's lifespan
    with a traceback."""
    journal = app.state.journal
    if journal is None:
        return

    async def probe() -> None:
        await journal.start()
        await journal.stop()

    import asyncio

    asyncio.run(probe())


def _server_limits(config: Config, *, worker: bool = False) -> type[asyncio.Protocol]:
    """The HTTP protocol class of ``receiver serve``, set to ``config.server``'s limits in
    this process; the descriptor limit raised first (workers inherit it) and logged."""
    from receiver.server import HttpProtocol, connection_cap, raise_descriptor_limit, use_limits

    if worker:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    else:
        before, soft, hard = raise_descriptor_limit()
        log.info(
            "descriptor limit",
            soft_before=before,
            soft=soft,
            hard=hard,
            max_connections=connection_cap(config.server, soft),
        )
    cap = connection_cap(config.server, soft)
    if cap < config.server.max_connections and not worker:
        log.warning(
            "descriptor limit below server.max_connections: fewer connections allowed",
            max_connections=config.server.max_connections,
            allowed=cap,
            descriptors=soft,
        )
    use_limits(config.server, cap, config.max_body_bytes)
    return HttpProtocol


def _exit_cleanly(signum: int, frame: object) -> None:
    log.info("stopped", signal=signal.Signals(signum).name)
    sys.exit(0)


def worker_app() -> Any:
    """The app of one ``serve --workers N`` worker, built from the environment.

    One that cannot be built (its configuration or a plugin fails here, not in ``serve``)
    is logged in one line and the worker exits with
    :data:`~receiver.supervisor.WORKER_FAILED`, uvicorn's startup failure, which its
    supervisor (:func:`_supervise`) treats as such (uvicorn takes any other error for a
    crash, and restarts the worker at once, again and again).
    """
    from receiver.app import create_app
    from receiver.logs import configure_logging
    from receiver.supervisor import WORKER_FAILED

    configure_logging(_env("LOG_FORMAT"), _env("LOG_LEVEL", "info"))
    try:
        config = _standalone(load_config(os.environ.get(_WORKER_CONFIG)))
        _server_limits(config, worker=True)
        plugins_dir = os.environ.get(_WORKER_PLUGINS_DIR) or config.plugins_dir
        return create_app(replace_config(config, plugins_dir=plugins_dir))
    except Exception as exc:
        log.error("worker cannot start", pid=os.getpid(), reason=str(exc) or repr(exc))
        sys.exit(WORKER_FAILED)


def _check_config(args: argparse.Namespace) -> int:
    from receiver.app import create_app

    config = _load(args, channel_secrets=False)  # an unset channel secret is a warning
    create_app(config)  # providers, plugins and channel options are checked too
    print(f"{args.config or os.environ.get('RECEIVER_CONFIG') or 'receiver.toml'}: ok")
    print(_channel_table(config))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.plugins import describe

    app = create_app(_load(args, channel_secrets=False))
    for name, hooks, origin in describe(app.state.plugin_manager):
        print(f"{name}: {', '.join(hooks) if hooks else '(no hooks)'}  [{origin}]")
    return 0


def _operator(name: str) -> Callable[[argparse.Namespace], int]:
    """Operator command ``name`` (:mod:`receiver.operations`, imported when run) on the
    standalone configuration: the journal ``receiver serve`` would write."""

    def run(args: argparse.Namespace) -> int:
        from receiver import operations

        command: Callable[[argparse.Namespace, Config], int] = getattr(operations, name)
        # The journal needs no channel key; a replay runs the plugins: it needs theirs.
        plugin_secrets = name == "replay"
        config = _load(args, standalone=True, channel_secrets=False, plugin_secrets=plugin_secrets)
        return command(args, config)

    return run


class _Usage(Exception):
    """A command used wrongly: one line, exit status 2."""


_CREDENTIALS = {"auth.key": "key", "auth.app_id": "app_id", "auth.secret": "secret"}
"""``--set`` names that replace a credential instead of a body field."""


def _send(args: argparse.Namespace) -> int:
    """``receiver send``: one callback to a running receiver; its answer printed."""
    from receiver import callbacks
    from receiver.httpclient import redact

    if args.list:
        return _list_samples(args)
    if not args.channel:
        raise _Usage("receiver send needs a CHANNEL (or --list)")
    fields: dict[str, str] = {}
    credentials: dict[str, str] = {}
    for change in args.changes:
        name, equals, value = change.partition("=")
        if not equals or not name:
            raise _Usage(f"--set {change!r}: write NAME=VALUE")
        if name.lower().startswith("auth."):
            if name.lower() not in _CREDENTIALS:
                raise _Usage(f"--set {name}: the credentials are {', '.join(_CREDENTIALS)}")
            credentials[_CREDENTIALS[name.lower()]] = value
        else:
            fields[name] = value
    config = _load(args)  # the channel's real keys: it is authenticated as the provider would
    channel = config.channels.get(args.channel)
    if channel is None:
        raise ConfigError(
            f"no channel {args.channel!r}: one of {', '.join(config.channels) or '(none)'}"
        )
    body, format = _sample_body(args, channel.provider)
    method = args.method or FORMATS[format][0]
    if method == "GET" and format not in ("form", "query"):
        raise _Usage(f"--method GET sends a form or query sample's fields, not {format}")
    content_type = FORMATS["form" if format == "query" else format][1]
    url = _send_url(args) + "/" + args.channel
    try:
        if args.fresh:
            body = callbacks.freshen(body, format, channel.provider)
        body = callbacks.set_fields(body, format, fields)
        callback = callbacks.build_callback(
            channel, url, body, method=method, content_type=content_type, credentials=credentials
        )
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    try:
        answer = callbacks.post(callback, timeout=args.timeout)
    except callbacks.Unsendable as exc:  # nothing was sent: a usage error
        print(f"receiver send: cannot send to {redact(url)}: {exc}", file=sys.stderr)
        return 2
    except callbacks.NoAnswer as exc:
        print(f"receiver send: cannot reach {redact(url)}: {exc}", file=sys.stderr)
        return 3
    _print_answer(answer)
    return 0 if 200 <= answer.status < 300 else 1


def _list_samples(args: argparse.Namespace) -> int:
    from receiver import samples

    providers = samples.providers()
    if args.channel:  # only that channel's provider
        channel = _load(args, channel_secrets=False).channels.get(args.channel)
        if channel is None:
            raise ConfigError(f"no channel {args.channel!r}")
        if channel.provider not in providers:
            raise _Usage(f"no samples for provider {channel.provider!r}: send a FILE")
        providers = [channel.provider]
    for provider in providers:
        print(f"{provider}: {' '.join(samples.variants(provider))}")
    return 0


def _sample_body(args: argparse.Namespace, provider: str) -> tuple[bytes, str]:
    """The body and format ``args.sample`` names: stdin, a file, or a named sample."""
    from receiver import samples

    name: str = args.sample
    if name == "-":
        return sys.stdin.buffer.read(), args.format or "json"
    if os.path.isfile(name) or os.sep in name:
        format = args.format or name.rpartition(".")[2].lower()
        if format not in FORMATS:
            raise _Usage(
                f"{name}: name its format with --format ({', '.join(FORMATS)}), "
                "or use one of those extensions"
            )
        try:
            with open(name, "rb") as file:
                return file.read(), format
        except OSError as exc:
            raise _Usage(f"{name}: {exc.strerror}") from None
    try:
        sample = samples.find(provider, name)
    except KeyError as exc:
        raise _Usage(f"{exc.args[0]} (or a file)") from None
    if args.format and args.format != sample.format:
        # --format names a FILE's or stdin's format; a sample is sent as it is stored.
        raise _Usage(
            f"sample {name!r} is {sample.format}: --format is for a FILE or stdin "
            f"(see --list for the {provider} samples of each format)"
        )
    return sample.body, sample.format


def _send_url(args: argparse.Namespace) -> str:
    """The receiver's base URL, without a trailing slash."""
    if args.url:
        if not str(args.url).lower().startswith(("http://", "https://")):
            raise _Usage(f"--url {args.url!r}: an http:// or https:// URL")
        if "?" in args.url or "#" in args.url:
            raise _Usage("--url is the receiver's base URL: no query or fragment")
        return str(args.url).rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(args.host, args.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{args.port}"


def _print_answer(answer: Answer) -> None:
    from http import HTTPStatus

    from receiver.endpoint import DUPLICATE_HEADER

    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    request_id = answer.headers.get("x-request-id", "-")
    print(f"{answer.status} {phrase}".rstrip() + f"  request-id={request_id}")
    original = answer.headers.get(DUPLICATE_HEADER.decode())
    if original:
        print(f"duplicate of {original} (not dispatched again; --fresh sends a new one)")
    if answer.body:
        text = answer.body.decode("utf-8", "replace")
        print(text if text.endswith("\n") else text + "\n", end="")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``receiver`` console script."""
    args = _parser().parse_args(argv)
    handler = {
        "serve": _serve,
        "check-config": _check_config,
        "plugins": _plugins,
        "events": _operator("events"),
        "replay": _operator("replay"),
        "prune": _operator("prune"),
        "migrate": _migrate,
        "send": _send,
    }[args.command]
    if args.command != "serve":  # serve sets up its own logging; here: warnings, to stderr
        from receiver.logs import configure_logging

        configure_logging("console", "warning")
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"receiver: configuration error: {exc}", file=sys.stderr)
        return 2
    except _Usage as exc:
        print(f"receiver {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
