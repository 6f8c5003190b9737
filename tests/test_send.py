"""`receiver send` against a real `receiver serve`: every provider and auth mode.

One server (a subprocess on loopback, :mod:`serving`) serves a channel per provider and
auth mode; `receiver send` runs in this process (``main([...])``) except where the console
script itself is the point. What was stored is read back with `receiver events`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import Server, free_port, serve

import receiver.logs
from receiver.cli import main

KEY = "send-key-4c1d"
SECRET_UTF8 = "send-secret-9e2b"
SECRET_B64 = base64.b64encode(b"send-secret-bytes-\x00\xff").decode()
WRONG_B64 = base64.b64encode(b"wrong").decode()
ENV = {"SEND_KEY": KEY, "SEND_SECRET": SECRET_UTF8, "SEND_SECRET_B64": SECRET_B64}

DIY_REFERENCE = """hmac_hash = "sha256"
hmac_body = "md5"
hmac_uri = "lower-urlencoded"
"""

KEY_MODES = ("header", "query", "basic", "bearer")


def _channels() -> dict[str, str]:
    """Channel name -> its TOML table: one per provider and auth mode."""
    tables: dict[str, str] = {}
    for provider in ("whispir", "onepoint", "diy"):
        tables[f"{provider}-none"] = f'provider = "{provider}"\nauth = "none"\n'
        for mode in KEY_MODES:
            table = f'provider = "{provider}"\nauth = "{mode}"\nkeys = ["${{SEND_KEY}}"]\n'
            if mode == "header" and provider != "whispir":
                table += 'header = "X-Callback-Key"\n'
            tables[f"{provider}-{mode}"] = table
        if provider == "whispir":
            continue  # Whispir does not sign
        hmac = f'provider = "{provider}"\nauth = "hmac"\n'
        tables[f"{provider}-hmac"] = (
            hmac + '[channels.NAME.options]\ncredentials = { app7 = "${SEND_SECRET}" }\n'
        )
        tables[f"{provider}-hmac-base64"] = (
            hmac + "[channels.NAME.options]\n"
            'credentials = { app7 = "${SEND_SECRET_B64}" }\n'
            'hmac_key_encoding = "base64"\n' + DIY_REFERENCE
        )
        tables[f"{provider}-hmac-utf8"] = (
            hmac + "[channels.NAME.options]\n"
            'credentials = { app7 = "${SEND_SECRET}" }\n'
            'hmac_key_encoding = "utf8"\n' + DIY_REFERENCE
        )
    # Channels of their own for the tests that count events.
    for name, provider in [
        ("dup-onepoint", "onepoint"),
        ("dup-whispir", "whispir"),
        ("fresh-diy", "diy"),
        ("fresh-whispir", "whispir"),
        ("text-onepoint", "onepoint"),
        ("text-whispir", "whispir"),
        ("get-diy", "diy"),
        ("file-diy", "diy"),
        ("stdin-onepoint", "onepoint"),
        ("default-url", "onepoint"),
        ("script", "diy"),
    ]:
        tables[name] = tables[
            f"{provider}-hmac-base64" if provider != "whispir" else "whispir-header"
        ]
    return tables


CHANNELS = _channels()
MATRIX = [name for name in CHANNELS if name.split("-")[0] in ("whispir", "onepoint", "diy")]
CONFIG = "\n".join(
    f"[channels.{name}]\n" + table.replace("channels.NAME.", f"channels.{name}.")
    for name, table in CHANNELS.items()
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("send")


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        with serve(folder, CONFIG) as running:
            yield running


@pytest.fixture(autouse=True)
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    # main() would set structlog to print to this test's captured stderr, cached past it.
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)


def send(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, *args: str
) -> tuple[int, str, str]:
    """``receiver send --config ... --url ... ARGS``: exit status, stdout, stderr."""
    capsys.readouterr()
    config = str(folder / "receiver.toml")
    status = main(["send", "--config", config, "--url", server.base, *args])
    out, err = capsys.readouterr()
    return status, out, err


def stored(capsys: pytest.CaptureFixture[str], folder: Path, channel: str) -> list[dict[str, str]]:
    """The journal entries of ``channel`` (``receiver events --json``), newest first."""
    capsys.readouterr()
    config = str(folder / "receiver.toml")
    assert main(["events", "--config", config, "--json", "--channel", channel]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def shown(capsys: pytest.CaptureFixture[str], folder: Path, event_id: str) -> dict[str, object]:
    """The event of one journal entry (``receiver events show ID``)."""
    capsys.readouterr()
    config = str(folder / "receiver.toml")
    assert main(["events", "--config", config, "show", event_id]) == 0
    out = capsys.readouterr().out
    start, end = out.index("{"), out.index("\n}\n") + 2
    event: dict[str, object] = json.loads(out[start:end])["event"]
    return event


def wrong_credential(channel: str) -> str:
    if channel.endswith("base64"):
        return f"auth.secret={WRONG_B64}"  # Base64, as that channel's secrets are
    return "auth.secret=wrong" if "hmac" in channel else "auth.key=wrong"


@pytest.mark.parametrize("channel", MATRIX)
def test_send_every_provider_and_auth_mode_200_then_401_with_a_wrong_credential(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, channel: str
) -> None:
    status, out, err = send(capsys, server, folder, channel, "--fresh")
    assert status == 0, (out, err)
    first = out.splitlines()[0]
    assert first.startswith("200 OK  request-id=") and len(first) > len("200 OK  request-id=")
    assert "duplicate" not in out
    (entry,) = stored(capsys, folder, channel)
    assert entry["type"] == "message" and entry["state"] == "done"

    if not channel.endswith("-none"):
        status, out, err = send(
            capsys, server, folder, channel, "--fresh", "--set", wrong_credential(channel)
        )
        assert status == 1, (out, err)
        assert out.startswith("401 Unauthorized  request-id=")
        assert '{"error":"wrong credentials' in out
        assert len(stored(capsys, folder, channel)) == 1  # nothing more stored
    for secret in (KEY, SECRET_UTF8, SECRET_B64):
        assert secret not in out + err
        assert secret not in server.log_text()


@pytest.mark.parametrize("channel", ["onepoint-hmac", "diy-hmac-utf8"])
def test_send_wrong_app_id_is_401(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, channel: str
) -> None:
    status, out, _ = send(capsys, server, folder, channel, "stop", "--set", "auth.app_id=nobody")
    assert status == 1
    assert out.startswith("401 ")


@pytest.mark.parametrize("channel", ["dup-onepoint", "dup-whispir"])
def test_send_twice_without_fresh_is_one_event_and_the_second_says_duplicate(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, channel: str
) -> None:
    status, first, _ = send(capsys, server, folder, channel)
    assert status == 0 and "duplicate" not in first
    status, second, _ = send(capsys, server, folder, channel)
    assert status == 0
    (entry,) = stored(capsys, folder, channel)
    lines = second.splitlines()
    assert lines[0].startswith("200 OK  request-id=")
    assert lines[1] == (
        f"duplicate of {entry['id']} (not dispatched again; --fresh sends a new one)"
    )
    assert lines[0] != first.splitlines()[0]  # each answer has its own request id


@pytest.mark.parametrize("channel", ["fresh-diy", "fresh-whispir"])
def test_send_fresh_twice_is_two_events(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, channel: str
) -> None:
    for _ in range(2):
        status, out, _ = send(capsys, server, folder, channel, "--fresh")
        assert status == 0 and "duplicate" not in out
    entries = stored(capsys, folder, channel)
    assert len(entries) == 2
    assert entries[0]["message_id"] != entries[1]["message_id"]


def test_send_set_changes_the_stored_text(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path
) -> None:
    text = "Moved to <Tuesday> & 10:30 \u2014 ok?"
    status, _, _ = send(
        capsys, server, folder, "text-onepoint", "--fresh", "--set", f"Message={text}"
    )
    assert status == 0
    (entry,) = stored(capsys, folder, "text-onepoint")
    assert shown(capsys, folder, entry["id"])["text"] == text
    # In XML too: the value is escaped, so <&> arrive as written.
    status, _, _ = send(
        capsys,
        server,
        folder,
        "text-whispir",
        "reply-sms-camel",
        "--fresh",
        "--set",
        f"content={text}",
    )
    assert status == 0
    (entry,) = stored(capsys, folder, "text-whispir")
    assert shown(capsys, folder, entry["id"])["text"] == text


def test_send_get_for_a_diy_query_sample_and_a_form_sample(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path
) -> None:
    # stop.query is a GET as DIY sends it; message is a form, sent as a GET's query here.
    # The channel signs the lowercased, URL-encoded URL: the query is in it.
    assert send(capsys, server, folder, "get-diy", "stop", "--fresh")[0] == 0
    assert send(capsys, server, folder, "get-diy", "message", "--method", "GET", "--fresh")[0] == 0
    types = sorted(entry["type"] for entry in stored(capsys, folder, "get-diy"))
    assert types == ["message", "stop"]
    status, _, err = send(capsys, server, folder, "get-diy", "info", "--method", "GET")
    assert status == 2  # info is JSON: no fields to put in a query
    assert "--method GET sends a form or query sample's fields" in err


def test_send_a_file_by_extension_or_format(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, tmp_path: Path
) -> None:
    form = tmp_path / "stop.form"
    form.write_bytes(
        b"Type=Stop&MessageID=MS9000000000001&Source=447700900555&Destination=60777"
        b"&Message=STOP&Timestamp=2024-05-21T09%3A02%3A00Z"
    )
    assert send(capsys, server, folder, "file-diy", str(form))[0] == 0
    plain = tmp_path / "callback.txt"
    plain.write_bytes(form.read_bytes().replace(b"MS9000000000001", b"MS9000000000002"))
    status, _, err = send(capsys, server, folder, "file-diy", str(plain))
    assert status == 2 and "--format" in err and "Traceback" not in err
    assert send(capsys, server, folder, "file-diy", str(plain), "--format", "form")[0] == 0
    entries = stored(capsys, folder, "file-diy")
    assert sorted(entry["message_id"] for entry in entries) == [
        "MS9000000000001",
        "MS9000000000002",
    ]
    status, _, err = send(capsys, server, folder, "file-diy", str(tmp_path / "none.json"))
    assert status == 2 and "none.json" in err


def test_send_stdin(
    capsys: pytest.CaptureFixture[str],
    server: Server,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {
        "Type": "Stop",
        "MessageID": "MS9000000000003",
        "Source": "447700900556",
        "Destination": "60777",
        "Message": "stop please",
        "Timestamp": "2024-05-21T09:02:00Z",
    }
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(body).encode())))
    assert send(capsys, server, folder, "stdin-onepoint", "-")[0] == 0  # JSON by default
    (entry,) = stored(capsys, folder, "stdin-onepoint")
    assert entry["type"] == "stop" and entry["message_id"] == "MS9000000000003"


def test_send_defaults_to_the_configured_port(
    capsys: pytest.CaptureFixture[str],
    server: Server,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECEIVER_PORT", server.base.rpartition(":")[2])
    capsys.readouterr()
    config = str(folder / "receiver.toml")
    assert main(["send", "--config", config, "default-url", "receipt-delivered"]) == 0
    assert capsys.readouterr().out.startswith("200 OK  request-id=")
    (entry,) = stored(capsys, folder, "default-url")
    assert entry["type"] == "receipt"


def test_send_as_a_console_command(server: Server, folder: Path) -> None:
    env = {**os.environ, **ENV, "RECEIVER_CONFIG": str(folder / "receiver.toml")}
    env["RECEIVER_PORT"] = server.base.rpartition(":")[2]
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "send", "script", "stop", "--fresh"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("200 OK  request-id=")


def test_send_unreachable_receiver_is_one_line_exit_3(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path
) -> None:
    capsys.readouterr()
    url = f"http://127.0.0.1:{free_port()}"
    config = str(folder / "receiver.toml")
    assert main(["send", "--config", config, "--url", url, "onepoint-none"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    reason = "ConnectionRefusedError: Connection refused"
    assert err == f"receiver send: cannot reach {url}/onepoint-none: {reason}\n"


def test_send_list_names_the_samples_per_provider(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path
) -> None:
    capsys.readouterr()
    assert main(["send", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.partition(": ")[0]: line.partition(": ")[2].split() for line in lines}
    assert set(listed) == {"whispir", "onepoint", "diy"}
    for provider in listed:
        assert "message" in listed[provider]
    assert {"stop", "receipt-delivered", "receipt-failed"} <= set(listed["onepoint"])
    assert {"stop", "receipt-delivered", "click"} <= set(listed["diy"])
    assert {"reply-sms", "undeliverable", "status-sent"} <= set(listed["whispir"])
    config = str(folder / "receiver.toml")
    assert main(["send", "--config", config, "whispir-none", "--list"]) == 0
    assert capsys.readouterr().out.startswith("whispir: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nosuch"], "no channel 'nosuch'"),
        (["onepoint-none", "no-such-sample"], "no sample 'no-such-sample' for onepoint"),
        (["onepoint-none", "--set", "Message"], "write NAME=VALUE"),
        (["onepoint-none", "--set", "auth.token=x"], "auth.key, auth.app_id, auth.secret"),
        (["onepoint-none", "--url", "localhost:8000"], "an http:// or https:// URL"),
        (["diy-hmac-base64", "--set", "auth.secret=not base64!"], "not Base64"),
        ([], "needs a CHANNEL"),
    ],
)
def test_send_usage_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], server: Server, folder: Path, args: list[str], says: str
) -> None:
    capsys.readouterr()
    config = str(folder / "receiver.toml")
    assert main(["send", "--config", config, *args]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "not base64!" not in err  # a secret given is never printed
