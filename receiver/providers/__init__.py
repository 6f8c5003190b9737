"""The built-in providers: Whispir, OnePoint Global and DIY Surveys."""

from receiver.providers.base import Provider
from receiver.providers.onepoint import DiyProvider, OnePointProvider
from receiver.providers.whispir import WhispirProvider

__all__ = ["DiyProvider", "OnePointProvider", "Provider", "WhispirProvider"]
