"""Recovering rejected bodies: ``receiver replay --rejected`` after a parser fix.

The "parser fix" is a plugin provider, ``picky`` (OnePoint's parser), that rejects any
callback of ``Type`` "Poll" until a flag file exists. Callbacks are rejected by a real app
(``TestClient``) on a real SQLite journal in ``tmp_path``; they are recovered through the
real CLI, ``receiver.cli.main``, which loads the same plugin folder afresh. The plugin
writes each event it is given to a file: that file is what was dispatched.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient

from receiver import create_app
from receiver.cli import main
from receiver.config import load_config

KEY = "sekret"
JSON = {"content-type": "application/json"}

PLUGIN = """
from pathlib import Path

from receiver import hookimpl
from receiver.providers.onepoint import OnePointProvider
from receiver.errors import PayloadError

FIXED = Path({fixed!r})
DISPATCHED = Path({dispatched!r})


class PickyProvider(OnePointProvider):
    name = "picky"

    def parse_as(self, fmt, raw, **options):
        event = super().parse_as(fmt, raw, **options)
        if event.provider_type == "Poll" and not FIXED.exists():
            raise PayloadError("picky: Type Poll is not supported yet")
        return event


@hookimpl
def register_providers():
    return [PickyProvider]


@hookimpl
def on_event(event):
    with DISPATCHED.open("a") as f:
        f.write(f"{{event.id}} {{event.channel}} {{event.text}}\\n")
"""


class Setup:
    """A configuration, its journal, and the plugin's flag and dispatch files."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "j.db"
        self.fixed = tmp_path / "fixed"
        self.dispatched = tmp_path / "dispatched.txt"
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        (plugins / "picky.py").write_text(
            PLUGIN.format(fixed=str(self.fixed), dispatched=str(self.dispatched))
        )
        self.config = tmp_path / "receiver.toml"
        self.config.write_text(
            f'journal = "sqlite:///{self.db}"\n'
            f"plugins_dir = {str(plugins)!r}\n"
            "[channels.sms]\n"
            'provider = "picky"\n'
            'auth = "none"\n'
            "[channels.q]\n"
            'provider = "picky"\n'
            'auth = "query"\n'
            f'keys = ["{KEY}"]\n'
        )

    def post(self, *requests: tuple[str, str, bytes]) -> list[int]:
        """Send (method, url, body) requests to a live app; their status codes."""
        app = create_app(load_config(self.config))
        with TestClient(app) as client:
            return [
                client.request(method, url, content=body, headers=JSON).status_code
                for method, url, body in requests
            ]

    def cli(self, *args: str) -> int:
        return main(["replay", "--config", str(self.config), *args])

    def dispatched_texts(self) -> list[str]:
        if not self.dispatched.exists():
            return []
        return [line.split(" ", 2)[2] for line in self.dispatched.read_text().splitlines()]

    def rows(self, where: str = "1 = 1") -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.db)) as connection:
            connection.row_factory = sqlite3.Row
            found = connection.execute(
                f"SELECT * FROM events WHERE {where} ORDER BY id"  # UUIDv7: in time order
            ).fetchall()
            return [dict(row) for row in found]


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    import receiver.logs

    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    # The CLI configures process-wide logging (cached structlog loggers): keep it local.
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    return Setup(tmp_path)


def poll(text: str, message_id: str = "MS1", **fields: Any) -> bytes:
    body = {
        "MessageID": message_id,
        "Type": "Poll",
        "Source": "447700900123",
        "Destination": "60777",
        "Message": text,
        "Timestamp": "2024-03-05T15:02:47.881920+00:00",
        **fields,
    }
    return json.dumps(body).encode()


GARBAGE = b'{"MessageID": "MS9", "Type": '


