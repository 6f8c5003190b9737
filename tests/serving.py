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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SECRET = "qs-secret-7f3a9c"


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


@contextmanager
def serve(tmp_path: Path, config: str, *extra: str) -> Iterator[Server]:
    """``receiver serve`` on ``config`` (run in ``tmp_path``); stopped on exit."""
    config_path = tmp_path / "receiver.toml"
    config_path.write_text(config)
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "WHISPIR_KEY": SECRET, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver.cli",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(port),
                "--log-format",
                "json",
                *extra,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
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
