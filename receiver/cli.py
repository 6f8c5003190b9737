"""The ``receiver`` command: serve, check a configuration, list plugins.

Every option also comes from a ``RECEIVER_*`` environment variable (the flag wins).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from receiver.codings import decode_content
from receiver.config import Config, load_config
from receiver.errors import ConfigError
from receiver.events import Event
from receiver.journal import STATES, Entry, Journal

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

    events = commands.add_parser("events", help="list journal entries, or show one")
    with_config(events)
    events.add_argument("show", nargs="*", metavar="show ID", help="'show ID': one entry in full")
    events.add_argument("--channel")
    events.add_argument("--type")
    events.add_argument("--status", choices=STATES)
    events.add_argument("--since", type=_age, help="e.g. 2h, 7d, 30m, 90s")
    events.add_argument("--limit", type=int, default=50)

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

    prune = commands.add_parser(
        "prune", help="delete old done, rejected, recovered and dead entries"
    )
    with_config(prune)
    prune.add_argument("--older-than", type=_age, required=True, help="e.g. 30d")
    return parser


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _age(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s`` (or plain seconds) -> seconds."""
    unit = _UNITS.get(text[-1:].lower())
    try:
        return float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age like 30d, 12h or 90s") from None


def _load(args: argparse.Namespace, *, standalone: bool = False) -> Config:
    """The configuration, with the command line's overrides.

    ``standalone``: as ``receiver serve`` runs it: metrics on, and the SQLite journal
    under ``state_dir`` unless the configuration says otherwise.
    """
    config = load_config(args.config)
    if args.plugins_dir:
        config = msgspec.structs.replace(config, plugins_dir=args.plugins_dir)
    if standalone:
        journal = config.journal
        if journal is None:
            journal = f"sqlite:///{os.path.abspath(os.path.join(config.state_dir, 'receiver.db'))}"
        config = msgspec.structs.replace(config, metrics=True, journal=journal)
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
    config = _load(args, standalone=True)
    if args.workers > 1 and config.journal != "none":
        raise ConfigError(
            "the SQLite journal serves one process: use --workers 1, or journal = 'none'"
        )
    app = create_app(config)  # fail here, in the parent, on any configuration error
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
    plugins_dir = os.environ.get(_WORKER_PLUGINS_DIR) or config.plugins_dir
    return create_app(msgspec.structs.replace(config, metrics=True, plugins_dir=plugins_dir))


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


def _journal(args: argparse.Namespace) -> tuple[Any, Journal]:
    from receiver.app import create_app

    app = create_app(_load(args, standalone=True))
    journal: Journal | None = app.state.journal
    if journal is None:
        raise ConfigError("journal = 'none': there is no journal to read")
    return app, journal


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _operate(journal: Journal, work: Callable[[], Awaitable[int]]) -> int:
    """Run an operator command's ``work`` in an event loop of its own; stop the journal after.

    The journal is not started first: starting it creates a missing journal file, and an
    operator command reads or prunes only a journal that is there (a mistyped path is a
    configuration error). A write starts the journal's writer on demand, and
    :func:`_replay_all` starts it itself.
    """

    async def run() -> int:
        try:
            return await work()
        finally:
            await journal.stop()

    return asyncio.run(run())


def _events(args: argparse.Namespace) -> int:
    _, journal = _journal(args)
    return _operate(journal, lambda: _list_events(args, journal))