def test_recover_rejected_body_is_recorded_dispatched_and_marked(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    body = poll("yes please")
    assert setup.post(("POST", "/sms", body)) == [400]
    (rejected,) = setup.rows()
    assert rejected["state"] == "rejected"

    setup.fixed.touch()  # the parser fix
    assert setup.cli("--rejected") == 0
    out = capsys.readouterr().out

    assert setup.dispatched_texts() == ["yes please"]
    old, new = setup.rows()
    assert old["id"] == rejected["id"]
    assert (old["state"], old["recovered_as"]) == ("recovered", new["id"])
    assert (new["state"], new["channel"], new["type"], new["raw"]) == (
        "done",
        "sms",
        "unknown",
        body,
    )
    assert new["received_at"] == pytest.approx(old["received_at"], abs=1e-5)  # when it came
    assert f"recovered {old['id']} as {new['id']}" in out

    # A second run finds nothing to do, and dispatches nothing again.
    assert setup.cli("--rejected") == 0
    assert setup.dispatched_texts() == ["yes please"]
    assert len(setup.rows()) == 2


def test_recover_dry_run_dispatches_nothing(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.post(("POST", "/sms", poll("one")), ("POST", "/sms", GARBAGE)) == [400, 400]
    good, bad = setup.rows()
    setup.fixed.touch()
    capsys.readouterr()

    assert setup.cli("--rejected", "--dry-run") == 1  # one would still fail
    out = capsys.readouterr().out
    assert f"would recover {good['id']} sms unknown" in out
    assert f"still rejected {bad['id']} sms:" in out
    assert GARBAGE.decode() not in out
    assert not setup.dispatched.exists()
    assert [row["state"] for row in setup.rows()] == ["rejected", "rejected"]


def test_recover_still_bad_body_stays_rejected_and_fails_the_run(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.post(("POST", "/sms", GARBAGE), ("POST", "/sms", poll("fine"))) == [400, 400]
    bad, good = setup.rows()
    setup.fixed.touch()
    capsys.readouterr()

    assert setup.cli("--rejected") == 1
    out = capsys.readouterr().out
    assert f"still rejected {bad['id']} sms: " in out
    assert bad["error"].split(":")[0] in out  # the parser's reason...
    assert GARBAGE.decode() not in out  # ...never the body
    assert "recovered 1 of 2 rejected entries, 1 still rejected" in out
    assert setup.dispatched_texts() == ["fine"]
    states = {row["id"]: row["state"] for row in setup.rows()}
    assert (states[bad["id"]], states[good["id"]]) == ("rejected", "recovered")


def test_recover_parser_not_fixed_yet_changes_nothing(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.post(("POST", "/sms", poll("too early"))) == [400]
    assert setup.cli("--rejected") == 1
    assert "picky: Type Poll is not supported yet" in capsys.readouterr().out
    assert [row["state"] for row in setup.rows()] == ["rejected"]
    assert not setup.dispatched.exists()


def test_recover_by_id_takes_only_that_entry(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.post(("POST", "/sms", poll("first")), ("POST", "/sms", poll("second"))) == [
        400,
        400,
    ]
    first, second = setup.rows()
    setup.fixed.touch()
    assert setup.cli(second["id"]) == 0
    assert setup.dispatched_texts() == ["second"]
    states = {row["id"]: row["state"] for row in setup.rows()}
    assert (states[first["id"]], states[second["id"]]) == ("rejected", "recovered")

    capsys.readouterr()
    assert setup.cli(second["id"]) == 0  # again: already recovered, nothing dispatched
    assert f"{second['id']} was recovered already" in capsys.readouterr().out
    assert setup.dispatched_texts() == ["second"]


def test_recover_since_takes_only_recent_rejections(setup: Setup) -> None:
    assert setup.post(("POST", "/sms", poll("old")), ("POST", "/sms", poll("recent"))) == [
        400,
        400,
    ]
    old, recent = setup.rows()
    with closing(sqlite3.connect(setup.db)) as connection:  # "old" arrived 3 hours ago
        connection.execute(
            "UPDATE events SET received_at = received_at - 3 * 3600 WHERE id = ?", (old["id"],)
        )
        connection.commit()
    setup.fixed.touch()
    assert setup.cli("--rejected", "--since", "1h") == 0
    assert setup.dispatched_texts() == ["recent"]
    states = {row["id"]: row["state"] for row in setup.rows()}
    assert (states[old["id"]], states[recent["id"]]) == ("rejected", "recovered")


def test_recover_get_callback_from_its_query_without_the_key(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    query = "MessageID=MS7&Type=Poll&Source=447700900123&Message=by+GET"
    assert setup.post(("GET", f"/q?auth={KEY}&{query}", b"")) == [400]
    (rejected,) = setup.rows()
    assert rejected["raw"] == query.encode()  # the fields, the key parameter removed
    assert msgspec.msgpack.decode(rejected["meta"])["raw"] == "query"

    setup.fixed.touch()
    assert setup.cli("--rejected") == 0
    assert setup.dispatched_texts() == ["by GET"]
    old, new = setup.rows()
    assert (old["state"], old["recovered_as"]) == ("recovered", new["id"])
    assert (new["channel"], new["message_id"], new["state"]) == ("q", "MS7", "done")
    for row in setup.rows():
        for value in row.values():
            assert KEY not in (value.decode("latin-1") if isinstance(value, bytes) else str(value))


def test_recover_duplicate_of_an_accepted_resend_is_not_dispatched(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rejected; the parser is fixed and deployed; the provider re-sends it and it is
    # accepted. Recovering the rejected copy afterwards must not dispatch it twice.
    body = poll("only once")
    assert setup.post(("POST", "/sms", body)) == [400]
    setup.fixed.touch()
    assert setup.post(("POST", "/sms", body)) == [200]
    rejected, accepted = setup.rows()
    capsys.readouterr()

    assert setup.cli("--rejected") == 0
    assert f"a duplicate of {accepted['id']}" in capsys.readouterr().out
    assert setup.dispatched_texts() == ["only once"]
    rows = setup.rows()
    assert len(rows) == 2
    assert (rows[0]["id"], rows[0]["state"], rows[0]["recovered_as"]) == (
        rejected["id"],
        "recovered",
        accepted["id"],
    )


def test_recover_then_prune_removes_recovered_entries(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert setup.post(("POST", "/sms", poll("x"))) == [400]
    setup.fixed.touch()
    assert setup.cli("--rejected") == 0
    assert main(["prune", "--config", str(setup.config), "--older-than", "0s"]) == 0
    assert setup.rows() == []  # the recovered entry, and the event it became (done)


def test_recover_gzip_body_is_kept_decoded_and_recovered(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    body = poll("compressed yes")
    with TestClient(create_app(load_config(setup.config))) as client:
        response = client.post(
            "/sms", content=gzip.compress(body), headers={**JSON, "content-encoding": "gzip"}
        )
    assert response.status_code == 400
    (rejected,) = setup.rows()
    assert rejected["raw"] == body  # decoded: readable, and parsed as such on replay
    setup.fixed.touch()
    assert setup.cli("--rejected") == 0
    assert setup.dispatched_texts() == ["compressed yes"]


def test_recover_body_with_refused_coding_keeps_its_coding_and_stays_rejected(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    body = poll("brotli?")
    with TestClient(create_app(load_config(setup.config))) as client:
        response = client.post("/sms", content=body, headers={**JSON, "content-encoding": "br"})
    assert response.status_code == 415
    (rejected,) = setup.rows()
    assert rejected["raw"] == body
    assert msgspec.msgpack.decode(rejected["meta"])["content-encoding"] == "br"
    setup.fixed.touch()
    assert setup.cli("--rejected") == 1
    out = capsys.readouterr().out
    assert "Content-Encoding br is not supported" in out
    assert setup.dispatched_texts() == []
    assert [row["state"] for row in setup.rows()] == ["rejected"]
