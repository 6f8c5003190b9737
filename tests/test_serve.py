"""`receiver serve` for real: a subprocess on a loopback port, driven over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serving import SECRET, free_port, serve

WHISPIR_REPLY = (
    Path(__file__).parent.parent / "receiver" / "samples" / "whispir" / "reply_sms.json"
).read_bytes()


WHISPIR_QUERY = """
[channels.w]
provider = "whispir"
auth = "query"
keys = ["${WHISPIR_KEY}"]
"""


def test_serve_logs_json_lines_without_the_key_and_counts_metrics(tmp_path: Path) -> None:
    with serve(tmp_path, WHISPIR_QUERY) as server:
        json_type = {"Content-Type": "application/json"}
        ok = server.request(f"/w?auth={SECRET}", WHISPIR_REPLY, json_type)
        wrong = server.request("/w?auth=not-the-key", WHISPIR_REPLY, json_type)
        status, metrics = server.request("/metrics")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    assert ok == (200, b"")
    assert wrong[0] == 401
    assert status == 200
    text = metrics.decode()
    assert (
        'receiver_callbacks_total{channel="w",outcome="accepted",provider="whispir",'
        'type="message"} 1.0' in text
    )
    assert 'outcome="rejected_auth"' in text
    # The standard collectors (issue 14 part 6): the process's memory, descriptors, Python.
    for series in ("process_resident_memory_bytes ", "process_open_fds ", "python_info{"):
        assert series in text
    log = server.log_text()
    assert SECRET not in log
    assert "not-the-key" not in log
    callbacks = [e for e in server.log_events() if e["event"] == "callback"]
    assert [(e["status"], e["channel"]) for e in callbacks] == [(200, "w"), (401, "w")]
    assert callbacks[0]["type"] == "message" and callbacks[0]["request_id"]
    serving = next(e for e in server.log_events() if e["event"] == "serving")
    assert serving["channels"] == {"w": "whispir"}


ALLOW_ONLY_PUBLIC_NET = """
trusted_proxies = [{trusted}]

[channels.open]
provider = "diy"
auth = "none"
allow_ips = ["203.0.113.0/24"]
"""

DIY_GET = "/open?Type=Stop&Source=447700900123&Destination=60777&MessageID=MS1"


def test_serve_ignores_forwarded_for_from_an_untrusted_peer(tmp_path: Path) -> None:
    config = ALLOW_ONLY_PUBLIC_NET.format(trusted='"10.9.9.9"')
    with serve(tmp_path, config) as server:
        status, _ = server.request(DIY_GET, headers={"X-Forwarded-For": "203.0.113.7"})
    assert status == 401  # 127.0.0.1 is not a trusted proxy here: the header is a forgery


def test_serve_believes_forwarded_for_from_a_trusted_proxy(tmp_path: Path) -> None:
    config = ALLOW_ONLY_PUBLIC_NET.format(trusted='"127.0.0.1"')
    with serve(tmp_path, config) as server:
        forwarded = server.request(DIY_GET, headers={"X-Forwarded-For": "203.0.113.7"})
        direct = server.request(DIY_GET)
    assert forwarded[0] == 200
    assert direct[0] == 401
    callbacks = [e for e in server.log_events() if e["event"] == "callback"]
    assert callbacks[0]["client"] == "203.0.113.7"
    assert callbacks[1]["client"] == "127.0.0.1"


SLOW_PLUGIN = """
import asyncio
from pathlib import Path
from receiver import hookimpl

@hookimpl
async def on_stop(event):
    (Path(__file__).parent / "entered").touch()
    await asyncio.sleep(1.0)
"""


def test_serve_sigterm_lets_in_flight_callbacks_finish(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow.py").write_text(SLOW_PLUGIN)
    config = ALLOW_ONLY_PUBLIC_NET.format(trusted='"127.0.0.1"')
    with serve(tmp_path, config, "--plugins-dir", str(plugins)) as server:
        results: list[tuple[int, bytes]] = []
        client = threading.Thread(
            target=lambda: results.append(
                server.request(DIY_GET, headers={"X-Forwarded-For": "203.0.113.7"})
            )
        )
        client.start()
        entered = plugins / "entered"
        deadline = time.monotonic() + 10
        while not entered.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert entered.exists()  # the request is now inside the slow handler
        server.process.send_signal(signal.SIGTERM)
        client.join(timeout=15)
        assert server.process.wait(timeout=15) == 0
    assert results == [(200, b"")]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            '[channels.w]\nprovider = "whispir"\nauth = "header"\nkeyz = ["a"]\n',
            "channels.w: Object contains unknown field `keyz`",
        ),
        (
            '[channels.w]\nprovider = "whispir"\nauth = "header"\n',
            "channels.w: auth = 'header' needs at least one key",
        ),
        (
            '[channels.w]\nprovider = "whispir"\nauth = "header"\nkeys = ["${NOT_SET_ANYWHERE}"]\n',
            "channels.w.keys[0]: environment variable NOT_SET_ANYWHERE is not set",
        ),
        ('max_body_bytes = "big"\n', "max_body_bytes: Expected `int`, got `str`"),
    ],
)
def test_serve_refuses_a_bad_configuration_in_one_line(
    tmp_path: Path, config: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "serve",
            "--config",
            str(path),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"receiver: configuration error: {path}: {expected}"]


def test_check_config_prints_the_channel_table_without_keys(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text(WHISPIR_QUERY)
    result = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "WHISPIR_KEY": SECRET, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "/w" in result.stdout and "whispir" in result.stdout and "query" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_plugins_command_lists_plugins_and_their_hooks(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow.py").write_text(SLOW_PLUGIN)
    path = tmp_path / "receiver.toml"
    path.write_text(WHISPIR_QUERY)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "plugins",
            "--config",
            str(path),
            "--plugins-dir",
            str(plugins),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "WHISPIR_KEY": SECRET, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "slow: on_stop" in result.stdout
    assert "receiver.builtin: register_providers" in result.stdout


def test_serve_json_mode_writes_only_json_lines(tmp_path: Path) -> None:
    """Issue 14 part 6: in JSON mode the start-up banner and channel table are JSON too
    (the "serving" line), so a log shipper never meets a plain line."""
    with serve(tmp_path, WHISPIR_QUERY) as server:
        json_type = {"Content-Type": "application/json"}
        assert server.request(f"/w?auth={SECRET}", WHISPIR_REPLY, json_type)[0] == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines[:3]
    serving = next(e for e in server.log_events() if e["event"] == "serving")
    assert serving["url"] == server.base


def test_serve_operator_command_output_has_no_colour_codes_off_a_terminal(
    tmp_path: Path,
) -> None:
    """A warning of an operator command, written to a pipe, carries no escape codes."""
    (tmp_path / "receiver.toml").write_text(WHISPIR_QUERY)  # WHISPIR_KEY unset: a warning
    env = {k: v for k, v in os.environ.items() if k != "WHISPIR_KEY"}
    env["RECEIVER_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "check-config", "--config", "receiver.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert b"channel secrets not set here" in done.stderr
    assert b"\x1b[" not in done.stderr + done.stdout
