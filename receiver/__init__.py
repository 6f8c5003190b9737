"""receiver: one well-made endpoint for SMS and messaging platforms' callbacks."""

# The names below are imported on first use (PEP 562), so that importing a submodule
# alone (receiver.testing, which pytest loads in every run where receiver is installed)
# does not import the app, Starlette and the providers.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from receiver.app import create_app
    from receiver.config import Channel, Config, Expanded, Secret, load_config
    from receiver.errors import ConfigError, PayloadError, UnsupportedPayload
    from receiver.events import Contact, Event, EventType, Reply
    from receiver.hookspecs import hookimpl
    from receiver.logs import get_logger
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
    "get_logger",
    "hookimpl",
    "load_config",
]
__version__ = "0.1.0"

_WHERE = {
    "create_app": "receiver.app",
    "Channel": "receiver.config",
    "Config": "receiver.config",
    "Expanded": "receiver.config",
    "Secret": "receiver.config",
    "load_config": "receiver.config",
    "ConfigError": "receiver.errors",
    "PayloadError": "receiver.errors",
    "UnsupportedPayload": "receiver.errors",
    "Contact": "receiver.events",
    "Event": "receiver.events",
    "EventType": "receiver.events",
    "Reply": "receiver.events",
    "hookimpl": "receiver.hookspecs",
    "get_logger": "receiver.logs",
    "blocking": "receiver.plugins",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'receiver' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
