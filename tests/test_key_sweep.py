"""A credential leaves no trace (issue 13): every place a request can leave one, swept.

For every auth mode (``header``, ``query``, ``basic``, ``bearer``, and ``hmac``, whose
Secret is the key here) and every spelling of the credential the check accepts (for
``query``: ``auth``, ``AUTH``, ``%61uth``, ``a%75th``, a percent-encoded value, the
parameter twice, once more without a value, in a GET callback's query and beside a POST
body), one app with a real SQLite journal, metrics, an event recorder and the
first-party ``forward`` plugin posting to a real loopback HTTP server is called; then
everything the request left is read back and searched for the key in every form a
careless path could keep it in (as sent, percent-encoded, Base64 at any alignment, the
Authorization value):

- every structlog line, at debug level, tracebacks rendered;
- every response (error bodies and headers);
- every column of every row of every table of the journal, and the journal's files;
- what ``receiver events`` and ``receiver events show ID`` print for every entry;
- ``/metrics``;
- every field of every event the plugins received;
- every request ``forward`` made (path, headers, body, the body's base64 ``raw`` decoded).

Spellings the check refuses (``;`` as separator, an encoded ``=``, ``au+th``) are 401 and
swept as well: a refused request leaves no key either. A failed HMAC check must not log
the query of the request it refused (a GET callback's query holds numbers and text).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from recorder import EventRecorder
from sink import Sink, running_sink
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, create_app
from receiver.auth import CallbackRequest, build_authenticator, without_key_param
from receiver.cli import main
from receiver.errors import NotAuthenticated
from receiver.providers import DiyProvider
from receiver.testing import sign_onepoint

KEY = "k3y-SWEEP-7a1f"
USER = "hooks"
APP_ID = "APP-SWEEP-1"
NONCE = "5eeb5eeb5eeb5eeb5eeb5eeb5eeb5eeb"  # a GUID, as the reference client makes it
PERSON = "447700900777"  # a person's number, in the GET callbacks' query
TEXT = "meet-at-the-sweep-place"  # a person's message text, in the GET callbacks' query
HEADER = "X-Sweep-Key"

GET_FIELDS = f"Type=Message&MessageID=MSW1&Source={PERSON}&Destination=60777&Message={TEXT}"
BROKEN_FIELDS = f"Type=Message&MessageID=MSW2&Source={PERSON}&MetaData=%7Bbroken"
POST_BODY = json.dumps(
    {"Type": "Stop", "MessageID": "MSW3", "Source": PERSON, "Message": "STOP"}
).encode()
JSON = {"Content-Type": "application/json"}


def _percent_encoded(text: str, hex_format: str) -> str:
    return "".join(hex_format % byte for byte in text.encode())


def _base64_cores(secret: bytes) -> list[bytes]:
    """What Base64 of any text holding ``secret`` holds, at each of the three alignments:
    the encoding of ``secret`` without the characters its neighbours change."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret)
        cores.append(encoded[4 if shift else 0 : -4])
    return cores


def forms_of(secret: str, *extra: str) -> list[bytes]:
    """Every form of ``secret`` that must appear nowhere."""
    found = {
        secret.encode(),
        _percent_encoded(secret, "%%%02X").encode(),
        _percent_encoded(secret, "%%%02x").encode(),
        secret.replace("-", "%2D").encode(),
        secret.replace("-", "%2d").encode(),
        base64.b64encode(secret.encode()),
        base64.b64encode(f"{USER}:{secret}".encode()),
        *_base64_cores(secret.encode()),
        *(text.encode() for text in extra),
    }
    return sorted(found)


@dataclass
class Call:
    """One request of a case, and the status it must get."""

    method: str
    url: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Case:
    """One way of presenting the credential, on one channel."""

    channel: str
    calls: list[Call]
    leaked: list[str] = field(default_factory=list)
    """Request values besides the key that must not appear in the logs."""


def _hmac_call(method: str, query: str, body: bytes, status: int, secret: str = KEY) -> Call:
    path = f"/hmac?{query}" if query else "/hmac"
    authorization = sign_onepoint(
        method,
        f"http://testserver{path}",
        body,
        app_id=APP_ID,
        secret=secret,
        nonce=NONCE,
        timestamp=str(int(time.time())),  # now: within the check's window
    )
    headers = {"Authorization": authorization, **(JSON if body else {})}
    return Call(method, path, status, headers, body)


def _query_case(spelling: str) -> Case:
    """The key as ``spelling`` (``NAME=VALUE...``) in a GET callback, a GET callback that
    cannot be parsed (rejected, kept), and beside a POST body."""
    return Case(
        "query",
        [
            Call("GET", f"/query?{GET_FIELDS}&{spelling}", 200),
            Call("GET", f"/query?{spelling}&{BROKEN_FIELDS}", 400),
            Call("POST", f"/query?{spelling}&batch=7", 200, JSON, POST_BODY),
            Call("GET", f"/query?{spelling}", 200),  # a URL check: nothing kept
        ],
    )


