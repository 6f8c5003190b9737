"""The old home of the event model and the payload errors (kept as an alias).

The event model is :mod:`receiver.events`; the errors are :mod:`receiver.errors`. New
code imports from there, or from :mod:`receiver`.
"""

from receiver.errors import PayloadError, UnsupportedPayload
from receiver.events import Contact, Event, EventType, Reply, new_event_id

__all__ = [
    "Contact",
    "Event",
    "EventType",
    "PayloadError",
    "Reply",
    "UnsupportedPayload",
    "new_event_id",
]
