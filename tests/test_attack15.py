"""Attacks on issue 15's work (plugins named, typed settings, secrets only where secrets
go, first-party plugins per app, whispir_replies). Each test uses real parts: create_app
and TestClient, TOML files in tmp_path, the real CLI in a subprocess, real local HTTP
servers standing in for Whispir."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import msgspec
import pytest
from samples import payload
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Config, Event, Reply, create_app, hookimpl, load_config
from receiver.config import Secret

RECEIVER = [sys.executable, "-m", "receiver"]
REPLY_SMS = payload("whispir", "reply_sms.json")


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    full = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    return subprocess.run(
        RECEIVER + args, capture_output=True, text=True, env=full, cwd=cwd, timeout=60
    )


class Replier:
    name = "replier"

    @hookimpl
    def on_message(self, event: Event) -> Reply | str:
        return "thanks"


# --- whispir_replies: a server that trickles its answer -------------------------------


@pytest.fixture
def trickling_whispir() -> Iterator[str]:
    """A stand-in for Whispir that accepts, then sends its status line and one header byte
    every 0.2 s for 6 s (each read well within the plugin's timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
                    for _ in range(30):
                        if stop.is_set():
                            break
                        time.sleep(0.2)
                        conn.sendall(b"a")
                    conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_whispir_replies_timeout_bounds_a_trickling_answer(
    trickling_whispir: str, tmp_path: Path
) -> None:
    """``timeout`` is "seconds to wait for Whispir per attempt" and the worst case is
    checked against Whispir's 60 s; a server that trickles its answer must not hold the
    callback far past timeout * (retries + 1)."""
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        f"""
journal = "none"
reply_timeout = 30
[channels.w]
provider = "whispir"
auth = "none"
[settings.whispir_replies]
base_url = "{trickling_whispir}"
api_key = "k"
username = "u"
password = "p"
timeout = 0.5
retries = 0
""",
        encoding="utf-8",
    )
    app = create_app(load_config(toml), plugins=[Replier()])
    plugin = app.state.plugin_manager.get_plugin("whispir_replies")
    assert plugin.worst_case == 0.5
    with TestClient(app) as client:
        started = time.monotonic()
        client.post("/w", content=REPLY_SMS, headers={"content-type": "application/json"})
        took = time.monotonic() - started
    assert took < 3.0, f"a 0.5 s timeout (worst case 0.5 s) held the callback {took:.1f} s"


# --- Secret fields a plugin declares: expanded wherever the type says so ----------------

TOKEN = "t0ken-from-the-environment"


class Plain(msgspec.Struct, tag="plain"):
    token: str


class Vault(msgspec.Struct, tag="vault"):
    token: Secret


class TokenPair(TypedDict):
    token: Secret


class Positional(msgspec.Struct, array_like=True):
    token: Secret


class Kept:
    """A plugin that keeps the settings its configure hook gets."""

    Settings: Any = None

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.Settings = settings
        self.got: Any = None

    @hookimpl
    def configure(self, config: Config) -> None:
        self.got = config.settings.get(self.name)


def typed_app(tmp_path: Path, plugin: Kept, table: str) -> Any:
    toml = tmp_path / "receiver.toml"
    toml.write_text(f'journal = "none"\n[settings.{plugin.name}]\n{table}\n', encoding="utf-8")
    create_app(load_config(toml), plugins=[plugin])
    return plugin.got


def test_secret_in_second_member_of_tagged_union_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)

    class Settings(msgspec.Struct):
        store: Plain | Vault

    got = typed_app(tmp_path, Kept("p", Settings), 'store = { type = "vault", token = "${TOKEN}" }')
    assert got.store.token == TOKEN