def _refused_query_case(spelling: str) -> Case:
    return Case(
        "query",
        [
            Call("GET", f"/query?{GET_FIELDS}&{spelling}", 401),
            Call("POST", f"/query?{spelling}", 401, JSON, POST_BODY),
        ],
    )


def _header_case(channel: str, headers: dict[str, str]) -> Case:
    return Case(
        channel,
        [
            Call("GET", f"/{channel}?{GET_FIELDS}", 200, headers),
            Call("GET", f"/{channel}?{BROKEN_FIELDS}", 400, headers),
            Call("POST", f"/{channel}", 200, {**headers, **JSON}, POST_BODY),
        ],
    )


BASIC = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
CASES: dict[str, Case] = {
    "query-auth": _query_case(f"auth={KEY}"),
    "query-AUTH": _query_case(f"AUTH={KEY}"),
    "query-%61uth": _query_case(f"%61uth={KEY}"),
    "query-a%75th": _query_case(f"a%75th={KEY}"),
    "query-%41%55%54%48": _query_case(f"%41%55%54%48={KEY}"),
    "query-encoded-value": _query_case("auth=" + _percent_encoded(KEY, "%%%02X")),
    "query-encoded-dash": _query_case("auth=" + KEY.replace("-", "%2d")),
    "query-twice": _query_case(f"auth={KEY}&Auth={KEY}"),
    "query-valueless-too": _query_case(f"auth={KEY}&auth"),
    "query-refused-semicolon": _refused_query_case(f"x=1;auth={KEY}"),
    "query-refused-encoded-equals": _refused_query_case(f"auth%3D{KEY}"),
    "query-refused-plus": _refused_query_case(f"au+th={KEY}"),
    "query-refused-wrong-first": _refused_query_case(f"auth=wrong&auth={KEY}"),
    "header": _header_case("header", {HEADER: KEY}),
    "header-lowercase-name": _header_case("header", {HEADER.lower(): KEY}),
    "basic": _header_case("basic", {"Authorization": BASIC}),
    "bearer": _header_case("bearer", {"Authorization": f"Bearer {KEY}"}),
    "hmac": Case(
        "hmac",
        [
            _hmac_call("GET", GET_FIELDS, b"", 200),
            _hmac_call("GET", BROKEN_FIELDS, b"", 400),
            _hmac_call("POST", "", POST_BODY, 200),
            _hmac_call("POST", "batch=7", POST_BODY, 200),
        ],
    ),
    "hmac-mismatch": Case(
        "hmac",
        [
            _hmac_call("GET", GET_FIELDS, b"", 401, secret="wrong-secret"),
            _hmac_call("POST", "", POST_BODY, 401, secret="wrong-secret"),
        ],
        leaked=[PERSON, TEXT],
    ),
}


def _config(tmp_path: Path, sink_url: str) -> Config:
    return Config(
        channels={
            "query": Channel(provider="diy", auth="query", keys=[KEY]),
            "header": Channel(provider="diy", auth="header", header=HEADER, keys=[KEY]),
            "basic": Channel(provider="diy", auth="basic", keys=[f"{USER}:{KEY}"]),
            "bearer": Channel(provider="diy", auth="bearer", keys=[KEY]),
            "hmac": Channel(
                provider="onepoint", auth="hmac", options={"credentials": {APP_ID: KEY}}
            ),
        },
        journal=f"sqlite:///{tmp_path / 'journal.db'}",
        metrics=True,
        settings={"forward": {"url": sink_url}},
    )


