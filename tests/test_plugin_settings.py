"""Typed plugin settings, and ``${NAME}``/``file:`` expanded only where secrets go."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from samples import payload
from starlette.testclient import TestClient

from receiver import (
    Channel,
    Config,
    ConfigError,
    Event,
    Reply,
    Secret,
    create_app,
    hookimpl,
    load_config,
)

EXAMPLES = Path(__file__).parent.parent / "examples"
CHANNELS = {"sms": Channel(provider="onepoint", auth="none")}


@pytest.fixture(autouse=True)
def no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


class Crm:
    """A plugin with typed settings, one of them a secret; it keeps what it was given."""

    name = "crm"

    class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
        url: str
        token: Secret
        retries: int = 2
        headers: dict[str, Secret] = {}
        note: str = ""

    def __init__(self) -> None:
        self.settings: Any = None
        self.manager: Any = None

    @hookimpl
    def configure(self, config: Config, manager: Any) -> None:
        self.settings = config.settings.get(self.name)
        self.manager = manager


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text('[channels.sms]\nprovider = "onepoint"\nauth = "none"\n' + text)
    return path


def build(path: Path | Config, plugin: object) -> Any:
    return create_app(path if isinstance(path, Config) else str(path), plugins=[plugin])


def test_plugin_settings_converted_to_the_declared_struct(tmp_path: Path) -> None:
    crm = Crm()
    build(toml(tmp_path, '[settings.crm]\nurl = "http://x"\ntoken = "t"\nretries = 5\n'), crm)
    assert crm.settings == Crm.Settings(url="http://x", token="t", retries=5)


@pytest.mark.parametrize(
    ("table", "path", "reason"),
    [
        ('url = "http://x"\ntoken = "t"\nretries = "many"\n', "settings.crm.retries", "int"),
        ('url = 42\ntoken = "t"\n', "settings.crm.url", "str"),
        ('url = "http://x"\n', "settings.crm", "missing required field `token`"),
        ('url = "http://x"\ntoken = "t"\nretry = 1\n', "settings.crm", "unknown field `retry`"),
        ('url = "u"\ntoken = "t"\nheaders = { X = 1 }\n', "settings.crm.headers[...]", "str"),
    ],
)
def test_plugin_settings_errors_name_the_file_and_key_path(
    tmp_path: Path, table: str, path: str, reason: str
) -> None:
    file = toml(tmp_path, "[settings.crm]\n" + table)
    with pytest.raises(ConfigError) as caught:
        build(file, Crm())
    message = str(caught.value)
    assert message.startswith(f"{file}: {path}: "), message
    assert reason in message


def test_plugin_settings_example_error_names_the_key(tmp_path: Path) -> None:
    # The example: `greeting = 42` was accepted by a hand-written check.
    file = toml(tmp_path, '[settings.vip]\nnumbers = { "1" = "Ada" }\ngreeting = 42\n')
    file.write_text(file.read_text() + f'plugins_dir = "{EXAMPLES / "plugins"}"\n')
    text = file.read_text()
    # top-level keys must come before the tables
    file.write_text(f'plugins_dir = "{EXAMPLES / "plugins"}"\n' + text.rsplit("plugins_dir", 1)[0])
    with pytest.raises(
        ConfigError, match=r"receiver\.toml: settings\.vip\.greeting: Expected `str`"
    ):
        create_app(str(file))


def test_plugin_secret_fields_expanded_others_kept_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_TOKEN", "t0ken-from-env")
    monkeypatch.setenv("CRM_URL", "http://should-not-be-used")
    secret_file = tmp_path / "auth"
    secret_file.write_text("Basic c2VjcmV0\n")
    crm = Crm()
    build(
        toml(
            tmp_path,
            "[settings.crm]\n"
            'url = "${CRM_URL}"\n'
            'token = "${CRM_TOKEN}"\n'
            f'headers = {{ Authorization = "file:{secret_file}" }}\n'
            'note = "file: see ${CRM_TOKEN}"\n',
        ),
        crm,
    )
    assert crm.settings.token == "t0ken-from-env"
    assert crm.settings.headers == {"Authorization": "Basic c2VjcmV0"}
    assert crm.settings.url == "${CRM_URL}"
    assert crm.settings.note == "file: see ${CRM_TOKEN}"


def test_plugin_secret_not_set_is_a_config_error_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRM_TOKEN_UNSET", raising=False)
    file = toml(tmp_path, '[settings.crm]\nurl = "u"\ntoken = "${CRM_TOKEN_UNSET}"\n')
    with pytest.raises(ConfigError) as caught:
        build(file, Crm())
    assert str(caught.value) == (
        f"{file}: settings.crm.token: environment variable CRM_TOKEN_UNSET is not set"
    )


def test_plugin_secret_expanded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A secret whose value itself looks like a reference is not expanded again.
    monkeypatch.setenv("CRM_TOKEN", "${HOME}")
    crm = Crm()
    build(toml(tmp_path, '[settings.crm]\nurl = "u"\ntoken = "${CRM_TOKEN}"\n'), crm)
    assert crm.settings.token == "${HOME}"


def test_plugin_settings_from_python_config_typed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_TOKEN", "abc")
    crm = Crm()
    config = Config(channels=CHANNELS, settings={"crm": {"url": "u", "token": "${CRM_TOKEN}"}})
    build(config, crm)
    assert crm.settings == Crm.Settings(url="u", token="abc")
    with pytest.raises(ConfigError, match=r"^config: settings\.crm\.retries: "):
        build(
            Config(channels=CHANNELS, settings={"crm": {"url": "u", "token": "t", "retries": []}}),
            Crm(),
        )


def test_plugin_settings_given_as_struct_kept() -> None:
    crm = Crm()
    given = Crm.Settings(url="u", token="${NOT_EXPANDED}")
    build(Config(channels=CHANNELS, settings={"crm": given}), crm)
    assert crm.settings is given


def test_plugin_without_settings_type_gets_its_table_as_written(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Plain:
        name = "plain"

        @hookimpl
        def configure(self, config: Config) -> None:
            seen.append(config.settings.get("plain"))

    build(toml(tmp_path, '[settings.plain]\ntext = "Reply ${NAME} to join"\n'), Plain())
    assert seen == [{"text": "Reply ${NAME} to join"}]


def test_plugin_settings_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"settings\.crm: must be a table"):
        build(Config(channels=CHANNELS, settings={"crm": "x"}), Crm())


def test_config_secrets_expanded_only_in_secret_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY", "k3y")
    monkeypatch.setenv("APP_SECRET", "s3cret")
    monkeypatch.setenv("STATE", str(tmp_path / "j"))
    (tmp_path / "j").mkdir()
    path = tmp_path / "receiver.toml"
    path.write_text(
        'journal = "sqlite:///${STATE}/r.db"\n'
        'state_dir = "${STATE}"\n'
        "[channels.w]\n"
        'provider = "whispir"\nauth = "header"\nkeys = ["${KEY}"]\nheader = "X-${KEY}"\n'
        "[channels.o]\n"
        'provider = "onepoint"\nauth = "hmac"\n'
        "[channels.o.options]\n"
        'credentials = { app = "${APP_SECRET}" }\n'
    )
    config = load_config(path)
    assert config.journal == f"sqlite:///{tmp_path}/j/r.db"
    assert config.channels["w"].keys == ["k3y"]
    assert config.channels["o"].options["credentials"] == {"app": "s3cret"}
    assert config.channels["w"].header == "X-${KEY}"  # not a secret: as written
    assert config.state_dir == str(tmp_path / "j")  # a path: ${NAME} expanded, not file:


def test_config_source_is_the_file(tmp_path: Path) -> None:
    path = toml(tmp_path, "")
    assert load_config(path).source == str(path)
    assert Config().source == "config"
    typed = create_app(str(path)).state.config
    assert typed.source == str(path)


def test_plugin_configure_gets_the_apps_manager() -> None:
    crm = Crm()
    app = build(Config(channels=CHANNELS, settings={"crm": {"url": "u", "token": "t"}}), crm)
    assert crm.manager is app.state.plugin_manager
    assert crm.manager.get_plugin("crm") is crm


class Counter:
    """A plugin given as a class: each app gets its own instance."""

    name = "counter"

    def __init__(self) -> None:
        self.seen = 0

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        self.seen += 1
        return Reply(text=f"seen {self.seen}")


def test_plugin_class_instantiated_per_app() -> None:
    first = TestClient(create_app(Config(channels=CHANNELS), plugins=[Counter]))
    second = TestClient(create_app(Config(channels=CHANNELS), plugins=[Counter]))
    body = payload("onepoint", "message_inbound.json")
    headers = {"Content-Type": "application/json"}
    assert first.post("/sms", content=body, headers=headers).json()["Message"] == "seen 1"
    assert first.post("/sms", content=body, headers=headers).json()["Message"] == "seen 2"
    assert second.post("/sms", content=body, headers=headers).json()["Message"] == "seen 1"


def test_plugin_named_as_module_colon_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_hooks.py").write_text(
        "from receiver import hookimpl\n\n"
        "class Audit:\n    name = 'audit'\n\n"
        "    @hookimpl\n    def on_event(self, event):\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = Config(channels=CHANNELS, plugins=["my_hooks:Audit"])
    first, second = create_app(config), create_app(config)
    one = first.state.plugin_manager.get_plugin("audit")
    assert type(one).__name__ == "Audit"
    assert second.state.plugin_manager.get_plugin("audit") is not one
    assert first.state.plugin_manager.origins["audit"] == "plugins (module)"
    with pytest.raises(ConfigError, match=r"my_hooks:Nope.*AttributeError"):
        create_app(Config(channels=CHANNELS, plugins=["my_hooks:Nope"]))


def test_check_config_reports_a_settings_error(tmp_path: Path) -> None:
    file = toml(tmp_path, "[settings.keyword_replies]\nkeywords = { HOURS = 9 }\n")
    result = subprocess.run(
        [sys.executable, "-m", "receiver", "check-config", "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{file}: settings.keyword_replies.keywords[...]: Expected `str`" in result.stderr


def test_serve_options_keep_the_config_file_in_errors(tmp_path: Path) -> None:
    # serve's --plugins-dir replaces a field: the error still names the file.
    file = toml(tmp_path, '[settings.keyword_replies]\nhelp = ""\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver",
            "check-config",
            "--config",
            str(file),
            "--plugins-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{file}: settings.keyword_replies.help: must not be empty" in result.stderr


def test_readme_plugin_guide_example_works(monkeypatch: pytest.MonkeyPatch) -> None:
    """The class in README's "Writing a plugin", run as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Writing a plugin", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    unsubscribed: list[tuple[str, str]] = []
    namespace: dict[str, Any] = {
        "crm_unsubscribe": lambda number, token: unsubscribed.append((number, token))
    }
    exec(compile(code, "README.md", "exec", dont_inherit=True), namespace)
    monkeypatch.setenv("CRM_TOKEN", "t0ken")
    config = Config(
        channels=CHANNELS,
        settings={"vip": {"numbers": {"447700900123": "Ada"}, "crm_token": "${CRM_TOKEN}"}},
    )
    client = TestClient(create_app(config, plugins=[namespace["Vip"]]))
    headers = {"Content-Type": "application/json"}
    answer = client.post(
        "/sms", content=payload("onepoint", "message_inbound.json"), headers=headers
    )
    assert answer.json()["Message"] == "Hello Ada!"
    stop = client.post("/sms", content=payload("onepoint", "stop.json"), headers=headers)
    assert stop.status_code == 200
    assert unsubscribed == [("447700900654", "t0ken")]


