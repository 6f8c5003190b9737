"""The supervisor of ``receiver serve --workers N``: uvicorn's, with one change.

uvicorn's supervisor (``uvicorn/supervisors/multiprocess.py``) stops every worker as soon
as one exits with its startup failure status, taking that for a broken configuration that
would fail the same way at every start. For receiver a worker can also fail to start for
a while: a replacement (after a crash, or during ``kill -HUP``) whose PostgreSQL journal
refuses connections during a restart or a fail-over. Stopping the workers that serve would
close the port for good (callbacks refused: Whispir does not send them again).

:class:`Supervisor` stops everything only when no other worker runs (at the first start,
or when every worker failed): then ``serve`` exits :data:`WORKER_FAILED`. While another
worker runs, it starts the failed one again after a pause that doubles from
:attr:`Supervisor.retry_min` up to :attr:`Supervisor.retry_max` seconds.
"""

from __future__ import annotations

import math
import time
from socket import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from receiver.logs import get_logger

__all__ = ["WORKER_FAILED", "Supervisor"]

log = get_logger(__name__)

WORKER_FAILED = STARTUP_FAILURE
"""``serve``'s exit status when its workers could not start (uvicorn's startup failure,
3, as a single process that cannot start exits with)."""


class Supervisor(Multiprocess):
    """uvicorn's ``Multiprocess``; a worker that cannot start while another runs is
    started again later (see the module's text)."""

    retry_min = 1.0
    """Seconds before the first new start of a worker that could not start."""
    retry_max = 30.0
    """The longest pause between two starts of a worker that cannot start."""

    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.failed: int | None = None
        """The pid of the worker whose startup failure stopped them all, if one did."""
        self._again: dict[int, float] = {}  # a failed worker's slot -> when to start it
        self._pause: dict[int, float] = {}  # its slot -> the pause after its next failure
        self._started: dict[int, float] = {}  # a restarted slot -> when it was started

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        now = time.monotonic()
        for slot, process in enumerate(self.processes):
            if slot in self._again:
                if process.process.is_alive():  # replaced meanwhile (kill -HUP)
                    del self._again[slot]
                elif now >= self._again[slot]:
                    del self._again[slot]
                    self._start(slot)
                continue
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                # Its pause is forgotten once it has run longer than the longest pause (a
                # worker answers health checks while it starts: a slow failure too).
                if now - self._started.get(slot, -math.inf) > self.retry_max:
                    self._pause.pop(slot, None)
                continue
            process.kill()  # hung: killed
            process.join()
            if self.should_exit.is_set():
                return
            if process.exitcode != STARTUP_FAILURE:
                log.warning("worker process died: replaced", pid=process.pid)
                self._start(slot)
                continue
            if not self._others_run(slot):
                log.error("worker process could not start, and no other runs", pid=process.pid)
                self.failed = process.pid
                self.should_exit.set()
                return
            pause = self._pause.get(slot, self.retry_min)
            self._pause[slot] = min(pause * 2, self.retry_max)
            self._again[slot] = now + pause
            log.error(
                "worker process could not start (its log says why): the others serve; "
                "starting it again",
                pid=process.pid,
                in_s=pause,
            )

    def _others_run(self, slot: int) -> bool:
        return any(
            other.process.is_alive()
            for index, other in enumerate(self.processes)
            if index != slot and index not in self._again
        )

    def _start(self, slot: int) -> None:
        process = Process(self.config, self.sockets)
        process.start()
        self.processes[slot] = process
        self._started[slot] = time.monotonic()
