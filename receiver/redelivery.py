"""Redelivery: what happens to a stored event after its callback was answered.

Resume (events a previous process committed but never handled), retries with backoff
(``retry_delays``, calling only the plugins that failed), dead letters (out of
attempts), and replay (an operator's ``receiver replay``) share one path,
:meth:`Redelivery.retry`. It needs a journal and a dispatcher, not an ASGI app: the CLI
builds one on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Collection, Sequence

import structlog

from receiver.dispatch import Dispatcher
from receiver.errors import HandlerError, HandlerTimeout
from receiver.events import Event
from receiver.journal import Entry, Journal

__all__ = ["Redelivery"]

log = structlog.get_logger()


class Redelivery:
    """Retries, resume and replay of journaled events.

    Args:
        journal: Where the events are.
        dispatcher: Calls the plugins.
        retry_delays: Seconds before each retry after a failure; after the last, the
            event is a dead letter.
        started: Events received before this time (seconds since the epoch) and not
            handled are a dead process's, resumed by :meth:`start`'s worker (default:
            now: later ones belong to live requests).
    """

    poll_interval = 1.0
    """Seconds between looks for due retries."""

    def __init__(
        self,
        journal: Journal,
        dispatcher: Dispatcher,
        retry_delays: Sequence[float],
        *,
        started: float | None = None,
    ) -> None:
        self.journal = journal
        self.dispatcher = dispatcher
        self.retry_delays = list(retry_delays)
        self.started = time.time() if started is None else started
        self._worker: asyncio.Task[None] | None = None

    async def failed(
        self, event: Event, error: str, plugins: Collection[str] | None, *, attempt: int
    ) -> None:
        """Record that attempt number ``attempt`` at ``event`` failed: retried after the
        next delay, or a dead letter when there is none."""
        delays = self.retry_delays
        retry_at = time.time() + delays[attempt - 1] if attempt <= len(delays) else None
        await self.journal.fail(event.id, error, list(plugins) if plugins else None, retry_at)
        if retry_at is None:
            log.error("dead letter: out of attempts", event_id=event.id, attempts=attempt)

    async def retry(self, entry: Entry, *, all_plugins: bool = False) -> bool:
        """Dispatch a journal entry again (resume, retry or replay); True when it succeeded.

        A retry calls only the plugins that failed, unless ``all_plugins``. A reply that
        comes now cannot go back in the HTTP response any more: it goes to ``send_reply``.
        """
        event = entry.event
        if event is None:
            return False
        only = None if all_plugins else entry.failed_plugins
        try:
            reply = await self.dispatcher.dispatch(event, only)
        except (HandlerError, HandlerTimeout) as exc:
            plugins = exc.plugins if isinstance(exc, HandlerError) else only
            await self.failed(event, str(exc), plugins, attempt=entry.attempts + 1)
            return False
        await self.journal.complete(event.id, reply)
        if reply is not None and not await self.dispatcher.send_reply(event, reply):
            log.warning("late reply dropped: no send_reply plugin took it", event_id=event.id)
        log.info("retried", event_id=event.id, attempt=entry.attempts + 1)
        return True

    def start(self) -> None:
        """Start the worker once (at start-up, or at the first callback when mounted)."""
        if self._worker is None or self._worker.done():
            # A context of its own: started by a callback (a mounted app), the worker
            # would otherwise carry that request's id into every retry's log lines.
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), context=contextvars.Context()
            )

    async def stop(self) -> None:
        """Stop the worker (what it was dispatching is retried at the next start)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def _work(self) -> None:
        journal = self.journal
        try:
            while batch := await journal.unfinished(before=self.started):
                for entry in batch:
                    await self.retry(entry)
            while True:
                for entry in await journal.due(time.time()):
                    await self.retry(entry)
                await asyncio.sleep(self.poll_interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("journal worker stopped")
