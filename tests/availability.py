"""Shared pieces of the availability tests (tests/test_availability.py): real
``receiver serve`` processes on loopback, a bounded load of real callbacks, a counting
plugin, and the figures every test asserts.

* :class:`Load`: a few hundred callbacks a second, each a OnePoint receipt with a message
  id of its own, at a fixed rate and with bounded concurrency, for as long as the test
  runs it; for each one, the connection error or the status.
* :func:`write_counting_plugin`: a ``plugins_dir`` plugin that appends ``<message id>
  <pid>`` to a file for every event it handles, so that "handled exactly once" is counted
  across processes.
* :func:`exactly_once`: 0 connection errors, 0 non-2xx, every id sent stored once and
  handled once; the figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY = "availability-key-5c2e"
CHANNEL = "sms"

CONFIG = f"""
journal = "{{journal}}"
plugins_dir = "{{plugins}}"
{{extra}}
[channels.{CHANNEL}]
provider = "onepoint"
auth = "header"
header = "X-Test-Key"
keys = ["{KEY}"]
"""


def write_config(tmp_path: Path, journal: str, extra: str = "") -> Path:
    """A configuration with one OnePoint channel (``/sms``, header auth), the journal
    ``journal`` and ``tmp_path/plugins`` as its plugins folder; top-level ``extra``."""
    path = tmp_path / "receiver.toml"
    path.write_text(CONFIG.format(journal=journal, plugins=tmp_path / "plugins", extra=extra))
    return path


def sqlite_journal(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'journal.db'}"


# The counting plugin ----------------------------------------------------------------------

COUNTING_PLUGIN = """
import asyncio
import os
import time

from receiver import hookimpl

HANDLED = {handled!r}
SLOW_EVERY = {slow_every!r}
SLOW_SECONDS = {slow_seconds!r}