def test_text_in_tagged_union_member_is_not_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain ``str`` field is text: "Reply ${TOKEN}" stays as written, even when an
    earlier member of the union has a Secret field of the same name."""
    monkeypatch.setenv("TOKEN", TOKEN)

    class Settings(msgspec.Struct):
        store: Vault | Plain

    got = typed_app(tmp_path, Kept("p", Settings), 'store = { type = "plain", token = "${TOKEN}" }')
    assert got.store.token == "${TOKEN}"


def test_secret_in_typeddict_settings_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)

    class Settings(msgspec.Struct):
        crm: TokenPair

    got = typed_app(tmp_path, Kept("p", Settings), 'crm = { token = "${TOKEN}" }')
    assert got.crm["token"] == TOKEN


def test_secret_in_tuple_settings_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)

    class Settings(msgspec.Struct):
        pair: tuple[str, Secret]

    got = typed_app(tmp_path, Kept("p", Settings), 'pair = ["user", "${TOKEN}"]')
    assert got.pair == ("user", TOKEN)


def test_secret_in_array_like_struct_settings_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)

    class Settings(msgspec.Struct):
        crm: Positional

    got = typed_app(tmp_path, Kept("p", Settings), 'crm = ["${TOKEN}"]')
    assert got.crm.token == TOKEN


# --- ${NAME} where it used to be expanded ------------------------------------------------


def test_state_dir_reference_is_expanded_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``state_dir = "${STATE_DIRECTORY}"`` (systemd's StateDirectory= sets it) was
    expanded before issue 15. Now it silently becomes a folder literally named
    ``${STATE_DIRECTORY}`` next to the file: ``serve`` opens a new, empty journal there
    and the events waiting in the real one are never retried. Expanded, or a
    ConfigError naming the key, but never a literal folder."""
    state = tmp_path / "var-lib-receiver"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    toml = tmp_path / "receiver.toml"
    toml.write_text('state_dir = "${STATE_DIRECTORY}"\n', encoding="utf-8")
    try:
        config = load_config(toml)
    except Exception as exc:  # refused loudly: fine
        assert "state_dir" in str(exc)
        return
    assert "${" not in config.state_dir
    assert config.state_dir == str(state)


# --- operator commands need the journal, not the keys ------------------------------------


def test_events_runs_without_a_plugin_secret(tmp_path: Path) -> None:
    """README: "They need the journal, not the keys: a channel's ${VAR} that is not set
    ... is only a warning for events, replay, prune, plugins and check-config". A
    whispir_replies API key (a plugin Secret) unset on the operator's shell stops
    ``receiver events`` (exit 2) although reading the journal needs no key."""
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        f"""
journal = "sqlite:///{tmp_path / "r.db"}"
[channels.w]
provider = "whispir"
auth = "header"
keys = ["${{A15_UNSET_CHANNEL_KEY}}"]
[settings.whispir_replies]
base_url = "https://api.au.whispir.com"
api_key = "${{A15_UNSET_API_KEY}}"
username = "u"
password = "p"
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("A15_")}
    from receiver.journal import open_journal

    async def create() -> None:  # the journal serve would have written
        journal = open_journal(f"sqlite:///{tmp_path / 'r.db'}")
        assert journal is not None
        await journal.start()
        await journal.stop()

    import asyncio

    asyncio.run(create())
    result = subprocess.run(
        [*RECEIVER, "events", "--config", str(toml)],
        capture_output=True,
        text=True,
        env={**env, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- two apps in one process: plugins = ["dotted.module"] --------------------------------


def test_dotted_module_plugin_shared_by_two_apps_is_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/plugins/vip.py (the repository's own example, module globals) listed in
    ``plugins = [...]`` by two apps with different greetings: the module object is shared,
    so the app built last configures both, and app A greets with app B's text.
    README documents per-app state for classes and plugins_dir files only; a dotted module
    is the first kind example/receiver.toml offers (``plugins = []``)."""
    site = tmp_path / "site"
    site.mkdir()
    vip = (Path(__file__).parent.parent / "examples" / "plugins" / "vip.py").read_text()
    (site / "a15_vip.py").write_text(vip.replace('get("vip")', 'get("a15_vip")'))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "a15_vip", raising=False)
    apps = []
    for who, greeting in (("a", "Hello {name}, app A here"), ("b", "Hello {name}, app B here")):
        toml = tmp_path / f"{who}.toml"
        toml.write_text(
            'journal = "none"\nplugins = ["a15_vip"]\n'
            '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
            '[settings.a15_vip]\nnumbers = { "447700900123" = "Ada" }\n'
            f'greeting = "{greeting}"\n',
            encoding="utf-8",
        )
        with capture_logs() as logs:
            apps.append(TestClient(create_app(load_config(toml))))
    # Decided: a module is one object per process (as pytest's plugins are), so its
    # globals are shared; the second app's build says so, naming the plugin, and README
    # says to write per-app state as a class (or load the file through plugins_dir,
    # which imports it afresh per app: see the test below).
    shared = [e for e in logs if e["event"].startswith("module plugin shared by two apps")]
    assert [e["plugin"] for e in shared] == ["a15_vip"]


