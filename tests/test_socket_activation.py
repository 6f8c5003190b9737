"""``receiver serve`` on an inherited socket (``--fd``, systemd's ``LISTEN_FDS``) or a Unix
socket (``--uds``): a restart refuses no callback, the connection waits in the backlog.

Real processes on loopback: the test owns the listening socket, as systemd would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from samples import payload

from receiver.callbacks import freshen

KEY = "sock-key-4d1f"
CONFIG = f"""
journal = "sqlite:///{{folder}}/journal.db"
[channels.w]
provider = "whispir"
auth = "header"
keys = ["{KEY}"]
"""
REPLY = payload("whispir", "reply_sms.json")


def fresh() -> bytes:
    """A new Whispir reply each time (a new message id and time): never a duplicate."""
    return freshen(REPLY, "json", "whispir")


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(CONFIG.format(folder=tmp_path))
    return path


@contextmanager
def serving(
    command: list[str], tmp_path: Path, pass_fds: tuple[int, ...] = (), name: str = "serve"
) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / f"{name}.log"
    env = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_command(config: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "receiver",
        "serve",
        "--config",
        str(config),
        "--log-format",
        "json",
        *extra,
    ]


def http_post(connect: socket.socket) -> bytes:
    """One new callback over an already connected socket; the whole answer."""
    body = fresh()
    head = (
        "POST /w HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"X-Whispir-Callback-Key: {KEY}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    connect.sendall(head.encode() + body)
    chunks = []
    while chunk := connect.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_ready(address: tuple[str, int] | str, family: int = socket.AF_INET) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.socket(family) as client:
                client.settimeout(5)
                client.connect(address)
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if client.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("receiver did not answer /healthz")
        time.sleep(0.05)


def callback(address: tuple[str, int] | str, family: int = socket.AF_INET) -> bytes:
    with socket.socket(family) as client:
        client.settimeout(10)
        client.connect(address)
        return http_post(client)


def test_serve_fd_serves_on_the_inherited_socket(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with listening_socket() as sock:
        fd = sock.fileno()
        with serving(serve_command(config, "--fd", str(fd)), tmp_path, (fd,)):
            wait_ready(sock.getsockname())
            assert callback(sock.getsockname()).startswith(b"HTTP/1.1 200")
    lines = [
        json.loads(x) for x in (tmp_path / "serve.log").read_text().splitlines() if x[:1] == "{"
    ]
    assert any(line.get("event") == "serving" and line.get("url") == f"fd://{fd}" for line in lines)


def test_serve_restart_on_the_same_socket_refuses_nothing(tmp_path: Path) -> None:
    """Between one receiver and the next, a callback waits in the kernel's backlog and is
    answered by the next one: nothing is refused (the socket outlives the processes)."""
    config = write_config(tmp_path)
    with listening_socket() as sock:
        fd, address = sock.fileno(), sock.getsockname()
        with serving(serve_command(config, "--fd", str(fd)), tmp_path, (fd,), "first") as first:
            wait_ready(address)
            assert callback(address).startswith(b"HTTP/1.1 200")
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0
        # No receiver running: the connection is accepted by the kernel, not refused.
        waiting = socket.create_connection(address, timeout=30)
        with waiting, serving(serve_command(config, "--fd", str(fd)), tmp_path, (fd,), "second"):
            answer = http_post(waiting)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    events = subprocess.run(
        [sys.executable, "-m", "receiver", "events", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(events.stdout.strip().splitlines()) == 2  # both stored


def test_serve_systemd_socket_activation_without_flags(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    # What systemd does: the socket as descriptor 3, LISTEN_FDS=1, LISTEN_PID = the pid.
    launcher = (
        "import os, sys\n"
        "os.dup2(int(sys.argv[1]), 3)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
    )
    with listening_socket() as sock:
        fd = sock.fileno()
        command = [sys.executable, "-c", launcher, str(fd), *serve_command(config)[1:]]
        with serving(command, tmp_path, (fd,)):
            wait_ready(sock.getsockname())
            assert callback(sock.getsockname()).startswith(b"HTTP/1.1 200")
    assert '"url": "fd://3"' in (tmp_path / "serve.log").read_text().replace('":"', '": "')


def test_serve_listen_pid_of_another_process_is_ignored(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = listening_socket()
    address = port.getsockname()
    port.close()  # a free port for --port
    env_command = serve_command(config, "--port", str(address[1]))
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = "1"  # not the receiver's pid: not for it
    try:
        with serving(env_command, tmp_path):
            wait_ready(address)
            assert callback(address).startswith(b"HTTP/1.1 200")
    finally:
        del os.environ["LISTEN_FDS"], os.environ["LISTEN_PID"]


def test_serve_uds_serves_on_a_unix_socket(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    path = str(tmp_path / "r.sock")
    with serving(serve_command(config, "--uds", path), tmp_path):
        wait_ready(path, socket.AF_UNIX)
        assert callback(path, socket.AF_UNIX).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("kind", ["closed", "not-listening"])
def test_serve_fd_that_is_not_a_listening_socket_is_one_line(tmp_path: Path, kind: str) -> None:
    config = write_config(tmp_path)
    with socket.socket() as unbound:
        fd = unbound.fileno() if kind == "not-listening" else 1000
        result = subprocess.run(
            serve_command(config, "--fd", str(fd)),
            capture_output=True,
            text=True,
            timeout=60,
            pass_fds=(fd,) if kind == "not-listening" else (),
        )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"receiver: configuration error: --fd {fd}: ")
    )


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    text = (Path(__file__).parent.parent / "examples" / "systemd" / name).read_text()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_serve_systemd_units_activate_the_socket_and_harden_the_service() -> None:
    socket_unit, service = _unit("receiver.socket"), _unit("receiver.service")
    assert socket_unit["Socket"]["ListenStream"] == ["127.0.0.1:8000"]
    assert service["Unit"]["Requires"] == ["receiver.socket"]
    command = service["Service"]["ExecStart"][0].split()
    assert command[1:] == ["serve"]  # the socket comes from systemd, not --host/--port
    assert service["Service"]["ProtectSystem"] == ["strict"]
    assert service["Service"]["DynamicUser"] == ["yes"]  # a dedicated user
    assert service["Service"]["StateDirectory"] == ["receiver"]  # the one writable folder
    environment = dict(v.split("=", 1) for v in service["Service"]["Environment"])
    assert environment["RECEIVER_STATE_DIR"] == "/var/lib/receiver"
