"""Run `receiver serve` as a subprocess on a free loopback port, for the tests that need it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SECRET = "qs-secret-7f3a9c"


def wait_for(predicate: Callable[[], object], seconds: float = 20) -> bool:
    """Whether ``predicate`` comes true within ``seconds`` (asked every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.base = f"http://127.0.0.1:{port}"
        self.log = log

    def request(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def log_text(self) -> str:
        return self.log.read_text()

    def log_events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_text().splitlines() if line.startswith("{")]


def start_serve(
    tmp_path: Path, config: str, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """Start ``receiver serve`` on ``config`` (written to ``tmp_path/receiver.toml``, run
    in ``tmp_path``) on a free port, JSON log lines to ``tmp_path/serve.log``, without
    waiting for it: the process, the log's path and the port."""
    (tmp_path / "receiver.toml").write_text(config)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RECEIVER_LOG_LEVEL", "RECEIVER_LOG_FORMAT", "RECEIVER_CONFIG")
    }
    env.update(WHISPIR_KEY=SECRET, RECEIVER_DISABLE_PLUGIN_AUTOLOAD="1")
    command = ["serve", "--config", "receiver.toml", "--port", str(port), "--log-format", "json"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", *command, *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    return process, log, port


@contextmanager
def serve(tmp_path: Path, config: str, *extra: str) -> Iterator[Server]:
    """``receiver serve`` on ``config`` (run in ``tmp_path``); stopped on exit."""
    process, log, port = start_serve(tmp_path, config, *extra)
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if server.request("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)
