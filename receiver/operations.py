"""The operator commands: ``receiver events``, ``replay`` and ``prune``.

They read the journal of the same configuration as ``receiver serve``, with the channels'
current parsers and plugins, and without an ASGI app: each runs in an event loop of its
own (:func:`_operate`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec

from receiver.codings import decode_content
from receiver.config import Config
from receiver.endpoint import CallbackEndpoint
from receiver.errors import ConfigError, PayloadError
from receiver.events import Event
from receiver.journal import Entry, Journal
from receiver.logs import get_logger
from receiver.redelivery import Redelivery

__all__ = ["events", "prune", "replay", "replay_entries", "unloaded_plugins"]

log = get_logger(__name__)


def _journal(config: Config) -> tuple[CallbackEndpoint, Journal]:
    """The configuration's endpoint (its channels' parsers, its redelivery) and journal,
    without an ASGI app."""
    endpoint = CallbackEndpoint.from_config(config)
    if endpoint.journal is None:
        raise ConfigError("journal = 'none': there is no journal to read")
    return endpoint, endpoint.journal


# C0 controls but newline and tab, DEL and C1 controls: a sender's text reaches the
# operator's terminal, where ESC or CSI sequences would move the cursor, recolour or hide.
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), *range(0x7F, 0xA0))
    if code not in (0x09, 0x0A)
}


def _safe(text: str) -> str:
    """``text`` with terminal control characters written as ``\\xNN``."""
    return text.translate(_CONTROLS)


def _when(timestamp: float) -> str:
    """ISO-8601 UTC, to the second: ``2026-12-01T02:25:30Z`` (every time an operator
    command prints)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# JSON escapes C0 controls itself; DEL and C1 controls it leaves as they are.
_JSON_CONTROLS = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}


def _json_line(data: object) -> str:
    """``data`` as one line of JSON with no terminal control character left in it."""
    return msgspec.json.encode(data).decode().translate(_JSON_CONTROLS)


ERROR_WIDTH = 60
"""Characters of the last error the ``receiver events`` listing shows."""


def _error_cell(entry: Entry) -> str:
    """The listing's error column: the last failure kept (``Type: message``), else the
    entry's error (a rejected body's reason), on one line, cut to :data:`ERROR_WIDTH`;
    none for an entry handled since (done, recovered: ``events show`` has its history)."""
    if entry.state in ("done", "recovered"):
        return "-"
    text = entry.last_error or entry.error
    if not text:
        return "-"
    text = _one_line(text)
    return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 3] + "..."


