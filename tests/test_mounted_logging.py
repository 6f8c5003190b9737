"""receiver mounted in an application: its lines follow the application's logging.

An application that configured only the standard library's ``logging`` gets receiver's
lines as ``logging`` records (logger ``receiver.<module>``, the fields as record
attributes), at its own levels, and nothing on stdout; one that configured structlog gets
them through structlog, as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi import FastAPI
from samples import PAYLOADS
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, create_app, hookimpl
from receiver.logs import get_logger, stdlib_logger

WHISPIR_KEY = "whispir-mounted-key"
ONEPOINT_KEY = "onepoint-mounted-key"
WHISPIR_REPLY = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
ONEPOINT_RECEIPT = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """What a host writes: one JSON object per record, its ``extra`` fields included."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "logger": record.name,
            "level": record.levelname,
            "message": record.getMessage(),
            "where": f"{Path(record.pathname).name}:{record.funcName}",
        }
        line.update({k: v for k, v in vars(record).items() if k not in RECORD_FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Inbox:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog as an application that never configured it has it; structlog and the
    standard library's logging put back as they were afterwards."""
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ours = logging.getLogger("receiver")
    our_handlers, our_level = ours.handlers[:], ours.level
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.reset_defaults()
        if was_configured:
            structlog.configure(**saved)
        structlog.contextvars.clear_contextvars()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        ours.handlers[:] = our_handlers
        ours.setLevel(our_level)


def host_logging(path: Path, level: int) -> None:
    """The host's set-up: JSON lines to ``path``, the root logger at ``level``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def host_app(inbox: Inbox) -> FastAPI:
    config = Config(
        channels={
            "whispir": Channel(provider="whispir", auth="header", keys=[WHISPIR_KEY]),
            "onepoint": Channel(
                provider="onepoint", auth="header", header="X-Key", keys=[ONEPOINT_KEY]
            ),
        },
        journal="none",
    )
    app = FastAPI()

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"app": "the host"}

    app.mount("/hooks", create_app(config, plugins=[inbox], autoload=False))
    return app


def lines(path: Path) -> list[dict[str, Any]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def post_whispir(client: TestClient, key: str = WHISPIR_KEY) -> int:
    headers = {"content-type": "application/json", "X-Whispir-Callback-Key": key}
    return client.post("/hooks/whispir", content=WHISPIR_REPLY, headers=headers).status_code


def post_onepoint(client: TestClient, key: str = ONEPOINT_KEY) -> int:
    headers = {"content-type": "application/json", "X-Key": key}
    return client.post("/hooks/onepoint", content=ONEPOINT_RECEIPT, headers=headers).status_code


def test_mounted_callback_lines_reach_host_logging_with_their_fields(
    unconfigured: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "app.log"
    host_logging(log_file, logging.INFO)
    inbox = Inbox()
    with TestClient(host_app(inbox)) as client:
        assert post_whispir(client) == 200
        assert post_onepoint(client) == 200
        assert post_whispir(client, key="wrong-key") == 401
    whispir, onepoint = inbox.events
    callbacks = [line for line in lines(log_file) if line["message"] == "callback"]
    assert len(callbacks) == 3, callbacks
    first, second, refused = callbacks
    for line, event in ((first, whispir), (second, onepoint)):
        assert line["logger"] == "receiver.app"
        assert line["level"] == "INFO"
        assert line["where"] == "app.py:log_answer"  # the line's own place, not structlog's
        assert line["event_id"] == event.id
        assert line["message_id"] == event.message_id
        assert line["type"] == event.type.value
        assert line["status"] == 200
        assert isinstance(line["duration_ms"], float)
        assert line["request_id"]
        assert line["client"] == "testclient"
    assert (first["channel"], first["provider"]) == ("whispir", "whispir")
    assert (second["channel"], second["provider"]) == ("onepoint", "onepoint")
    assert refused["logger"] == "receiver.app"
    assert refused["level"] == "WARNING"
    assert refused["channel"] == "whispir"
    assert refused["status"] == 401
    assert refused["outcome"] == "rejected_auth"
    assert refused["reason"]
    text = log_file.read_text()
    for secret in (WHISPIR_KEY, ONEPOINT_KEY, "wrong-key"):
        assert secret not in text
    out, err = capfd.readouterr()
    assert out == ""
    assert "callback" not in err


def test_mounted_warning_host_sees_no_info_lines_but_warnings(
    unconfigured: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "app.log"
    host_logging(log_file, logging.WARNING)
    inbox = Inbox()
    with TestClient(host_app(inbox)) as client:
        assert post_whispir(client) == 200
        assert post_onepoint(client) == 200
        assert post_onepoint(client, key="wrong-key") == 401
    assert len(inbox.events) == 2
    logged = [line for line in lines(log_file) if line["logger"].startswith("receiver")]
    assert [(line["level"], line["status"]) for line in logged] == [("WARNING", 401)]
    assert logged[0]["channel"] == "onepoint"
    assert "wrong-key" not in log_file.read_text()
    assert capfd.readouterr().out == ""


def test_mounted_lines_follow_the_host_changing_levels_later(
    unconfigured: None, tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    host_logging(log_file, logging.INFO)
    with TestClient(host_app(Inbox())) as client:
        assert post_whispir(client) == 200
        logging.getLogger("receiver").setLevel(logging.WARNING)
        assert post_whispir(client) == 200
        logging.getLogger("receiver").setLevel(logging.NOTSET)
        assert post_whispir(client) == 200
    assert len([line for line in lines(log_file) if line["message"] == "callback"]) == 2


def test_mounted_host_structlog_config_gets_receivers_lines(
    unconfigured: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    stdlib_file, structlog_file = tmp_path / "stdlib.log", tmp_path / "structlog.log"
    host_logging(stdlib_file, logging.DEBUG)
    with structlog_file.open("w") as sink:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.JSONRenderer(),
            ],
            logger_factory=structlog.WriteLoggerFactory(sink),
        )
        inbox = Inbox()
        with TestClient(host_app(inbox)) as client:
            assert post_whispir(client) == 200
            assert post_whispir(client, key="wrong-key") == 401
    logged = [json.loads(line) for line in structlog_file.read_text().splitlines()]
    ok, refused = [line for line in logged if line["event"] == "callback"]
    assert ok["level"] == "info"
    assert ok["event_id"] == inbox.events[0].id
    assert (ok["channel"], ok["status"], ok["request_id"] is not None) == ("whispir", 200, True)
    assert (refused["level"], refused["status"]) == ("warning", 401)
    assert "wrong-key" not in structlog_file.read_text()
    assert not [line for line in lines(stdlib_file) if line["logger"].startswith("receiver")]
    assert capfd.readouterr().out == ""


def test_mounted_logger_follows_structlog_being_configured_after_first_use(
    unconfigured: None, tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    host_logging(log_file, logging.INFO)
    with TestClient(host_app(Inbox())) as client:
        assert post_whispir(client) == 200  # to logging
        with structlog.testing.capture_logs() as captured:
            assert post_whispir(client) == 200  # to structlog, now configured
    assert len([line for line in lines(log_file) if line["message"] == "callback"]) == 1
    assert [line["event"] for line in captured] == ["callback"]


def test_stdlib_logger_renames_fields_a_log_record_owns(unconfigured: None, tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    host_logging(log_file, logging.INFO)
    stdlib_logger("receiver.test").info("odd fields", name="n", module="m", message="x")
    (line,) = lines(log_file)
    assert line["logger"] == "receiver.test"
    assert (line["name_"], line["module_"], line["message_"]) == ("n", "m", "x")


def test_get_logger_module_logger_goes_to_its_named_stdlib_logger(
    unconfigured: None, tmp_path: Path
) -> None:
    log_file = tmp_path / "app.log"
    host_logging(log_file, logging.INFO)
    log = get_logger("receiver.somewhere", part="one")
    log.debug("below the level")
    log.info("a line", count=2)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = lines(log_file)
    assert (first["logger"], first["message"], first["count"], first["part"]) == (
        "receiver.somewhere",
        "a line",
        2,
        "one",
    )
    assert first["where"] == "test_mounted_logging.py:" + (
        "test_get_logger_module_logger_goes_to_its_named_stdlib_logger"
    )
    assert (second["level"], second["message"]) == ("ERROR", "failed")
    assert "ValueError: boom" in second["exception"]
