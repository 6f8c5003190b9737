"""receiver: one well-made endpoint for SMS and messaging platforms' callbacks."""

from receiver.types import Contact, Event, EventType, PayloadError, UnsupportedPayload

__all__ = ["Contact", "Event", "EventType", "PayloadError", "UnsupportedPayload"]
__version__ = "0.1.0"
