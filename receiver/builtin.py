"""The built-in plugin: registers the Whispir, OnePoint and DIY providers."""

from __future__ import annotations

from receiver.hookspecs import hookimpl
from receiver.providers import DiyProvider, OnePointProvider, Provider, WhispirProvider


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [WhispirProvider, OnePointProvider, DiyProvider]
