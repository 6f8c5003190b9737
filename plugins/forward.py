"""Re-post every normalized event as JSON to another HTTP service.

Off unless the configuration has its table::

    [settings.forward]
    url = "http://127.0.0.1:9000/events"          # http or https
    timeout = 5                                   # seconds; optional, default 5
    headers = { Authorization = "Bearer ${FORWARD_TOKEN}" }   # optional

Each event is POSTed as ``msgspec.json.encode(event)`` (the field names of
:class:`receiver.Event`; ``raw`` is base64, for a GET callback the query without the
``auth = "query"`` key parameter; datetimes ISO 8601) with
``Content-Type: application/json``. A connection failure, a timeout or any answer other
than 2xx (redirects are not followed) makes the hook raise: the provider is answered 500
and may retry (with a ``journal``, it gets 200 and receiver retries the forward), so the
target may get an event twice: de-duplicate on ``id`` (receiver's own retries keep it) or on
``message_id`` and ``type`` (a provider's retry is a new callback). Logs name the URL
without its credentials or query string, and never a header value. Uses only the
standard library (``urllib.request``), in a worker thread.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import structlog

from receiver import Config, ConfigError, Event, blocking, hookimpl

log = structlog.get_logger()

NAME = "forward"
USER_AGENT = "receiver-forward/1"

_url: str | None = None
_safe_url = ""
_timeout = 5.0
_headers: dict[str, str] = {}


class ForwardError(Exception):
    """The event could not be forwarded (the message names the URL, never headers)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would turn a redirected POST into a GET without the body: refuse instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects())


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@hookimpl
def configure(config: Config) -> None:
    global _url, _safe_url, _timeout, _headers
    _url, _safe_url, _timeout, _headers = None, "", 5.0, {}
    settings = config.settings.get(NAME)
    if settings is None:
        log.info("plugin off: no settings table", plugin=NAME, table=f"settings.{NAME}")
        return
    where = f"settings.{NAME}"
    unknown = sorted(set(settings) - {"url", "timeout", "headers"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    url = settings.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"{where}.url: must be an http:// or https:// URL")
    if not urlsplit(url).hostname:
        raise ConfigError(f"{where}.url: has no host")
    timeout = settings.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"{where}.timeout: must be a positive number of seconds")
    headers = settings.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError(f'{where}.headers: must be a table of Header-Name = "value"')
    _url, _safe_url, _timeout, _headers = url, _redact(url), float(timeout), dict(headers)
    if _timeout >= config.reply_timeout:
        log.warning(
            "forward timeout not below reply_timeout: replies may time out first",
            plugin=NAME,
            timeout=_timeout,
            reply_timeout=config.reply_timeout,
        )
    log.info("plugin on", plugin=NAME, url=_safe_url, timeout=_timeout, headers=sorted(_headers))


@hookimpl
@blocking
def on_event(event: Event) -> None:
    if _url is None:
        return
    request = urllib.request.Request(
        _url,
        data=msgspec.json.encode(event),
        headers={"User-Agent": USER_AGENT, **_headers, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _opener.open(request, timeout=_timeout) as response:
            status = response.status
            response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        reason = f"answered {exc.code}"
    except (OSError, ValueError) as exc:  # URLError, refused, timeout, bad response
        reason = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    else:
        if 200 <= status < 300:
            log.debug("event forwarded", plugin=NAME, url=_safe_url, event_id=event.id)
            return
        reason = f"answered {status}"
    log.error("forward failed", plugin=NAME, url=_safe_url, event_id=event.id, reason=reason)
    raise ForwardError(f"forward to {_safe_url} failed: {reason}")
