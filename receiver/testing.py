"""Test a receiver plugin in a few lines: a pytest plugin, request builders, an Event factory.

::

    from receiver import hookimpl

    class Hours:
        @hookimpl
        def on_keyword(self, event):
            return "We are open 9-5" if event.text == "HOURS" else None

    def test_hours(receiver_client):
        client = receiver_client(channels={"sms": "onepoint"}, plugins=[Hours])
        client.send("sms", "keyword", set={"Message": "HOURS"})
        client.assert_reply(text="We are open 9-5")

**Activation.** This module is registered as a pytest plugin through the ``pytest11``
entry point ``receiver.testing``, so in an environment where receiver is installed its
fixtures are there in every pytest run, with nothing to configure. Because it is loaded
in *every* pytest run of such an environment (also of projects that never use it), it
only defines fixtures whose names say receiver (``receiver_client``, ``receiver_app``),
none of them autouse, no hooks, no options, and it imports nothing but the standard
library and pytest until a fixture is used. ``-p receiver.testing`` and
``pytest_plugins = ["receiver.testing"]`` (in a top-level conftest) load it where plugin
autoloading is off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``); where the entry point has
already loaded it they do nothing (the entry point's name is the module's). Keep it out
of a run with ``-p no:receiver.testing``. Without pytest, :class:`ReceiverClient`,
:func:`build_request`, :func:`make_event` and :func:`sign_onepoint` are plain imports.

**What it gives.**

- :class:`ReceiverClient` (fixture ``receiver_client``: a factory that closes what it
  made at the end of the test): a receiver app built from a :class:`~receiver.Config`, a
  TOML path or channel shorthands, with only the plugins given (``autoload=False`` by
  default) and a :class:`Recorder`; :meth:`ReceiverClient.send` posts a sample as the
  channel's provider sends it, signed or keyed with the channel's credentials.
- :class:`Recorder`: the events dispatched and the replies made (in the HTTP response for
  OnePoint/DIY, to ``send_reply`` for Whispir), with :meth:`Recorder.assert_dispatched`
  and :meth:`Recorder.assert_reply`, whose failures list what was recorded.
- :func:`build_request`: the request (:class:`receiver.callbacks.Callback`) a provider
  sends to a channel, for any HTTP client or a running receiver.
- :func:`make_event`: an :class:`~receiver.Event` for unit tests of a hook, without HTTP.
- :func:`sign_onepoint`: OnePoint/DIY's ``Authorization`` value, as their reference
  client builds it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode, urlsplit

import pytest

from receiver.hookspecs import hookimpl

if TYPE_CHECKING:
    import os

    import httpx2
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from receiver.callbacks import Callback
    from receiver.config import Channel, Config
    from receiver.events import Event, Reply
    from receiver.providers.onepoint_signature import sign_onepoint

__all__ = [
    "TEST_APP_ID",
    "ReceiverClient",
    "Recorder",
    "Replied",
    "build_request",
    "make_channel",
    "make_config",
    "make_event",
    "receiver_app",
    "receiver_client",
    "sign_onepoint",
]

TEST_APP_ID = "receiver-test-app"
"""The AppId of a ``"onepoint:hmac"``/``"diy:hmac"`` shorthand channel."""

_UNSET: Any = object()


# The recorder ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replied:
    """One reply a plugin made.

    Attributes:
        reply: The reply, as the provider gets it (OnePoint/DIY: read back from the HTTP
            response's Message/Send body; Whispir: what ``send_reply`` was given).
        event: The event it answers.
        via: ``"response"`` (in the HTTP response) or ``"send_reply"`` (handed to the
            ``send_reply`` hook).
    """

    reply: Reply
    event: Event | None
    via: Literal["response", "send_reply"]


class Recorder:
    """A plugin that records every event dispatched and every reply made, in order.

    :class:`ReceiverClient` registers one in its app (``client.recorder``); register
    your own with ``create_app(config, plugins=[recorder, ...])``. It answers nothing:
    its ``send_reply`` runs first and returns None, so your ``send_reply`` still runs.
    """

    name = "receiver_testing_recorder"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.replies: list[Replied] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)

    @hookimpl(tryfirst=True)
    def send_reply(self, event: Event, reply: Reply) -> None:
        self.replies.append(Replied(reply, event, "send_reply"))

    # Reading ---------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget what was recorded."""
        self.events.clear()
        self.replies.clear()

    def dispatched(self, type: str | None = None, **fields: Any) -> list[Event]:
        """The events of ``type`` (any: None) whose ``fields`` equal those given."""
        return [event for event in self.events if _matches(event, type, fields)]

    def assert_dispatched(self, type: str | None = None, **fields: Any) -> Event:
        """The one last event of ``type`` with ``fields`` equal to those given (``text=``,
        ``source=``, ``status=``...; a callable value is a predicate).

        Raises:
            AssertionError: none matched; the message lists every event dispatched, with
                the fields asked about.
        """
        __tracebackhide__ = True
        found = self.dispatched(type, **fields)
        if found:
            return found[-1]
        wanted = _describe({"type": type, **fields} if type is not None else fields)
        shown = ("type", *fields)
        lines = [_describe({name: _field(event, name) for name in shown}) for event in self.events]
        raise AssertionError(
            f"no event dispatched with {wanted}; "
            + (
                f"{len(lines)} dispatched:\n  " + "\n  ".join(lines)
                if lines
                else "none was dispatched"
            )
        )

    def assert_not_dispatched(self, type: str | None = None, **fields: Any) -> None:
        """No event of ``type`` with ``fields`` was dispatched."""
        __tracebackhide__ = True
        found = self.dispatched(type, **fields)
        assert not found, f"dispatched: {[_short(event) for event in found]}"

    def assert_reply(
        self, text: str | None = None, *, via: str | None = None, **fields: Any
    ) -> Reply:
        """The last reply with ``text`` and ``fields`` (``source=``, ``destination=``,
        Reply's fields) equal to those given; ``via`` is ``"response"`` or ``"send_reply"``.

        Raises:
            AssertionError: none matched; the message lists every reply made.
        """
        __tracebackhide__ = True
        wanted = dict(fields)
        if text is not None:
            wanted["text"] = text
        for replied in reversed(self.replies):
            if (via is None or replied.via == via) and all(
                _equal(getattr(replied.reply, name, _UNSET), value)
                for name, value in wanted.items()
            ):
                return replied.reply
        where = f" via {via}" if via else ""
        lines = [
            f"{_describe(_reply_fields(item.reply, wanted))} via {item.via}"
            for item in self.replies
        ]
        raise AssertionError(
            f"no reply{where} with {_describe(wanted)}; "
            + (f"{len(lines)} made:\n  " + "\n  ".join(lines) if lines else "no reply was made")
        )

    def assert_no_reply(self) -> None:
        """No reply was made."""
        __tracebackhide__ = True
        assert not self.replies, f"replies made: {[item.reply for item in self.replies]}"


def _matches(event: Event, type: str | None, fields: Mapping[str, Any]) -> bool:
    if type is not None and event.type != type:
        return False
    return all(_equal(_field(event, name), value) for name, value in fields.items())


def _field(event: Event, name: str) -> Any:
    return getattr(event, name, _UNSET)


def _equal(actual: Any, wanted: Any) -> bool:
    if actual is _UNSET:
        return False
    if callable(wanted) and not isinstance(wanted, type):
        return bool(wanted(actual))
    return bool(actual == wanted)


def _describe(fields: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{name}=<missing>" if value is _UNSET else f"{name}={_value(value)}"
        for name, value in fields.items()
    )


def _value(value: Any) -> str:
    if hasattr(value, "value") and isinstance(value.value, str):  # an EventType
        return repr(value.value)
    return repr(value)


def _short(event: Event) -> str:
    return _describe({"type": event.type, "text": event.text, "message_id": event.message_id})


def _reply_fields(reply: Reply, wanted: Mapping[str, Any]) -> dict[str, Any]:
    shown = {name: getattr(reply, name, _UNSET) for name in wanted if name != "text"}
    return {"text": reply.text, **shown}


# Channels and configurations ---------------------------------------------------------------


def make_channel(spec: Channel | Mapping[str, Any] | str) -> Channel:
    """A :class:`~receiver.Channel`: as given, from its TOML table as a dict, or from a
    shorthand string ``"PROVIDER"`` or ``"PROVIDER:AUTH"``.

    ``"onepoint"`` is an unauthenticated OnePoint channel; ``"onepoint:hmac"`` checks
    signatures with AppId :data:`TEST_APP_ID` and a made-up Secret; ``"whispir:header"``,
    ``":query"``, ``":bearer"`` and ``":basic"`` check a made-up key (``user:password``
    for basic; in header ``X-Test-Key`` for a provider without a key header of its
    own). :meth:`ReceiverClient.send` signs and keys its requests with them.
    """
    from receiver.config import Channel, convert

    if isinstance(spec, Channel):
        return spec
    if not isinstance(spec, str):
        return convert(dict(spec), Channel, "channel")
    provider, _, auth = spec.partition(":")
    auth = auth or "none"
    made_up = secrets.token_hex(8)
    key = f"test-key-{made_up}"
    if auth == "hmac":
        return Channel(
            provider=provider,
            auth="hmac",
            options={"credentials": {TEST_APP_ID: f"test-secret-{made_up}"}},
        )
    if auth == "header" and provider != "whispir":  # a header of the test's choosing
        return Channel(provider=provider, auth=auth, keys=[key], header="X-Test-Key")
    if auth in ("header", "query", "bearer"):
        return Channel(provider=provider, auth=auth, keys=[key])
    if auth == "basic":
        return Channel(provider=provider, auth=auth, keys=[f"test:{made_up}"])
    return Channel(provider=provider, auth=auth)


def make_config(
    config: Config | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    channels: Mapping[str, Channel | Mapping[str, Any] | str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Config:
    """A :class:`~receiver.Config`: ``config`` (a Config, a TOML path, or its tables as a
    dict), its ``channels`` and ``settings`` tables added to or replaced by those given."""
    from receiver.config import Config, config_from_dict, load_config, replace_config

    if config is None:
        made = Config()
    elif isinstance(config, Config):
        made = config
    elif isinstance(config, Mapping):
        made = config_from_dict(dict(config), "test config")
    else:
        made = load_config(config)
    changes: dict[str, Any] = {}
    if channels is not None:
        changes["channels"] = {
            **made.channels,
            **{name: make_channel(spec) for name, spec in channels.items()},
        }
    if settings is not None:
        changes["settings"] = {**made.settings, **settings}
    return replace_config(made, **changes) if changes else made


# Request builders --------------------------------------------------------------------------


def build_request(
    channel: Channel | str,
    sample: str = "message",
    *,
    url: str = "http://testserver/sms",
    body: bytes | str | Mapping[str, Any] | None = None,
    set: Mapping[str, Any] | None = None,
    fresh: bool = True,
    method: str | None = None,
    format: str | None = None,
    credentials: Mapping[str, str] | None = None,
    timestamp: int | None = None,
) -> Callback:
    """The request ``channel``'s provider sends to ``url``: a sample (or ``body``), its
    fields changed, authenticated with the channel's credentials.

    Args:
        channel: The channel as configured (or a shorthand: :func:`make_channel`).
        sample: A sample of the provider (:func:`receiver.samples.find`): ``message``,
            ``keyword``, ``stop``, ``receipt-delivered``, ``report-completion``...
        url: The channel's whole URL, as the receiver sees it.
        body: Your own body instead of a sample (bytes, or a dict sent as JSON).
        set: Fields to set (:func:`receiver.callbacks.set_fields`): ``{"Message": "HI"}``;
            a non-string value is written as JSON (``True`` is ``true``).
        fresh: A new message id and timestamp (:func:`receiver.callbacks.freshen`), so
            that the receiver does not answer it as a duplicate of the last one.
        method: ``"GET"`` sends a OnePoint/DIY callback's fields in the query.
        format: ``json``, ``form`` (OnePoint/DIY, converted from the sample) or ``xml``
            (Whispir, a sample that has an XML file): default, the sample's own.
        credentials: Instead of the channel's: ``key``, or ``app_id`` and ``secret``
            (a wrong one gets a 401).
        timestamp: The signature's Unix time (default: now).
    """
    from receiver import samples
    from receiver.callbacks import build_callback, freshen, set_fields

    channel = make_channel(channel)
    provider = channel.provider
    if body is not None:
        data = (
            json.dumps(body).encode()
            if isinstance(body, Mapping)
            else body.encode()
            if isinstance(body, str)
            else body
        )
        source = samples.Sample(provider, "body.json", data, "POST", "application/json")
        if isinstance(body, (bytes, str)) and data.lstrip()[:1] == b"<":
            source = source._replace(file="body.xml", content_type="application/xml")
    else:
        source = samples.find(provider, sample)
        if format == "xml" and source.format != "xml":
            # The same variant in XML: the shortest name that starts with its stem
            # (Whispir's message, reply_sms, is reply_sms_ns2.xml in XML).
            stem = source.file.rpartition(".")[0]
            xml = [f for f in samples.names(provider) if f.startswith(stem) and f.endswith(".xml")]
            if not xml:
                raise ValueError(f"no XML sample of {sample!r} for {provider}")
            source = samples.find(provider, min(xml, key=lambda f: (len(f), f)))
    want = "query" if method == "GET" else format or source.format
    if want == "query" and method is None:
        method = "GET"
    data = source.body
    current = source.format
    if want != current:
        data, current = _convert(data, current, want), want
    if fresh:
        data = freshen(data, current, provider)
    if set:
        data = set_fields(data, current, {name: _text(value) for name, value in set.items()})
    verb, content_type = samples.FORMATS[current]
    return build_callback(
        channel,
        url,
        data,
        method=method or verb,
        content_type=content_type,
        credentials=credentials,
        timestamp=timestamp,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _convert(body: bytes, current: str, want: str) -> bytes:
    """A OnePoint/DIY callback's fields from one format to another (JSON, form, query)."""
    from urllib.parse import parse_qsl

    if current in ("form", "query") and want in ("form", "query"):
        return body.strip()
    if current in ("form", "query") and want == "json":
        pairs = parse_qsl(body.decode("latin-1").strip(), keep_blank_values=True)
        return json.dumps(dict(pairs)).encode()
    if current == "json" and want in ("form", "query"):
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("the sample is not a JSON object")
        pairs = [
            (name, json.dumps(value) if isinstance(value, bool) else str(value))
            for name, value in data.items()
            if value is not None and not isinstance(value, (list, dict))
        ]
        return urlencode(pairs).encode()
    raise ValueError(f"cannot send a {current} sample as {want}")


# The app and the client --------------------------------------------------------------------


class ReceiverClient:
    """A receiver app with your plugins and a :class:`Recorder`, and a client that sends
    it callbacks as the providers do (Starlette's ``TestClient``, no server).

    Args:
        config: A :class:`~receiver.Config`, a TOML path or its tables as a dict.
        channels: Channels to add: name -> a :class:`~receiver.Channel`, its table as a
            dict, or a shorthand (:func:`make_channel`): ``{"sms": "onepoint"}``.
        settings: Plugin settings tables to add (name -> table).
        plugins: Your plugins (objects, modules, classes, ``(name, obj)`` pairs).
        autoload: Also load installed packages' plugins (default: only those given).
        base_url: Where the app is served (a signed URL includes it).
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        channels: Mapping[str, Channel | Mapping[str, Any] | str] | None = None,
        settings: Mapping[str, Any] | None = None,
        plugins: Iterable[object] = (),
        autoload: bool = False,
        base_url: str = "http://testserver",
    ) -> None:
        from starlette.testclient import TestClient

        from receiver.app import create_app

        self.recorder = Recorder()
        self.config = make_config(config, channels=channels, settings=settings)
        self.app: Starlette = create_app(
            self.config, plugins=[self.recorder, *plugins], autoload=autoload
        )
        self.base_url = base_url.rstrip("/")
        self.http: TestClient = TestClient(self.app, base_url=self.base_url)
        self._started = False
        journal = self.config.journal
        if journal is not None and journal != "none":
            self.http.__enter__()  # the lifespan: the journal opens and closes with it
            self._started = True

    @property
    def events(self) -> list[Event]:
        """The events dispatched, in order."""
        return self.recorder.events

    @property
    def replies(self) -> list[Replied]:
        """The replies made, in order."""
        return self.recorder.replies

    def channel(self, name: str) -> Channel:
        """The channel ``name`` as the app has it (secrets expanded)."""
        channels: Mapping[str, Channel] = self.app.state.config.channels
        if name not in channels:
            raise KeyError(f"no channel {name!r}: one of {', '.join(channels) or '(none)'}")
        return channels[name]

    def plugin(self, name: str) -> Any:
        """This app's instance of the plugin ``name``."""
        return self.app.state.plugin_manager.get_plugin(name)

    def build(self, channel: str, sample: str = "message", **options: Any) -> Callback:
        """The request :meth:`send` would send (arguments: :func:`build_request`)."""
        return build_request(
            self.channel(channel), sample, url=f"{self.base_url}/{channel}", **options
        )

    def send(
        self,
        channel: str,
        sample: str = "message",
        *,
        set: Mapping[str, Any] | None = None,
        fresh: bool = True,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> httpx2.Response:
        """Send ``sample`` to ``channel`` as its provider would, authenticated with the
        channel's credentials, and return the response (whatever its status).

        ``set``, ``fresh``, ``method`` and ``options`` (``body``, ``format``,
        ``credentials``, ``timestamp``) are :func:`build_request`'s; ``headers`` are
        added to the request's. A reply in the response (OnePoint/DIY) is recorded.
        """
        request = self.build(channel, sample, set=set, fresh=fresh, method=method, **options)
        path = urlsplit(request.url)
        target = path.path + (f"?{path.query}" if path.query else "")
        response = self.http.request(
            request.method,
            target,
            content=request.body or None,
            headers={**request.headers, **(headers or {})},
        )
        self._record_response(response)
        return response

    def _record_response(self, response: httpx2.Response) -> None:
        from receiver.events import Reply

        if response.status_code != 200 or not response.content:
            return
        try:
            data = response.json()
        except ValueError:
            return
        if not isinstance(data, dict) or not isinstance(data.get("Message"), str):
            return
        known = {"Source", "Destination", "Message", "When", "Reply", "MetaData"}
        metadata = data.get("MetaData")
        reply = Reply(
            text=data["Message"],
            source=data.get("Source"),
            destination=data.get("Destination"),
            when=data.get("When"),
            reply=data.get("Reply"),
            metadata=(
                {k: v for item in metadata for k, v in item.items()}
                if isinstance(metadata, list)
                else None
            ),
            extra={k: v for k, v in data.items() if k not in known} or None,
        )
        event = self.recorder.events[-1] if self.recorder.events else None
        self.recorder.replies.append(Replied(reply, event, "response"))

    def assert_dispatched(self, type: str | None = None, **fields: Any) -> Event:
        """:meth:`Recorder.assert_dispatched`."""
        __tracebackhide__ = True
        return self.recorder.assert_dispatched(type, **fields)

    def assert_not_dispatched(self, type: str | None = None, **fields: Any) -> None:
        """:meth:`Recorder.assert_not_dispatched`."""
        __tracebackhide__ = True
        self.recorder.assert_not_dispatched(type, **fields)

    def assert_reply(
        self, text: str | None = None, *, via: str | None = None, **fields: Any
    ) -> Reply:
        """:meth:`Recorder.assert_reply`."""
        __tracebackhide__ = True
        return self.recorder.assert_reply(text, via=via, **fields)

    def assert_no_reply(self) -> None:
        """:meth:`Recorder.assert_no_reply`."""
        __tracebackhide__ = True
        self.recorder.assert_no_reply()

    def close(self) -> None:
        """Stop the app (its lifespan, when started) and close the client."""
        if self._started:
            self._started = False
            self.http.__exit__(None, None, None)
        self.http.close()

    def __enter__(self) -> ReceiverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Events without HTTP -----------------------------------------------------------------------


def make_event(
    type: str = "message",
    *,
    channel: str = "sms",
    provider: str = "onepoint",
    raw: bytes | None = None,
    **fields: Any,
) -> Event:
    """An :class:`~receiver.Event` to call a hook with, in a unit test (no app, no HTTP).

    ``id`` (a UUIDv7 string, as receiver makes them) and ``received_at`` (now, UTC) are
    filled in; ``raw`` is, unless given, the other fields as JSON (not a provider's
    body). ``fields`` are Event's: ``text``, ``source``, ``destination``, ``status``...

    >>> make_event("keyword", text="HOURS").type
    <EventType.keyword: 'keyword'>
    """
    from receiver.events import Event, EventType, new_event_id

    if raw is None:
        raw = json.dumps(fields, default=str, sort_keys=True).encode()
    return Event(
        id=new_event_id(),
        received_at=datetime.now(UTC),
        channel=channel,
        provider=provider,
        type=EventType(type),
        raw=raw,
        **fields,
    )


# Fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def receiver_client() -> Iterator[Callable[..., ReceiverClient]]:
    """A factory of :class:`ReceiverClient` (same arguments); each is closed after the test.

    ``client = receiver_client(channels={"sms": "onepoint"}, plugins=[MyPlugin])``
    """
    made: list[ReceiverClient] = []

    def factory(*args: Any, **kwargs: Any) -> ReceiverClient:
        client = ReceiverClient(*args, **kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


@pytest.fixture
def receiver_app(
    receiver_client: Callable[..., ReceiverClient],
) -> Callable[..., Starlette]:
    """A factory of receiver apps (:class:`ReceiverClient`'s arguments), for your own
    client or to mount; ``app.state.recorder`` is its :class:`Recorder`."""

    def factory(*args: Any, **kwargs: Any) -> Starlette:
        client = receiver_client(*args, **kwargs)
        client.app.state.recorder = client.recorder
        return client.app

    return factory


def __getattr__(name: str) -> Any:
    # sign_onepoint comes from the providers, imported on first use (module docstring).
    if name == "sign_onepoint":
        from receiver.providers.onepoint_signature import sign_onepoint

        return sign_onepoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
