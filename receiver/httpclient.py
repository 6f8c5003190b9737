"""What receiver's own HTTP requests share (first-party plugins, ``receiver send``):
an opener that follows no redirect, and URLs as they may be logged.

Standard library only (``urllib.request``): these requests are few and run in worker
threads, and it keeps the dependencies to the foundation.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "urlopen"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would turn a redirected POST into a GET without the body: refuse instead
    (a 3xx answer is then an ``HTTPError``)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


urlopen: Callable[..., Any] = urllib.request.build_opener(_NoRedirects()).open
"""``urllib.request.urlopen`` that follows no redirect: ``urlopen(request, timeout=s)``."""


def redact(url: str) -> str:
    """``url`` as it may be logged: scheme, host, port and path; no user, password,
    query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