def test_replay_needs_plugin_secrets_events_does_not(tmp_path: Path) -> None:
    """Reading the journal needs no key; a replay runs the plugins, so an unset plugin
    secret stops it (exit 2, naming the key) instead of sending with a stand-in."""
    file = toml(
        tmp_path,
        '[settings.forward]\nurl = "http://127.0.0.1:9/x"\n'
        'headers = { Authorization = "${UNSET_FORWARD_TOKEN}" }\n',
    )
    file.write_text(f'journal = "sqlite:///{tmp_path / "r.db"}"\n' + file.read_text())
    environment = {k: v for k, v in os.environ.items() if k != "UNSET_FORWARD_TOKEN"}
    environment["RECEIVER_DISABLE_PLUGIN_AUTOLOAD"] = "1"

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "receiver", *command, "--config", str(file)],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
        )

    import asyncio  # the journal serve would have written

    journal = create_app(Config(journal=f"sqlite:///{tmp_path / 'r.db'}")).state.journal
    asyncio.run(journal.start())
    asyncio.run(journal.stop())
    events = run("events")
    assert events.returncode == 0, events.stderr
    assert "settings.forward.headers.Authorization" in events.stderr  # a warning
    replay = run("replay", "--failed")
    assert replay.returncode == 2
    assert replay.stderr.strip().splitlines()[-1] == (
        f"receiver: configuration error: {file}: settings.forward.headers.Authorization: "
        "environment variable UNSET_FORWARD_TOKEN is not set"
    )


def test_plugin_configure_raising_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "boom.py").write_text(
        "from receiver import hookimpl\n\n@hookimpl\ndef configure(config):\n"
        "    raise KeyError('secret-ish detail')\n"
    )
    file = toml(tmp_path, "")
    file.write_text(f'plugins_dir = "{folder}"\n' + file.read_text())
    result = subprocess.run(
        [sys.executable, "-m", "receiver", "check-config", "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"receiver: configuration error: {file}: a plugin's configure hook failed: "
        "KeyError (the traceback is in the log)"
    )
