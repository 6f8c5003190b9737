"""The operator console: what came in, why it failed, and a button to replay it.

Off unless the configuration has a ``[console]`` table; then :func:`mount` adds a Starlette
app under ``/console`` of the receiver app (README: Operator console). Pages: Events (the
journal, newest first, filtered and paged), one Event (normalized, raw, request meta,
attempts, reply, duplicates), Replay (one event, or the failed and dead ones of a filter,
confirmed first; the same code as ``receiver replay``) and Now (a live tail by
server-sent events, a chart of callbacks per minute by outcome).

The callback path: with the console off nothing of it exists. On, :meth:`Console.install`
wraps the endpoint's ``handle`` in one more await and a deque append per callback, for
the tail (and its ``_duplicate``, taken by duplicates only, to see their original);
the pages read the journal through :class:`~receiver.journal.Journal`, in bounded
look-ups, off the event loop.

Security: every page and endpoint answers 401 without the token (the login form, for a
browser); the token, typed once, becomes an HttpOnly SameSite=Strict cookie holding a
nonce and its HMAC under the token (Secure over https), never the token; a script sends
``Authorization: Bearer <token>``. Every POST from a cookie session carries a CSRF token
(an HMAC of the session's nonce; 403 without it). A strict Content-Security-Policy (no
inline script, nothing from elsewhere); templates autoescape every value; the script sets
text with ``textContent`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import msgspec
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from receiver.config import Console as ConsoleConfig
from receiver.endpoint import Answer, CallbackEndpoint
from receiver.errors import ConfigError, Outcome
from receiver.events import Event, EventType
from receiver.journal import OUTCOME_OF_STATE, STATES, Entry, Journal, Recorded, matches
from receiver.logs import get_logger
from receiver.operations import replay_entries, unloaded_plugins

__all__ = ["COOKIE", "Console", "mount"]

log = get_logger(__name__)

COOKIE = "receiver_console"
"""The session cookie: ``<nonce>.<HMAC-SHA256(token, "session:" + nonce)>``, the nonce
``<issued, Unix seconds>-<random>``."""
SESSION_SECONDS = 12 * 3600
"""How long a session lasts after logging in (then the token is asked again)."""
_LOGIN_COOKIE = "receiver_console_login"
"""The login form's CSRF cookie (double submit: the form's hidden field must match)."""

PAGE_SIZE = 50
SCAN = 5000
"""Most entries one Events look-up reads (:meth:`Journal.browse`)."""
REPLAY_MAX = 500
"""Most entries one Replay of a filter takes."""
TAIL = 64
"""Callbacks the tail keeps for a page that (re)connects."""
STREAM_SECONDS = 10.0
"""A server-sent events stream ends after this (the browser reconnects at once, with the
last id it saw): a shutdown never waits on an open console."""
KEEPALIVE_SECONDS = 4.0
SPANS = {"hour": 3600, "day": 86400}
OUTCOMES = ("accepted", "duplicate", "rejected", "failed")
COLOURS = {
    "accepted": "#2e7d32",
    "duplicate": "#1565c0",
    "rejected": "#ef6c00",
    "failed": "#c62828",
}
_time = time.time
_DUPLICATE = Outcome.duplicate
_SINCE = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
_FORBIDDEN_META = re.compile(r"auth|key|secret|token|signature|cookie|password", re.IGNORECASE)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
_STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _first_words(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[:width].rsplit(" ", 1)[0] or text[:width]
    return cut + "…"


def person(event: Event | None) -> str:
    """The person's address: the sender of what came in, else the recipient."""
    if event is None:
        return ""
    if event.inbound is False:
        return event.destination or event.source or ""
    return event.source or event.destination or ""


def _pretty_xml(text: str) -> str:
    """XML indented by its tags, without parsing it (no entity is expanded)."""
    out: list[str] = []
    depth = 0
    for token in re.findall(r"<[^>]*>|[^<]+", text):
        if token.startswith("<"):
            if token.startswith("</"):
                depth = max(depth - 1, 0)
                out.append("  " * depth + token)
            else:
                out.append("  " * depth + token)
                if not (token.endswith("/>") or token.startswith(("<?", "<!"))):
                    depth += 1
        elif token.strip():
            out.append("  " * depth + token.strip())
    return "\n".join(out)


