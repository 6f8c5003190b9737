"""Issue 14 part 6, "what an operator sees": each failed attempt kept in the journal (its
time, plugin, exception type, message and traceback) and shown by ``receiver events``;
``retention`` pruned by the server itself; metrics for retries, dead letters,
undelivered replies, the backlog and journal commits.

Real apps (``TestClient``) writing real SQLite files, a real configuration file, and
``receiver.cli.main`` reading them back.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from samples import PAYLOADS
from starlette.testclient import TestClient
from structlog.testing import capture_logs

import receiver.logs
from receiver import Event, Reply, blocking, create_app, hookimpl, load_config
from receiver.cli import main
from receiver.errors import MESSAGE_LIMIT, TRACEBACK_LIMIT, ConfigError

ONEPOINT_DELIVERED = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
ONEPOINT_SENT = (PAYLOADS / "onepoint" / "receipt_sent.json").read_bytes()
ONEPOINT_MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
WHISPIR_REPLY = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
JSON = {"content-type": "application/json"}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# A plugin file: on_receipt fails twice ("boom 1", "boom 2"), then succeeds; on_message
# always fails (a dead letter).
FLAKY = """\
from receiver import hookimpl

calls = 0


@hookimpl
def on_receipt(event):
    global calls
    calls += 1
    if calls <= 2:
        raise RuntimeError(f"boom {calls}")


@hookimpl
def on_message(event):
    raise ValueError("no such keyword table")