async def _list_events(args: argparse.Namespace, journal: Journal) -> int:
    if args.show:
        if args.show[0] != "show" or len(args.show) != 2:
            raise ConfigError("usage: receiver events show ID")
        found = await journal.entries(ids=[args.show[1]], limit=1)
        if not found:
            print(f"no journal entry {args.show[1]}", file=sys.stderr)
            return 1
        entry = found[0]
        shown = msgspec.to_builtins(msgspec.structs.replace(entry, raw=b"", event=None))
        shown.pop("raw")
        shown["event"] = msgspec.to_builtins(entry.event) if entry.event else None
        if shown["event"]:
            shown["event"].pop("raw", None)
        print(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode())
        print("--- raw body ---")
        print(entry.raw.decode("utf-8", "replace"))
        return 0
    since = time.time() - args.since if args.since else None
    entries = await journal.entries(
        channel=args.channel, type=args.type, state=args.status, since=since, limit=args.limit
    )
    rows = [("id", "received (UTC)", "channel", "type", "state", "tries", "message_id")]
    rows += [
        (
            e.id,
            _when(e.received_at),
            e.channel,
            e.type or "-",
            e.state,
            str(e.attempts),
            e.message_id or "-",
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _replay(args: argparse.Namespace) -> int:
    """Dispatch entries again; re-parse rejected bodies (``--rejected`` or their ids).

    A rejected entry whose body the current parser of its channel now reads is recorded
    as a new event (the normal duplicate check included) and dispatched, and becomes
    ``recovered``, naming that event, in the same transaction: a second run finds nothing
    to do. One that still does not parse stays ``rejected``. Exit status 1 when an entry
    failed (handlers raised, or a body still does not parse), also with ``--dry-run``.
    """
    app, journal = _journal(args)
    if not (args.ids or args.dead or args.failed or args.since or args.rejected):
        raise ConfigError("replay what? give IDs, --dead, --failed, --rejected or --since")
    return _operate(journal, lambda: _replay_chosen(args, app, journal))


async def _replay_chosen(args: argparse.Namespace, app: Any, journal: Journal) -> int:
    """Choose the entries ``args`` names, then replay them (or say what would be done)."""
    since = time.time() - args.since if args.since else None
    chosen: dict[str, Entry] = {}
    if args.ids:
        chosen.update((e.id, e) for e in await journal.entries(ids=args.ids, limit=None))
        missing = set(args.ids) - chosen.keys()
        if missing:
            print(f"no journal entries: {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    for state, wanted in (("dead", args.dead), ("failed", args.failed)):
        if wanted:
            chosen.update((e.id, e) for e in await journal.entries(state=state, limit=None))
    if since is not None and not args.rejected:
        chosen.update((e.id, e) for e in await journal.entries(since=since, limit=None))
    if args.rejected:
        rejected = await journal.entries(state="rejected", since=since, limit=None)
        chosen.update((e.id, e) for e in rejected)
    ordered = sorted(chosen.values(), key=lambda e: e.received_at)
    entries = [e for e in ordered if e.event is not None]
    rejects = [e for e in ordered if e.state == "rejected"]
    for entry in ordered:
        if entry.state == "recovered":  # asked for by id
            print(f"{entry.id} was recovered already, as {entry.recovered_as}")
    if args.dry_run:
        for entry in entries:
            print(f"would replay {entry.id} {entry.channel} {entry.type} ({entry.state})")
        still = 0
        for entry in rejects:
            try:
                event, _ = _reparse(app, entry)
            except Exception as exc:
                still += 1
                print(f"still rejected {entry.id} {entry.channel}: {_reason(exc)}")
            else:
                print(f"would recover {entry.id} {entry.channel} {event.type}")
        print(f"{len(entries)} entries")
        if rejects:
            print(f"{len(rejects) - still} rejected entries would be recovered, {still} not")
        return 1 if still else 0
    return await _replay_all(app, journal, entries, rejects)


def _reparse(app: Any, entry: Entry) -> tuple[Event, str | None]:
    """A rejected entry's event and provider key, by its channel's current parser.

    The content type is the stored request's. A GET callback's fields were in the query:
    its entry keeps that (redacted) query as the raw body, marked ``meta["raw"] =
    "query"`` (entries stored before that have a blank body and the query in the meta).
    """
    route = app.state.endpoint.channels.get(entry.channel)
    if route is None:
        raise ConfigError(f"channel {entry.channel!r} is not configured")
    from_query = entry.meta.get("raw") == "query"
    body = entry.raw
    coding = entry.meta.get("content-encoding")  # kept encoded: its coding was refused
    if coding is not None and not from_query:
        body = decode_content(body, coding.encode("latin-1"), app.state.config.max_body_bytes)
    event: Event = route.provider.parse(
        b"" if from_query else body,
        content_type=entry.meta.get("content-type"),
        query=entry.raw.decode("latin-1") if from_query else entry.meta.get("query", ""),
        channel=entry.channel,
        received_at=datetime.fromtimestamp(entry.received_at, UTC),
    )
    return event, route.provider.dedupe_key(event)


def _reason(exc: Exception) -> str:
    """Why a body still does not parse, without echoing it: a parser's own one-line
    message (PayloadError, ConfigError), otherwise only the exception's type."""
    from receiver.errors import PayloadError

    if isinstance(exc, PayloadError | ConfigError):
        return str(exc)
    return f"the parser raised {type(exc).__name__}"


async def _replay_all(
    app: Any, journal: Journal, entries: list[Entry], rejects: list[Entry]
) -> int:
    endpoint = app.state.redelivery
    await journal.start()
    failed = still = recovered = 0
    show_progress = sys.stderr.isatty()
    try:
        for done, entry in enumerate(entries, 1):
            if not await endpoint.retry(entry, all_plugins=True):
                failed += 1
            if show_progress:
                print(f"\rreplayed {done}/{len(entries)}", end="", file=sys.stderr, flush=True)
        if show_progress and entries:
            print(file=sys.stderr)
        for entry in rejects:
            try:
                event, key = _reparse(app, entry)
            except Exception as exc:
                still += 1
                print(f"still rejected {entry.id} {entry.channel}: {_reason(exc)}")
                continue
            recorded = await journal.recover(entry.id, event, entry.meta, key)
            if recorded is None:
                print(f"{entry.id} is not rejected any more: left alone")
                continue
            recovered += 1
            if recorded.duplicate_of is not None:
                print(
                    f"recovered {entry.id}: a duplicate of {recorded.duplicate_of} "
                    f"({recorded.state}), not dispatched"
                )
                continue
            (stored,) = await journal.entries(ids=[event.id], limit=1)
            if await endpoint.retry(stored, all_plugins=True):
                print(f"recovered {entry.id} as {event.id} ({entry.channel} {event.type})")
            else:
                failed += 1
                print(
                    f"recovered {entry.id} as {event.id} ({entry.channel} {event.type}); "
                    "its handlers failed: it is retried like any failed event"
                )
    finally:
        await journal.stop()
    if entries or not rejects:
        print(f"replayed {len(entries)} entries, {failed} failed")
    if rejects:
        print(f"recovered {recovered} of {len(rejects)} rejected entries, {still} still rejected")
    return 1 if failed or still else 0


def _prune(args: argparse.Namespace) -> int:
    _, journal = _journal(args)

    async def prune() -> int:
        removed = await journal.prune(time.time() - args.older_than)
        print(f"pruned {removed} entries")
        return 0

    return _operate(journal, prune)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``receiver`` console script."""
    args = _parser().parse_args(argv)
    handler = {
        "serve": _serve,
        "check-config": _check_config,
        "plugins": _plugins,
        "events": _events,
        "replay": _replay,
        "prune": _prune,
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