@hookimpl
async def on_receipt(event):
    # Some events take a while (unfinished work when a process dies); the line is
    # written at the end, once the handling is over.
    if SLOW_EVERY and int(event.message_id.rsplit("-", 1)[1]) % SLOW_EVERY == 0:
        await asyncio.sleep(SLOW_SECONDS)
    # One write(2) of one short line on an O_APPEND descriptor: atomic, whatever the
    # number of processes appending to the file.
    descriptor = os.open(HANDLED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        line = f"{{event.message_id}} {{os.getpid()}} {{time.time():.3f}}\\n"
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
"""


def write_counting_plugin(tmp_path: Path, slow_every: int = 0, slow_seconds: float = 0.0) -> Path:
    """``tmp_path/plugins/counting.py``; returns the file it appends to
    (``tmp_path/handled.txt``). Every ``slow_every``-th message id sleeps ``slow_seconds``
    before it is counted (0: none)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    handled = tmp_path / "handled.txt"
    (plugins / "counting.py").write_text(
        COUNTING_PLUGIN.format(
            handled=str(handled), slow_every=slow_every, slow_seconds=slow_seconds
        )
    )
    return handled


def read_handled(handled: Path) -> list[tuple[str, int]]:
    """The (message id, pid) of each line the counting plugin wrote, in order."""
    return [(message_id, pid) for message_id, pid, _ in read_handled_times(handled)]


def read_handled_times(handled: Path) -> list[tuple[str, int, float]]:
    """The (message id, pid, time.time() when handled) lines of the counting plugin."""
    if not handled.exists():
        return []
    lines = []
    for line in handled.read_text().splitlines():
        message_id, pid, at = line.split()
        lines.append((message_id, int(pid), float(at)))
    return lines


# The load ---------------------------------------------------------------------------------


def receipt(message_id: str) -> bytes:
    """A OnePoint delivery receipt of its own: no two message ids are duplicates."""
    return json.dumps(
        {
            "Source": "447700900123",
            "Destination": "447700900456",
            "Type": "Receipt",
            "Status": "Delivered",
            "Timestamp": "2026-11-22T10:00:00.000000+00:00",
            "MessageID": message_id,
        }
    ).encode()


def request(message_id: str, path: str = f"/{CHANNEL}") -> bytes:
    """The whole HTTP request of :func:`receipt` ``message_id``, ``Connection: close``;
    its ``X-Request-ID`` is the message id (nginx's access log names it)."""
    body = receipt(message_id)
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nX-Test-Key: {KEY}\r\nX-Request-ID: {message_id}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def read_response(connection: socket.socket) -> bytes:
    """One whole response (its head and ``Content-Length`` bytes) from a connection that
    stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"closed in the middle of a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, f"closed in the middle of a response: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Outcome:
    """One callback sent: its status, or the connection error (``status`` None)."""

    message_id: str
    status: int | None
    error: str | None
    started: float
    ended: float


class Load:
    """Callbacks at ``rate`` a second to ``address`` (``path``), from :meth:`start` until
    :meth:`stop`, at most ``concurrency`` at once; each with a new message id
    (``<prefix>-<n>``).

    Each callback is sent on a **new connection** (``Connection: close``), as providers'
    HTTP clients and nginx's upstream connections do by default. A keep-alive connection
    would measure something no server can promise: when a server that is shutting down
    closes an idle keep-alive connection, the client may be writing its next request on
    it at that very moment, and that request fails (the client cannot know whether it
    was read). A fresh connection is either accepted (queued in the kernel's backlog
    until a process takes it) or refused before anything is sent.

    The sender is asyncio on raw sockets in a thread of its own (the test's thread stays
    free to start and stop processes): about 0.1 ms of CPU a callback, so a few hundred a
    second do not make it the bottleneck on two cores. A callback that cannot start on
    time (``concurrency`` reached) waits; :attr:`Figures.rate` shows the rate achieved.
    """

    def __init__(
        self,
        address: tuple[str, int],
        path: str = f"/{CHANNEL}",
        *,
        rate: float = 200.0,
        concurrency: int = 256,
        timeout: float = 30.0,
        prefix: str = "AV",
    ) -> None:
        self.address = address
        self.path = path
        self.rate = rate
        self.concurrency = concurrency
        self.timeout = timeout
        self.prefix = prefix
        self.outcomes: list[Outcome] = []
        self.sent = 0
        self.began = 0.0
        self.finished = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="load", daemon=True)
        self._failure: BaseException | None = None

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[Outcome]:
        """Send no more; wait for those in flight; every outcome."""
        self._stop.set()
        self._thread.join(timeout=self.timeout + 10)
        if self._thread.is_alive():
            raise AssertionError("the load generator did not finish")
        if self._failure is not None:
            raise AssertionError(f"the load generator failed: {self._failure!r}")
        return self.outcomes

    def answered(self) -> int:
        """Callbacks answered so far (any status)."""
        return sum(1 for outcome in list(self.outcomes) if outcome.status is not None)

    def wait_answered(self, more: int, timeout: float = 20.0) -> None:
        """Wait until ``more`` callbacks more than now have been answered."""
        target = self.answered() + more
        deadline = time.monotonic() + timeout
        while self.answered() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {more} callbacks answered in {timeout} s")
            time.sleep(0.05)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by stop()
            self._failure = exc

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        running: set[asyncio.Task[None]] = set()
        self.began = time.monotonic()
        n = 0
        while not self._stop.is_set():
            delay = self.began + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(self._one(f"{self.prefix}-{n:06d}", slots))
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
            self.sent = n
        self.finished = time.monotonic()
        await asyncio.gather(*running)

    async def _one(self, message_id: str, slots: asyncio.Semaphore) -> None:
        message = request(message_id, self.path)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(*self.address)
                try:
                    writer.write(message)
                    await writer.drain()
                    answer = await reader.read()  # until the server closes: Connection: close
                finally:
                    writer.close()
            parts = answer.split(b" ", 2)
            if answer.startswith(b"HTTP/1.") and len(parts) > 2 and parts[1].isdigit():
                status = int(parts[1])
            else:
                error = f"no HTTP answer: {answer[:60]!r}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            slots.release()
        self.outcomes.append(Outcome(message_id, status, error, started, time.monotonic()))


# The figures ------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a test saw: the load's outcomes, the journal's rows, the plugin's lines."""

    outcomes: list[Outcome]
    stored: list[tuple[str, str]]  # (message id, state), one per journal entry
    handled: list[tuple[str, int]]  # (message id, pid), one per handling
    seconds: float
    errors: list[Outcome] = field(init=False)
    refused: list[Outcome] = field(init=False)  # answered, not 2xx

    def __post_init__(self) -> None:
        self.errors = [o for o in self.outcomes if o.status is None]
        self.refused = [o for o in self.outcomes if o.status is not None and o.status // 100 != 2]

    @property
    def sent(self) -> set[str]:
        return {o.message_id for o in self.outcomes}

    @property
    def acknowledged(self) -> set[str]:
        return {o.message_id for o in self.outcomes if o.status is not None and o.status < 300}

    @property
    def rate(self) -> float:
        return len(self.outcomes) / self.seconds if self.seconds else 0.0

    def stored_counts(self) -> Counter[str]:
        return Counter(message_id for message_id, _ in self.stored)

    def handled_counts(self) -> Counter[str]:
        return Counter(message_id for message_id, _ in self.handled)

    def summary(self, name: str) -> str:
        pids = Counter(pid for _, pid in self.handled)
        latencies = sorted(o.ended - o.started for o in self.outcomes) or [0.0]
        states = Counter(state for _, state in self.stored)
        lines = [
            f"{name}: sent {len(self.outcomes)} in {self.seconds:.1f} s ({self.rate:.0f}/s), "
            f"connection errors {len(self.errors)}, non-2xx {len(self.refused)}, "
            f"stored {len(self.stored)} {dict(states)}, handled {len(self.handled)} "
            f"by {len(pids)} processes {dict(pids)}; latency median "
            f"{latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        ]
        for outcome in (self.errors + self.refused)[:10]:
            lines.append(f"  {outcome.message_id}: {outcome.status or outcome.error}")
        return "\n".join(lines)


def exactly_once(figures: Figures, name: str, context: str = "") -> None:
    """Print the figures (and ``context``, if any); assert 0 connection errors, 0 non-2xx,
    and every id sent stored exactly once, done, and handled exactly once (nothing else
    stored or handled)."""
    print("\n" + figures.summary(name) + (f"\n{context}" if context else ""))
    assert figures.outcomes, "nothing was sent"
    assert not figures.errors, f"{len(figures.errors)} connection errors"
    assert not figures.refused, f"{len(figures.refused)} callbacks answered other than 2xx"
    stored = figures.stored_counts()
    handled = figures.handled_counts()
    sent = figures.sent
    assert len(sent) == len(figures.outcomes)  # distinct ids
    assert sent - stored.keys() == set(), f"not stored: {sorted(sent - stored.keys())[:10]}"
    assert stored.keys() - sent == set()
    twice = {m: c for m, c in stored.items() if c != 1}
    assert not twice, f"stored more than once: {dict(list(twice.items())[:10])}"
    not_done = [(m, s) for m, s in figures.stored if s != "done"]
    assert not not_done, f"{len(not_done)} entries not done: {not_done[:10]}"
    not_once = {m: handled[m] for m in sent if handled[m] != 1}
    assert not not_once, f"{len(not_once)} not handled exactly once: {list(not_once.items())[:10]}"
    assert handled.keys() == sent


# The journal ------------------------------------------------------------------------------


def sqlite_rows(journal: str) -> list[tuple[str, str]]:
    """(message id, state) of every entry of a ``sqlite:///`` journal."""
    with sqlite3.connect(journal.removeprefix("sqlite:///"), timeout=10) as connection:
        return [
            (str(m), str(s)) for m, s in connection.execute("SELECT message_id, state FROM events")
        ]


def postgres_rows(url: str) -> list[tuple[str, str]]:
    """(message id, state) of every entry of a PostgreSQL journal."""
    from postgres import admin

    rows = asyncio.run(admin(url, "SELECT message_id, state FROM events"))
    return [(str(row["message_id"]), str(row["state"])) for row in rows]


def wait_settled(
    rows: Callable[[], list[tuple[str, str]]], expected: int, timeout: float = 20.0
) -> list[tuple[str, str]]:
    """Poll the journal until it holds at least ``expected`` entries and none is
    ``received`` (being handled) any more, or ``timeout``; the rows then."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows()
        if len(found) >= expected and all(state != "received" for _, state in found):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# Processes --------------------------------------------------------------------------------


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


class Processes:
    """The processes a test starts, each with its log file; all stopped by
    :meth:`stop_all` (SIGTERM, then SIGKILL after 20 s), which the tests call in
    ``finally``: no process outlives its test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], name: str, pass_fds: Iterable[int] = ()
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"}
        with (self.tmp_path / f"{name}.log").open("ab") as sink:
            process = subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=tuple(pass_fds),
                cwd=self.tmp_path,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM ``process`` and wait for it; its exit status."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def get(address: tuple[str, int], path: str, timeout: float = 5.0) -> int | None:
    """The status of ``GET path`` on a new connection, None if there is no answer."""
    try:
        with socket.create_connection(address, timeout=timeout) as client:
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = client.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if head.startswith(b"HTTP/1.") and parts[1:2] != [b""] else None


def wait_ready(
    address: tuple[str, int],
    process: subprocess.Popen[bytes] | None = None,
    path: str = "/readyz",
    timeout: float = 30.0,
) -> None:
    """Wait until ``GET path`` answers 200 (``process``, if given, must not exit)."""
    deadline = time.monotonic() + timeout
    while get(address, path) != 200:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the receiver exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{address} did not answer {path} with 200 in {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (``ps --ppid``)."""
    done = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True, check=False
    )
    return [int(x) for x in done.stdout.split()]


def workers(pid: int) -> set[int]:
    """The uvicorn worker processes of ``receiver serve --workers N`` (pid ``pid``): its
    children started by multiprocessing's spawn (not its resource tracker)."""
    found = set()
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(child)
    return found


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


# nginx ------------------------------------------------------------------------------------

NGINX = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    log_format availability '$http_x_request_id $status "$upstream_addr" "$upstream_status"';
    access_log {tmp}/access.log availability;
    upstream receivers {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://receivers;
            proxy_set_header X-Forwarded-For $remote_addr;
            # What nginx passes to the other replica: a connection it could not make
            # (refused: the replica is restarting or dead; or not made in time). A POST
            # is not idempotent, so nginx never sends one again once any of it was sent
            # (that takes "non_idempotent"): a replica that dies while it holds a request
            # costs that request a 502, which the provider re-sends (OnePoint/DIY) and
            # which nobody took for an acknowledgement. With "non_idempotent" (as in
            # examples/nginx-replicas.conf) it is sent to the other replica, where the
            # journal answers it as a duplicate if the first one stored it.
            proxy_next_upstream {next_upstream};
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """nginx, as tests/test_nginx.py finds it (``make tools`` installs it): a missing
    nginx fails the test, never skips it."""
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(found).exists(), "nginx is not installed: `make test` installs it"
    return found


def nginx_config(
    tmp_path: Path,
    port: int,
    upstreams: Iterable[int],
    down: Iterable[int] = (),
    next_upstream: str = "error timeout",
) -> Path:
    """nginx on 127.0.0.1:``port`` in front of the receivers on ``upstreams`` (round
    robin), those on ``down`` marked ``down`` (sent nothing: drained); what nginx passes to
    the next replica: ``proxy_next_upstream next_upstream``. ``max_fails=0``: a
    refused connection is passed to the other replica and costs a microsecond on
    loopback, so no replica is ever marked failed for ``fail_timeout`` (with the default,
    one restart could leave both marked failed, and nginx answer 502 "no live upstreams"
    though one is up)."""
    drained = set(down)
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=0{' down' if p in drained else ''};"
        for p in upstreams
    )
    path = tmp_path / "nginx.conf"
    path.write_text(
        NGINX.format(tmp=tmp_path, servers=servers, port=port, next_upstream=next_upstream)
    )
    checked = subprocess.run(
        [nginx_binary(), "-t", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    return path


def nginx_routes(tmp_path: Path) -> dict[str, tuple[int, list[int], list[str]]]:
    """From nginx's access log: request id -> (status, the upstream ports tried in order,
    their statuses)."""
    routes = {}
    for line in (tmp_path / "access.log").read_text().splitlines():
        found = re.fullmatch(r'(\S+) (\d+) "([^"]*)" "([^"]*)"', line)
        assert found is not None, line
        request_id, status, addresses, statuses = found.groups()
        ports = [int(a.rsplit(":", 1)[1]) for a in addresses.split(", ") if ":" in a]
        routes[request_id] = (int(status), ports, statuses.split(", "))
    return routes


def nginx_errors(tmp_path: Path) -> str:
    """nginx's error log but for its notices (start, stop) and the refused connections
    it passed to the other replica: what went wrong upstream."""
    lines = (tmp_path / "error.log").read_text(errors="replace").splitlines()
    expected = ("[notice]", "connect() failed (111: Connection refused)")
    return "\n".join(line for line in lines if not any(e in line for e in expected))
