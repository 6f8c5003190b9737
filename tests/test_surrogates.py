"""Text with lone surrogates from a plugin (an exception's message about bytes decoded with
``surrogateescape``, a reply, a log field): UTF-8 cannot carry it, and neither the log
line, nor the journal, nor the answer may fail because of it. Each lone surrogate becomes
U+FFFD; a reply that cannot be sent at all is the handler's failure, kept for a retry.

Real parts: a real ``receiver serve`` with JSON log lines (tests/serving.py), real SQLite
journals, the real app through TestClient.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import msgspec
import pytest
import structlog
from samples import PAYLOADS
from serving import serve, wait_for
from starlette.testclient import TestClient
from test_logs import restore_structlog

from receiver import Channel, Config, Reply, create_app, hookimpl
from receiver.journal import storable
from receiver.logs import configure_logging, encodable, flush_logs

MESSAGE = json.loads((PAYLOADS / "onepoint" / "message_inbound.json").read_bytes())
JSON = {"content-type": "application/json"}
REPLACEMENT = "\ufffd"

__all__ = ["restore_structlog"]  # a fixture, used by name


def body(message_id: str) -> bytes:
    return json.dumps({**MESSAGE, "MessageID": message_id}).encode()


SURROGATE_ERROR = """
from receiver import hookimpl

@hookimpl
def on_message(event):
    name = b"caf\\xe9.csv".decode("utf-8", "surrogateescape")
    raise RuntimeError("cannot read " + name)
"""


def test_serve_handler_error_with_surrogates_is_kept_for_a_retry(tmp_path: Path) -> None:
    # With JSON log lines (serve's default off a terminal), logging the handler's failure
    # must not fail the request: before, msgspec refused the traceback's text, the
    # callback got a 500 and its entry stayed `received` without a failure.
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "surrogates.py").write_text(SURROGATE_ERROR)
    config = (
        'journal = "sqlite:///journal.db"\nplugins_dir = "plugins"\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    with serve(tmp_path, config) as server:
        status, _ = server.request("/sms", body("SUR-1"), JSON)
        assert status == 200
        with sqlite3.connect(tmp_path / "journal.db") as db:
            (state,) = db.execute("SELECT state FROM events").fetchone()
            (message,) = db.execute("SELECT message FROM attempts").fetchone()
        assert state == "failed"
        assert "caf" + REPLACEMENT + ".csv" in message
        assert wait_for(lambda: "handler failed" in server.log_text())
        failed = [e for e in server.log_events() if e.get("event") == "handler failed"]
    assert failed and "caf" + REPLACEMENT + ".csv" in str(failed[0]["exception"])
    assert "Traceback" not in server.log_text().split("handler failed")[0]


@pytest.mark.usefixtures("restore_structlog")
def test_json_log_field_with_surrogates_is_written_as_replacement(capfd: object) -> None:
    configure_logging("json", "info")
    structlog.get_logger("plugin").info("seen", name="caf\udce9", pair="\ud83d\ude00")
    structlog.get_logger("plugin").info("seen", items=["x\udc80"], **{"k\udc80": 1})
    try:
        raise ValueError("caf\udce9")
    except ValueError:
        structlog.get_logger("plugin").exception("failed")
    flush_logs()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]  # type: ignore[attr-defined]
    assert lines[0]["name"] == "caf" + REPLACEMENT
    assert lines[0]["pair"] == "\U0001f600"
    assert lines[1]["items"] == ["x" + REPLACEMENT]
    assert lines[1]["k" + REPLACEMENT] == 1
    assert "ValueError: caf" + REPLACEMENT in lines[2]["exception"]


def test_encodable_replaces_each_lone_surrogate() -> None:
    assert encodable("a\udc80b") == "a" + REPLACEMENT + "b"
    assert encodable("\ud800") == REPLACEMENT
    assert encodable("\ud83d\ude00") == "\U0001f600"  # a pair: the character it makes
    assert encodable("plain") == "plain"
    assert encodable({"k\udc80": ["v\udc80", 3]}) == {"k" + REPLACEMENT: ["v" + REPLACEMENT, 3]}
    assert storable("a\udc80") == "a" + REPLACEMENT


class ReplyPlugin:
    def __init__(self, reply: object) -> None:
        self.reply = reply

    @hookimpl
    def on_message(self, event: object) -> object:
        return self.reply


def journaled(tmp_path: Path, reply: object) -> TestClient:
    config = Config(
        channels={"sms": Channel(provider="onepoint", auth="none")},
        journal=f"sqlite:///{tmp_path / 'journal.db'}",
    )
    return TestClient(create_app(config, plugins=[ReplyPlugin(reply)]))


def stored(tmp_path: Path, message_id: str) -> tuple[str, bytes | None, str | None]:
    with sqlite3.connect(tmp_path / "journal.db") as db:
        row = db.execute(
            "SELECT state, reply, error FROM events WHERE message_id = ?", (message_id,)
        ).fetchone()
    return row  # type: ignore[no-any-return]


def test_reply_text_with_surrogates_is_answered_with_replacement(tmp_path: Path) -> None:
    for reply in ("thanks caf\udce9", Reply(text="thanks caf\udce9", extra={"Note\udc80": "x"})):
        with journaled(tmp_path, reply) as client:
            message_id = f"SUR-R-{type(reply).__name__}"
            response = client.post("/sms", content=body(message_id), headers=JSON)
            assert response.status_code == 200
            assert "thanks caf" + REPLACEMENT in response.content.decode("utf-8")
            state, kept, _ = stored(tmp_path, message_id)
        assert state == "done"
        assert kept is not None
        assert msgspec.msgpack.decode(kept, type=Reply).text == "thanks caf" + REPLACEMENT


def test_reply_that_cannot_be_sent_is_a_handler_failure(tmp_path: Path) -> None:
    # A Reply whose text is not text, or whose extra holds a value with no JSON form:
    # before, the answer raised after the handlers ran (a 500, the entry left received).
    # It is the handler's failure: answered 200 (the event is safe), kept for a retry.
    for number, reply in enumerate((Reply(text=5), Reply(text="x", extra={"v": object()}))):  # type: ignore[arg-type]
        message_id = f"SUR-F-{number}"
        with journaled(tmp_path, reply) as client:
            response = client.post("/sms", content=body(message_id), headers=JSON)
        assert response.status_code == 200
        assert response.content == b""
        state, _, _ = stored(tmp_path, message_id)
        assert state == "failed"
        with sqlite3.connect(tmp_path / "journal.db") as db:
            (message,) = db.execute(
                "SELECT message FROM attempts WHERE event_id = "
                "(SELECT id FROM events WHERE message_id = ?)",
                (message_id,),
            ).fetchone()
        assert message.startswith("the reply cannot be sent")
