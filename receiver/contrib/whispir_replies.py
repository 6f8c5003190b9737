"""Send the replies to Whispir callbacks through Whispir's messages API (``send_reply``).

Whispir cannot take a reply in the HTTP response of its callback, so receiver hands a
reply that an ``on_message``/``on_keyword`` handler returned for a Whispir event to the
``send_reply`` hook. This plugin implements it: it POSTs a new message to the person who
wrote. Off unless the configuration has its table::

    [settings.whispir_replies]
    base_url = "https://api.au.whispir.com"     # your region's API host
    api_key = "${WHISPIR_API_KEY}"
    username = "${WHISPIR_USERNAME}"
    password = "${WHISPIR_PASSWORD}"
    workspace = "9A4C5521FFC7B15B"              # optional
    callback_id = "receiver"                    # optional: replies to the reply come back

What is implemented, and where each fact comes from
---------------------------------------------------

- **Endpoint.** ``POST {base_url}/workspaces/{workspace}/messages`` when ``workspace``
  is set (Whispir OpenAPI, github.com/whispir/openapi ``openapi.yaml`` v1.2.1, path
  ``/workspaces/{workspaceId}/messages``, operation "Send a message"; ``workspaceId``
  pattern ``^[A-F0-9]+``), else ``POST {base_url}/messages`` (the user's default
  workspace: whispir-callbacks.md, "Using Callbacks" and "Sending custom parameters in
  callback response"; the OpenAPI no longer lists this path).
- **Hosts.** ``https://api.{au,nz,ap,ap1,us,it,education}.whispir.com`` (OpenAPI
  ``servers``; whispir/openapi ``docs/Getting started/Domains-and-IP-addresses.md``).
  The seed document's ``https://api.whispir.com`` is the old global host.
- **Authentication.** Both an API key in the ``x-api-key`` header and HTTP Basic
  (``Authorization: Basic base64(username:password)``) on every request
  (whispir/openapi ``docs/Getting started/Authentication.md``, "API key as a header" and
  "Authorization header"; OpenAPI ``security: BasicAuth + ApiKeyAuth`` and the
  ``X-Api-Key`` header parameter of the operation). The seed document's
  ``?apikey=`` query parameter is the legacy form and is not used: a key in a URL ends
  up in access logs.
- **Media type.** ``Content-Type`` and ``Accept``:
  ``application/vnd.whispir.message-v1+json`` (whispir-callbacks.md, "Using Callbacks";
  whispir/openapi ``docs/Getting started/JSON-and-XML-headers.md``, "List of Whispir's
  VSMTs": without it the API answers XML).
- **Body.** The OpenAPI ``components.schemas.Message``: ``to`` and ``subject`` are
  required; ``body`` is the SMS text (subject and body share the 1570-character SMS
  limit), ``email: {"type": "text/plain", "body": ...}`` the email channel,
  ``callbackId`` "the identifier for the Callback to be invoked" and
  ``callbackParameters`` key-value pairs returned in the callbacks
  (whispir-callbacks.md and whispir-enhanced-callbacks.md, "Sending custom parameters
  in callback response").
- **Answer.** 202 Accepted (or 200/201) with a ``Location`` (OpenAPI responses of the
  operation; ``docs/Getting started/HTTP-response-codes.md``). 5xx, 429 and 408 are
  retried; other 4xx are not (400/401/403/404/405/413/415/422 do not get better by
  asking again at once), but they still fail the delivery, so with a journal the reply
  is kept and re-sent after each of ``retry_delays``.

A reply that could not be delivered makes ``send_reply`` raise :class:`WhispirReplyError`
(a failed delivery: receiver's journal keeps the reply and retries it). Within one call a
connection failure, a timeout, 5xx, 429 or 408 is retried ``retries`` times, after
``backoff``, doubling. A timeout may hide a message Whispir did send: a retry may then
send it twice (Whispir's messages API has no idempotency key); a reply this instance has
already sent for an event is not sent again (``send_reply`` is safe to call twice).

Redirects are not followed; answers are read up to 64 KiB. Logs name the URL without
credentials or query string, never a header value, a secret, the reply text or a full
address (the last 3 characters only). Standard library only (``urllib.request``), in a
worker thread (``@blocking``).
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import OrderedDict
from typing import Annotated, Any
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from receiver.config import Config, Secret
from receiver.errors import ConfigError
from receiver.events import Event, Reply
from receiver.hookspecs import hookimpl
from receiver.httpclient import NoAnswer, post, redact
from receiver.logs import get_logger
from receiver.plugins import blocking, known_channels

__all__ = ["MEDIA_TYPE", "Settings", "WhispirReplies", "WhispirReplyError"]

log = get_logger(__name__)

NAME = "whispir_replies"
MEDIA_TYPE = "application/vnd.whispir.message-v1+json"
"""Whispir's versioned media type of a message (JSON), sent as Content-Type and Accept."""
USER_AGENT = "receiver-whispir-replies/1"
MAX_ANSWER_BYTES = 64 * 1024
"""At most this much of an answer is read (it is never logged)."""
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
"""Answers retried within one call; any other non-2xx fails the call at once."""
WHISPIR_CALLBACK_WAIT = 60.0
"""Seconds Whispir waits for a callback's answer (whispir-callbacks.md, "Callback
Failures"); ``send_reply`` runs before the callback is answered, so its worst case
(``timeout * (retries + 1)`` plus the backoffs) should stay well below it."""
REMEMBERED = 4096
"""How many sent replies an instance remembers, so that a second call does not resend."""