def _same(given: str, expected: str | bytes) -> bool:
    """Constant-time comparison of a value from the request with the expected one, any
    characters (``hmac.compare_digest`` refuses non-ASCII ``str``: a 500 otherwise)."""
    if isinstance(expected, str):
        expected = expected.encode()
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


def raw_view(entry: Entry) -> tuple[str, Any]:
    """How to show an entry's raw body: ("json"|"xml"|"text", str) or ("form", pairs)."""
    content_type = entry.meta.get("content-type", "").lower()
    text = entry.raw.decode("utf-8", "replace")
    if entry.meta.get("raw") == "query" or "x-www-form-urlencoded" in content_type:
        return "form", urllib.parse.parse_qsl(text, keep_blank_values=True)
    stripped = text.lstrip()
    if "json" in content_type or stripped.startswith(("{", "[")):
        try:
            return "json", json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's stack
            pass
    if "xml" in content_type or stripped.startswith("<"):
        return "xml", _pretty_xml(text)
    return "text", text


Told = tuple[
    int,
    float,
    str,
    int,
    str,
    str | None,
    str,
    str | None,
    str | None,
    str | None,
    bool | None,
    str | None,
    str | None,
]
"""What the tail keeps of a callback: seq, time, channel, status, outcome, event id, type,
message id, source, destination, inbound, text, the original's id (a duplicate). Plain
values only, never the event: nothing of a request outlives it in the collector's care."""


def _session_key(nonce: str) -> bytes:
    """What the journal keeps of a logged-out session: a hash of its nonce (the nonce is
    no secret without its HMAC, but the journal needs no more than this)."""
    return hashlib.sha256(b"console-session:" + nonce.encode()).digest()


REPLAY_CONFIRM_SECONDS = 3600
"""How long a replay's confirmation page may wait for its click."""