def _one_line(text: str) -> str:
    """``text`` with its line breaks and tabs as spaces (other controls are left to
    :func:`_safe`)."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")


def _listed(entry: Entry) -> dict[str, object]:
    """What ``receiver events --json`` prints of an entry: no body, times ISO-8601."""
    return {
        "id": entry.id,
        "received_at": _when(entry.received_at),
        "channel": entry.channel,
        "provider": entry.provider,
        "type": entry.type,
        "state": entry.state,
        "attempts": entry.attempts,
        "message_id": entry.message_id,
        "next_attempt_at": _when(entry.next_attempt_at) if entry.next_attempt_at else None,
        "failed_plugins": entry.failed_plugins,
        "error": entry.error,
        "last_error": entry.last_error,
        "recovered_as": entry.recovered_as,
    }


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


def events(args: argparse.Namespace, config: Config) -> int:
    _, journal = _journal(config)
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
        for key in ("received_at", "next_attempt_at"):
            if shown.get(key) is not None:
                shown[key] = _when(shown[key])
        shown["event"] = msgspec.to_builtins(entry.event) if entry.event else None
        if shown["event"]:
            shown["event"].pop("raw", None)
        print(_safe(msgspec.json.format(msgspec.json.encode(shown), indent=2).decode()))
        attempts = await journal.attempts(entry.id)
        if attempts:
            print("--- attempts ---")
        for attempt in attempts:
            where = attempt.plugin or "-"
            if attempt.hook:
                where += f" ({attempt.hook})"
            print(
                _safe(
                    f"attempt {attempt.attempt}  {_when(attempt.at)}  {where}  "
                    f"{attempt.error_type}: {attempt.message}"
                )
            )
            if attempt.traceback:
                lines = attempt.traceback.splitlines()
                print(_safe("\n".join("    " + line if line else "" for line in lines)))
        print("--- raw body ---")
        print(_safe(entry.raw.decode("utf-8", "replace")))
        return 0
    since = time.time() - args.since if args.since else None
    entries = await journal.entries(
        channel=args.channel, type=args.type, state=args.state, since=since, limit=args.limit
    )
    if args.json:
        for entry in entries:
            print(_json_line(_listed(entry)))
        return 0
    rows: list[tuple[str, ...]] = [
        ("id", "received (UTC)", "channel", "type", "state", "tries", "message_id", "error")
    ]
    rows += [
        tuple(
            _safe(_one_line(cell))  # escaped before aligning, one line each
            for cell in (
                e.id,
                _when(e.received_at),
                e.channel,
                e.type or "-",
                e.state,
                str(e.attempts),
                e.message_id or "-",
                _error_cell(e),
            )
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def replay(args: argparse.Namespace, config: Config) -> int:
    """Dispatch entries again; re-parse rejected bodies (``--rejected`` or their ids).

    A rejected entry whose body the current parser of its channel now reads is recorded
    as a new event (the normal duplicate check included) and dispatched, and becomes
    ``recovered``, naming that event, in the same transaction: a second run finds nothing
    to do. One that still does not parse stays ``rejected``. Exit status 1 when an entry
    failed (handlers raised, or a body still does not parse), also with ``--dry-run``.
    """
    endpoint, journal = _journal(config)
    if not (args.ids or args.dead or args.failed or args.since or args.rejected):
        raise ConfigError("replay what? give IDs, --dead, --failed, --rejected or --since")
    return _operate(journal, lambda: _replay_chosen(args, endpoint, journal))


async def _replay_chosen(
    args: argparse.Namespace, endpoint: CallbackEndpoint, journal: Journal
) -> int:
    """Choose the entries ``args`` names, then replay them (or say what would be done)."""
    since = time.time() - args.since if args.since else None
    chosen: dict[str, Entry] = {}
    if args.ids:
        chosen.update((e.id, e) for e in await journal.entries(ids=args.ids, limit=None))
        missing = set(args.ids) - chosen.keys()
        if missing:
            print(f"no journal entries: {', '.join(sorted(missing))}", file=sys.stderr)
            return 1
    wanted_states = ("dead", args.dead), ("failed", args.failed), ("reply_failed", args.failed)
    for state, wanted in wanted_states:
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
    unloaded = unloaded_plugins(endpoint, entries)
    if unloaded and not args.only_loaded:
        for entry_id, names in unloaded.items():
            print(
                f"replay refused: {entry_id} failed in {', '.join(names)}, not loaded here",
                file=sys.stderr,
            )
        print(
            "load the plugins serve loads (plugins_dir or plugins in the configuration, or "
            "--plugins-dir), or replay with the loaded ones only: --only-loaded",
            file=sys.stderr,
        )
        return 2
    for entry in ordered:
        if entry.state == "recovered":  # asked for by id
            print(f"{entry.id} was recovered already, as {entry.recovered_as}")
    if args.dry_run:
        for entry in entries:
            print(f"would replay {entry.id} {entry.channel} {entry.type} ({entry.state})")
        still = 0
        for entry in rejects:
            parsed = _reparse_or_say(endpoint, entry)
            if parsed is None:
                still += 1
            else:
                print(f"would recover {entry.id} {entry.channel} {parsed[0].type}")
        print(f"{len(entries)} entries")
        if rejects:
            print(f"{len(rejects) - still} rejected entries would be recovered, {still} not")
        return 1 if still else 0
    return await _replay_all(endpoint, journal, entries, rejects)


def unloaded_plugins(endpoint: CallbackEndpoint, entries: list[Entry]) -> dict[str, list[str]]:
    """Entry id -> the plugins it failed in (``failed_plugins``) that are not loaded now:
    replaying without them would mark the entry done with its failed work never redone."""
    unloaded = {}
    for entry in entries:
        missing = endpoint.dispatcher.missing(
            entry.plugins_to_retry, entry.reply_pending is not None
        )
        if missing:
            unloaded[entry.id] = missing
    return unloaded


def _reparse(endpoint: CallbackEndpoint, entry: Entry) -> tuple[Event, str | None]:
    """A rejected entry's event and provider key, by its channel's current parser.

    The content type is the stored request's. A GET callback's fields were in the query:
    its entry keeps that query (without the key parameter) as the raw body, marked
    ``meta["raw"] = "query"`` (entries stored before that have a blank body and the query
    in the meta; older ones hold ``auth=REDACTED``, which the parsers ignore).
    """
    route = endpoint.channels.get(entry.channel)
    if route is None:
        raise ConfigError(f"channel {entry.channel!r} is not configured")
    from_query = entry.meta.get("raw") == "query"
    body = entry.raw
    coding = entry.meta.get("content-encoding")  # kept encoded: its coding was refused
    if coding is not None and not from_query:
        body = decode_content(body, coding.encode("latin-1"), endpoint.max_body)
    event: Event = route.provider.parse(
        b"" if from_query else body,
        content_type=entry.meta.get("content-type"),
        query=entry.raw.decode("latin-1") if from_query else entry.meta.get("query", ""),
        channel=entry.channel,
        received_at=datetime.fromtimestamp(entry.received_at, UTC),
    )
    return event, route.provider.dedupe_key(event)


def _reparse_or_say(endpoint: CallbackEndpoint, entry: Entry) -> tuple[Event, str | None] | None:
    """:func:`_reparse`, or None after saying why the entry is still rejected."""
    try:
        return _reparse(endpoint, entry)
    except Exception as exc:
        print(f"still rejected {entry.id} {entry.channel}: {_reason(exc)}")
        return None


def _reason(exc: Exception) -> str:
    """Why a body still does not parse, without echoing it: a parser's own one-line
    message (PayloadError, ConfigError), otherwise only the exception's type."""

    if isinstance(exc, PayloadError | ConfigError):
        return str(exc)
    return f"the parser raised {type(exc).__name__}"


