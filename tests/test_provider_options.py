"""Provider options: ``[channels.NAME.options]``, old-style flat keys, auth modes per provider.

A channel's generic keys are the same for every provider; what one provider needs is its
``options`` table, converted to the provider's options struct when the app is built.
Files written before options existed (``credentials``, ``hmac_*``, ``public_url``,
``timezone`` on the channel itself) keep working, with one warning per channel, or fail
with a message that says what to write. Signatures here are computed by the test.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from samples import payload
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from receiver import Channel, Config, ConfigError, Event, create_app, hookimpl, load_config
from receiver.providers.onepoint_signature import OnePointOptions
from receiver.testing import sign_onepoint

APP_ID = "opt-app"
SECRET = "opt-s3cret-41c7"
WHISPIR_KEY = "opt-whispir-key"
NONCE = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BODY = b'{"Type": "Inbound", "MessageID": "m-1", "Source": "+61400000001", "Message": "hi"}'


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


def sha256_signature(url: str, body: bytes, secret: str = SECRET) -> dict[str, str]:
    """OnePoint's scheme with hmac_hash = sha256, a utf8 key, raw body, URL as sent."""
    options = OnePointOptions(hmac_hash="sha256")
    value = sign_onepoint(
        "POST",
        url,
        body,
        app_id=APP_ID,
        secret=secret,
        options=options,
        nonce=NONCE,
        timestamp=str(int(time.time())),  # now: the suite may run long before this test
    )
    return {"Authorization": value}


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_message(self, event: Event) -> None:
        self.events.append(event)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(text)
    return path


OLD_STYLE = f"""
[channels.sms]
provider = "onepoint"
auth = "hmac"
credentials = {{ {APP_ID} = "{SECRET}" }}
hmac_hash = "sha256"
public_url = "https://hooks.example.com/sms"

[channels.w]
provider = "whispir"
auth = "header"
keys = ["{WHISPIR_KEY}"]
header = "X-Hook-Key"
timezone = "Australia/Melbourne"
"""


def test_options_old_flat_keys_are_moved_with_one_warning_per_channel(tmp_path: Path) -> None:
    with capture_logs() as logs:
        config = load_config(write(tmp_path, OLD_STYLE))
    assert config.channels["sms"].options == {
        "credentials": {APP_ID: SECRET},
        "hmac_hash": "sha256",
        "public_url": "https://hooks.example.com/sms",
    }
    assert config.channels["w"].options == {"timezone": "Australia/Melbourne"}
    assert config.channels["w"].header == "X-Hook-Key"  # a generic key: stays
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert sorted(entry["channel"] for entry in warnings) == ["sms", "w"]
    sms = next(entry for entry in warnings if entry["channel"] == "sms")
    assert "[channels.sms.options]" in sms["write"]
    assert "credentials, hmac_hash, public_url" in sms["write"]
    assert SECRET not in str(warnings)


def test_options_old_flat_keys_still_authenticate_and_parse(
    tmp_path: Path,
) -> None:
    recorder = Recorder()
    client = TestClient(create_app(write(tmp_path, OLD_STYLE), plugins=[recorder]))
    # public_url and hmac_hash = sha256 reached the signature check.
    signed = sha256_signature("https://hooks.example.com/sms", BODY)
    assert client.post("/sms", content=BODY, headers=signed).status_code == 200
    wrong = sha256_signature("https://hooks.example.com/sms", BODY, secret="other")
    assert client.post("/sms", content=BODY, headers=wrong).status_code == 401
    # The header name and the time zone reached Whispir's key check and parser.
    body = payload("whispir", "reply_sms.json")
    headers = {"X-Hook-Key": WHISPIR_KEY, "Content-Type": "application/json"}
    assert client.post("/w", content=body, headers=headers).status_code == 200
    occurred = recorder.events[-1].occurred_at
    assert occurred is not None
    assert occurred.astimezone(UTC) == datetime(2013, 1, 9, 2, 22, tzinfo=UTC)


