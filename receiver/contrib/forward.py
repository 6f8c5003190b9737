"""Re-post every normalized event as JSON to another HTTP service.

On in an app whose configuration has its table::

    [settings.forward]
    url = "http://127.0.0.1:9000/events"          # http or https
    timeout = 5                                   # seconds; optional, default 5
    headers = { Authorization = "Bearer ${FORWARD_TOKEN}" }   # optional; secrets

Each event is POSTed as ``msgspec.json.encode(event)`` (the field names of
:class:`receiver.Event`; ``raw`` is base64, for a GET callback the query without the
``auth = "query"`` key parameter; datetimes ISO 8601) with
``Content-Type: application/json``. A connection failure, a timeout or any answer other
than 2xx (redirects are not followed) makes the hook raise: the provider is answered 500
and may retry (with a ``journal``, it gets 200 and receiver retries the forward), so the
target may get an event twice: de-duplicate on ``id`` (receiver's own retries keep it) or on
``message_id`` and ``type`` (a provider's retry is a new callback). Logs name the URL
without its credentials or query string, and never a header value. Header values are
secrets: ``${NAME}`` and ``file:/path`` are expanded in them. Uses only the standard
library (``urllib.request``), in a worker thread.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from receiver.config import Config, Secret
from receiver.errors import ConfigError
from receiver.events import Event
from receiver.hookspecs import hookimpl
from receiver.logs import get_logger
from receiver.plugins import blocking

__all__ = ["Forward", "ForwardError", "redact", "urlopen"]

log = get_logger(__name__)

USER_AGENT = "receiver-forward/1"


class ForwardError(Exception):
    """The event could not be forwarded (the message names the URL, never headers)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would turn a redirected POST into a GET without the body: refuse instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


urlopen = urllib.request.build_opener(_NoRedirects()).open
"""``urllib``'s ``urlopen`` that follows no redirect (a 3xx is an :class:`HTTPError`)."""


def redact(url: str) -> str:
    """``url`` as it may be logged: scheme, host, port and path; no credentials, query or
    fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Forward:
    """The ``forward`` plugin: one instance (and one target) per app."""

    name = "forward"

    class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        """``[settings.forward]``.

        Attributes:
            url: Where events are POSTed: an ``http://`` or ``https://`` URL.
            timeout: Seconds to wait for the target (connect and each read), > 0.
            headers: Extra request headers, ``Header-Name = "value"``; values are
                :data:`~receiver.Secret` (never logged).
        """

        url: str
        timeout: float = 5.0
        headers: dict[str, Secret] = {}

    def __init__(self) -> None:
        self.url: str | None = None
        self.safe_url = ""
        self.timeout = 5.0
        self.headers: dict[str, str] = {}

    @hookimpl
    def configure(self, config: Config) -> None:
        settings = config.settings.get(self.name)
        if not isinstance(settings, self.Settings):
            return
        where = f"{config.source}: settings.{self.name}"
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https"):
            raise ConfigError(f"{where}.url: must be an http:// or https:// URL")
        if not parts.hostname:
            raise ConfigError(f"{where}.url: has no host")
        if not settings.timeout > 0:
            raise ConfigError(f"{where}.timeout: must be a positive number of seconds")
        self.url, self.safe_url = settings.url, redact(settings.url)
        self.timeout, self.headers = settings.timeout, dict(settings.headers)
        if self.timeout >= config.reply_timeout:
            log.warning(
                "forward timeout not below reply_timeout: replies may time out first",
                plugin=self.name,
                timeout=self.timeout,
                reply_timeout=config.reply_timeout,
            )
        log.info(
            "plugin on",
            plugin=self.name,
            url=self.safe_url,
            timeout=self.timeout,
            headers=sorted(self.headers),
        )

    @hookimpl
    @blocking
    def on_event(self, event: Event) -> None:
        if self.url is None:
            return
        request = urllib.request.Request(
            self.url,
            data=msgspec.json.encode(event),
            headers={"User-Agent": USER_AGENT, **self.headers, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urlopen(request, timeout=self.timeout) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            reason = f"answered {exc.code}"
        except (OSError, ValueError) as exc:  # URLError, refused, timeout, bad response
            reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        else:
            if 200 <= status < 300:
                log.debug("event forwarded", plugin=self.name, url=self.safe_url, event_id=event.id)
                return
            reason = f"answered {status}"
        log.error(
            "forward failed", plugin=self.name, url=self.safe_url, event_id=event.id, reason=reason
        )
        raise ForwardError(f"forward to {self.safe_url} failed: {reason}")