def _replay_subject(nonce: str | None, issued: str, entries: list[Entry]) -> str:
    """What a replay's confirmation is bound to: the session, when, and each entry's id,
    state, attempts and next attempt."""
    state = sorted(f"{e.id}\0{e.state}\0{e.attempts}\0{e.next_attempt_at!r}" for e in entries)
    digest = hashlib.sha256("\n".join(state).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{nonce or ''}:{issued}:{digest}"


def _tail_item(item: Told) -> str:
    seq, at, channel, status, outcome, event_id, type_, message_id = item[:8]
    source, destination, inbound, text, original = item[8:]
    first, second = (destination, source) if inbound is False else (source, destination)
    who = first or second or ""
    journaled = event_id is not None and (outcome != "duplicate" or original is not None)
    return json.dumps(
        {
            "seq": seq,
            "at": _when(at),
            "channel": channel,
            "type": type_,
            "outcome": outcome,
            "status": status,
            "message_id": message_id or "",
            "person": who,
            "text": _first_words(text),
            "event_id": original or event_id or "",
            "journaled": journaled,
        }
    )


class Console:
    """The console of one app: its token, the tail, the pages (:attr:`app`)."""

    def __init__(self, config: ConsoleConfig, endpoint: CallbackEndpoint) -> None:
        if endpoint.journal is None:
            raise ConfigError("console: needs a journal (journal = 'none' turns it off)")
        self._token = config.token.encode()
        self.endpoint = endpoint
        self.journal: Journal = endpoint.journal
        self.recent: deque[Told] = deque(maxlen=TAIL)
        self.listeners: set[asyncio.Queue[Told]] = set()
        self.seq = 0
        self.duplicate_minutes: dict[int, int] = {}
        self.duplicates: dict[str, list[tuple[float, str]]] = {}
        """Original event id -> (time, the duplicate's id), seen by this process."""
        self._original: dict[str, str] = {}
        self._ended: dict[str, float] = {}
        """Sessions logged out (nonce -> when), until they would have expired anyway."""
        self.templates = Environment(
            loader=PackageLoader("receiver.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates.filters["when"] = _when
        self.templates.filters["first_words"] = _first_words
        self.templates.filters["person"] = person
        self.app = self._app()

    # -- the callback path (on only) ---------------------------------------------

    def install(self) -> None:
        """Hook the tail into the endpoint: its ``handle`` and ``_duplicate``."""
        handle = self.endpoint.handle
        tell = self.tell

        async def handle_and_tell(
            scope: Any, receive: Any, bound: Any, name: str, headers: Any
        ) -> Answer:
            answer = await handle(scope, receive, bound, name, headers)
            tell(name, answer)
            return answer

        # Only a duplicate takes this way (``_duplicate``): nothing for the others.
        duplicate = self.endpoint._duplicate
        noted = self._noted

        async def note_duplicate(bound: Any, event: Event, recorded: Recorded) -> Answer:
            if recorded.duplicate_of is not None:
                noted(event.id, recorded.duplicate_of)
            return await duplicate(bound, event, recorded)

        setattr(self.endpoint, "handle", handle_and_tell)  # noqa: B010 (an instance's own)
        setattr(self.endpoint, "_duplicate", note_duplicate)  # noqa: B010

    def _noted(self, duplicate: str, original: str) -> None:
        self._original[duplicate] = original
        seen = self.duplicates.setdefault(original, [])
        seen.append((time.time(), duplicate))
        del seen[:-20]
        for kept in (self._original, self.duplicates):
            while len(kept) > 1000:
                del kept[next(iter(kept))]

    def tell(self, name: str, answer: Answer) -> None:
        """One callback answered: into the tail, to every open Now page.

        The whole per-callback cost of an idle console, so kept lean (measured with
        ``bench/instructions.py``): no enum ``.value`` (the members are ``str``s), no
        class attribute look-up, a tuple of what the event already holds."""
        event = answer.event
        outcome = answer.outcome
        self.seq = seq = self.seq + 1
        item: Told
        if event is None:
            item = (seq, _time(), name, answer.status, outcome, None, "", None, None, None,
                    None, None, None)  # fmt: skip
        else:
            item = (seq, _time(), name, answer.status, outcome, event.id, event.type,
                    event.message_id, event.source, event.destination, event.inbound, event.text,
                    None)  # fmt: skip
            if outcome is _DUPLICATE:
                item = (*item[:12], self._duplicate(item[1], event.id))
        self.recent.append(item)
        if self.listeners:
            for queue in self.listeners:
                # A page that does not read loses what does not fit; it reconnects later.
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(item)

    def _duplicate(self, now: float, event_id: str) -> str | None:
        """Count a duplicate in its minute; the id of the original it pointed at."""
        minute = int(now // 60)
        counts = self.duplicate_minutes
        if minute not in counts:
            for old in [m for m in counts if m < minute - 1440]:
                del counts[old]
        counts[minute] = counts.get(minute, 0) + 1
        return self._original.pop(event_id, None)

    # -- authentication -------------------------------------------------------------

    def _mac(self, purpose: str, nonce: str) -> str:
        return hmac.new(self._token, f"{purpose}:{nonce}".encode(), hashlib.sha256).hexdigest()

    def _token_ok(self, given: str) -> bool:
        return _same(given, self._token)

    def session(self, request: Request) -> tuple[bool, str | None]:
        """(authenticated, the cookie session's nonce: None for a Bearer script)."""
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return self._token_ok(authorization[7:].strip()), None
        cookie = request.cookies.get(COOKIE, "")
        nonce, _, mac = cookie.partition(".")
        if not (nonce and mac and _same(mac, self._mac("session", nonce))):
            return False, None
        issued, _, _ = nonce.partition("-")
        if not issued.isdigit() or not 0 <= time.time() - int(issued) < SESSION_SECONDS:
            return False, None  # expired (or from a future clock)
        return True, nonce

    async def _logged_out(self, nonce: str) -> bool:
        """The session ``nonce`` was logged out, in this process or in any other sharing
        the journal (``--workers N``, replicas)."""
        if nonce in self._ended:
            return True
        if await self.journal.session_ended(_session_key(nonce)):
            self._ended[nonce] = time.time()
            return True
        return False

    def csrf(self, nonce: str | None) -> str:
        return self._mac("csrf", nonce) if nonce else ""

    def _base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _render(
        self, request: Request, name: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        base = self._base(request)
        values.setdefault("csrf", "")
        html = self.templates.get_template(name).render(base=base, page=name, **values)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def _login(self, request: Request, status: int = 401, failed: bool = False) -> Response:
        nonce = secrets.token_urlsafe(16)
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.method != "GET" or not target.startswith(self._base(request) + "/"):
            target = self._base(request) + "/"
        response = self._render(
            request, "login.html", status, login_csrf=nonce, target=target, failed=failed
        )
        self._set_cookie(request, response, _LOGIN_COOKIE, nonce)
        return response

    def _set_cookie(self, request: Request, response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name,
            value,
            path=self._base(request) + "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def guarded(
        self, page: Callable[[Request, str | None], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``page`` for an authenticated request only (401 otherwise: the login form for
        a browser's GET); a POST from a cookie session must carry its CSRF token (403)."""

        async def guard(request: Request) -> Response:
            ok, nonce = self.session(request)
            if ok and nonce is not None and await self._logged_out(nonce):
                ok, nonce = False, None
            if not ok:
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return self._login(request)
                return Response(
                    "401: the console token is missing or wrong\n",
                    status_code=401,
                    headers={**_SECURITY_HEADERS, "www-authenticate": "Bearer"},
                    media_type="text/plain",
                )
            if request.method == "POST" and nonce is not None:
                form = await read_form(request)
                given = form.get("csrf")
                if not isinstance(given, str) or not _same(given, self.csrf(nonce)):
                    return Response(
                        "403: no valid CSRF token\n",
                        status_code=403,
                        headers=_SECURITY_HEADERS,
                        media_type="text/plain",
                    )
            return await page(request, nonce)

        return guard

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        token = form.get("token")
        if not isinstance(token, str) or not self._token_ok(token):
            log.warning(
                "console: wrong token", client=request.client.host if request.client else None
            )
            return self._login(request, failed=True)
        given = form.get("csrf")
        expected = request.cookies.get(_LOGIN_COOKIE, "")
        if not (isinstance(given, str) and expected and _same(given, expected)):
            return Response("403: no valid CSRF token\n", 403, _SECURITY_HEADERS, "text/plain")
        target = form.get("next")
        base = self._base(request)
        if not (isinstance(target, str) and target.startswith(base + "/") and "//" not in target):
            target = base + "/"
        nonce = f"{int(time.time())}-{secrets.token_urlsafe(16)}"  # issued-random
        response = RedirectResponse(target, status_code=303, headers=_SECURITY_HEADERS)
        self._set_cookie(request, response, COOKIE, f"{nonce}.{self._mac('session', nonce)}")
        response.delete_cookie(_LOGIN_COOKIE, path=base + "/")
        return response

    async def logout(self, request: Request, nonce: str | None) -> Response:
        if nonce is not None:  # this session's cookie no longer works, wherever it was copied
            now = time.time()
            for ended in [n for n, at in self._ended.items() if now - at > SESSION_SECONDS]:
                del self._ended[ended]
            self._ended[nonce] = now
            issued = int(nonce.partition("-")[0])
            await self.journal.end_session(_session_key(nonce), issued + SESSION_SECONDS)
        base = self._base(request)
        response = RedirectResponse(base + "/", status_code=303, headers=_SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=base + "/")
        return response

    # -- pages ----------------------------------------------------------------------------

    def _filters(self, values: Any) -> dict[str, str]:
        keys = ("channel", "provider", "type", "state", "since", "from", "to", "q")
        return {key: str(values.get(key, "")).strip()[:200] for key in keys}

    def _range(self, filters: dict[str, str]) -> tuple[float | None, float | None]:
        since: float | None = None
        until: float | None = None
        if filters["since"] in _SINCE:
            since = time.time() - _SINCE[filters["since"]]
        for key in ("from", "to"):
            text = filters[key]
            if not text:
                continue
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if key == "from":
                since = max(since or 0.0, moment.timestamp())
            else:
                until = moment.timestamp()
        return since, until

    async def _browse(
        self, filters: dict[str, str], before: float | None, limit: int, state: str | None = None
    ) -> Any:
        since, until = self._range(filters)
        if until is not None:
            before = min(before, until) if before is not None else until
        return await self.journal.browse(
            channel=filters["channel"] or None,
            provider=filters["provider"] or None,
            type=filters["type"] or None,
            state=state or filters["state"] or None,
            since=since,
            before=before,
            search=filters["q"] or None,
            limit=limit,
            scan=SCAN,
        )

    async def _to_replay(self, filters: dict[str, str]) -> list[Entry]:
        """The failed, reply_failed and dead entries of ``filters``, newest first, at most
        :data:`REPLAY_MAX`: looked up by state over the whole journal (not the Events
        page's window of the newest entries), the other filters applied to them."""
        since, until = self._range(filters)
        chosen: list[Entry] = []
        for state in ("failed", "reply_failed", "dead"):
            if filters["state"] and filters["state"] != state:
                continue
            found = await self.journal.entries(
                channel=filters["channel"] or None,
                type=filters["type"] or None,
                state=state,
                since=since,
                limit=REPLAY_MAX * 10,
            )
            chosen += [
                entry
                for entry in found
                if (until is None or entry.received_at < until)
                and (not filters["provider"] or entry.provider == filters["provider"])
                and matches(entry, filters["q"] or None)
            ]
        chosen.sort(key=lambda entry: entry.received_at, reverse=True)
        return chosen[:REPLAY_MAX]

    async def events(self, request: Request, nonce: str | None) -> Response:
        filters = self._filters(request.query_params)
        before = _number(request.query_params.get("before"))
        page = await self._browse(filters, before, PAGE_SIZE)
        chosen = {key: value for key, value in filters.items() if value}
        older = (
            "?" + urllib.parse.urlencode({**chosen, "before": repr(page.older)})
            if page.older is not None
            else None
        )
        newest = "?" + urllib.parse.urlencode(chosen) if before is not None else None
        return self._render(
            request,
            "events.html",
            entries=page.entries,
            filters=filters,
            older=older,
            newest=newest,
            scanned=page.scanned,
            scan=SCAN,
            channels=sorted(self.endpoint.channels),
            providers=sorted({b.provider.name for b in self.endpoint.channels.values()}),
            types=[t.value for t in EventType],
            states=STATES,
            spans=list(_SINCE),
            csrf=self.csrf(nonce),
        )

    async def event(self, request: Request, nonce: str | None) -> Response:
        entry_id = request.path_params["id"]
        found = await self.journal.entries(ids=[entry_id], limit=1)
        if not found:
            return self._render(request, "missing.html", 404, entry_id=entry_id)
        entry = found[0]
        normalized = None
        if entry.event is not None:
            shown = msgspec.to_builtins(msgspec.structs.replace(entry.event, raw=b""))
            shown.pop("raw", None)
            normalized = json.dumps(shown, indent=2, ensure_ascii=False)
        reply = (
            json.dumps(msgspec.to_builtins(entry.reply), indent=2, ensure_ascii=False)
            if entry.reply is not None
            else None
        )
        kind, body = raw_view(entry)
        meta = sorted((k, v) for k, v in entry.meta.items() if not _FORBIDDEN_META.search(k))
        return self._render(
            request,
            "event.html",
            entry=entry,
            normalized=normalized,
            raw_kind=kind,
            raw=body,
            meta=meta,
            attempts=await self.journal.attempts(entry.id),
            reply=reply,
            duplicates=self.duplicates.get(entry.id, []),
            csrf=self.csrf(nonce),
        )

    async def replay(self, request: Request, nonce: str | None) -> Response:
        form = await read_form(request)
        ids = form.getlist("id")[:REPLAY_MAX]
        filters = self._filters(form)
        chosen: list[Entry] = []
        if ids:
            chosen = await self.journal.entries(ids=ids, limit=len(ids))
        elif form.get("scope") == "filter":
            chosen = await self._to_replay(filters)
        replayable = [entry for entry in chosen if entry.event is not None]
        if form.get("confirm") != "yes":
            once = self._confirmation(nonce, replayable)
            return self._render(
                request,
                "replay.html",
                entries=replayable,
                skipped=[e for e in chosen if e.event is None],
                confirm=True,
                once=once,
                csrf=self.csrf(nonce),
            )
        used = form.get("once")
        # A page's confirmation works once (a double click, a reload of the result page
        # would replay again); a script with the Bearer token may confirm without one.
        if (used is not None or nonce is not None) and (
            not isinstance(used, str) or not self._confirmed(used, nonce, replayable)
        ):
            return self._render(request, "replay.html", 409, confirm=False, used=True)
        refused = unloaded_plugins(self.endpoint, replayable)
        ready = [entry for entry in replayable if entry.id not in refused]
        log.info("console: replay", entries=len(ready), refused=len(refused))
        outcomes = await replay_entries(self.endpoint, ready)
        after = {e.id: e for e in await self.journal.entries(ids=list(outcomes), limit=None)}
        return self._render(
            request,
            "replay.html",
            confirm=False,
            results=[(entry, outcomes[entry.id], after.get(entry.id)) for entry in ready],
            refused=refused,
            csrf=self.csrf(nonce),
        )

    def _confirmation(self, nonce: str | None, entries: list[Entry]) -> str:
        """A replay's confirmation: ``<issued>.<HMAC of the session, the time and the
        entries' state>``. Kept nowhere: any process serving the console (``--workers
        N``, replicas) checks it, and it stops working once the entries change (a replay
        ran: their attempts and next attempt moved), which makes it work once."""
        issued = str(int(time.time()))
        return f"{issued}.{self._mac('replay', _replay_subject(nonce, issued, entries))}"

    def _confirmed(self, token: str, nonce: str | None, entries: list[Entry]) -> bool:
        """``token`` confirms replaying ``entries`` as they are now, within the hour."""
        issued, _, mac = token.partition(".")
        if not issued.isdigit() or not 0 <= time.time() - int(issued) <= REPLAY_CONFIRM_SECONDS:
            return False
        return _same(mac, self._mac("replay", _replay_subject(nonce, issued, entries)))

    async def now(self, request: Request, nonce: str | None) -> Response:
        span = request.query_params.get("span", "hour")
        if span not in SPANS:
            span = "hour"
        recent = [json.loads(_tail_item(item)) for item in reversed(self.recent)]
        return self._render(
            request,
            "now.html",
            span=span,
            spans=list(SPANS),
            recent=recent,
            totals=await self.totals(span),
            last=self.seq,
            csrf=self.csrf(nonce),
        )

    async def counts(self, span: str) -> tuple[int, dict[int, dict[str, int]]]:
        """(first minute, minute -> outcome -> callbacks) over ``span``."""
        now = time.time()
        first = int(now // 60) - SPANS[span] // 60 + 1
        minutes: dict[int, dict[str, int]] = {}
        for (minute, state), count in (await self.journal.per_minute(first * 60.0)).items():
            outcome = OUTCOME_OF_STATE.get(state, "accepted")
            bucket = minutes.setdefault(minute, {})
            bucket[outcome] = bucket.get(outcome, 0) + count
        for minute, count in self.duplicate_minutes.items():
            if minute >= first:
                bucket = minutes.setdefault(minute, {})
                bucket["duplicate"] = bucket.get("duplicate", 0) + count
        return first, minutes

    async def totals(self, span: str) -> dict[str, int]:
        _, minutes = await self.counts(span)
        return {o: sum(b.get(o, 0) for b in minutes.values()) for o in OUTCOMES}

    async def chart(self, request: Request, nonce: str | None) -> Response:
        span = request.query_params.get("span", "hour")
        if span not in SPANS:
            span = "hour"
        first, minutes = await self.counts(span)
        count = SPANS[span] // 60
        peak = max([sum(b.values()) for b in minutes.values()] or [0]) or 1
        width, height, bar = 960.0, 240.0, 960.0 / count
        bars = []
        for minute, bucket in minutes.items():
            x = (minute - first) * bar
            if not 0 <= x < width:
                continue
            y = height
            for outcome in OUTCOMES:
                value = bucket.get(outcome, 0)
                if value:
                    h = value / peak * (height - 20)
                    y -= h
                    bars.append(
                        (
                            round(x, 2),
                            round(y, 2),
                            round(max(bar, 1.0), 2),
                            round(h, 2),
                            COLOURS[outcome],
                        )
                    )
        svg = self.templates.get_template("chart.svg").render(
            bars=bars,
            width=width,
            height=height,
            peak=peak,
            span=span,
            outcomes=OUTCOMES,
            colours=COLOURS,
        )
        return Response(svg, headers=_SECURITY_HEADERS, media_type="image/svg+xml")

    async def stream(self, request: Request, nonce: str | None) -> Response:
        queue: asyncio.Queue[Told] = asyncio.Queue(256)
        last = _number(request.headers.get("last-event-id"))
        missed = [item for item in self.recent if last is not None and item[0] > last]
        self.listeners.add(queue)

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                for item in missed:
                    yield f"id: {item[0]}\ndata: {_tail_item(item)}\n\n"
                deadline = time.monotonic() + STREAM_SECONDS
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        async with asyncio.timeout(min(left, KEEPALIVE_SECONDS)):
                            item = await queue.get()
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"id: {item[0]}\ndata: {_tail_item(item)}\n\n"
            finally:
                self.listeners.discard(queue)

        headers = {**_SECURITY_HEADERS, "x-accel-buffering": "no"}
        return StreamingResponse(events(), headers=headers, media_type="text/event-stream")

    async def static(self, request: Request, nonce: str | None) -> Response:
        name = request.path_params["name"]
        media = _STATIC.get(name)
        if media is None:
            return Response("not found\n", 404, _SECURITY_HEADERS, "text/plain")
        body = resources.files("receiver.console").joinpath("static", name).read_bytes()
        return Response(body, headers=_SECURITY_HEADERS, media_type=media)

    def routes(self) -> list[tuple[str, str, Callable[[Request, str | None], Awaitable[Response]]]]:
        """(method, path, page): every guarded page and endpoint (the tests walk these)."""
        return [
            ("GET", "/", self.events),
            ("GET", "/events/{id}", self.event),
            ("POST", "/replay", self.replay),
            ("GET", "/now", self.now),
            ("GET", "/chart.svg", self.chart),
            ("GET", "/stream", self.stream),
            ("GET", "/static/{name}", self.static),
            ("POST", "/logout", self.logout),
        ]

    def _app(self) -> Starlette:
        routes = [
            Route(path, self.guarded(page), methods=[method])
            for method, path, page in self.routes()
        ]
        routes.append(Route("/login", self.login, methods=["POST"]))
        routes.append(Route("/login", self.guarded(self.events), methods=["GET"]))
        return Starlette(routes=routes)


class Form:
    """A posted ``application/x-www-form-urlencoded`` form (every console form is one),
    read without python-multipart."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def get(self, key: str, default: str | None = None) -> str | None:
        for name, value in self.pairs:
            if name == key:
                return value
        return default

    def getlist(self, key: str) -> list[str]:
        return [value for name, value in self.pairs if name == key]


FORM_LIMIT = 256 * 1024
"""The largest form the console reads."""


async def read_form(request: Request) -> Form:
    """``request``'s form (cached on it): at most :data:`FORM_LIMIT` bytes are read."""
    cached = request.scope.get("receiver.console.form")
    if isinstance(cached, Form):
        return cached
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            break
    text = body[:FORM_LIMIT].decode("utf-8", "replace")
    form = Form(urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=2000))
    request.scope["receiver.console.form"] = form
    return form


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def mount(config: ConsoleConfig, endpoint: CallbackEndpoint) -> tuple[Console, Mount]:
    """The console of ``endpoint``, hooked into its callback path, and its route."""
    console = Console(config, endpoint)
    console.install()
    return console, Mount("/console", app=console.app)
