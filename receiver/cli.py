"""The ``receiver`` command: serve, check a configuration, list plugins.

Every option also comes from a ``RECEIVER_*`` environment variable (the flag wins).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from receiver.config import Config, load_config
from receiver.errors import ConfigError

__all__ = ["main"]

log = structlog.get_logger()

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
    return parser


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.plugins_dir:
        config = msgspec.structs.replace(config, plugins_dir=args.plugins_dir)
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

    configure_logging(args.log_format, args.log_level)
    config = msgspec.structs.replace(_load(args), metrics=True)
    app = create_app(config)  # fail here, in the parent, on any configuration error
    print(f"receiver listening on http://{args.host}:{args.port}", file=sys.stderr)
    print(_channel_table(config), file=sys.stderr, flush=True)
    log.info(
        "serving",
        url=f"http://{args.host}:{args.port}",
        channels={name: channel.provider for name, channel in config.channels.items()},
        workers=args.workers,
    )
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "access_log": False,  # the receiver logs each callback itself, without secrets
        "proxy_headers": False,  # trusted_proxies are applied by the app itself
        "log_config": None,
        "timeout_graceful_shutdown": args.shutdown_timeout,
        "server_header": False,
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


def _exit_cleanly(signum: int, frame: object) -> None:
    log.info("stopped", signal=signal.Signals(signum).name)
    sys.exit(0)


def worker_app() -> Any:
    """The app of one ``serve --workers N`` worker, built from the environment."""
    from receiver.app import create_app
    from receiver.logs import configure_logging

    configure_logging(_env("LOG_FORMAT"), _env("LOG_LEVEL", "info"))
    config = load_config(os.environ.get(_WORKER_CONFIG))
    plugins_dir = os.environ.get(_WORKER_PLUGINS_DIR)
    return create_app(
        msgspec.structs.replace(config, metrics=True, plugins_dir=plugins_dir or config.plugins_dir)
    )


def _check_config(args: argparse.Namespace) -> int:
    from receiver.app import create_app

    config = _load(args)
    create_app(config)  # providers, plugins and channel options are checked too
    print(f"{args.config or os.environ.get('RECEIVER_CONFIG') or 'receiver.toml'}: ok")
    print(_channel_table(config))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from receiver.app import create_app
    from receiver.plugins import describe

    app = create_app(_load(args))
    for name, hooks in describe(app.state.plugin_manager):
        print(f"{name}: {', '.join(hooks) if hooks else '(no hooks)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``receiver`` console script."""
    args = _parser().parse_args(argv)
    handler = {"serve": _serve, "check-config": _check_config, "plugins": _plugins}[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"receiver: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
