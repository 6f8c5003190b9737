"""The ``receiver`` command: serve, check a configuration, list plugins; the operator
commands (events, replay, prune) are :mod:`receiver.operations`.

Every option also comes from a ``RECEIVER_*`` environment variable (the flag wins).
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from receiver.config import Config, duration, load_config, replace_config
from receiver.errors import ConfigError
from receiver.journal import STATES
from receiver.logs import get_logger

if TYPE_CHECKING:
    import asyncio

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

    prune = commands.add_parser(
        "prune", help="delete old done, rejected, recovered and dead entries"
    )
    with_config(prune)
    prune.add_argument("--older-than", type=_age, required=True, help="e.g. 30d")
    prune.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    return parser


def _age(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s`` (or plain seconds) -> seconds
    (:func:`receiver.config.duration`)."""
    try:
        return duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30d, 12h or 90s") from None


def _load(
    args: argparse.Namespace, *, standalone: bool = False, channel_secrets: bool = True
) -> Config:
    """The configuration, with the command line's overrides.

    ``standalone``: as ``receiver serve`` runs it: metrics on, and the SQLite journal
    under ``state_dir`` unless the configuration says otherwise. ``channel_secrets``
    False: for commands that never serve (the channels' keys need not be set).
    """
    config = load_config(args.config, channel_secrets=channel_secrets)
    if args.plugins_dir:
        config = replace_config(config, plugins_dir=args.plugins_dir)
    if standalone:
        journal = config.journal
        if journal is None:
            journal = f"sqlite:///{os.path.abspath(os.path.join(config.state_dir, 'receiver.db'))}"
        config = replace_config(config, metrics=True, journal=journal)
    return config


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
    config = _load(args, standalone=True)
    if args.workers > 1 and config.journal != "none":
        raise ConfigError(
            "the SQLite journal serves one process: use --workers 1, or journal = 'none'"
        )
    app = create_app(config)  # fail here, in the parent, on any configuration error
    _refuse_unwritable_journal(app)
    http_protocol = _server_limits(config)
    if log_format == "console":  # in JSON, every line is JSON: the "serving" line says it
        print(f"receiver listening on http://{args.host}:{args.port}", file=sys.stderr)
        print(_channel_table(config), file=sys.stderr, flush=True)
    log.info(
        "serving",
        url=f"http://{args.host}:{args.port}",
        channels={name: channel.provider for name, channel in config.channels.items()},
        workers=args.workers,
        journal=config.journal,
    )
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
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
        if args.config:
            os.environ[_WORKER_CONFIG] = os.path.abspath(args.config)
        if args.plugins_dir:
            os.environ[_WORKER_PLUGINS_DIR] = os.path.abspath(args.plugins_dir)
        uvicorn.run("receiver.cli:worker_app", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(app, **options)
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
    """The app of one ``serve --workers N`` worker, built from the environment."""
    from receiver.app import create_app
    from receiver.logs import configure_logging

    configure_logging(_env("LOG_FORMAT"), _env("LOG_LEVEL", "info"))
    config = load_config(os.environ.get(_WORKER_CONFIG))
    _server_limits(config, worker=True)
    plugins_dir = os.environ.get(_WORKER_PLUGINS_DIR) or config.plugins_dir
    return create_app(replace_config(config, metrics=True, plugins_dir=plugins_dir))


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
        return command(args, _load(args, standalone=True, channel_secrets=False))

    return run


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
    }[args.command]
    if args.command != "serve":  # serve sets up its own logging; here: warnings, to stderr
        from receiver.logs import configure_logging

        configure_logging("console", "warning")
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"receiver: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