def test_plugins_dir_file_in_two_apps_answers_with_each_apps_settings(tmp_path: Path) -> None:
    import json

    folder = tmp_path / "plugins"
    folder.mkdir()
    vip = (Path(__file__).parent.parent / "examples" / "plugins" / "vip.py").read_text()
    (folder / "vip.py").write_text(vip)
    apps = []
    for who in ("A", "B"):
        toml = tmp_path / f"{who}.toml"
        toml.write_text(
            f'journal = "none"\nplugins_dir = "{folder}"\n'
            '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
            '[settings.vip]\nnumbers = { "447700900123" = "Ada" }\n'
            f'greeting = "Hello {{name}}, app {who} here"\n',
            encoding="utf-8",
        )
        with capture_logs() as logs:
            apps.append(TestClient(create_app(load_config(toml))))
        assert not [e for e in logs if e["event"].startswith("module plugin shared")]
    message = json.loads(payload("onepoint", "keyword.json"))
    message.update(Type="Message", Source="447700900123", Message="hi")
    body = json.dumps(message).encode()
    for app, who in zip(apps, "AB", strict=True):
        answer = app.post("/sms", content=body, headers={"content-type": "application/json"})
        assert answer.json()["Message"] == f"Hello Ada, app {who} here"


# --- forward: a URL with credentials --------------------------------------------------


def test_forward_url_with_credentials_reaches_target_or_is_refused(tmp_path: Path) -> None:
    """forward's docs promise "Logs name the URL without its credentials", so a URL with
    ``user:password@`` is accepted (check-config: ok). But urllib takes
    ``user:password@127.0.0.1`` as the host name: every forward fails with "Name or
    service not known" (logged for url=http://127.0.0.1:PORT/events, which misleads), and
    the password is handed to the resolver as part of a host name. Either sent (Basic
    auth) or refused at start naming settings.forward.url."""
    from base64 import b64encode

    from sink import running_sink

    with running_sink() as sink:
        url = sink.url.replace("http://", "http://fuser:fw-pass@")
        toml = tmp_path / "receiver.toml"
        toml.write_text(
            'journal = "none"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
            f'[settings.forward]\nurl = "{url}"\n',
            encoding="utf-8",
        )
        try:
            app = create_app(load_config(toml))
        except Exception as exc:  # refused at start: fine
            assert "settings.forward.url" in str(exc) and "fw-pass" not in str(exc)
            return
        with TestClient(app, raise_server_exceptions=False) as client:
            client.post(
                "/sms",
                content=payload("onepoint", "keyword.json"),
                headers={"content-type": "application/json"},
            )
        assert len(sink.requests) == 1, "the forward never reached the target"
        expected = "Basic " + b64encode(b"fuser:fw-pass").decode()
        assert sink.requests[0].headers.get("Authorization") == expected