async def _replay_all(
    endpoint: CallbackEndpoint, journal: Journal, entries: list[Entry], rejects: list[Entry]
) -> int:
    redelivery = endpoint.redelivery
    assert redelivery is not None  # a journal is on
    await journal.start()
    # The events this command records (recovered bodies) are its own while it handles
    # them: its lease is renewed meanwhile, and a server sharing the journal takes them
    # over only if this command dies.
    lease = asyncio.get_running_loop().create_task(_hold_lease(redelivery))
    failed = still = recovered = 0
    left: list[str] = []
    show_progress = sys.stderr.isatty()

    def progress(done: int) -> None:
        if show_progress:
            print(f"\rreplayed {done}/{len(entries)}", end="", file=sys.stderr, flush=True)

    try:
        outcomes = await replay_entries(endpoint, entries, progress)
        failed = sum(1 for succeeded in outcomes.values() if succeeded is False)
        if show_progress and entries:
            print(file=sys.stderr)
        left = [entry_id for entry_id, succeeded in outcomes.items() if succeeded is None]
        for entry_id in left:
            print(f"{entry_id} is being handled by another process (or was just): left alone")
        for entry in rejects:
            parsed = _reparse_or_say(endpoint, entry)
            if parsed is None:
                still += 1
                continue
            event, key = parsed
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
            if await redelivery.retry(stored, all_plugins=True):
                print(f"recovered {entry.id} as {event.id} ({entry.channel} {event.type})")
            else:
                failed += 1
                print(
                    f"recovered {entry.id} as {event.id} ({entry.channel} {event.type}); "
                    "its handlers failed: it is retried like any failed event"
                )
    finally:
        timeouts = endpoint.config.reply_timeout, endpoint.config.handler_timeout
        await redelivery.stop(grace=max(timeouts))  # handlers past their timeout finish
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease
        await journal.stop()  # gives the lease up
    if entries or not rejects:
        also = f", {len(left)} left alone" if left else ""
        print(f"replayed {len(entries) - len(left)} entries, {failed} failed{also}")
    if rejects:
        print(f"recovered {recovered} of {len(rejects)} rejected entries, {still} still rejected")
    return 1 if failed or still else 0


async def _hold_lease(redelivery: Redelivery) -> None:
    """Renew the journal's lease, and the claims of what ``redelivery`` is replaying,
    every third of the lease until cancelled (failures logged)."""
    journal = redelivery.journal
    while True:
        await asyncio.sleep(journal.lease / 3)
        try:
            await journal.renew(redelivery.held())
        except Exception:
            log.exception("journal: renewing the lease failed")


async def replay_entries(
    endpoint: CallbackEndpoint,
    entries: list[Entry],
    progress: Callable[[int], None] | None = None,
) -> dict[str, bool | None]:
    """Dispatch ``entries`` again, oldest first, as ``receiver replay`` does (every plugin,
    :meth:`Redelivery.retry <receiver.redelivery.Redelivery.retry>` with ``all_plugins``);
    entry id -> True when it succeeded, False when it failed, None when it was left alone:
    each is claimed first (:meth:`Journal.claim <receiver.journal.Journal.claim>`), and one
    that another process is retrying or has handled since it was read, or that is being
    handled (``received``), is not dispatched a second time. The caller refuses first
    what :func:`unloaded_plugins` names, and starts the journal (the console: serve's
    own). ``progress`` is told how many are done after each."""
    redelivery = endpoint.redelivery
    assert redelivery is not None  # a journal is on
    outcomes: dict[str, bool | None] = {}
    for done, entry in enumerate(sorted(entries, key=lambda e: e.received_at), 1):
        outcomes[entry.id] = await redelivery.replay(entry)
        if outcomes[entry.id] is None:
            log.info("replay: left alone, handled elsewhere", event_id=entry.id)
        if progress is not None:
            progress(done)
    return outcomes


_PRUNED = ("done", "rejected", "recovered", "dead")
"""The states ``prune`` deletes (as :meth:`Journal.prune` says): never one still to handle."""


def prune(args: argparse.Namespace, config: Config) -> int:
    _, journal = _journal(config)

    async def prune() -> int:
        cutoff = time.time() - args.older_than
        if args.dry_run:
            entries = await journal.entries(limit=None)
            old = [e for e in entries if e.received_at < cutoff and e.state in _PRUNED]
            for entry in old:
                print(f"would prune {entry.id} {entry.channel} {entry.type or '-'} ({entry.state})")
            print(f"would prune {len(old)} entries")
            return 0
        removed = await journal.prune(cutoff)
        print(f"pruned {removed} entries")
        return 0

    return _operate(journal, prune)