_WORKSPACE = re.compile(r"[A-Fa-f0-9]+")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[settings.whispir_replies]`` table.

    Attributes:
        base_url: The region's API host, ``http(s)://`` (e.g.
            ``https://api.au.whispir.com``; also ``api.nz``, ``api.ap``, ``api.ap1``,
            ``api.us``, ``api.it``, ``api.education``). A path is kept as a prefix;
            no credentials or query in it. Required.
        api_key: The Whispir API key, sent as the ``x-api-key`` header. A secret:
            ``"${VAR}"`` or ``"file:/path"``. Required.
        username: The Whispir user for HTTP Basic authentication. A secret. Required.
        password: That user's password. A secret. Required.
        workspace: A workspace id (hex): messages are sent to
            ``/workspaces/<id>/messages``; unset: ``/messages`` (the default workspace).
        callback_id: The name of a Whispir callback to put on each sent message
            (``callbackId``), so that the person's answer to the reply comes back to a
            callback; unset: none (Whispir then sends no callback for answers).
        carry_parameters: With ``callback_id``, send the event's custom parameters
            (``callbackParameters``) back on the reply, so that the next answer carries
            them again. Default true.
        subject: The message's ``subject`` (Whispir requires the field; for SMS it is
            sent before the text, for email it is the subject line). Default: empty
            for SMS, ``"Re: your message"`` for email.
        timeout: Seconds one attempt may take in all (connecting, sending, the whole
            answer: an answer that trickles in is cut at this deadline).
            Positive; default 5. ``send_reply`` runs before the callback is answered
            and Whispir waits 60 s for that answer: a worst case (all attempts and
            backoffs) of 60 s or more is logged as a warning when the app is built.
        retries: Further attempts within one ``send_reply`` call after a connection
            failure, a timeout, 5xx, 429 or 408. 0 to 10; default 2.
        backoff: Seconds before the first such retry, doubling each time. 0 or more;
            default 0.5.
        channels: Only events that arrived on these receiver channels (names of
            ``[channels.<name>]``); unset: every Whispir channel.
    """

    base_url: str
    api_key: Secret
    username: Secret
    password: Secret
    workspace: str | None = None
    callback_id: str | None = None
    carry_parameters: bool = True
    subject: str | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    backoff: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    channels: list[str] | None = None


class WhispirReplyError(Exception):
    """A reply could not be sent through Whispir (the message names the URL without
    credentials or query, never a header, secret, address or the text)."""


class _Attempt(Exception):
    """One failed attempt: ``retryable`` says whether another may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


