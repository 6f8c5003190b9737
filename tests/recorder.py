"""A plugin that records every event dispatched to it: the tests' view of dispatch.

Imported as ``from recorder import EventRecorder`` (pytest puts this folder on
``sys.path`` for the test modules in it, as for ``samples``).
"""

from __future__ import annotations

from receiver import Event, hookimpl


class EventRecorder:
    """Records each event its ``on_event`` is called with, in order, in :attr:`events`."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)
