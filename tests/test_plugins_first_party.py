"""The first-party plugins of receiver.contrib: keyword_replies, opt_outs and forward.

Each app is built from a Config whose ``[settings.<name>]`` tables turn them on, with one
OnePoint channel and no authentication, and driven with real OnePoint bodies from
receiver/samples/onepoint/. Installed plugins are kept out
(``RECEIVER_DISABLE_PLUGIN_AUTOLOAD=1``).
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from samples import payload
from sink import Sink, running_sink
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, ConfigError, create_app
from receiver.contrib.opt_outs import mask

PERSON = "447700900654"  # Source of keyword.json, stop.json and help.json
SHORTCODE = "60777"


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


def body(name: str, **changes: Any) -> bytes:
    """A stored OnePoint sample with some fields changed (e.g. ``Message``, ``Type``)."""
    data = json.loads(payload("onepoint", name))
    data.update(changes)
    return json.dumps(data).encode()


def make_app(settings: dict[str, dict[str, Any]], channels: tuple[str, ...] = ("sms",)) -> Any:
    config = Config(
        channels={name: Channel(provider="onepoint", auth="none") for name in channels},
        settings=settings,
    )
    return create_app(config)


def client_for(settings: dict[str, dict[str, Any]], **kwargs: Any) -> TestClient:
    return TestClient(make_app(settings, **kwargs), raise_server_exceptions=False)


def post(client: TestClient, content: bytes, channel: str = "sms") -> Any:
    return client.post(f"/{channel}", content=content, headers={"Content-Type": "application/json"})


# keyword_replies -------------------------------------------------------------------------

KEYWORDS = {
    "keyword_replies": {
        "keywords": {"HOURS": "We are open 9-5", "price": "Plans start at 5 GBP"},
        "help": "Reply HOURS or PRICE.",
    }
}


def test_keyword_replies_keyword_reply_in_response() -> None:
    response = post(client_for(KEYWORDS), body("keyword.json", Message="HOURS"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "Source": SHORTCODE,
        "Destination": PERSON,
        "Message": "We are open 9-5",
    }


@pytest.mark.parametrize(
    "text",
    ["hours", "  hours please", "HoUrS", "\n\t HOURS   now ", "hours, please", "Hours?"],
)
def test_keyword_replies_match_ignores_case_and_whitespace(text: str) -> None:
    response = post(client_for(KEYWORDS), body("keyword.json", Message=text))
    assert response.json()["Message"] == "We are open 9-5"


def test_keyword_replies_table_keys_ignore_case() -> None:
    response = post(client_for(KEYWORDS), body("keyword.json", Message="PRICE?"))
    assert response.json()["Message"] == "Plans start at 5 GBP"


def test_keyword_replies_message_events_are_answered_too() -> None:
    response = post(client_for(KEYWORDS), body("message_inbound.json", Message=" hours pls"))
    assert response.json() == {
        "Source": "447860012345",
        "Destination": "447700900123",
        "Message": "We are open 9-5",
    }


@pytest.mark.parametrize("text", ["hoursly", "what are your hours", "", "   "])
def test_keyword_replies_only_the_first_word_matches(text: str) -> None:
    response = post(client_for(KEYWORDS), body("keyword.json", Message=text))
    assert response.status_code == 200
    assert response.content == b""


def test_keyword_replies_default_reply() -> None:
    settings = {"keyword_replies": {**KEYWORDS["keyword_replies"], "default": "Thanks!"}}
    client = client_for(settings)
    response = post(client, body("message_inbound.json"))
    assert response.json()["Message"] == "Thanks!"
    assert post(client, body("keyword.json", Message="hours")).json()["Message"] == (
        "We are open 9-5"
    )


@pytest.mark.parametrize(
    ("sample", "text"),
    [
        ("keyword.json", "HELP"),
        ("message_inbound.json", "  help me please"),
        ("keyword.json", "Help!"),
    ],
)
def test_keyword_replies_help_reply(sample: str, text: str) -> None:
    response = post(client_for(KEYWORDS), body(sample, Message=text))
    assert response.json()["Message"] == "Reply HOURS or PRICE."


def test_keyword_replies_help_type_is_not_answered() -> None:
    # The platform answered its own Help; only Message/Keyword events get replies.
    response = post(client_for(KEYWORDS), body("help.json"))
    assert response.status_code == 200
    assert response.content == b""


def test_keyword_replies_keyword_table_beats_help() -> None:
    settings = {"keyword_replies": {"keywords": {"help": "Custom help"}, "help": "Generic"}}
    response = post(client_for(settings), body("keyword.json", Message="help"))
    assert response.json()["Message"] == "Custom help"


def test_keyword_replies_no_reply_without_table() -> None:
    response = post(client_for({}), body("keyword.json", Message="HOURS"))
    assert response.status_code == 200
    assert response.content == b""


def test_first_party_plugins_not_registered_without_table() -> None:
    names = {name for name, _ in make_app({}).state.plugin_manager.list_name_plugin()}
    assert not names & {"keyword_replies", "opt_outs", "forward", "whispir_replies"}


def test_first_party_plugins_registered_by_their_table(tmp_path: Path) -> None:
    app = make_app({**KEYWORDS, "opt_outs": {"database": str(tmp_path / "o.db")}})
    manager = app.state.plugin_manager
    assert type(manager.get_plugin("keyword_replies")).__name__ == "KeywordReplies"
    assert type(manager.get_plugin("opt_outs")).__name__ == "OptOuts"
    assert manager.get_plugin("forward") is None


def test_first_party_disabled_plugins_keeps_one_out() -> None:
    config = Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        settings=KEYWORDS,
        disabled_plugins=["keyword_replies"],
    )
    client = TestClient(create_app(config))
    assert post(client, body("keyword.json", Message="hours")).content == b""


def test_keyword_replies_channels_restriction() -> None:
    settings = {"keyword_replies": {**KEYWORDS["keyword_replies"], "channels": ["sms"]}}
    client = client_for(settings, channels=("sms", "other"))
    assert post(client, body("keyword.json", Message="hours")).json()["Message"] == (
        "We are open 9-5"
    )
    other = post(client, body("keyword.json", Message="hours"), channel="other")
    assert other.status_code == 200
    assert other.content == b""


@pytest.mark.parametrize(
    "keywords",
    ["HOURS", ["HOURS"], {"HOURS": 5}, {"HOURS": ""}, {"TWO WORDS": "x"}, {"a": "1", "A": "2"}],
)
def test_keyword_replies_bad_keywords_are_a_config_error(keywords: object) -> None:
    with pytest.raises(ConfigError, match=r"settings\.keyword_replies\.keywords"):
        make_app({"keyword_replies": {"keywords": keywords}})


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"default": 3}, "default"),
        ({"help": ""}, "help"),
        ({"channels": "sms"}, "channels"),
        ({"keyword": {"A": "b"}}, "unknown field `keyword`"),
    ],
)
def test_keyword_replies_bad_settings_are_a_config_error(
    settings: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        make_app({"keyword_replies": settings})


def test_keyword_replies_two_apps_answer_with_their_own_replies() -> None:
    first = TestClient(make_app(KEYWORDS))
    second = TestClient(make_app({"keyword_replies": {"keywords": {"HOURS": "Closed today"}}}))
    off = TestClient(make_app({}))
    hours = body("keyword.json", Message="hours")
    assert post(first, hours).json()["Message"] == "We are open 9-5"
    assert post(second, hours).json()["Message"] == "Closed today"
    assert post(off, hours).content == b""
    assert post(first, hours).json()["Message"] == "We are open 9-5"


def test_keyword_replies_texts_are_not_expanded(tmp_path: Path) -> None:
    # "${NAME}" and "file:" are secrets' syntax: in a reply text they are just text.
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
        "[settings.keyword_replies]\n"
        'keywords = { JOIN = "Reply ${NAME} to join", TERMS = "file: our terms are online" }\n'
        'default = "file:/etc/passwd"\n'
    )
    client = TestClient(create_app(str(toml)))
    answer = post(client, body("keyword.json", Message="join")).json()["Message"]
    assert answer == "Reply ${NAME} to join"
    terms = post(client, body("keyword.json", Message="terms")).json()["Message"]
    assert terms == "file: our terms are online"
    assert post(client, body("keyword.json", Message="x")).json()["Message"] == "file:/etc/passwd"


# opt_outs --------------------------------------------------------------------------------


def opt_outs_app(database: Path) -> Any:
    return make_app({"opt_outs": {"database": str(database)}})


def opt_outs_of(app: Any) -> Any:
    return app.state.plugin_manager.get_plugin("opt_outs")


def test_opt_outs_stop_adds_number(tmp_path: Path) -> None:
    database = tmp_path / "state" / "opt_outs.db"
    app = opt_outs_app(database)
    plugin = opt_outs_of(app)
    assert not plugin.is_opted_out(PERSON)
    response = post(TestClient(app), body("stop.json"))
    assert response.status_code == 200
    assert response.content == b""
    assert plugin.is_opted_out(PERSON)
    assert plugin.is_opted_out(f"+{PERSON}")
    assert not plugin.is_opted_out("447700900999")
    assert database.is_file()
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT number, channel, provider, opted_out_at FROM opt_outs"
        ).fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert rows == [(PERSON, "sms", "onepoint", "2024-03-05T15:12:59.999999+00:00")]
    assert mode == "wal"


def test_opt_outs_unstop_removes_number(tmp_path: Path) -> None:
    database = tmp_path / "opt_outs.db"
    app = opt_outs_app(database)
    client = TestClient(app)
    assert post(client, body("stop.json")).status_code == 200
    assert opt_outs_of(app).is_opted_out(PERSON)
    response = post(client, body("stop.json", Type="Unstop", Message="UNSTOP"))
    assert response.status_code == 200
    assert not opt_outs_of(app).is_opted_out(PERSON)
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM opt_outs").fetchone() == (0,)


def test_opt_outs_second_stop_keeps_one_row(tmp_path: Path) -> None:
    database = tmp_path / "opt_outs.db"
    client = TestClient(opt_outs_app(database))
    for _ in range(2):
        assert post(client, body("stop.json")).status_code == 200
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM opt_outs").fetchone() == (1,)


def test_opt_outs_survive_a_new_app(tmp_path: Path) -> None:
    database = tmp_path / "opt_outs.db"
    assert post(TestClient(opt_outs_app(database)), body("stop.json")).status_code == 200
    assert opt_outs_of(opt_outs_app(database)).is_opted_out(PERSON)


def test_opt_outs_readyz_ok(tmp_path: Path) -> None:
    response = TestClient(opt_outs_app(tmp_path / "opt_outs.db")).get("/readyz")
    assert response.status_code == 200
    assert "opt_outs" in response.json()["plugins"]


def test_opt_outs_broken_database_readyz_503(tmp_path: Path) -> None:
    folder = tmp_path / "opt_outs.db"
    folder.mkdir()  # a folder where the file should be
    client = TestClient(opt_outs_app(folder), raise_server_exceptions=False)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["opt-out store unreachable"]
    assert post(client, body("stop.json")).status_code == 500  # the provider retries


def test_opt_outs_readyz_503_when_database_goes_away(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    client = TestClient(opt_outs_app(folder / "opt_outs.db"))
    assert client.get("/readyz").status_code == 200
    for path in folder.iterdir():
        path.unlink()
    (folder / "opt_outs.db").mkdir()
    assert client.get("/readyz").status_code == 503


def test_opt_outs_logs_number_masked(tmp_path: Path) -> None:
    client = TestClient(opt_outs_app(tmp_path / "opt_outs.db"))
    with capture_logs() as logs:
        post(client, body("stop.json"))
        post(client, body("stop.json", Type="Unstop"))
    changes = [e for e in logs if e.get("plugin") == "opt_outs"]
    assert [e["event"] for e in changes] == ["opted out", "opted back in"]
    assert all(e["number"] == "********0654" for e in changes)
    assert PERSON not in repr(logs)


def test_opt_outs_off_without_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app({})
    client = TestClient(app)
    assert post(client, body("stop.json")).status_code == 200
    assert opt_outs_of(app) is None
    assert client.get("/readyz").status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_opt_outs_two_apps_keep_their_own_numbers(tmp_path: Path) -> None:
    first, second = opt_outs_app(tmp_path / "a.db"), opt_outs_app(tmp_path / "b.db")
    assert post(TestClient(first), body("stop.json")).status_code == 200
    assert opt_outs_of(first).is_opted_out(PERSON)
    assert not opt_outs_of(second).is_opted_out(PERSON)
    assert opt_outs_of(first) is not opt_outs_of(second)


def test_opt_outs_relative_database_is_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "receiver.toml").write_text(
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
        '[settings.opt_outs]\ndatabase = "state/opt_outs.db"\n'
    )
    monkeypatch.chdir(tmp_path)
    app = create_app(str(folder / "receiver.toml"))
    assert post(TestClient(app), body("stop.json")).status_code == 200
    assert (folder / "state" / "opt_outs.db").is_file()
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("settings", [{"database": 5}, {"database": ""}, {}, {"path": "x.db"}])
def test_opt_outs_bad_settings_are_a_config_error(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"settings\.opt_outs"):
        make_app({"opt_outs": settings})


def test_opt_outs_mask_keeps_last_four() -> None:
    assert mask("447700900654") == "********0654"
    assert mask("123") == "123"
    assert mask("4" * 100_000 + "\n123") == "*" * 15 + "\\n123"  # bounded, escaped


# forward ---------------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_forward_posts_event_json(sink: Sink) -> None:
    settings = {"forward": {"url": sink.url, "headers": {"Authorization": "Bearer s3cret"}}}
    client = client_for(settings)
    sent = body("keyword.json")
    with capture_logs() as logs:
        response = post(client, sent)
    assert response.status_code == 200
    event_id = next(e["event_id"] for e in logs if e["event"] == "callback")
    assert len(sink.requests) == 1
    path, headers, forwarded, _ = sink.requests[0]
    assert path == "/events"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    event = json.loads(forwarded)
    assert event["id"] == event_id
    assert event["type"] == "keyword"
    assert event["message_id"] == "MS1312312312904"
    assert event["channel"] == "sms"
    assert event["provider"] == "onepoint"
    assert base64.b64decode(event["raw"]) == sent


def test_forward_keeps_the_keyword_reply(sink: Sink) -> None:
    settings = {"forward": {"url": sink.url}, **KEYWORDS}
    response = post(client_for(settings), body("keyword.json", Message="hours"))
    assert response.json()["Message"] == "We are open 9-5"
    assert json.loads(sink.requests[0][2])["text"] == "hours"


def test_forward_closed_port_answers_500() -> None:
    settings = {"forward": {"url": f"http://127.0.0.1:{closed_port()}/events", "timeout": 2}}
    response = post(client_for(settings), body("stop.json"))
    assert response.status_code == 500


@pytest.mark.parametrize("status", [400, 500, 503, 302])
def test_forward_non_2xx_answers_500(sink: Sink, status: int) -> None:
    sink.status = status
    response = post(client_for({"forward": {"url": sink.url}}), body("stop.json"))
    assert response.status_code == 500
    assert len(sink.requests) == 1  # a redirect is not followed


def test_forward_timeout_answers_500(sink: Sink) -> None:
    sink.delay = 1.0
    response = post(client_for({"forward": {"url": sink.url, "timeout": 0.2}}), body("stop.json"))
    assert response.status_code == 500


def test_forward_never_logs_header_values() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/events?token=t0ken"
    settings = {"forward": {"url": url, "headers": {"Authorization": "Bearer s3cret"}}}
    with capture_logs() as logs:
        response = post(client_for(settings), body("stop.json"))
    assert response.status_code == 500
    failed = [e for e in logs if e["event"] == "forward failed"]
    assert len(failed) == 1
    assert failed[0]["url"] == f"http://127.0.0.1:{port}/events"
    text = repr(logs)
    assert "s3cret" not in text
    assert "t0ken" not in text


def test_forward_url_with_credentials_is_refused_without_echoing_them() -> None:
    url = "http://user:pa55word@127.0.0.1:9/events"
    with pytest.raises(ConfigError, match=r"settings\.forward\.url: no user or password") as caught:
        make_app({"forward": {"url": url}})
    assert "pa55word" not in str(caught.value)


def test_forward_off_without_table(sink: Sink) -> None:
    assert post(client_for({}), body("stop.json")).status_code == 200
    assert sink.requests == []


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"url": "ftp://example.com/x"},
        {"url": "http:///nohost"},
        {"url": "http://example.com", "timeout": 0},
        {"url": "http://example.com", "timeout": "soon"},
        {"url": "http://example.com", "headers": {"X-Key": 1}},
        {"url": "http://example.com", "retries": 3},
    ],
)
def test_forward_bad_settings_are_a_config_error(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"settings\.forward"):
        make_app({"forward": settings})