def test_opt_outs_database_reference_is_expanded_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[settings.opt_outs] database = "${STATE_DIRECTORY}/opt_outs.db"`` was expanded
    before issue 15 (every string was). Now the app silently opens a new, empty database
    under a folder literally named ``${STATE_DIRECTORY}``: everyone who texted STOP is
    forgotten (and texted again) with no error and no warning."""
    state = tmp_path / "var-lib-receiver"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        'journal = "none"\n[settings.opt_outs]\ndatabase = "${STATE_DIRECTORY}/opt_outs.db"\n',
        encoding="utf-8",
    )
    try:
        app = create_app(load_config(toml))
    except Exception as exc:  # refused loudly: fine
        assert "settings.opt_outs.database" in str(exc)
        return
    database = app.state.plugin_manager.get_plugin("opt_outs").database
    assert database == state / "opt_outs.db"


# --- a secret with a trailing newline (an env var filled from a file) ------------------


@pytest.mark.parametrize("plugin", ["whispir_replies", "forward"])
def test_secret_with_newline_never_in_logs_or_journal(
    plugin: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An API key / header secret from the environment with a trailing newline (a
    Kubernetes secret file turned into an env var keeps it; ``file:`` strips, ``${}`` does
    not). http.client refuses the header with ``ValueError: Invalid header value
    b'<the secret>\\n'``; the plugins log that reason and raise it: the secret is then in
    the log lines, the journal's attempts and last_error, and ``receiver events`` output.
    Served for real (``receiver serve``), then read with ``receiver events --json`` and
    ``receiver events show``."""
    secret = "S3CRET-api-key-value"
    port_probe = socket.socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    from sink import running_sink

    with running_sink() as sink:
        sink.status = 202
        base = sink.url.removesuffix("/events")
        table = (
            f'[settings.whispir_replies]\nbase_url = "{base}"\napi_key = "${{A15_SECRET}}"\n'
            'username = "u"\npassword = "p"\nretries = 0\n'
            '[settings.keyword_replies]\ndefault = "thanks"\n'
            if plugin == "whispir_replies"
            else f'[settings.forward]\nurl = "{sink.url}"\n'
            'headers = { Authorization = "Bearer ${A15_SECRET}" }\n'
        )
        toml = tmp_path / "receiver.toml"
        toml.write_text(
            f'journal = "sqlite:///{tmp_path / "r.db"}"\nretry_delays = [60]\n'
            f'[channels.w]\nprovider = "whispir"\nauth = "none"\n{table}',
            encoding="utf-8",
        )
        env = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1", "A15_SECRET": secret + "\n"}
        server = subprocess.Popen(
            [
                *RECEIVER,
                "serve",
                "--config",
                str(toml),
                "--port",
                str(port),
                "--log-format",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            import urllib.request

            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "serve did not start"
                    time.sleep(0.1)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/w",
                data=REPLY_SMS,
                headers={"content-type": "application/json"},
                method="POST",
            )
            urllib.request.urlopen(request, timeout=10).read()
            time.sleep(1)
        finally:
            server.terminate()
            log, _ = server.communicate(timeout=20)
    events = subprocess.run(
        [*RECEIVER, "events", "--config", str(toml), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert events.returncode == 0, events.stderr
    import json

    event_id = json.loads(events.stdout.splitlines()[0])["id"]
    shown = subprocess.run(
        [*RECEIVER, "events", "show", event_id, "--config", str(toml)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert secret not in log.decode(), "the secret is in serve's log"
    assert secret not in events.stdout, "the secret is in receiver events --json"
    assert secret not in shown.stdout, "the secret is in receiver events show"


# --- mistakes an operator makes in first-party settings ----------------------------------


def test_check_config_first_party_table_typo_names_the_plugin(tmp_path: Path) -> None:
    """``[settings.forwrd]`` (or ``whispir_reply``): the operator believes forwarding is
    on. check-config says ok with a warning whose ``closest_plugin`` is None: the
    first-party names are not candidates because a first-party plugin is only loaded when
    its table is spelled right. The warning should point at ``forward``."""
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        'journal = "none"\n[settings.forwrd]\nurl = "http://127.0.0.1:9/x"\n'
        '[settings.whispir_reply]\nbase_url = "https://api.au.whispir.com"\n',
        encoding="utf-8",
    )
    result = run(["check-config", "--config", str(toml)])
    assert "forward" in result.stderr.replace("forwrd", ""), result.stderr
    assert "whispir_replies" in result.stderr, result.stderr


def test_check_config_refuses_channels_that_do_not_exist(tmp_path: Path) -> None:
    """``channels = ["whispr"]`` (a typo of the [channels.whispir] name) in
    keyword_replies or whispir_replies: check-config says ok and no warning is logged;
    in service no keyword is ever answered and no Whispir reply ever sent."""
    for plugin, table in (
        ("keyword_replies", 'default = "hi"\nchannels = ["whispr"]\n'),
        (
            "whispir_replies",
            'base_url = "https://api.au.whispir.com"\napi_key = "a"\nusername = "u"\n'
            'password = "p"\nchannels = ["whispr"]\n',
        ),
    ):
        toml = tmp_path / f"{plugin}.toml"
        toml.write_text(
            'journal = "none"\n[channels.whispir]\nprovider = "whispir"\nauth = "none"\n'
            f"[settings.{plugin}]\n{table}",
            encoding="utf-8",
        )
        result = run(["check-config", "--config", str(toml)])
        assert result.returncode != 0 or "whispr" in result.stderr, (plugin, result.stderr)
