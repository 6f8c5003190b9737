"""receiver.testing: the pytest plugin users test their plugins with.

A user's test file runs in its own pytest run (``pytester``) and its outcome is checked;
the builders are checked against a real app for every provider, auth mode and format.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from installed_wheel import clean_env, installed_wheel, run, run_in_venv

from receiver import Channel, Config, ConfigError, Event, Reply, hookimpl, samples
from receiver.events import EventType
from receiver.testing import (
    TEST_APP_ID,
    ReceiverClient,
    build_request,
    make_channel,
    make_event,
    sign_onepoint,
)

pytest_plugins = ["pytester"]

README = Path(__file__).parent.parent / "README.md"
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

PLUGIN = """
from receiver import Reply, hookimpl

class Hours:
    name = "hours"

    def __init__(self):
        self.stopped = []

    @hookimpl
    def on_keyword(self, event):
        return "We are open 9-5" if event.text == "HOURS" else None

    @hookimpl
    def on_message(self, event):
        return Reply(text="Thanks!") if event.text else None

    @hookimpl
    def on_stop(self, event):
        self.stopped.append(event.source)
"""


@pytest.fixture
def user(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: the plugin module ``hours`` next to the tests, warnings as errors."""
    pytester.makepyfile(hours=PLUGIN)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.syspathinsert()
    return pytester


# --------------------------------------------------------------------------- as a user