def test_options_table_in_toml_with_secrets_from_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("OPT_SECRET", SECRET)
    monkeypatch.setenv("RECEIVER_MAX_BODY_BYTES", "4096")
    path = write(
        tmp_path,
        f"""
[channels.env]
provider = "diy"
auth = "hmac"
[channels.env.options]
credentials = {{ {APP_ID} = "${{OPT_SECRET}}" }}
hmac_hash = "sha256"

[channels.file]
provider = "onepoint"
auth = "hmac"
options = {{ credentials = {{ {APP_ID} = "file:{secret_file}" }}, hmac_hash = "sha256" }}
""",
    )
    with capture_logs() as logs:
        config = load_config(path)
    assert not [entry for entry in logs if entry["log_level"] == "warning"]
    assert config.max_body_bytes == 4096  # RECEIVER_* overrides still apply
    client = TestClient(create_app(config))
    for name in ("env", "file"):
        signed = sha256_signature(f"http://testserver/{name}", BODY)
        assert client.post(f"/{name}", content=BODY, headers=signed).status_code == 200, name
    assert client.post("/env", content=b"x" * 5000, headers=signed).status_code == 413


def test_options_unset_secret_in_options_names_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[channels.sms]\nprovider = "onepoint"\nauth = "hmac"\n'
        '[channels.sms.options]\ncredentials = { app = "${OPT_NOT_SET_ANYWHERE}" }\n',
    )
    with pytest.raises(ConfigError, match=r"channels\.sms\.options\.credentials\.app: .*OPT_NOT"):
        load_config(path)


def test_options_old_key_also_in_options_is_an_error_that_says_what_to_keep(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        '[channels.sms]\nprovider = "onepoint"\nauth = "hmac"\nhmac_hash = "sha1"\n'
        '[channels.sms.options]\ncredentials = { a = "b" }\nhmac_hash = "sha256"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: channels.sms.hmac_hash: also set in [channels.sms.options]")
    assert "delete hmac_hash from [channels.sms]" in message


def test_options_old_key_the_provider_does_not_take_names_its_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\ntimezone = "UTC"\n',
    )
    with pytest.raises(ConfigError) as info:
        create_app(path)
    message = str(info.value)
    assert message.startswith("channels.sms.options.timezone: provider 'onepoint' has no such")
    assert (
        "credentials, hmac_body, hmac_hash, hmac_key_encoding, hmac_uri, hmac_window, public_url"
        in message
    )
    assert message.endswith("remove it")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"credentials": {"a": "b"}, "hmac_hash": "md4"}, r"^channels\.op\.options\.hmac_hash: "),
        ({"credentials": "a=b"}, r"^channels\.op\.options\.credentials: Expected `object`"),
        ({"credentials": {"a": "b"}, "hmac": "sha1"}, r"^channels\.op\.options\.hmac: "),
        ({}, r"^channels\.op\.options\.credentials: auth = 'hmac' needs credentials"),
        (
            {"credentials": {"a": "not base64!"}, "hmac_key_encoding": "base64"},
            r"^channels\.op\.options\.credentials: hmac_key_encoding = 'base64'",
        ),
    ],
    ids=["bad-value", "bad-type", "unknown-key", "no-credentials", "bad-base64"],
)
def test_options_errors_name_the_key_path(options: dict[str, object], expected: str) -> None:
    channel = Channel(provider="onepoint", auth="hmac", options=options)
    with pytest.raises(ConfigError, match=expected):
        create_app(Config(channels={"op": channel}))


def test_options_whispir_unknown_zone_is_config_error() -> None:
    channel = Channel(provider="whispir", auth="none", options={"timezone": "Mars/Olympus"})
    with pytest.raises(ConfigError, match=r"^channels\.w: options\.timezone: 'Mars/Olympus'"):
        create_app(Config(channels={"w": channel}))


def test_options_auth_mode_is_checked_against_the_provider() -> None:
    channel = Channel(provider="whispir", auth="hmac")
    with pytest.raises(ConfigError) as info:
        create_app(Config(channels={"w": channel}))
    assert str(info.value).startswith("channels.w.auth: 'hmac' is not an auth mode of provider")
    assert "(choices: basic, bearer, header, none, query)" in str(info.value)
    channel = Channel(provider="diy", auth="hamc", options={"credentials": {"a": "b"}})
    with pytest.raises(ConfigError, match=r"choices: basic, bearer, header, hmac, none, query"):
        create_app(Config(channels={"d": channel}))


def test_options_header_auth_without_a_default_header_says_what_to_write() -> None:
    channel = Channel(provider="diy", auth="header", keys=["k"])
    with pytest.raises(ConfigError, match=r"^channels\.d\.header: .*write header = "):
        create_app(Config(channels={"d": channel}))
    named = Channel(provider="diy", auth="header", keys=["k"], header="X-DIY-Key")
    client = TestClient(create_app(Config(channels={"d": named})))
    headers = {"X-DIY-Key": "k", "Content-Type": "application/json"}
    assert client.post("/d", content=BODY, headers=headers).status_code == 200