def _masked(address: str | None) -> str | None:
    """An address for a log line: its last 3 characters only."""
    if address is None:
        return None
    return "*" * max(len(address) - 3, 0) + address[-3:]


class WhispirReplies:
    """The ``whispir_replies`` plugin: one instance per app (no shared state).

    ``send_reply`` answers None (not mine) for an event of another provider, of a channel
    not in ``channels``, or of a medium it cannot send on (voice; unknown), so another
    implementation may take it; True once Whispir accepted the message (2xx); raises
    :class:`WhispirReplyError` when it could not be sent, or when the event has no
    address to reply to (a failure, never a silent success).
    """

    name = NAME
    Settings = Settings

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.channels: frozenset[str] | None = None
        self.url = ""
        self.safe_url = ""
        self.worst_case = 0.0
        """Seconds one ``send_reply`` call may take at most (all attempts, all waits)."""
        self._headers: dict[str, str] = {}
        self._sent: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._lock = threading.Lock()
        self.sleep = time.sleep
        """How retries wait (tests may replace it)."""

    @hookimpl
    def configure(self, config: Config) -> None:
        settings = config.settings.get(NAME)
        if settings is None:
            log.info("plugin off: no settings table", plugin=NAME, table=f"settings.{NAME}")
            return
        where = f"{config.source}: settings.{NAME}"
        if not isinstance(settings, Settings):  # registered by hand, settings not typed
            raise ConfigError(f"{where}: expected a table of Whispir settings")
        parts = urlsplit(settings.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}.base_url: must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(f"{where}.base_url: no credentials here (username, password)")
        if parts.query or parts.fragment:
            raise ConfigError(f"{where}.base_url: no query or fragment (api_key is a header)")
        if settings.workspace is not None and not _WORKSPACE.fullmatch(settings.workspace):
            raise ConfigError(f"{where}.workspace: must be a Whispir workspace id (hex)")
        for field in ("api_key", "username", "password"):
            if not getattr(settings, field):
                raise ConfigError(f"{where}.{field}: must not be empty")
        if ":" in settings.username:
            raise ConfigError(f"{where}.username: HTTP Basic does not allow ':' in it")
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        if settings.workspace is not None:
            self.url = f"{base}/workspaces/{quote(settings.workspace, safe='')}/messages"
        else:
            self.url = f"{base}/messages"
        self.safe_url = redact(self.url)
        basic = base64.b64encode(f"{settings.username}:{settings.password}".encode()).decode()
        self._headers = {
            "User-Agent": USER_AGENT,
            "Authorization": f"Basic {basic}",
            "x-api-key": settings.api_key,
            "Content-Type": MEDIA_TYPE,
            "Accept": MEDIA_TYPE,
        }
        self.channels = known_channels(config, settings.channels, f"{where}.channels")
        self.settings = settings
        self.worst_case = settings.timeout * (settings.retries + 1) + settings.backoff * (
            2**settings.retries - 1
        )
        if self.worst_case >= WHISPIR_CALLBACK_WAIT:
            log.warning(
                "whispir_replies may take longer than Whispir waits for the callback's answer",
                plugin=NAME,
                worst_case=self.worst_case,
                whispir_waits=WHISPIR_CALLBACK_WAIT,
            )
        log.info(
            "plugin on",
            plugin=NAME,
            url=self.safe_url,
            callback_id=settings.callback_id,
            timeout=settings.timeout,
            retries=settings.retries,
            channels=settings.channels,
        )

    def message(self, event: Event, reply: Reply) -> dict[str, Any] | None:
        """The Whispir message for ``reply`` (None: not a medium this plugin sends on).

        Raises:
            WhispirReplyError: nobody to send it to.
        """
        assert self.settings is not None
        settings = self.settings
        to = reply.destination or event.source
        if not to:
            log.warning("whispir reply has no address to go to", plugin=NAME, event_id=event.id)
            raise WhispirReplyError(f"event {event.id}: no address to reply to")
        medium = event.medium
        if medium is None and event.sender is not None:  # the channel was not given
            medium = "sms" if to == event.sender.mobile else None
            medium = "email" if to == event.sender.email else medium
        if medium == "sms":
            message: dict[str, Any] = {
                "to": to,
                "subject": settings.subject if settings.subject is not None else "",
                "body": reply.text,
            }
        elif medium == "email":
            message = {
                "to": to,
                "subject": settings.subject if settings.subject is not None else "Re: your message",
                "email": {"type": "text/plain", "body": reply.text},
            }
        else:
            log.warning(
                "whispir reply not sent: medium not supported",
                plugin=NAME,
                event_id=event.id,
                medium=event.medium,
            )
            return None
        if settings.callback_id is not None:
            message["callbackId"] = settings.callback_id
            if settings.carry_parameters and event.custom:
                message["callbackParameters"] = dict(event.custom)
        if reply.source is not None or reply.when is not None:
            log.warning(
                "whispir reply: source and when are not supported; sent now, from the account",
                plugin=NAME,
                event_id=event.id,
            )
        if reply.extra:
            message.update(reply.extra)  # other Message fields, as given (e.g. label)
        return message

    @hookimpl
    @blocking
    def send_reply(self, event: Event, reply: Reply) -> bool | None:
        settings = self.settings
        if settings is None or event.provider != "whispir":
            return None
        if self.channels is not None and event.channel not in self.channels:
            return None
        message = self.message(event, reply)
        if message is None:
            return None
        data = msgspec.json.encode(message)
        key = (event.id, data)
        with self._lock:
            if key in self._sent:
                log.info("whispir reply already sent", plugin=NAME, event_id=event.id)
                return True
        bound = log.bind(
            plugin=NAME, url=self.safe_url, event_id=event.id, to=_masked(message["to"])
        )
        delay = settings.backoff
        for attempt in range(1, settings.retries + 2):
            try:
                location = self._post(data, settings.timeout)
            except _Attempt as failed:
                last_attempt = attempt > settings.retries or not failed.retryable
                bound.warning(
                    "whispir reply attempt failed",
                    attempt=attempt,
                    reason=failed.reason,
                    retrying=not last_attempt,
                )
                if last_attempt:
                    bound.error("whispir reply not sent", attempts=attempt, reason=failed.reason)
                    raise WhispirReplyError(
                        f"whispir reply to {self.safe_url} failed after {attempt} "
                        f"attempt(s): {failed.reason}"
                    ) from None
                self.sleep(delay)
                delay *= 2
            else:
                with self._lock:
                    self._sent[key] = None
                    while len(self._sent) > REMEMBERED:
                        self._sent.popitem(last=False)
                bound.info("whispir reply sent", attempts=attempt, location=location)
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, data: bytes, timeout: float) -> str | None:
        """One POST; the message's Location (redacted) when Whispir accepted it.

        Raises:
            _Attempt: it was not accepted.
        """
        try:
            answer = post(
                self.url, data, self._headers, timeout=timeout, max_bytes=MAX_ANSWER_BYTES
            )
        except NoAnswer as exc:  # refused, reset, timed out, a broken answer
            raise _Attempt(str(exc), retryable=True) from None
        status = answer.status  # an answer's text may echo the message: never logged
        if not 200 <= status < 300:
            raise _Attempt(f"answered {status}", retryable=status in RETRYABLE_STATUS)
        location = answer.headers.get("location")
        return redact(location) if location else None
