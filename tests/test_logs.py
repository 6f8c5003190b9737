"""Tests for the command line's logging set-up: JSON lines, batched writes, one processor."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import receiver.logs
from receiver.logs import BatchedWriter, configure_logging, flush_logs


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Put structlog, the root logger and the shared writer back as they were."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        flush_logs()
        structlog.configure(**config)
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)
        receiver.logs._writer = None


def test_logs_batched_writer_loses_no_line_written_from_many_threads() -> None:
    sink = io.BytesIO()
    writer = BatchedWriter(sink, interval=0.001)  # flushing all the time, meanwhile
    per_thread, threads = 5_000, 4

    def produce(number: int) -> None:
        for i in range(per_thread):
            writer.write(b"%d-%d" % (number, i))

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    writer.flush()
    lines = sink.getvalue().splitlines()
    assert len(lines) == per_thread * threads
    assert len(set(lines)) == len(lines)
    for n in range(threads):  # each thread's lines stay in its order
        mine = [line for line in lines if line.startswith(b"%d-" % n)]
        assert mine == [b"%d-%d" % (n, i) for i in range(per_thread)]


def _lines(capfd: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    flush_logs()
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]


def test_logs_json_line_has_context_level_timestamp_and_traceback(
    restore_structlog: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    log = structlog.get_logger()
    structlog.contextvars.bind_contextvars(request_id="r-42")
    log.debug("hidden")
    log.info("hello", n=1)
    log.warn("careful")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", channel="w")
    structlog.contextvars.clear_contextvars()
    log.info("after")
    hello, careful, failed, after = _lines(capfd)
    assert hello["event"] == "hello" and hello["n"] == 1
    assert hello["level"] == "info" and hello["request_id"] == "r-42"
    assert hello["timestamp"].endswith("Z") and len(hello["timestamp"]) == 24
    assert careful["level"] == "warning"
    assert failed["level"] == "error" and failed["channel"] == "w"
    assert "RuntimeError: boom" in failed["exception"] and "exc_info" not in failed
    assert "request_id" not in after


def test_logs_json_method_line_equals_structlog_processor_chain_line(
    restore_structlog: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """The JSON wrapper's own rendering gives the line structlog's chain would."""
    configure_logging("json", "info")
    log = structlog.get_logger(channel="w", provider="bound").bind(shared="bound")
    structlog.contextvars.bind_contextvars(request_id="r-1", shared="contextvar", provider="cv")
    kinds = {"status": 200, "ms": 1.5, "none": None, "list": [1, "a"], "obj": object()}
    log.info("fast", shared="keyword", **kinds)
    log.warning("fast %s", "interpolated")  # positional arguments: structlog's own way
    with_chain = structlog.get_config()["processors"]
    structlog.configure(processors=list(with_chain))  # equal, but not the one it knows
    structlog.get_logger(channel="w", provider="bound").bind(shared="bound").info(
        "slow", shared="keyword", **kinds
    )
    fast, interpolated, slow = _lines(capfd)
    for line in (fast, slow):
        assert line.pop("timestamp").endswith("Z")
        assert line.pop("obj").startswith("<object object")
    assert (fast.pop("event"), slow.pop("event")) == ("fast", "slow")
    assert fast == slow
    assert fast == {
        "channel": "w",
        "provider": "bound",  # bound context wins over a context variable
        "shared": "keyword",  # a keyword wins over both
        "request_id": "r-1",
        "level": "info",
        **{key: value for key, value in kinds.items() if key != "obj"},
    }
    assert interpolated["event"] == "fast interpolated" and interpolated["level"] == "warning"
    assert list(slow) == list(fast)  # same key order too


def test_logs_capture_logs_still_captures_with_json_logging(
    restore_structlog: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    log = structlog.get_logger().bind(channel="w")  # resolved before the capture
    with structlog.testing.capture_logs() as captured:
        log.info("hello", n=1)
    assert captured == [{"channel": "w", "event": "hello", "n": 1, "log_level": "info"}]
    assert _lines(capfd) == []


def test_logs_json_line_formats_exc_info_bound_or_in_a_context_variable(
    restore_structlog: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    log = structlog.get_logger()
    try:
        raise RuntimeError("bound boom")
    except RuntimeError:
        log.bind(exc_info=True).error("bound")
        with structlog.contextvars.bound_contextvars(exc_info=True):
            log.error("contextvar")
    bound, contextvar = _lines(capfd)
    for line in (bound, contextvar):
        assert "RuntimeError: bound boom" in line["exception"] and "exc_info" not in line


def test_logs_batched_writer_keeps_a_str_line_and_keeps_running() -> None:
    sink = io.BytesIO()
    writer = BatchedWriter(sink, interval=0.001)
    writer.write("a str line, from a chain that renders str")  # type: ignore[arg-type]
    writer.write(b"bytes")
    writer.flush()
    writer.write(b"later")
    deadline = time.monotonic() + 5
    while b"later" not in sink.getvalue() and time.monotonic() < deadline:
        time.sleep(0.005)  # the writer thread flushes by itself: it is still running
    assert sink.getvalue().splitlines() == [
        b"a str line, from a chain that renders str",
        b"bytes",
        b"later",
    ]