"""


def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Path:
    """A configuration file with a journal, ``plugins/flaky.py`` and open channels."""
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    # The CLI configures process-wide logging (cached structlog loggers): keep it local.
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "flaky.py").write_text(FLAKY)
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        'journal = "sqlite:///j.db"\n'
        'plugins_dir = "plugins"\n'
        f"{extra}"
        "[channels.sms]\n"
        'provider = "onepoint"\n'
        'auth = "none"\n'
        "[channels.w]\n"
        'provider = "whispir"\n'
        'auth = "none"\n'
    )
    return toml


def fast(app: Any) -> Any:
    app.state.redelivery.poll_interval = 0.02
    app.state.redelivery.backlog_interval = 0.02
    return app


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, params).fetchall()


def state_of(db: Path, event_id: str) -> str | None:
    found = query(db, "SELECT state FROM events WHERE id = ?", (event_id,))
    return found[0][0] if found else None


def wait_until(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_operator_sees_each_failed_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plugin failing twice then succeeding: ``events show`` lists both attempts (time,
    plugin, type, message, traceback); a dead letter's last error is in the listing's
    error column; ``events --json`` is JSON lines with ISO-8601 times."""
    toml = site(tmp_path, monkeypatch, "retry_delays = [0.05, 0.05]\n")
    db = tmp_path / "j.db"
    with TestClient(fast(create_app(load_config(toml)))) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
        assert client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON).status_code == 200
        ids = dict(query(db, "SELECT type, id FROM events"))
        receipt, message = ids["receipt"], ids["message"]
        assert wait_until(lambda: state_of(db, receipt) == "done")
        assert wait_until(lambda: state_of(db, message) == "dead")
    capsys.readouterr()

    assert main(["events", "--config", str(toml), "show", receipt]) == 0
    shown = capsys.readouterr().out
    attempts = [line for line in shown.splitlines() if line.startswith("attempt ")]
    assert len(attempts) == 2
    for number, line in enumerate(attempts, 1):
        fields = line.split("  ")
        assert fields[0] == f"attempt {number}"
        assert ISO.match(fields[1]), line
        assert fields[2] == "flaky (on_receipt)"
        assert fields[3] == f"RuntimeError: boom {number}"
    assert shown.count("    Traceback (most recent call last):") == 2
    assert 'flaky.py", line 11, in on_receipt' in shown
    assert re.search(r'"received_at": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', shown)

    assert main(["events", "--config", str(toml)]) == 0
    listing = capsys.readouterr().out.splitlines()
    (header,) = [line for line in listing if line.startswith("id ")]  # log lines share stdout
    assert header.split() == [
        "id", "received", "(UTC)", "channel", "type", "state", "tries", "message_id", "error"
    ]  # fmt: skip
    (dead_row,) = [line for line in listing if line.startswith(message)]
    assert dead_row.endswith("ValueError: no such keyword table")
    assert " dead " in dead_row
    (done_row,) = [line for line in listing if line.startswith(receipt)]
    assert done_row.endswith(" -")  # handled since: its history is in events show
    assert ISO.match(done_row.split()[1])

    assert main(["events", "--config", str(toml), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()  # structlog's test output shares stdout
    lines = [json.loads(line) for line in out if line.startswith("{")]
    by_id = {line["id"]: line for line in lines}
    assert set(by_id) == {receipt, message}
    assert by_id[receipt]["state"] == "done"
    assert by_id[receipt]["attempts"] == 3
    assert by_id[receipt]["last_error"] == "RuntimeError: boom 2"
    assert by_id[message]["state"] == "dead"
    assert by_id[message]["attempts"] == 3
    assert by_id[message]["last_error"] == "ValueError: no such keyword table"
    assert by_id[message]["failed_plugins"] == ["flaky"]
    for line in lines:
        assert ISO.match(line["received_at"])
        assert "raw" not in line and "event" not in line  # no body


def test_operator_long_exception_message_is_stored_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handler whose exception message holds 200,000 characters (and lines): the kept
    message and traceback are cut, and the traceback still names the frame."""
    toml = site(tmp_path, monkeypatch)
    (tmp_path / "plugins" / "flaky.py").write_text(
        "from receiver import hookimpl\n\n"
        "@hookimpl\n"
        "def on_receipt(event):\n"
        "    raise ValueError('start ' + 'x' * 100_000 + '\\n' * 50_000 + 'y' * 50_000)\n"
    )
    db = tmp_path / "j.db"
    with TestClient(create_app(load_config(toml))) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    ((event_id, error_type, message, trace),) = query(
        db, "SELECT event_id, error_type, message, traceback FROM attempts"
    )
    assert error_type == "ValueError"
    assert message.startswith("start xxx")
    assert len(message) <= MESSAGE_LIMIT + 40
    assert len(trace) <= TRACEBACK_LIMIT + 80
    assert trace.startswith("Traceback (most recent call last):")
    assert "in on_receipt" in trace
    assert "characters cut" in trace
    capsys.readouterr()
    assert main(["events", "--config", str(toml), "show", event_id]) == 0
    out = capsys.readouterr().out
    assert len(out) < 2 * TRACEBACK_LIMIT


class AlwaysFailingReceipts:
    @hookimpl
    def on_receipt(self, event: Event) -> None:
        raise RuntimeError("receipts store down")


class Replier:
    @hookimpl
    def on_message(self, event: Event) -> Reply:
        return Reply(text="thanks")


class BrokenSender:
    @hookimpl
    def send_reply(self, event: Event, reply: Reply) -> bool:
        raise ConnectionError("provider API down")


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_operator_metrics_retries_dead_letters_backlog_commits(tmp_path: Path) -> None:
    """A receipt failing three times (two retries, a dead letter); a reply send_reply
    never takes (three undelivered, two retries, a dead letter); then a failure waiting
    an hour: /metrics counts each, the backlog, and the journal's commits."""
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        'journal = "sqlite:///j.db"\nmetrics = true\nretry_delays = [0.05, 0.05]\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
        '[channels.w]\nprovider = "whispir"\nauth = "none"\n'
    )
    db = tmp_path / "j.db"
    plugins = [AlwaysFailingReceipts(), Replier(), BrokenSender()]
    app = fast(create_app(load_config(toml), plugins=plugins))
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
        assert client.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
        assert wait_until(
            lambda: [row[0] for row in query(db, "SELECT state FROM events")] == ["dead"] * 2
        )
        app.state.redelivery.retry_delays = [3600.0]  # the next failure waits
        assert client.post("/sms", content=ONEPOINT_SENT, headers=JSON).status_code == 200
        assert wait_until(lambda: "receiver_journal_backlog 1.0" in client.get("/metrics").text)
        text = client.get("/metrics").text
    assert metric(text, "receiver_retries_total", '{channel="sms"}') == 2
    assert metric(text, "receiver_retries_total", '{channel="w"}') == 2
    assert metric(text, "receiver_dead_letters_total", '{channel="sms"}') == 1
    assert metric(text, "receiver_dead_letters_total", '{channel="w"}') == 1
    assert metric(text, "receiver_replies_undelivered_total", '{channel="w"}') == 3
    assert metric(text, "receiver_journal_backlog") == 1
    commits = metric(text, "receiver_journal_commit_seconds_count")
    # Each record, each state change (some grouped), each retry's claim and the lease's
    # renewals (every 5 s), never the worker's reads alone (a poll that claims nothing).
    assert 4 <= commits <= 20
    assert metric(text, "receiver_journal_commit_seconds_sum") > 0
    # Each failure is kept with its attempt: the send_reply ones name the hook.
    kept = query(db, "SELECT plugin, hook, error_type FROM attempts ORDER BY rowid")
    assert {row[1:] for row in kept} == {
        ("on_receipt", "RuntimeError"),
        ("send_reply", "ConnectionError"),
    }
    assert len(kept) == 7


def test_operator_metrics_off_journal_still_works(tmp_path: Path) -> None:
    """Without metrics nothing observes the journal, and failures are kept all the same."""
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        'journal = "sqlite:///j.db"\nretry_delays = []\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    app = create_app(load_config(toml), plugins=[AlwaysFailingReceipts()])
    assert app.state.metrics is None and app.state.journal.on_commit is None
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
        assert client.get("/metrics").status_code == 404
    assert query(tmp_path / "j.db", "SELECT state FROM events") == [("dead",)]
    assert len(query(tmp_path / "j.db", "SELECT * FROM attempts")) == 1


class SlowReplier:
    """on_message: a @blocking reply that waits for ``release`` (past the timeout)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    @blocking
    def on_message(self, event: Event) -> str:
        self.release.wait(10)
        return "late"


def test_operator_retention_prunes_old_handled_entries_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``retention = "0.3s"``: the server prunes done and dead entries (and their attempts)
    older than that, at start and then every prune_interval; a failed entry and one still
    being handled (received, past its timeout) stay."""
    toml = site(
        tmp_path,
        monkeypatch,
        (
            'retention = "0.3s"\nduplicate_window = 0\nduplicate_body_window = 0\n'
            "retry_delays = []\nreply_timeout = 0.1\n"
        ),
    )
    db = tmp_path / "j.db"
    slow = SlowReplier()
    app = fast(create_app(load_config(toml), plugins=[slow]))
    app.state.redelivery.prune_interval = 0.05
    with capture_logs() as logs, TestClient(app) as client:
        # flaky.py: the first receipt fails with no retries (dead); the message's
        # handlers run on past reply_timeout (received, a HandlerTimeout kept).
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
        assert client.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
        app.state.redelivery.retry_delays = [3600.0]
        assert client.post("/sms", content=ONEPOINT_SENT, headers=JSON).status_code == 200
        states = dict(query(db, "SELECT raw, state FROM events"))
        assert states[ONEPOINT_SENT] == "failed"
        assert states[WHISPIR_REPLY] == "received"
        timeouts = query(db, "SELECT error_type FROM attempts WHERE plugin IS NULL")
        assert timeouts == [("HandlerTimeout",)]
        assert wait_until(
            lambda: ONEPOINT_DELIVERED not in dict(query(db, "SELECT raw, id FROM events"))
        )
        time.sleep(0.5)  # every entry is older than the retention now
        left = dict(query(db, "SELECT raw, state FROM events"))
        assert left == {ONEPOINT_SENT: "failed", WHISPIR_REPLY: "received"}
        slow.release.set()
    # The dead entry's attempts went with it; the failed one's stay.
    kept = query(db, "SELECT DISTINCT event_id FROM attempts")
    ids = {row[0] for row in query(db, "SELECT id FROM events")}
    assert {row[0] for row in kept} <= ids
    assert [line for line in logs if line["event"] == "journal pruned" and line["entries"] == 1]


@pytest.mark.parametrize("value", ["soon", "-1d", "0s", "nan"])
def test_operator_retention_must_be_a_duration(tmp_path: Path, value: str) -> None:
    toml = tmp_path / "receiver.toml"
    toml.write_text(f'retention = "{value}"\n')
    with pytest.raises(ConfigError, match=r"receiver\.toml: retention: "):
        load_config(toml)


def test_operator_retention_never_prunes_inside_the_duplicate_windows() -> None:
    """``retention`` shorter than a duplicate window is raised to it: the entries are what
    a re-send or a replayed signed request is recognized by (found by the second attack:
    ``retention = "90s"`` let a replay within the signature's window in as new)."""
    from receiver import Config

    assert Config(retention="90s").retention_seconds == 48 * 3600.0
    assert Config(retention="90s", duplicate_window=0).retention_seconds == 600.0
    assert Config(retention="30d").retention_seconds == 30 * 86400.0
    assert Config().retention_seconds is None
