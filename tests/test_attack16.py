"""Attacks on issue 16's developer kit (receiver.testing, sign_onepoint, receiver send).

Real parts only: ReceiverClient/TestClient apps, Starlette mounts, `receiver serve` and
`receiver send` in subprocesses, local sockets standing in for a misbehaving receiver,
files in tmp_path. Each test states the behaviour that the README or a docstring
promises; a failing one is a finding.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import serve
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from receiver import samples
from receiver.providers.onepoint_signature import OnePointOptions
from receiver.testing import ReceiverClient, build_request, sign_onepoint

RECEIVER = [sys.executable, "-m", "receiver"]
SECRET = "attack16-secret-value-8d1f"
KEY = "attack16-key-value-5c2e9a"
MESSAGE = samples.find("onepoint", "message").body


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


def hmac_channel(**options: Any) -> dict[str, Any]:
    return {
        "provider": "onepoint",
        "auth": "hmac",
        "options": {"credentials": {"app": SECRET}, **options},
    }


def send(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1",
        "A16_SECRET": SECRET,
        "A16_KEY": KEY,
    }
    return subprocess.run(
        [*RECEIVER, "send", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


SEND_CONFIG = """
autoload_plugins = false
[channels.op]
provider = "onepoint"
auth = "hmac"
[channels.op.options]
credentials = { app = "${A16_SECRET}" }
[channels.wh]
provider = "whispir"
auth = "header"
keys = ["${A16_KEY}"]
"""


# --- sign_onepoint vs the receiver's own check ---------------------------------------------


@pytest.mark.parametrize("hmac_uri", ["as-sent", "lower-urlencoded"])
def test_sign_onepoint_non_ascii_query_verifies(hmac_uri: str) -> None:
    """sign_onepoint's docstring: the URL 'as the receiver will see it'. An HTTP client
    (and .NET's Uri.AbsoluteUri, which OnePoint signs) percent-encodes a non-ASCII query
    as UTF-8; the signature over the text as given then never verifies (401)."""
    url = "http://testserver/sms?ref=café"
    options = OnePointOptions(hmac_uri=hmac_uri)  # type: ignore[arg-type]
    with ReceiverClient(channels={"sms": hmac_channel(hmac_uri=hmac_uri)}) as client:
        authorization = sign_onepoint(
            "POST", url, MESSAGE, app_id="app", secret=SECRET, options=options
        )
        response = client.http.post(
            url,
            content=MESSAGE,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
        )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("prefix", ["/hóoks", "/web hooks"])
def test_sign_onepoint_mount_prefix_needing_escapes_verifies(prefix: str) -> None:
    """README: 'the signed URL under a mount includes the mount prefix'. build_request
    with the mounted URL signs the prefix unescaped; what arrives (and what OnePoint's
    .NET client signs) is escaped: every callback is refused with 401."""
    with ReceiverClient(channels={"sms": hmac_channel()}) as inner:
        outer = TestClient(Starlette(routes=[Mount(prefix, app=inner.app)]))
        request = build_request(
            inner.channel("sms"), "message", url=f"http://testserver{prefix}/sms"
        )
        response = outer.request(
            request.method, request.url, content=request.body, headers=request.headers
        )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "public_url",
    [
        "https://example.com/hooks/sms/",  # a trailing slash, as the provider was given it
        "https://Example.COM/hooks/sms",  # letter case in the host
        "https://example.com:443/hooks/sms",  # the scheme's default port written out
        "http://example.com:80/hooks/sms",
    ],
)
def test_public_url_callbacks_verify(public_url: str) -> None:
    """A channel with options.public_url: ReceiverClient (and `receiver send`) sign
    Uri.AbsoluteUri of it, as the provider does (host lowercased, default port dropped,
    trailing slash kept); the receiver checks public_url as written with its trailing
    slash stripped. Both the kit and a genuine provider get 401 on every callback."""
    with ReceiverClient(channels={"sms": hmac_channel(public_url=public_url)}) as client:
        kit = client.send("sms")
        authorization = sign_onepoint("POST", public_url, MESSAGE, app_id="app", secret=SECRET)
        provider = client.http.post(
            "/sms",
            content=MESSAGE,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
        )
    assert (kit.status_code, provider.status_code) == (200, 200), (kit.text, provider.text)


# --- receiver.testing ----------------------------------------------------------------------


def test_testing_whispir_message_format_xml() -> None:
    """README: client.send(..., format="xml"). Whispir's default sample `message`
    (reply_sms) has no .xml file, so format="xml" raises a KeyError instead of sending
    one of the XML reply samples."""
    with ReceiverClient(channels={"w": "whispir:header"}) as client:
        response = client.send("w", "message", format="xml")
    assert response.status_code == 200, response.text
    client.assert_dispatched(type="message")


# --- receiver send against misbehaving servers ---------------------------------------------


@pytest.fixture
def trickling_server() -> Iterator[int]:
    """Answers `200 OK`, Content-Length 100000, then one body byte every 0.3 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while not stop.is_set():
                    conn.sendall(b"x")
                    time.sleep(0.3)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        listener.close()


def test_send_timeout_with_partial_answer_is_not_success(
    trickling_server: int, tmp_path: Path
) -> None:
    """--timeout: 'the whole exchange within timeout' (callbacks.post); NoAnswer says
    'no whole answer within N s'. A body cut off at the deadline is printed as if whole,
    '200 OK', exit 0; it should be exit 3 (timed out)."""
    (tmp_path / "receiver.toml").write_text(SEND_CONFIG)
    started = time.monotonic()
    result = send(
        ["wh", "--port", str(trickling_server), "--timeout", "1.5", "--fresh"], cwd=tmp_path
    )
    assert time.monotonic() - started < 10
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    assert "timed out" in result.stderr


def test_send_url_password_never_printed(tmp_path: Path) -> None:
    """README: 'Nothing secret is printed.' A --url with user:password (a proxy's basic
    auth) is echoed whole in the 'cannot reach' line."""
    (tmp_path / "receiver.toml").write_text(SEND_CONFIG)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = send(
        ["wh", "--url", f"http://operator:hunter2-pw@127.0.0.1:{port}", "--fresh"], cwd=tmp_path
    )
    assert result.returncode != 0
    assert "hunter2-pw" not in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--set", "auth.key=bad\nkey"],  # a key no header can carry
        ["--set", "auth.key=bad\rkey"],
    ],
    ids=["newline-key", "carriage-return-key"],
)
def test_send_unsendable_request_is_usage_error(extra: list[str], tmp_path: Path) -> None:
    """README: exit 2 for 'a usage or configuration error', 3 'when the receiver cannot
    be reached'. A request that cannot be built is reported as 'cannot reach', exit 3
    (and nothing was tried: port 9 is not even contacted)."""
    (tmp_path / "receiver.toml").write_text(SEND_CONFIG)
    result = send(["wh", "--fresh", *extra], cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)


# --- receiver send: --format on a named sample; freshen keeps a sample's meaning -------------


@pytest.mark.parametrize(
    ("channel", "sample", "form"),
    [("op", "message", "form"), ("op", "stop", "form"), ("wh", "message", "xml")],
)
def test_send_named_sample_format_converted_or_refused(
    channel: str, sample: str, form: str, tmp_path: Path
) -> None:
    """README's synopsis offers `--format json|xml|form|query`; receiver.testing's
    build_request(format=...) converts a sample. `receiver send op message --format form`
    instead relabels the JSON bytes as a form (and --fresh parses JSON as a form):
    the receiver answers 400 and send exits 1. It should convert (200) or refuse (2)."""
    config = SEND_CONFIG.replace("${A16_SECRET}", SECRET).replace("${A16_KEY}", KEY)
    with serve(tmp_path, config) as server:
        port = server.base.rpartition(":")[2]
        result = send([channel, sample, "--format", form, "--port", port, "--fresh"], cwd=tmp_path)
    assert result.returncode in (0, 2), (result.returncode, result.stdout, result.stderr)
    if result.returncode == 0:
        assert result.stdout.startswith("200"), result.stdout
