"""Redelivery: what happens to a stored event after its callback was answered.

Take-over (events a process that is gone committed but never handled: a previous
process, or another one sharing the journal whose lease ran out), retries with backoff
(``retry_delays``, calling only the plugins that failed), dead letters (out of
attempts), and replay (an operator's ``receiver replay``) share one path,
:meth:`Redelivery.retry`. It needs a journal and a dispatcher, not an ASGI app: the CLI
builds one on its own.

With a journal, nothing a handler produced is lost:

- a reply that ``send_reply`` could not deliver is stored with its event
  (``reply_failed``) and only its delivery is retried, with the same backoff and dead
  letter as a failed handler (:meth:`Redelivery.finished`);
- handlers past their timeout are not interrupted (:meth:`Redelivery.dispatch`): they go
  on in a task kept here, and their outcome is recorded when they finish (done, a late
  reply to ``send_reply``; failed, retried), never run twice at once; :meth:`stop` waits
  for them a while, then leaves them to the next start;
- the worker survives any one entry's failure (logged; the entry is retried later), and
  :meth:`problem` says so if the worker ever stops (``/readyz``).

What failed is kept per attempt in the journal (each plugin's exception type, message and
traceback; a timeout; a ``send_reply`` that raised): ``receiver events show ID``.

Ownership (several processes on one journal, :mod:`receiver.journal`): a second task, the
lease keeper, renews this process's lease every third of :attr:`Journal.lease
<receiver.journal.Journal.lease>` (keeping the claims on retries still running) and takes
over the unfinished entries of owners that are gone, which the worker then handles. It is
a task of its own so that a long batch of retries never delays a renewal.

The worker also keeps the journal to its ``retention`` (pruning at start, then every
:attr:`Redelivery.prune_interval`, in a task of its own: a prune of many batches never
holds up the retries), and tells an :class:`Observer` (the app's metrics)
of retries, dead letters, undelivered replies and, every
:attr:`Redelivery.backlog_interval` at most, the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from receiver.dispatch import Dispatcher, Running
from receiver.errors import Failure, HandlerError, HandlerTimeout
from receiver.events import Event, Reply
from receiver.journal import Entry, Journal
from receiver.logs import get_logger

__all__ = ["Observer", "Redelivery"]


class Observer(Protocol):
    """Told what redelivery does (:class:`receiver.metrics.Metrics` is one)."""

    def retried(self, channel: str) -> None:
        """The worker dispatches a failed entry again (or re-sends its reply)."""

    def dead_letter(self, channel: str) -> None:
        """An entry ran out of attempts."""

    def reply_undelivered(self, channel: str) -> None:
        """``send_reply`` raised: a reply was not delivered (kept for a retry)."""

    def backlog(self, count: int) -> None:
        """Entries still to handle or deliver: failed and reply_failed in the journal,
        and the received ones being handled."""

    def journal_commit(self, seconds: float) -> None:
        """A journal transaction took ``seconds`` (called by the journal's writer thread)."""


log = get_logger(__name__)


class Redelivery:
    """Retries, resume and replay of journaled events.

    Args:
        journal: Where the events are.
        dispatcher: Calls the plugins.
        retry_delays: Seconds before each retry after a failure; after the last, the
            event is a dead letter.
        retention: Seconds: the worker prunes done, rejected, recovered and dead entries
            received longer ago than this (None: never).
    """

    poll_interval = 1.0
    """Seconds between looks for due retries."""
    prune_interval = 3600.0
    """Seconds between the worker's prunes (with a ``retention``)."""
    backlog_interval = 5.0
    """Least seconds between two counts of the backlog (with an :attr:`observer`)."""
    sweep_interval = 60.0
    """Seconds between the lease keeper's looks for this process's stranded entries
    (:meth:`Journal.own_unfinished <receiver.journal.Journal.own_unfinished>`)."""
    stranded_after = 60.0
    """Seconds after its receipt from which a received entry of this process that nothing
    here handles is taken for stranded (younger ones may be between two steps of their
    handling); it is handled at the next sweep."""

    def __init__(
        self,
        journal: Journal,
        dispatcher: Dispatcher,
        retry_delays: Sequence[float],
        *,
        retention: float | None = None,
    ) -> None:
        self.journal = journal
        self.dispatcher = dispatcher
        self.retry_delays = list(retry_delays)
        self.retention = retention
        self.observer: Observer | None = None
        """Told of retries, dead letters, undelivered replies, the backlog (metrics)."""
        self.handling: Callable[[], int] = lambda: 0
        self.in_flight: Callable[[], Collection[str]] = tuple
        """The ids of the received events being handled now (the endpoint's)."""
        """How many received events are being handled now (the endpoint's count): the
        backlog's ``received`` part."""
        self._next_prune = 0.0
        self._next_count = 0.0
        self._worker: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()
        """Events whose handlers run on past their timeout (not retried meanwhile)."""
        self._retrying: str | None = None
        """The entry the worker is retrying now (its claim renewed with the lease)."""
        self._recheck: set[str] = set()
        """Events whose outcome could not be recorded, or whose record's fate is unknown
        (:meth:`recheck`): looked at again by the worker."""
        self._stopping = False
        """:meth:`stop` waits for late handlers: the lease is renewed, nothing taken over."""
        self._claimed: set[str] = set()
        """Due entries claimed and not retried yet (their claims renewed with the lease:
        a long batch must not let them fall due again for another process)."""
        self._taken: list[Entry] = []
        """Entries taken over from owners that are gone, for the worker to handle."""
        self._replaying: set[str] = set()
        """Entries a replay claimed and is dispatching (:meth:`replay`)."""
        self._woken = asyncio.Event()

    def _retry_at(self, attempt: int) -> float | None:
        delays = self.retry_delays
        return time.time() + delays[attempt - 1] if attempt <= len(delays) else None

    async def failed(
        self,
        event: Event,
        error: str,
        plugins: Collection[str] | None,
        *,
        attempt: int,
        failures: Sequence[Failure] = (),
        reply: Reply | None = None,
        delivered: bool = False,
    ) -> None:
        """Record that attempt number ``attempt`` at ``event`` failed (``failures``: what
        raised, kept with the attempt; ``reply``: one other plugins gave, kept, and still
        to deliver unless ``delivered``): retried after the next delay, or a dead letter
        when there is none."""
        retry_at = self._retry_at(attempt)
        await self.journal.fail(
            event.id,
            error,
            list(plugins) if plugins else None,
            retry_at,
            failures,
            reply,
            delivered,
        )
        if retry_at is None:
            log.error("dead letter: out of attempts", event_id=event.id, attempts=attempt)
            if self.observer is not None:
                self.observer.dead_letter(event.channel)

    async def partly_failed(
        self, event: Event, error: HandlerError, *, attempt: int, pending: Reply | None = None
    ) -> bool:
        """Some plugins raised (``error``); a reply the others gave (``error.reply``, or
        ``pending``, one kept from an earlier attempt) is handed to ``send_reply`` now, and
        kept with the failed entry if that raises. Then as :meth:`failed`: only the
        plugins that raised are retried. True when a reply was handed over and taken."""
        reply = error.reply if isinstance(error.reply, Reply) else pending
        failures = list(error.failures)
        delivered, taken = True, False
        if reply is not None:
            try:
                taken = await self.dispatcher.send_reply(event, reply)
                if not taken:
                    log.warning("reply dropped: no send_reply plugin took it", event_id=event.id)
            except HandlerError as exc:
                delivered = False
                failures += exc.failures
                if self.observer is not None:
                    self.observer.reply_undelivered(event.channel)
        await self.failed(
            event,
            str(error),
            error.plugins,
            attempt=attempt,
            failures=failures,
            reply=reply,
            delivered=delivered,
        )
        return taken

    async def undelivered(
        self,
        event: Event,
        reply: Reply,
        error: str,
        *,
        attempt: int,
        failures: Sequence[Failure] = (),
    ) -> None:
        """Record that attempt ``attempt`` handled ``event`` but could not deliver
        ``reply`` (``failures``: what ``send_reply`` raised): its delivery is retried after
        the next delay (a dead letter after the last)."""
        retry_at = self._retry_at(attempt)
        await self.journal.undelivered(event.id, reply, error, retry_at, failures)
        if self.observer is not None:
            self.observer.reply_undelivered(event.channel)
        if retry_at is None:
            log.error("dead letter: reply not delivered", event_id=event.id, attempts=attempt)
            if self.observer is not None:
                self.observer.dead_letter(event.channel)
        else:
            log.warning("reply not delivered: kept for a retry", event_id=event.id)

    async def finished(self, event: Event, reply: Reply | None, *, attempt: int) -> bool:
        """The handlers of ``event`` succeeded (attempt ``attempt``): hand ``reply`` to
        ``send_reply`` and record the event ``done``, or its reply undelivered when
        ``send_reply`` raised (:meth:`undelivered`); True when done."""
        if reply is not None:
            try:
                if not await self.dispatcher.send_reply(event, reply):
                    log.warning(
                        "late reply dropped: no send_reply plugin took it", event_id=event.id
                    )
            except HandlerError as exc:
                await self.undelivered(
                    event, reply, str(exc), attempt=attempt, failures=exc.failures
                )
                return False
        await self.journal.complete(event.id, reply)
        return True

    async def dispatch(
        self,
        event: Event,
        only: Collection[str] | None = None,
        *,
        attempt: int,
        after: Callable[[], None] | None = None,
        pending: Reply | None = None,
    ) -> Reply | None:
        """Dispatch ``event`` (attempt ``attempt``) without ever leaving its handlers
        running unrecorded (``pending``: a reply kept from an earlier attempt, delivered
        with the outcome if the handlers give none).

        Past the timeout the handlers are not interrupted: this raises
        :class:`HandlerTimeout` while they go on; when they finish, their outcome is
        recorded (:meth:`finished`: a reply goes to ``send_reply``; or :meth:`failed`)
        and ``after`` is called. Cancelled (shutdown), the handlers are cancelled too and
        the entry is left as it was, for the next start.

        Raises:
            HandlerError: an implementation raised (nothing recorded yet).
            HandlerTimeout: the time is up; the outcome is recorded later.
        """
        dispatcher = self.dispatcher
        if not dispatcher.plan(event.type).may_wait:
            return await dispatcher.dispatch(event, only)  # nothing that could time out
        running = dispatcher.start(event, only)
        try:
            return await running.wait()
        except HandlerTimeout:
            log.warning(
                "handlers still running after their timeout: outcome recorded when they finish",
                event_id=event.id,
                timeout=running.timeout,
            )
            self._running.add(event.id)
            task = asyncio.get_running_loop().create_task(
                self._settle(running, event, attempt, after, pending)
            )
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            raise
        except asyncio.CancelledError:
            running.task.cancel()
            raise

    async def _settle(
        self,
        running: Running,
        event: Event,
        attempt: int,
        after: Callable[[], None] | None,
        pending: Reply | None,
    ) -> None:
        """Wait for handlers past their timeout and record their outcome (cancelled at
        shutdown: the handlers are cancelled, the entry left for the next start)."""
        try:
            try:
                await self.journal.note(
                    event.id,
                    [
                        Failure(
                            at=time.time(),
                            plugin=None,
                            hook=None,
                            error_type="HandlerTimeout",
                            message=f"handlers took longer than {running.timeout:g} s: "
                            "left to finish, their outcome recorded then",
                        )
                    ],
                )
            except Exception:
                log.exception("journal: keeping the timeout failed", event_id=event.id)
            try:
                reply = await running.task
            except HandlerError as exc:
                await self.partly_failed(event, exc, attempt=attempt, pending=pending)
                return
            log.info("late handlers finished", event_id=event.id, attempt=attempt)
            await self.finished(event, reply or pending, attempt=attempt)
        except asyncio.CancelledError:
            running.task.cancel()
            with contextlib.suppress(Exception):  # a clean stop: not a death (_take_up)
                note = _note(_INTERRUPTED, "stopped by its process's shutdown, not a crash")
                await asyncio.shield(self.journal.note(event.id, [note]))
            raise
        except Exception:
            log.exception("recording late handlers' outcome failed", event_id=event.id)
        finally:
            self._running.discard(event.id)
            if after is not None:
                after()

    async def retry(self, entry: Entry, *, all_plugins: bool = False) -> bool:
        """Dispatch a journal entry again (resume, retry or replay); True when it succeeded.

        A retry calls only the plugins that failed, unless ``all_plugins``; an entry whose
        handlers succeeded but whose reply was not delivered (:attr:`Entry.reply_only`)
        has only its reply re-sent. A reply that comes now cannot go back in the HTTP
        response any more: it goes to ``send_reply``. Handlers past their timeout finish
        in the background (False now; their outcome is recorded then).
        """
        event = entry.event
        if event is None:
            return False
        attempt = entry.attempts + 1
        missing = (
            []
            if all_plugins
            else self.dispatcher.missing(entry.plugins_to_retry, entry.reply_pending is not None)
        )
        if missing:  # running without them would mark it done, their work never redone
            error = f"not loaded: {', '.join(missing)}"
            log.error("retry: a plugin it needs is not loaded", event_id=event.id, missing=missing)
            failure = Failure(
                at=time.time(), plugin=None, hook=None, error_type="PluginNotLoaded", message=error
            )
            await self.failed(
                event, error, entry.failed_plugins, attempt=attempt, failures=[failure]
            )
            return False
        if entry.reply_only and entry.reply is not None:
            if await self.finished(event, entry.reply, attempt=attempt):
                log.info("reply delivered", event_id=event.id, attempt=attempt)
                return True
            return False
        only = None if all_plugins else entry.plugins_to_retry
        pending = entry.reply_pending  # a reply kept from an earlier attempt, undelivered
        try:
            reply = await self.dispatch(event, only, attempt=attempt, pending=pending)
        except HandlerTimeout:
            return False
        except HandlerError as exc:
            await self.partly_failed(event, exc, attempt=attempt, pending=pending)
            return False
        if not await self.finished(event, reply or pending, attempt=attempt):
            return False
        log.info("retried", event_id=event.id, attempt=attempt)
        return True

    async def replay(self, entry: Entry) -> bool | None:
        """Claim ``entry`` (:meth:`Journal.claim <receiver.journal.Journal.claim>`) and
        dispatch it to every plugin, as ``receiver replay`` and the console do: True when
        it succeeded, False when it failed, None when it was left alone (this process or
        another is handling or retrying it, or has handled it since it was read). The
        claim is renewed with the lease for as long as the handlers run (:meth:`held`),
        so no retry worker takes the entry meanwhile."""
        if entry.id in self._busy() or not await self.journal.claim(entry):
            return None
        self._replaying.add(entry.id)
        try:
            return await self.retry(entry, all_plugins=True)
        finally:
            self._replaying.discard(entry.id)

    def held(self) -> set[str]:
        """The ids of the entries this process holds claims on, renewed with its lease:
        the retry in progress, due entries claimed and not retried yet, replays in
        progress, handlers running past their timeout, and entries whose new state the
        journal holds in memory (:meth:`Journal.unsettled
        <receiver.journal.Journal.unsettled>`: written when the database answers again)."""
        held = self._running | self._claimed | self._replaying
        held.update(self.journal.unsettled)
        if self._retrying is not None:
            held.add(self._retrying)
        return held

    def recheck(self, event_id: str) -> None:
        """Have the worker look at ``event_id`` again: a callback whose outcome could not
        be recorded (it stays ``received`` under this live process, which no one else
        takes over), or one answered 503 whose commit may have reached the journal. Once
        the journal answers, such an entry still ``received`` and this process's is
        handled (at least once); one not there is forgotten."""
        self._recheck.add(event_id)
        self.start()
        self._woken.set()

    async def _look_again(self) -> None:
        """The worker's look at :meth:`recheck`'s events (kept while the journal fails)."""
        for event_id in list(self._recheck):
            if event_id in self._running or event_id in self.journal.unsettled:
                continue
            try:
                found = await self.journal.entries(ids=[event_id], limit=1)
            except Exception:
                return  # the journal still fails: looked at again later
            self._recheck.discard(event_id)
            if found and found[0].state == "received" and found[0].event is not None:
                log.warning("handling a callback whose outcome was not recorded", event_id=event_id)
                await self._retry_safely(found[0])

    def start(self) -> None:
        """Start the worker and the lease keeper once (at start-up, or at the first
        callback when mounted)."""
        if self._worker is None or self._worker.done():
            # A context of its own: started by a callback (a mounted app), the worker
            # would otherwise carry that request's id into every retry's log lines.
            loop = asyncio.get_running_loop()
            self._woken = asyncio.Event()
            self._keeper = loop.create_task(self._keep_lease(), context=contextvars.Context())
            self._keeper.add_done_callback(_stopped)
            self._worker = loop.create_task(self._work(), context=contextvars.Context())
            self._worker.add_done_callback(_stopped)

    def problem(self) -> str | None:
        """None while the worker and the lease keeper run (or were never started), else
        why one stopped."""
        for task, name in ((self._worker, "retry worker"), (self._keeper, "lease keeper")):
            if task is None or not task.done() or task.cancelled():
                continue
            error = task.exception()
            return f"journal {name} stopped: {error!r}" if error else f"journal {name} stopped"
        return None

    async def stop(self, grace: float = 0.0) -> None:
        """Stop the worker (what it was dispatching is retried at the next start); give
        handlers running past their timeout ``grace`` seconds to finish and be recorded,
        then cancel them (their events are handled again at the next start). The lease
        is renewed meanwhile (nothing more is taken over): their entries stay this
        process's until they are recorded or it stops."""
        self._stopping = True
        try:
            await _cancel(self._worker)
            self._worker = None
            await _cancel(self._pruner)  # what it has not pruned yet: at the next start
            self._pruner = None
            late = list(self._late)
            if late:
                log.info("waiting for handlers past their timeout", count=len(late), grace=grace)
                _, pending = await asyncio.wait(late, timeout=grace) if grace > 0 else ((), late)
                for task in pending:
                    task.cancel()
                if pending:
                    log.warning(
                        "handlers still running at shutdown: handled again at the next start",
                        count=len(pending),
                    )
                    await asyncio.wait(pending)
        finally:
            await _cancel(self._keeper)
            self._keeper = None
            self._stopping = False

    def _busy(self) -> set[str]:
        """The ids of the entries something in this process is handling or will handle."""
        busy = {*self.in_flight(), *self._recheck, *self.held()}
        busy.update(entry.id for entry in self._taken)
        return busy

    async def _stranded(self) -> list[Entry]:
        """This owner's received entries, received more than :attr:`stranded_after`
        seconds ago, that nothing here is handling (never raises): what a lost answer or
        a database crash left it. Looked for while nothing changes hands: what was busy
        before the look or after it is left alone."""
        before = self._busy()
        try:
            mine = await self.journal.own_unfinished(time.time() - self.stranded_after)
        except Exception:
            log.exception("journal lease keeper: looking for this process's entries failed")
            return []
        busy = before | self._busy()
        return [entry for entry in mine if entry.id not in busy]

    async def _keep_lease(self) -> None:
        """Renew the lease every third of it; take over what owners that are gone left;
        every :attr:`sweep_interval`, and once the journal answers again after failing,
        look for this owner's own stranded entries (:meth:`_stranded`); all of it is
        handed to the worker. Never raises (logged): a journal that cannot be reached
        now is tried again at the next renewal."""
        journal = self.journal
        failing = False
        next_sweep = time.monotonic() + self.sweep_interval
        while True:
            taken: list[Entry] = []
            stranded: list[Entry] = []
            try:
                await journal.renew(self.held())
                if not self._stopping:
                    taken = await journal.take_over()
            except Exception:
                if not failing:  # once, not at every renewal while the journal is down
                    log.exception("journal lease keeper: renewing the lease failed")
                failing = True
            else:
                if failing:
                    log.info("journal lease renewed again")
                    failing = False
                    next_sweep = 0.0  # what it lost meanwhile: look now
                if not self._stopping and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval
                    known = {entry.id for entry in taken}
                    stranded = [e for e in await self._stranded() if e.id not in known]
                if taken:
                    log.warning(
                        "taking over unfinished work of a process that is gone",
                        entries=len(taken),
                    )
                if stranded:
                    log.warning(
                        "handling this process's unfinished entries that nothing handled "
                        "(a lost answer or a database crash)",
                        entries=len(stranded),
                    )
                if taken or stranded:
                    self._taken.extend(taken + stranded)
                    self._woken.set()
            await asyncio.sleep(journal.lease / 3)

    async def _work(self) -> None:
        while True:
            while self._taken:  # a gone owner's work first: it is the oldest
                entry = self._taken.pop(0)
                if entry.id not in self._running:
                    await self._take_up(entry)
            if self._recheck:
                await self._look_again()
            try:
                due = await self.journal.due(time.time())
            except Exception:
                log.exception("journal worker: reading the journal failed")
                due = []
            unsettled = self.journal.unsettled
            due = [entry for entry in due if entry.id not in unsettled]  # handled already
            self._claimed = {entry.id for entry in due}
            for entry in due:
                self._claimed.discard(entry.id)
                if entry.id not in self._running:
                    if self.observer is not None:
                        self.observer.retried(entry.channel)
                    await self._retry_safely(entry)
            await self._keep()
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._woken.wait()

    async def _keep(self) -> None:
        """The worker's housekeeping: prune past the retention (at start, then every
        :attr:`prune_interval`, in a task of its own; not while one runs); count the
        backlog for the observer (every :attr:`backlog_interval` at most). Never raises
        (logged)."""
        now = time.monotonic()
        pruning = self._pruner is not None and not self._pruner.done()
        if self.retention is not None and now >= self._next_prune and not pruning:
            # A task of its own: a big prune (many batches, a pause between them) never
            # holds up the retries.
            self._next_prune = now + self.prune_interval
            self._pruner = asyncio.get_running_loop().create_task(
                self._prune(self.retention), context=contextvars.Context()
            )
        if self.observer is not None and now >= self._next_count:
            self._next_count = now + self.backlog_interval
            try:
                self.observer.backlog(await self.journal.backlog() + self.handling())
            except Exception:
                log.exception("journal worker: counting the backlog failed")

    async def _prune(self, retention: float) -> None:
        """Prune what was received more than ``retention`` seconds ago (never raises:
        logged)."""
        try:
            pruned = await self.journal.prune(time.time() - retention)
        except Exception:
            log.exception("journal worker: pruning the journal failed")
        else:
            log.info("journal pruned", entries=pruned, retention_s=retention)

    async def _take_up(self, entry: Entry) -> None:
        """Handle ``entry``, taken over from a process that stopped or died (or found
        stranded), unless processes died dispatching it as often as it may be attempted:
        a callback whose handling kills the process (a crash in a plugin, the OOM killer)
        would otherwise take every process down in turn, for ever. Each such dispatch is
        noted first (``TakenUp``, kept with its attempts), and one cut short by this
        process's clean stop is noted ``Interrupted``; those noted and not interrupted
        are the dispatches a process died in. At least one more try is made (without
        retries configured, a process's crash alone makes no dead letter); an entry that
        only waited its turn in a process that died counts nothing."""
        if entry.event is None:
            return
        try:
            history = await self.journal.attempts(entry.id)
        except Exception:
            log.exception("journal worker: reading an entry's attempts failed", event_id=entry.id)
            history = []
        died = sum(1 for a in history if a.error_type == _TAKEN_UP) - sum(
            1 for a in history if a.error_type == _INTERRUPTED
        )
        if died >= max(len(self.retry_delays), 1):
            await self._died_handling(entry, died)
            return
        try:
            await self.journal.note(entry.id, [_note(_TAKEN_UP, "dispatched after a take-over")])
        except Exception:
            log.exception("journal worker: noting a take-over failed", event_id=entry.id)
        try:
            await self._retry_safely(entry)
        except asyncio.CancelledError:  # a clean stop: not a death
            with contextlib.suppress(Exception):
                note = _note(_INTERRUPTED, "stopped by its process's shutdown, not a crash")
                await asyncio.shield(self.journal.note(entry.id, [note]))
            raise

    async def _died_handling(self, entry: Entry, died: int) -> None:
        """``entry``'s dispatch ended its process ``died`` times: a dead letter, for an
        operator (never raises: logged)."""
        message = (
            f"its process died while handling it, {died + 1} time(s) counting the first: "
            "a dead letter, not dispatched again"
        )
        log.error("dead letter: its handling ends its process", event_id=entry.id)
        try:
            await self.journal.fail(entry.id, message, None, None, [_note("ProcessDied", message)])
        except Exception:
            log.exception("journal worker: recording the dead letter failed", event_id=entry.id)
        if self.observer is not None:
            self.observer.dead_letter(entry.channel)

    async def _retry_safely(self, entry: Entry) -> None:
        """:meth:`retry`, surviving anything it raises: logged, and the entry marked
        failed for a later attempt (a dead letter when out of attempts)."""
        self._retrying = entry.id
        try:
            await self.retry(entry)
        except Exception as exc:
            log.exception("journal worker: retry failed", event_id=entry.id)
            if entry.event is None:
                return
            failures = [Failure.of(exc)]
            try:
                if entry.reply_only and entry.reply is not None:
                    await self.undelivered(
                        entry.event,
                        entry.reply,
                        f"retry raised: {exc!r}",
                        attempt=entry.attempts + 1,
                        failures=failures,
                    )
                else:
                    await self.failed(
                        entry.event,
                        f"retry raised: {exc!r}",
                        entry.failed_plugins,
                        attempt=entry.attempts + 1,
                        failures=failures,
                    )
            except Exception:
                log.exception(
                    "journal worker: recording the failed retry failed", event_id=entry.id
                )
        finally:
            self._retrying = None


_TAKEN_UP = "TakenUp"
_INTERRUPTED = "Interrupted"


def _note(error_type: str, message: str) -> Failure:
    """A line kept with an entry's attempts that is no plugin's failure."""
    return Failure(at=time.time(), plugin=None, hook=None, error_type=error_type, message=message)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it (a dead one said why: :meth:`Redelivery.problem`)."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _stopped(worker: asyncio.Task[None]) -> None:
    if not worker.cancelled() and worker.exception() is not None:
        log.error("journal worker stopped", exc_info=worker.exception())
