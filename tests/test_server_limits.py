"""`receiver serve`'s limits on slow, idle and greedy clients (issue 13), on real sockets.

Each test drives a real `receiver serve` on loopback with small limits in its
configuration; without :mod:`receiver.server` every one of them fails (uvicorn holds
idle and trickling connections, buffers any head, and has no connection cap).
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import structlog
from serving import SECRET, Server, serve

from receiver.config import ServerLimits, config_from_dict
from receiver.errors import ConfigError
from receiver.server import Throttle

WHISPIR_REPLY = (
    Path(__file__).parent.parent / "receiver" / "samples" / "whispir" / "reply_sms.json"
).read_bytes()

CONFIG = """
journal = "none"

[server]
header_timeout = {header_timeout}
body_timeout = {body_timeout}
max_connections = {max_connections}

[channels.w]
provider = "whispir"
auth = "query"
keys = ["${{WHISPIR_KEY}}"]
"""

RECORDER = """
from pathlib import Path
from receiver import hookimpl

@hookimpl
def on_message(event):
    with open(Path(__file__).parent / "dispatched", "a") as out:
        out.write(event.text + "\\n")
"""

LOW_SOFT_LIMIT = 256


def config(
    header_timeout: float = 0.4, body_timeout: float = 0.8, max_connections: int = 50
) -> str:
    return CONFIG.format(
        header_timeout=header_timeout, body_timeout=body_timeout, max_connections=max_connections
    )


@contextmanager
def low_soft_descriptor_limit() -> Iterator[None]:
    """Children started inside inherit a soft RLIMIT_NOFILE of 256 (the hard one kept)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(LOW_SOFT_LIMIT, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that do not count warnings: head 0.4 s, body 0.8 s; started
    with a low soft descriptor limit, which it raises."""
    tmp_path = tmp_path_factory.mktemp("limits")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "recorder.py").write_text(RECORDER)
    with low_soft_descriptor_limit(), serve(tmp_path, config(), "--plugins-dir", str(plugins)) as s:
        yield s


def port(server: Server) -> int:
    return int(server.base.rsplit(":", 1)[1])


def connect(server: Server, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port(server)), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        read_all(sock)
    except TimeoutError:
        return False
    return True


def is_closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting)."""
    sock.settimeout(0)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def rss_kb(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def callback_head(length: int) -> bytes:
    return (
        f"POST /w?auth={SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def reply_body(text: str) -> bytes:
    body = json.loads(WHISPIR_REPLY)
    body["responseMessage"]["content"] = text
    return json.dumps(body).encode()


def warnings(server: Server, kind: str) -> list[dict[str, object]]:
    return [e for e in server.log_events() if e.get("limit") == kind]


def wait_for_warnings(server: Server, kind: str, count: int = 1) -> list[dict[str, object]]:
    """The ``kind`` warnings, once ``count`` are written (lines are flushed every 0.1 s),
    and 0.15 s more so that any extra line would be there too."""
    deadline = time.monotonic() + 3
    while len(warnings(server, kind)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.15)
    return warnings(server, kind)


# -- request line and headers -------------------------------------------------------------


def test_head_over_the_limit_gets_431(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
        answer = read_all(sock)
    assert status_of(answer) == 431
    assert answer.endswith(b'{"error": "request head too large"}')


def test_head_flood_leaves_rss_flat(server: Server) -> None:
    server.request("/healthz")
    before = rss_kb(server)
    socks = [connect(server) for _ in range(4)]
    try:
        for sock in socks:  # 4 x 2 MB of one header that never ends
            with suppress(OSError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000)
        time.sleep(0.2)
        grown_mb = (rss_kb(server) - before) / 1024
    finally:
        for sock in socks:
            sock.close()
    assert grown_mb < 3, f"RSS grew by {grown_mb:.1f} MB"
    assert server.request("/healthz")[0] == 200


# -- the head deadline --------------------------------------------------------------------


def test_idle_connection_is_closed_after_the_header_timeout(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert closed_within(sock, 3)
        assert read_all(sock) == b""
    assert 0.3 < time.monotonic() - started < 1.5


def test_slowloris_is_closed_at_the_header_deadline_while_bytes_keep_coming(
    server: Server,
) -> None:
    head = callback_head(10) + b"X-Slow: " + b"a" * 100
    with connect(server) as sock:
        started = time.monotonic()
        answer, closed = b"", False
        for byte in head:  # a byte every 0.1 s: 10 s if never cut
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                answer = read_all(sock)
                closed = True
                break
            except TimeoutError:
                pass
        elapsed = time.monotonic() - started
    assert closed
    assert elapsed < 1.4
    assert status_of(answer) in (408, None)


def test_keep_alive_connection_gets_a_fresh_head_deadline_after_each_response(
    server: Server,
) -> None:
    with connect(server) as sock:
        for _ in range(3):  # 3 x 0.2 s on one connection: longer than header_timeout
            time.sleep(0.2)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(read_response(sock)) == 200
        assert closed_within(sock, 3)  # then idle: closed


# -- the body deadline --------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, pieces: int, pause: float) -> bool:
    """Send ``data`` in ``pieces`` with ``pause`` between; False if the server closed."""
    size = -(-len(data) // pieces)
    for start in range(0, len(data), size):
        try:
            sock.sendall(data[start : start + size])
        except OSError:
            return False
        time.sleep(pause)
    return True


def dispatched(server: Server) -> str:
    path = server.log.parent / "plugins" / "dispatched"
    time.sleep(0.1)
    return path.read_text() if path.exists() else ""


def test_body_slower_than_the_body_timeout_is_cut_and_not_dispatched(server: Server) -> None:
    body = reply_body("trickled-too-slowly")
    with connect(server) as sock:
        sock.sendall(callback_head(len(body)))
        started = time.monotonic()
        trickle(sock, body, 20, 0.1)  # 2 s: over the 0.8 s body_timeout
        sock.settimeout(3)
        answer = read_all(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) in (408, None)
    assert elapsed < 2
    assert "trickled-too-slowly" not in dispatched(server)


def test_slow_body_within_the_body_timeout_is_answered_200(server: Server) -> None:
    body = reply_body("slow-but-in-time")
    with connect(server) as sock:
        sock.sendall(callback_head(len(body)))
        assert trickle(sock, body, 4, 0.13)  # 0.52 s: past header_timeout, within body's
        sock.settimeout(3)
        answer = sock.recv(65536)
    assert status_of(answer) == 200
    assert "slow-but-in-time" in dispatched(server)


def test_chunked_body_with_oversized_trailers_is_cut(server: Server) -> None:
    body = reply_body("chunked-with-trailers")
    head = (
        f"POST /w?auth={SECRET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    before = rss_kb(server)
    with connect(server) as sock:
        with suppress(OSError):  # httptools would hold the trailer whole
            sock.sendall(
                head + b"%x\r\n%s\r\n0\r\nX-Trailer: " % (len(body), body) + b"t" * 2_000_000
            )
        sock.settimeout(3)
        answer = read_all(sock)
    assert status_of(answer) in (413, None)
    assert (rss_kb(server) - before) / 1024 < 3
    assert "chunked-with-trailers" not in dispatched(server)


def test_chunked_body_within_the_limits_is_answered_200(server: Server) -> None:
    body = reply_body("chunked-in-pieces")
    pieces = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10]) for i in range(0, len(body), 10)
    )
    with connect(server) as sock:
        sock.sendall(
            f"POST /w?auth={SECRET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + pieces
            + b"0\r\nX-T: 1\r\n\r\n"
        )
        answer = read_response(sock)
    assert status_of(answer) == 200
    assert "chunked-in-pieces" in dispatched(server)


# -- pipelining: a deadline runs only while its request is being received -----------------

SLOW_RECORDER = """
import asyncio
from pathlib import Path
from receiver import hookimpl

@hookimpl
async def on_message(event):
    if event.text.startswith("slow"):
        await asyncio.sleep(1.5)
    with open(Path(__file__).parent / "dispatched", "a") as out:
        out.write(event.text + "\\n")
"""


@contextmanager
def slow_handler_server(
    tmp_path: Path,
    header_timeout: float = 0.4,
    body_timeout: float = 0.5,
    max_connections: int = 50,
) -> Iterator[Server]:
    """A server whose handler takes 1.5 s for a callback whose text starts with "slow"."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "recorder.py").write_text(SLOW_RECORDER)
    with serve(
        tmp_path,
        config(header_timeout, body_timeout, max_connections),
        "--plugins-dir",
        str(plugins),
    ) as s:
        yield s


def callback(text: str) -> bytes:
    body = reply_body(text)
    return callback_head(len(body)) + body


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` whole responses (Content-Length bodies), in order."""
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {answers!r} and {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, f"closed in a response body after {answers!r}"
            rest += chunk
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers


def test_pipelined_body_deadline_starts_when_its_turn_comes(tmp_path: Path) -> None:
    """Callback 1 whole, then callback 2's head and 10 bytes of its body, pipelined: while
    callback 1's 1.5 s handler runs (3 x body_timeout) nothing is read for callback 2, so
    its body deadline must not run; it starts when callback 2's turn comes."""
    second = reply_body("second-in-time")
    third = reply_body("third-never-finished")
    with slow_handler_server(tmp_path) as server:
        with connect(server) as sock, connect(server) as late:
            sock.sendall(callback("slow-first") + callback_head(len(second)) + second[:10])
            late.sendall(callback("slow-other") + callback_head(len(third)) + third[:10])
            sock.settimeout(5)
            late.settimeout(5)
            (first,) = read_responses(sock, 1)
            sock.sendall(second[10:])  # its turn: the rest, in time
            (answer,) = read_responses(sock, 1)
            (other,) = read_responses(late, 1)
            started = time.monotonic()
            timed_out = read_all(late)  # its turn came, and the rest never does
            elapsed = time.monotonic() - started
        log = server.log_text()
        done = dispatched(server)
    assert status_of(first) == 200 and status_of(answer) == 200 and status_of(other) == 200
    assert status_of(timed_out) == 408
    assert 0.3 < elapsed < 1.5  # body_timeout from the start of its turn
    assert "slow-first" in done and "second-in-time" in done and "slow-other" in done
    assert "third-never-finished" not in done
    assert "Exception in ASGI application" not in log


def test_pipelined_head_trickled_while_a_handler_runs(tmp_path: Path) -> None:
    """Callback 2's head trickled for 0.8 s (2 x header_timeout) while callback 1's
    handler runs, its body sent after: neither deadline runs before callback 2's turn."""
    second = reply_body("second-trickled")
    with slow_handler_server(tmp_path) as server:
        with connect(server) as sock:
            sock.sendall(callback("slow-first"))
            time.sleep(0.1)
            assert trickle(sock, callback_head(len(second)), 8, 0.1)
            sock.sendall(second)  # a read of its own, after the head
            sock.settimeout(5)
            answers = read_responses(sock, 2)
        log = server.log_text()
        done = dispatched(server)
    assert [status_of(a) for a in answers] == [200, 200]
    assert "slow-first" in done and "second-trickled" in done
    assert "Exception in ASGI application" not in log


def test_trickled_head_deadline_starts_at_the_end_of_the_running_response(
    tmp_path: Path,
) -> None:
    """A head trickled while a handler runs, and on past its response: the head deadline
    runs from the end of that response (not from when the head began), and still trips."""
    with slow_handler_server(tmp_path) as server, connect(server) as sock:
        sock.sendall(callback("slow-first"))
        time.sleep(0.1)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        sock.settimeout(5)
        (first,) = read_responses(sock, 1)
        started = time.monotonic()
        answer = read_all(sock)
        elapsed = time.monotonic() - started
    assert status_of(first) == 200
    assert status_of(answer) == 408
    assert 0.25 < elapsed < 1.2


def test_pipelined_head_over_the_limit_gets_431_after_the_running_answer(
    tmp_path: Path,
) -> None:
    """An oversized head pipelined behind a running handler: that handler's answer is
    written first, then 431, then the connection is closed (it was closed at once)."""
    with slow_handler_server(tmp_path) as server, connect(server) as sock:
        sock.sendall(callback("slow-first"))
        time.sleep(0.1)
        with suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
        sock.settimeout(5)
        answer = read_all(sock)
        log = server.log_text()
    assert status_of(answer) == 200, answer[:200]
    rest = answer[answer.index(b"HTTP/1.1 ", 1) :]  # the second response
    assert status_of(rest) == 431 and rest.endswith(b'{"error": "request head too large"}')
    assert "Exception in ASGI application" not in log


@pytest.mark.parametrize(
    "bad",
    [
        b"BLAH\r\n\r\n",
        b"POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ],
    ids=["garbage", "chunked-and-length"],
)
def test_pipelined_parse_error_gets_400_after_the_running_answer(
    tmp_path: Path, bad: bytes
) -> None:
    """A malformed request in the same write as a whole callback (a running handler):
    the callback's answer first, then 400, then the connection is closed."""
    with slow_handler_server(tmp_path) as server, connect(server) as sock:
        sock.sendall(callback("slow-first") + bad)
        sock.settimeout(5)
        answer = read_all(sock)
        done = dispatched(server)
    assert status_of(answer) == 200, answer[:200]
    rest = answer[answer.index(b"HTTP/1.1 ", 1) :]
    assert status_of(rest) == 400 and rest.endswith(b"Invalid HTTP request received.")
    assert done == "slow-first\n"


def test_parse_error_with_nothing_due_gets_400_at_once(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"BLAH\r\n\r\n")
        answer = read_all(sock)
    assert status_of(answer) == 400


@pytest.mark.parametrize("pad, status", [(30_000, 200), (100_000, 431)])
def test_head_in_the_read_of_the_previous_body_is_held_to_the_limit(
    tmp_path: Path, pad: int, status: int
) -> None:
    """A head that begins in the read ending the previous request (not charged by the
    read's size) is sized once whole: 431 past max_header_bytes, served within it."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"
    body = reply_body("slow-first")
    with slow_handler_server(tmp_path) as server, connect(server) as sock:
        sock.sendall(callback_head(len(body)))
        time.sleep(0.1)
        sock.sendall(body + head)  # a read in the body: not charged to the head
        sock.settimeout(5)
        answers = read_responses(sock, 2)
        done = dispatched(server)
    assert [status_of(a) for a in answers] == [200, status]
    assert done == "slow-first\n"


def test_connection_cap_never_evicts_a_connection_with_a_running_handler(
    tmp_path: Path,
) -> None:
    """At the cap, the connection closed is the longest idle one, never the oldest
    connection if its handler runs or a pipelined request waits its turn there."""
    second = reply_body("second-queued")
    with slow_handler_server(tmp_path, header_timeout=10, max_connections=4) as server:
        with connect(server) as busy, connect(server) as running:
            busy.sendall(callback("slow-first") + callback_head(len(second)) + second[:10])
            running.sendall(callback("slow-running") + b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.2)
            idle = [connect(server) for _ in range(6)]
            try:
                time.sleep(0.2)
                closed = [is_closed(sock) for sock in idle]
                busy.settimeout(5)
                running.settimeout(5)
                (first,) = read_responses(busy, 1)
                busy.sendall(second[10:])
                (answer,) = read_responses(busy, 1)
                (other,) = read_responses(running, 1)
            finally:
                for sock in idle:
                    sock.close()
        lines = wait_for_warnings(server, "max_connections")
    assert [status_of(a) for a in (first, answer, other)] == [200, 200, 200]
    # 2 busy + 6 idle over a cap of 4: the 4 oldest idle ones were closed, the busy kept
    assert closed == [True] * 4 + [False] * 2
    assert lines and lines[0]["action"] == "closed an idle one"


# -- descriptors --------------------------------------------------------------------------


def test_descriptor_soft_limit_is_raised_to_the_hard_limit_at_start(server: Server) -> None:
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert int(soft) > LOW_SOFT_LIMIT  # it was started with 256
    assert soft == hard
    started = next(e for e in server.log_events() if e["event"] == "descriptor limit")
    assert started["soft_before"] == LOW_SOFT_LIMIT and started["soft"] == int(soft)


# -- connections --------------------------------------------------------------------------


def test_connection_cap_closes_the_longest_idle_for_a_callback(tmp_path: Path) -> None:
    with serve(tmp_path, config(header_timeout=10, max_connections=20)) as server:
        idle = [connect(server) for _ in range(30)]
        try:
            time.sleep(0.1)
            status, _ = server.request(
                f"/w?auth={SECRET}", WHISPIR_REPLY, {"Content-Type": "application/json"}
            )
            assert status == 200
            time.sleep(0.1)
            closed = [is_closed(sock) for sock in idle]
            lines = wait_for_warnings(server, "max_connections")
        finally:
            for sock in idle:
                sock.close()
    # 30 idle + the callback's connection over a cap of 20: the 11 oldest were closed.
    assert closed == [True] * 11 + [False] * 19
    assert len(lines) == 1  # 11 trips, one line
    assert lines[0]["setting"] == "server.max_connections" and lines[0]["value"] == 20


def test_connection_cap_answers_503_when_every_connection_is_busy(tmp_path: Path) -> None:
    with serve(tmp_path, config(body_timeout=10, max_connections=20)) as server:
        busy = [connect(server) for _ in range(20)]
        try:
            for sock in busy:  # heads in, bodies awaited: handlers running, not evictable
                sock.sendall(callback_head(100))
            time.sleep(0.1)
            with connect(server) as extra:
                answer = read_all(extra)
        finally:
            for sock in busy:
                sock.close()
        assert status_of(answer) == 503
        time.sleep(0.1)
        assert server.request("/healthz")[0] == 200  # the server stayed up
        assert server.process.poll() is None


# -- the warnings -------------------------------------------------------------------------


def test_limit_warnings_are_rate_limited_and_hold_no_request_bytes(tmp_path: Path) -> None:
    marker = "leak-me-7c1d"
    with serve(tmp_path, config()) as server:
        for _ in range(5):
            with connect(server) as sock:
                sock.sendall(f"GET /{marker} HTTP/1.1\r\nX-{marker}: ".encode() + b"b" * 70_000)
                assert status_of(read_all(sock)) == 431
        lines = wait_for_warnings(server, "header_size")
        text = server.log_text()
    assert len(lines) == 1
    assert lines[0]["action"] == "431" and lines[0]["client"] == "127.0.0.1"
    assert marker not in text and "bbbb" not in text


def test_throttle_reports_the_suppressed_count_in_the_next_line() -> None:
    now = [0.0]
    throttle = Throttle(interval=10, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logged:
        assert throttle.warn("header_size", "too large")
        for _ in range(3):
            now[0] += 1
            assert not throttle.warn("header_size", "too large")
        assert throttle.warn("body_timeout", "slow body")  # each limit its own window
        now[0] = 10.5
        assert throttle.warn("header_size", "too large")
    assert [(e["limit"], e["suppressed"]) for e in logged] == [
        ("header_size", 0),
        ("body_timeout", 0),
        ("header_size", 3),
    ]


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["max_header_bytes", "header_timeout", "body_timeout", "max_connections"]
)
def test_server_limits_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^receiver.toml: server.{key} must be positive$"):
        config_from_dict({"server": {key: 0}}, "receiver.toml")


def test_server_limits_defaults() -> None:
    assert ServerLimits() == ServerLimits(
        max_header_bytes=65536, header_timeout=5.0, body_timeout=30.0, max_connections=1000
    )
    with pytest.raises(ConfigError, match="server: Object contains unknown field `header_timout`"):
        config_from_dict({"server": {"header_timout": 1}}, "receiver.toml")
