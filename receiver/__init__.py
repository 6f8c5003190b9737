"""receiver: one well-made endpoint for SMS and messaging platforms' callbacks."""

from receiver.app import create_app
from receiver.config import Channel, Config, Expanded, Secret, load_config
from receiver.errors import ConfigError, PayloadError, UnsupportedPayload
from receiver.events import Contact, Event, EventType, Reply
from receiver.hookspecs import hookimpl
from receiver.plugins import blocking

__all__ = [
    "Channel",
    "Config",
    "ConfigError",
    "Contact",
    "Event",
    "EventType",
    "Expanded",
    "PayloadError",
    "Reply",
    "Secret",
    "UnsupportedPayload",
    "blocking",
    "create_app",
    "hookimpl",
    "load_config",
]
__version__ = "0.1.0"