def readme_test() -> str:
    """The Python block of README's "### Testing a plugin"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Testing a plugin", 1)[1].split("\n### ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_testing_readme_example_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile(test_readme=readme_test())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_testing_fixtures_need_no_configuration(user: pytest.Pytester) -> None:
    # The pytest11 entry point loads receiver.testing: no conftest, no -p.
    user.makepyfile(
        test_user="""
        from hours import Hours

        def test_hours(receiver_client):
            client = receiver_client(channels={"sms": "onepoint"}, plugins=[Hours])
            response = client.send("sms", "keyword", set={"Message": "HOURS"})
            assert response.status_code == 200
            reply = client.assert_reply(text="We are open 9-5", via="response")
            assert reply.destination == "447700900654"
            client.assert_dispatched("keyword", text="HOURS")

        def test_stop(receiver_client):
            client = receiver_client(channels={"sms": "diy:hmac"}, plugins=[Hours])
            client.send("sms", "stop")
            event = client.assert_dispatched(type="stop", channel="sms", provider="diy")
            assert client.plugin("hours").stopped == [event.source]
            client.assert_no_reply()

        def test_app(receiver_app):
            from starlette.testclient import TestClient

            app = receiver_app(channels={"sms": "onepoint"}, plugins=[Hours])
            body = b'{"Type": "Stop", "MessageID": "MS1", "Source": "447700900111"}'
            assert TestClient(app).post("/sms", content=body).status_code == 200
            app.state.recorder.assert_dispatched("stop", source="447700900111")
        """
    )
    user.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_testing_failing_assert_dispatched_is_readable(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_user="""
        from hours import Hours

        def test_wrong_source(receiver_client):
            client = receiver_client(channels={"sms": "onepoint"}, plugins=[Hours])
            client.send("sms", "stop", set={"Source": "447700900222"})
            client.send("sms", "keyword", set={"Message": "HOURS"})
            client.assert_dispatched(type="stop", source="447700900999")
        """
    )
    result = user.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: no event dispatched with type='stop', source='447700900999';"
            " 2 dispatched:",
            "E*type='stop', source='447700900222'",
            "E*type='keyword', source='447700900654'",
        ]
    )
    # The helper's own frames are hidden: the failure points at the user's line.
    assert "receiver/testing.py" not in result.stdout.str()
    assert ">       client.assert_dispatched(" in result.stdout.str()


def test_testing_failing_assert_reply_is_readable(user: pytest.Pytester) -> None:
    user.makepyfile(
        test_user="""
        from hours import Hours

        def test_wrong_reply(receiver_client):
            client = receiver_client(channels={"sms": "onepoint"}, plugins=[Hours])
            client.send("sms", "keyword", set={"Message": "HOURS"})
            client.assert_reply(text="We are closed")

        def test_nothing(receiver_client):
            client = receiver_client(channels={"sms": "onepoint"}, plugins=[Hours])
            client.assert_dispatched("message")
        """
    )
    result = user.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: no reply with text='We are closed'; 1 made:",
            "E*text='We are open 9-5' via response",
            "E*AssertionError: no event dispatched with type='message'; none was dispatched",
        ]
    )


@pytest.mark.parametrize(
    ("args", "conftest", "environment"),
    [
        pytest.param(["-p", "receiver.testing"], None, {}, id="entry-point-and-p"),
        pytest.param(
            [], 'pytest_plugins = ["receiver.testing"]\n', {}, id="entry-point-and-conftest"
        ),
        pytest.param(
            ["-p", "receiver.testing"],
            None,
            {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
            id="autoload-off-and-p",
        ),
        pytest.param(
            [],
            'pytest_plugins = ["receiver.testing"]\n',
            {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
            id="autoload-off-and-conftest",
        ),
    ],
)
def test_testing_explicit_activation_loads_it_once(
    user: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    conftest: str | None,
    environment: dict[str, str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if conftest is not None:
        user.makeconftest(conftest)
    user.makepyfile(
        test_user="""
        import receiver.testing

        def test_once(request, receiver_client):
            manager = request.config.pluginmanager
            loaded = [p for p in manager.get_plugins() if p is receiver.testing]
            assert len(loaded) == 1
        """
    )
    user.runpytest_subprocess("-p", "no:cacheprovider", *args).assert_outcomes(passed=1)


def test_testing_can_be_kept_out(user: pytest.Pytester) -> None:
    user.makepyfile(test_user="def test_uses(receiver_client):\n    pass\n")
    result = user.runpytest("-p", "no:cacheprovider", "-p", "no:receiver.testing")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'receiver_client' not found*"])


def test_testing_import_is_cheap() -> None:
    # pytest imports it in every run where receiver is installed: no app, no web stack.
    code = (
        "import sys, receiver.testing\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('receiver', 'starlette', 'msgspec', 'structlog', 'anyio', 'httpx2', 'uvicorn')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.replace("'", '"')) == [
        "receiver",
        "receiver.hookspecs",
        "receiver.testing",
    ]


def test_testing_fixtures_are_few_receiver_named_and_not_autouse(user: pytest.Pytester) -> None:
    # Loaded in every pytest run where receiver is installed: it must not reach into tests
    # that do not ask for it.
    user.makepyfile(
        test_user="""
        import receiver.testing

        def test_nothing_autouse(request):
            assert request.fixturenames == ["request"]

        def test_only_receiver_named(request):
            manager = request.config.pluginmanager
            assert manager.get_plugin("receiver.testing") is receiver.testing
            names = {
                name
                for name in dir(receiver.testing)
                if type(getattr(receiver.testing, name)).__name__ == "FixtureFunctionDefinition"
            }
            assert names == {"receiver_client", "receiver_app"}
            assert not [name for name in dir(receiver.testing) if name.startswith("pytest_")]
        """
    )
    user.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


# --------------------------------------------------------------------------- builders


def _modes(provider: str) -> list[str]:
    generic = ["none", "header", "query", "basic", "bearer"]
    return generic if provider == "whispir" else [*generic, "hmac"]


COMBINATIONS = [
    pytest.param(provider, mode, id=f"{provider}-{mode}")
    for provider in ("whispir", "onepoint", "diy")
    for mode in _modes(provider)
]


@pytest.mark.parametrize(("provider", "mode"), COMBINATIONS)
def test_testing_builders_accepted_for_every_sample_provider_and_auth_mode(
    provider: str, mode: str
) -> None:
    with ReceiverClient(channels={"ch": f"{provider}:{mode}"}) as client:
        formats: list[str | None] = [None] if provider == "whispir" else [None, "json", "form"]
        for variant in samples.variants(provider):
            for format in formats:
                response = client.send("ch", variant, format=format)
                assert response.status_code == 200, (variant, format, response.text)
            if provider != "whispir":  # and as a GET, its fields in the query
                response = client.send("ch", variant, method="GET")
                assert response.status_code == 200, (variant, "GET", response.text)
        sent = len(samples.variants(provider)) * (1 if provider == "whispir" else 4)
        assert len(client.events) == sent  # every one dispatched, none a duplicate


@pytest.mark.parametrize(("provider", "mode"), [c for c in COMBINATIONS if "none" not in c.id])
def test_testing_builders_with_a_wrong_credential_get_401(provider: str, mode: str) -> None:
    with ReceiverClient(channels={"ch": f"{provider}:{mode}"}) as client:
        wrong = {"key": "test:wrong"} if mode != "hmac" else {"secret": "wrong"}
        for method in ("POST", "GET") if provider != "whispir" else ("POST",):
            response = client.send("ch", "message", method=method, credentials=wrong)
            assert response.status_code == 401, response.text
        if mode == "hmac":
            other = {"app_id": "other-app", "secret": "wrong"}
            assert client.send("ch", "message", credentials=other).status_code == 401
        assert client.events == []


@pytest.mark.parametrize(
    "sample", [name for name in samples.names("whispir") if name.endswith(".xml")]
)
def test_testing_builders_send_whispir_xml(sample: str) -> None:
    with ReceiverClient(channels={"wh": "whispir:header"}) as client:
        callback = client.build("wh", sample)
        assert callback.headers["Content-Type"] == "application/xml"
        assert "X-Whispir-Callback-Key" in callback.headers
        assert client.send("wh", sample).status_code == 200
        assert client.events[-1].raw.lstrip().startswith(b"<")


def test_testing_builders_xml_format_picks_the_xml_sample() -> None:
    with ReceiverClient(channels={"wh": "whispir"}) as client:
        assert client.send("wh", "undeliverable", format="xml").status_code == 200
        assert client.events[-1].raw.lstrip().startswith(b"<")
        client.assert_dispatched("undeliverable")


HMAC_OPTIONS = [
    {"hmac_hash": "sha256"},
    {"hmac_key_encoding": "base64"},
    {"hmac_body": "md5"},
    {"hmac_uri": "lower-urlencoded"},
    {
        "hmac_hash": "sha256",
        "hmac_key_encoding": "base64",
        "hmac_body": "md5",
        "hmac_uri": "lower-urlencoded",
    },
    {"public_url": "https://hooks.example.com/callbacks/sms"},
]


@pytest.mark.parametrize("options", HMAC_OPTIONS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("provider", ["onepoint", "diy"])
def test_testing_builders_sign_with_the_channel_options(
    provider: str, options: dict[str, str]
) -> None:
    secret = "c2VjcmV0LWZvci10ZXN0cw=="  # Base64, so that it works as either encoding
    channel = Channel(
        provider=provider,
        auth="hmac",
        options={"credentials": {"app-1": secret, "app-2": "b3RoZXI="}, **options},
    )
    with ReceiverClient(channels={"sms": channel}) as client:
        for method in ("POST", "GET"):
            response = client.send(
                "sms", "receipt-delivered", method=method, set={"Ref": "a b~!*()"}
            )
            assert response.status_code == 200, response.text
            wrong = client.send(
                "sms", "receipt-delivered", method=method, credentials={"secret": "eA=="}
            )
            assert wrong.status_code == 401
        callback = client.build("sms", "message")
        scheme = "X-DIY-Signature" if provider == "diy" else "X-OPG-Signature"
        assert callback.headers["Authorization"].startswith(f"{scheme} app-1:")


def test_testing_build_request_is_what_the_provider_sends() -> None:
    channel = make_channel("onepoint:hmac")
    callback = build_request(
        channel, "stop", url="https://hooks.example.com/sms", fresh=False, timestamp=1700000000
    )
    sample = samples.find("onepoint", "stop")
    assert (callback.method, callback.url, callback.body) == (
        "POST",
        "https://hooks.example.com/sms",
        sample.body,
    )
    assert callback.headers["Content-Type"] == "application/json"
    nonce = callback.headers["Authorization"].split(":")[2]
    assert callback.headers["Authorization"] == sign_onepoint(
        "POST",
        "https://hooks.example.com/sms",
        sample.body,
        app_id=TEST_APP_ID,
        secret=channel.options["credentials"][TEST_APP_ID],
        nonce=nonce,
        timestamp=1700000000,
    )
    get = build_request(channel, "stop", url="http://x/sms", method="GET", set={"Message": "S T"})
    assert get.method == "GET" and get.body == b""
    assert "Message=S+T" in get.url and "Type=Stop" in get.url
    assert "MetaData" not in get.url  # a query has no nesting


def test_testing_set_changes_fields_and_fresh_makes_a_new_callback(tmp_path: Path) -> None:
    journal = {"journal": f"sqlite:///{tmp_path / 'journal.db'}"}  # it answers duplicates
    with ReceiverClient(journal, channels={"sms": "onepoint"}) as client:
        client.send("sms", "stop", fresh=False)
        again = client.send("sms", "stop", fresh=False)
        assert again.status_code == 200 and len(client.events) == 1  # a duplicate
        client.send("sms", "stop")
        assert len(client.events) == 2
        assert client.events[0].message_id != client.events[1].message_id
        client.send("sms", "receipt-delivered", set={"Status": "failed", "Test": True})
        client.assert_dispatched("receipt", status="failed", test=True)
        client.send("sms", body={"Type": "Keyword", "MessageID": "MS9", "Message": "own body"})
        client.assert_dispatched("keyword", text="own body", message_id=lambda v: v != "MS9")


def test_testing_unknown_sample_or_channel_names_the_choices() -> None:
    with ReceiverClient(channels={"sms": "onepoint"}) as client:
        with pytest.raises(KeyError, match=r"one of .*message-inbound"):
            client.send("sms", "nope")
        with pytest.raises(KeyError, match="no channel 'other': one of sms"):
            client.send("other")


# --------------------------------------------------------------------------- app and recorder


class Answering:
    name = "answering"

    def __init__(self) -> None:
        self.sent: list[Reply] = []

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        return Reply(text=f"Got: {event.text}", metadata={"Ref": "7"})

    @hookimpl
    def send_reply(self, event: Event, reply: Reply) -> bool:
        self.sent.append(reply)
        return True


def test_testing_recorder_sees_whispir_replies_and_send_reply_still_runs() -> None:
    with ReceiverClient(channels={"wh": "whispir:header"}, plugins=[Answering]) as client:
        assert client.send("wh", "message", set={"responseMessage.content": "hi"}).content == b""
        reply = client.assert_reply(text="Got: hi", via="send_reply")
        assert client.plugin("answering").sent == [reply]
        assert client.replies[0].event is client.events[0]


def test_testing_recorder_reads_onepoint_replies_from_the_response() -> None:
    with ReceiverClient(channels={"sms": "diy"}, plugins=[Answering]) as client:
        client.send("sms", "message", set={"Message": "hello"})
        reply = client.assert_reply("Got: hello", via="response", metadata={"Ref": "7"})
        assert reply.destination == client.events[0].source
        with pytest.raises(AssertionError, match="no reply via send_reply with text='Got: hello'"):
            client.assert_reply("Got: hello", via="send_reply")


def test_testing_client_from_a_toml_path_with_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMS_SECRET", "from-the-environment")
    path = tmp_path / "receiver.toml"
    path.write_text(
        textwrap.dedent(
            """
            [channels.sms]
            provider = "diy"
            auth = "hmac"
            credentials = { app-1 = "${SMS_SECRET}" }

            [settings.keyword_replies]
            keywords = { hours = "Open 9-5" }
            """
        )
    )
    with ReceiverClient(path, channels={"extra": "whispir"}) as client:
        assert client.channel("sms").options["credentials"] == {"app-1": "from-the-environment"}
        assert client.send("sms", "keyword", set={"Message": "hours"}).status_code == 200
        client.assert_reply("Open 9-5")
        assert client.send("extra", "status").status_code == 200
        client.assert_dispatched("receipt", channel="extra")


def test_testing_client_from_a_config_or_a_dict() -> None:
    config = Config(channels={"sms": Channel(provider="onepoint", auth="query", keys=["k1"])})
    with ReceiverClient(config) as client:
        assert "auth=k1" in client.build("sms").url
        assert client.send("sms").status_code == 200
    table = {"channels": {"sms": {"provider": "diy", "auth": "bearer", "keys": ["k2"]}}}
    with ReceiverClient(table) as client:
        assert client.build("sms").headers["Authorization"] == "Bearer k2"
        assert client.send("sms").status_code == 200
    with pytest.raises(ConfigError, match=r"channels\.sms\.header"):
        ReceiverClient(channels={"sms": {"provider": "onepoint", "auth": "header", "keys": ["k"]}})


FAKE_MODULE = """
from receiver import hookimpl