def _toml(tmp_path: Path, sink_url: str) -> Path:
    """The same configuration as a file, for the ``receiver`` command."""
    path = tmp_path / "receiver.toml"
    path.write_text(
        f'journal = "sqlite:///{tmp_path / "journal.db"}"\n'
        "[settings.forward]\n"
        f'url = "{sink_url}"\n'
        "[channels.query]\n"
        'provider = "diy"\nauth = "query"\nkeys = ["${SWEEP_KEY}"]\n'
        "[channels.header]\n"
        f'provider = "diy"\nauth = "header"\nheader = "{HEADER}"\nkeys = ["${{SWEEP_KEY}}"]\n'
        "[channels.basic]\n"
        f'provider = "diy"\nauth = "basic"\nkeys = ["{USER}:${{SWEEP_KEY}}"]\n'
        "[channels.bearer]\n"
        'provider = "diy"\nauth = "bearer"\nkeys = ["${SWEEP_KEY}"]\n'
        "[channels.hmac]\n"
        'provider = "onepoint"\nauth = "hmac"\n'
        "[channels.hmac.options]\n"
        f'credentials = {{ "{APP_ID}" = "${{SWEEP_KEY}}" }}\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as running:
        yield running


@pytest.fixture
def debug_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """structlog at debug level, loggers not cached (the sweep sees every line); the
    ``receiver`` command's own logging set-up kept out (it is process-wide)."""
    import receiver.logs

    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    saved = structlog.get_config()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(0), cache_logger_on_first_use=False
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def _text_of(value: Any) -> bytes:
    """Everything in ``value`` as bytes to search: str, bytes, or JSON of the rest."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return json.dumps(value, default=repr).encode()


def _journal_traces(db: Path) -> list[tuple[str, bytes]]:
    """Every value of every column of every row of every table, and the files' bytes."""
    traces: list[tuple[str, bytes]] = []
    with sqlite3.connect(db) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
        for table in tables:
            if (
                connection.execute(
                    "SELECT type FROM sqlite_master WHERE name = ?", (table,)
                ).fetchone()[0]
                != "table"
            ):
                continue
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if value is None or isinstance(value, int | float):
                        continue
                    traces.append((f"journal table {table}", _text_of(value)))
                    if isinstance(value, bytes):  # msgpack: the decoded tree too
                        try:
                            decoded = msgspec.msgpack.decode(value)
                        except msgspec.DecodeError:
                            continue
                        traces.append((f"journal table {table} (decoded)", _text_of(decoded)))
    for path in db.parent.glob(db.name + "*"):
        traces.append((f"journal file {path.name}", path.read_bytes()))
    return traces


def _event_traces(recorder: EventRecorder) -> list[tuple[str, bytes]]:
    traces = []
    for event in recorder.events:
        traces.append(("plugin event (JSON)", msgspec.json.encode(event)))
        traces.append(("plugin event raw", event.raw))
        traces.append(("plugin event repr", repr(event).encode()))
        traces.append(("plugin event metadata", _text_of(event.metadata)))
    return traces


def _forward_traces(sink: Sink) -> list[tuple[str, bytes]]:
    traces = []
    for request in sink.requests:
        traces.append(("forward request", request.head + request.body))
        body = request.body
        try:
            posted = json.loads(body)
        except ValueError:
            continue
        traces.append(("forward raw (decoded)", base64.b64decode(posted.get("raw", ""))))
    return traces


@pytest.mark.parametrize("name", list(CASES))
def test_key_sweep_leaves_no_trace_of_the_credential(
    name: str,
    tmp_path: Path,
    sink: Sink,
    debug_logging: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    recorder = EventRecorder()
    traces: list[tuple[str, bytes]] = []
    presented = [
        value
        for call in case.calls
        for header, value in call.headers.items()
        if header.lower() in ("authorization", HEADER.lower())
    ]
    # The key parameter is removed, not replaced: no "auth=REDACTED" is kept either.
    forms = [*forms_of(KEY, *presented), b"REDACTED"]

    with capture_logs(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.format_exc_info]
    ) as logs:
        app = create_app(_config(tmp_path, sink.url), plugins=[recorder])
        with TestClient(app, raise_server_exceptions=False) as client:
            for call in case.calls:
                response = client.request(
                    call.method, call.url, headers=call.headers, content=call.body
                )
                assert response.status_code == call.status, (call.url, response.text)
                traces.append((f"response to {call.method} {call.url}", response.content))
                traces.append(("response headers", _text_of(dict(response.headers))))
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
            traces.append(("/metrics", metrics.content))
    # Debug lines are captured: forward's "event forwarded", for each event dispatched.
    assert any(line["log_level"] == "debug" for line in logs) == any(
        call.status == 200 for call in case.calls
    )
    traces += [(f"log line {line.get('event')!r}", _text_of(line)) for line in logs]
    traces += _event_traces(recorder)
    traces += _forward_traces(sink)

    monkeypatch.setenv("SWEEP_KEY", KEY)
    toml = _toml(tmp_path, sink.url)
    capsys.readouterr()
    assert main(["events", "--config", str(toml), "--limit", "1000"]) == 0
    listing = capsys.readouterr()
    traces.append(("receiver events", (listing.out + listing.err).encode()))
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        ids = [row[0] for row in connection.execute("SELECT id FROM events")]
    assert bool(ids) == any(call.status != 401 for call in case.calls)
    for entry_id in ids:
        assert main(["events", "--config", str(toml), "show", entry_id]) == 0
        shown = capsys.readouterr()
        traces.append((f"receiver events show {entry_id}", (shown.out + shown.err).encode()))
    traces += _journal_traces(tmp_path / "journal.db")

    found = [(where, form.decode()) for where, text in traces for form in forms if form in text]
    assert not found, f"the credential was found: {found}"
    for value in case.leaked:
        logged = [
            where
            for where, text in traces
            if where.startswith("log line") and value.encode() in text
        ]
        assert not logged, f"{value!r} (request data of a refused callback) was logged: {logged}"


@pytest.mark.parametrize(
    "spelling",
    [
        f"auth={KEY}",
        f"AUTH={KEY}",
        f"%61uth={KEY}",
        f"a%75th={KEY}",
        f"auth={KEY}&aUtH={KEY}",
        f"auth={KEY}&auth",
        "auth=" + _percent_encoded(KEY, "%%%02x"),
    ],
)
def test_key_sweep_query_key_parameter_is_removed_not_redacted(
    spelling: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key parameter, every spelling of it, is gone from a GET callback's ``raw``
    (what plugins get and ``forward`` posts), from a rejected GET callback's kept body,
    and from the journal's ``meta["query"]`` (absent when the key was all there was)."""
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    recorder = EventRecorder()
    db = tmp_path / "journal.db"
    config = Config(
        channels={"query": Channel(provider="diy", auth="query", keys=[KEY])},
        journal=f"sqlite:///{db}",
    )
    with TestClient(create_app(config, plugins=[recorder])) as client:
        assert client.get(f"/query?{GET_FIELDS}&{spelling}").status_code == 200
        assert client.get(f"/query?{spelling}&{BROKEN_FIELDS}").status_code == 400
        assert client.post(f"/query?{spelling}&batch=7", content=POST_BODY).status_code == 200
        assert client.post(f"/query?{spelling}", content=b'{"Type": "Help"}').status_code == 200
    assert [event.raw for event in recorder.events][:1] == [GET_FIELDS.encode()]
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT state, raw, meta FROM events ORDER BY id").fetchall()
    metas = [msgspec.msgpack.decode(meta) for _, _, meta in rows]
    assert [(state, raw) for state, raw, _ in rows][:2] == [
        ("done", GET_FIELDS.encode()),
        ("rejected", BROKEN_FIELDS.encode()),
    ]
    assert [meta.get("query") for meta in metas] == [GET_FIELDS, BROKEN_FIELDS, "batch=7", None]


_PIECES = st.sampled_from(
    [
        "auth",
        "AUTH",
        "a",
        "u",
        "t",
        "h",
        "%61",
        "%75",
        "%41",
        "=",
        "&",
        ";",
        "+",
        "%3D",
        "%26",
        "%2",
        "%",
        "%C3%A4",
        "%E2%84%AA",
        "\xe4",
        "x",
        KEY,
        "%6B3y-SWEEP-7a1f",
    ]
)


def _refusal(query: str) -> str | None:
    """Why a query-auth channel refuses ``query`` (None: it accepts it)."""
    authenticator = build_authenticator(
        Channel(provider="diy", auth="query", keys=[KEY]), "q", DiyProvider, None
    )
    scope = {"headers": [], "query_string": query.encode("latin-1")}
    try:
        authenticator.check(CallbackRequest(scope, b""))
    except NotAuthenticated as exc:
        return str(exc)
    return None


@given(st.lists(_PIECES, max_size=14).map("".join))
def test_key_sweep_check_and_removal_never_disagree(query: str) -> None:
    """Whatever the query, the check finds no key parameter at all in what removal
    leaves, and it accepts exactly what it accepted when it read the query with
    ``parse_qsl`` (authentication itself is unchanged)."""
    left = _refusal(without_key_param(query, "auth"))
    assert left is not None and left.startswith("missing credentials")
    pairs = parse_qsl(query, keep_blank_values=True)
    first = next((value for name, value in pairs if name.lower() == "auth"), None)
    assert (_refusal(query) is None) == (first == KEY)


def test_key_sweep_key_header_is_never_kept_even_under_a_kept_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel whose key travels in a header the journal otherwise keeps (User-Agent)
    keeps that header out of the entry's meta."""
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    db = tmp_path / "journal.db"
    channel = Channel(provider="diy", auth="header", header="User-Agent", keys=[KEY])
    config = Config(channels={"ua": channel}, journal=f"sqlite:///{db}")
    with TestClient(create_app(config)) as client:
        answer = client.post("/ua", content=POST_BODY, headers={"User-Agent": KEY, **JSON})
    assert answer.status_code == 200
    with sqlite3.connect(db) as connection:
        (meta,) = connection.execute("SELECT meta FROM events").fetchone()
    kept = msgspec.msgpack.decode(meta)
    assert "user-agent" not in kept and kept["content-type"] == "application/json"
