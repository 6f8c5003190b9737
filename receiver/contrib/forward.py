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

from urllib.parse import urlsplit

import msgspec

from receiver.config import Config, Secret
from receiver.errors import ConfigError
from receiver.events import Event
from receiver.hookspecs import hookimpl
from receiver.httpclient import NoAnswer, post, redact
from receiver.logs import get_logger
from receiver.plugins import blocking

__all__ = ["Forward", "ForwardError"]

log = get_logger(__name__)

USER_AGENT = "receiver-forward/1"


class ForwardError(Exception):
    """The event could not be forwarded (the message names the URL, never headers)."""


class Forward:
    """The ``forward`` plugin: one instance (and one target) per app."""

    name = "forward"

    class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        """``[settings.forward]``.

        Attributes:
            url: Where events are POSTed: an ``http://`` or ``https://`` URL.
            timeout: Seconds the whole exchange with the target may take, > 0.
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
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"{where}.url: no user or password in the URL: send them as a header "
                '(headers = { Authorization = "Basic ${FORWARD_BASIC}" })'
            )
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
        headers = {"User-Agent": USER_AGENT, **self.headers, "Content-Type": "application/json"}
        try:
            answer = post(self.url, msgspec.json.encode(event), headers, timeout=self.timeout)
        except NoAnswer as exc:
            reason = str(exc)
        else:
            if 200 <= answer.status < 300:
                log.debug("event forwarded", plugin=self.name, url=self.safe_url, event_id=event.id)
                return
            reason = f"answered {answer.status}"
        log.error(
            "forward failed", plugin=self.name, url=self.safe_url, event_id=event.id, reason=reason
        )
        raise ForwardError(f"forward to {self.safe_url} failed: {reason}")