@hookimpl
def on_keyword(event):
    return "from the installed plugin"
"""


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed distribution whose entry point in group ``receiver`` answers keywords."""
    info = tmp_path / "fake_testing_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-testing-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[receiver]\nfake = fake_testing_plugin\n")
    (tmp_path / "fake_testing_plugin.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield
    sys.modules.pop("fake_testing_plugin", None)


def test_testing_client_loads_only_the_plugins_given(installed_plugin: None) -> None:
    with ReceiverClient(channels={"sms": "onepoint"}) as client:
        client.send("sms", "keyword")
        client.assert_no_reply()
        assert client.plugin("fake") is None
    with ReceiverClient(channels={"sms": "onepoint"}, autoload=True) as client:
        client.send("sms", "keyword")
        client.assert_reply("from the installed plugin")


def test_testing_client_with_a_journal_starts_and_stops_it(tmp_path: Path) -> None:
    config = {
        "channels": {"sms": {"provider": "onepoint", "auth": "none"}},
        "journal": f"sqlite:///{tmp_path / 'journal.db'}",
    }
    with ReceiverClient(config, plugins=[Answering]) as client:
        assert client.send("sms", "message", set={"Message": "x"}).status_code == 200
        client.assert_dispatched("message", text="x")
    assert (tmp_path / "journal.db").exists()


# --------------------------------------------------------------------------- make_event


def test_testing_make_event_fills_what_receiver_fills() -> None:
    event = make_event(type="message", text="HOURS", source="447700900123")
    assert UUID7.fullmatch(event.id)
    assert event.received_at.tzinfo is UTC
    assert (event.channel, event.provider, event.type) == ("sms", "onepoint", EventType.message)
    assert json.loads(event.raw) == {"source": "447700900123", "text": "HOURS"}
    assert make_event().id != make_event().id
    receipt = make_event("receipt", channel="wh", provider="whispir", raw=b"<x/>", status="read")
    assert (receipt.channel, receipt.provider, receipt.raw, receipt.status) == (
        "wh",
        "whispir",
        b"<x/>",
        "read",
    )
    with pytest.raises(ValueError):
        make_event("nonsense")


def test_testing_make_event_unit_tests_a_hook() -> None:
    assert Answering().on_message(make_event(text="hi")) == Reply(
        text="Got: hi", metadata={"Ref": "7"}
    )


# --------------------------------------------------------------------------- the example package


def test_testing_example_plugin_package_tests_pass(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # examples/plugin_package/tests, run in that folder as its README says.
    package = Path(__file__).parent.parent / "examples" / "plugin_package"
    copy = pytester.path / "plugin_package"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    monkeypatch.chdir(copy)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", str(copy))
    result.assert_outcomes(passed=7)


def test_testing_readme_example_passes_with_the_installed_wheel(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # As a user would: the wheel (and pytest) in a fresh virtual environment, the README's
    # test in a fresh folder, `pytest` with no configuration: the pytest11 entry point
    # brings the fixtures.
    venv = installed_wheel(tmp_path_factory)
    user = tmp_path_factory.mktemp("readme_user")
    (user / "test_hours.py").write_text(readme_test())
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "pytest>=8"]
    run([*pip, "httpx2>=2.0"], cwd=user, env=clean_env(venv))
    result = run_in_venv(venv, ["pytest", "-q", "-p", "no:cacheprovider"], cwd=user)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
