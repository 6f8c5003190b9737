"""Issue 14 part 6: the operator commands read the journal from any folder, without the
channels' secrets, and ``prune --dry-run`` deletes nothing.

Each test writes a real configuration file and SQLite journal under ``tmp_path``, fills the
journal through a real app (``TestClient``), then runs ``receiver.cli.main`` from another
working directory.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from samples import payload
from starlette.testclient import TestClient

import receiver.logs
from receiver import create_app, load_config
from receiver.cli import main
from receiver.errors import ConfigError

JSON = {"content-type": "application/json"}
CONFIG = """\
journal = "sqlite:///data/journal.db"
plugins_dir = "plugins"

[channels.sms]
provider = "onepoint"
auth = "bearer"
keys = ["${SWEEP_ONEPOINT_KEY}"]

[channels.whispir]
provider = "whispir"
auth = "header"
keys = ["file:secrets/whispir.key"]
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/site/receiver.toml`` with relative paths, its plugins folder and the
    journal holding one OnePoint receipt; the current directory is elsewhere."""
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in (
        "RECEIVER_CONFIG",
        "RECEIVER_JOURNAL",
        "RECEIVER_PLUGINS_DIR",
        "RECEIVER_STATE_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    site = tmp_path / "site"
    (site / "plugins").mkdir(parents=True)
    (site / "data").mkdir()
    (site / "secrets").mkdir()
    (site / "secrets" / "whispir.key").write_text("whispir-key-1\n")
    (site / "receiver.toml").write_text(CONFIG)
    monkeypatch.setenv("SWEEP_ONEPOINT_KEY", "onepoint-key-1")
    # secrets/ is relative to the working folder (file: paths are not config paths).
    monkeypatch.chdir(site)
    config = load_config(site / "receiver.toml")
    with TestClient(create_app(config)) as client:
        response = client.post(
            "/sms",
            content=payload("onepoint", "receipt_delivered.json"),
            headers={**JSON, "Authorization": "Bearer onepoint-key-1"},
        )
        assert response.status_code == 200, response.text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("SWEEP_ONEPOINT_KEY")
    return site


def test_operator_config_relative_paths_resolve_against_the_file(site: Path) -> None:
    config = load_config(site / "receiver.toml", channel_secrets=False)
    assert config.journal == f"sqlite:///{site / 'data' / 'journal.db'}"
    assert config.plugins_dir == str(site / "plugins")
    assert config.state_dir == str(site / "state")
    assert not Path("data").exists()  # nothing made in the current folder


def test_operator_config_events_run_without_channel_secrets(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The variable of one channel's key is unset and the other's key file unreadable
    from here: events still lists the journal, which is found from another folder."""
    assert main(["events", "--config", str(site / "receiver.toml")]) == 0
    out = capsys.readouterr().out
    assert "receipt" in out and "sms" in out
    assert main(["check-config", "--config", str(site / "receiver.toml")]) == 0
    assert main(["plugins", "--config", str(site / "receiver.toml")]) == 0


def test_operator_config_serving_still_needs_the_secrets(site: Path) -> None:
    with pytest.raises(ConfigError, match="SWEEP_ONEPOINT_KEY is not set"):
        load_config(site / "receiver.toml")


def test_operator_config_stand_in_secret_never_matches(site: Path) -> None:
    """A stand-in key is random: two loads differ, and neither is empty."""
    first = load_config(site / "receiver.toml", channel_secrets=False).channels["sms"].keys
    second = load_config(site / "receiver.toml", channel_secrets=False).channels["sms"].keys
    assert first[0] and second[0] and first != second


def test_operator_config_prune_dry_run_deletes_nothing(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = site / "data" / "journal.db"
    toml = str(site / "receiver.toml")
    assert main(["prune", "--config", toml, "--older-than", "0s", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would prune 1 entries" in out
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert main(["prune", "--config", toml, "--older-than", "0s"]) == 0
    assert "pruned 1 entries" in capsys.readouterr().out
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_operator_events_never_write_terminal_controls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sender's ESC/CSI sequences (in a message id, in the text) reach ``receiver
    events`` and ``events show`` as ``\\xNN``, never as controls for the terminal."""
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    db = tmp_path / "j.db"
    toml = tmp_path / "receiver.toml"
    toml.write_text(
        f'journal = "sqlite:///{db}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    body = (
        b'{"Type":"Message","MessageID":"MS\\u001b[2J1","Source":"447700900123",'
        b'"Message":"hi \\u001b]0;pwned\\u0007 \\u009b31m","Timestamp":"2024-05-21T08:59:01Z"}'
    )
    with TestClient(create_app(load_config(toml))) as client:
        assert client.post("/sms", content=body, headers=JSON).status_code == 200
    assert main(["events", "--config", str(toml)]) == 0
    listing = capsys.readouterr().out
    assert "MS\\x1b[2J1" in listing
    (row,) = [line for line in listing.splitlines() if "MS\\x1b[2J1" in line.split()]
    event_id = row.split()[0]
    assert main(["events", "--config", str(toml), "show", event_id]) == 0
    shown = capsys.readouterr().out
    for out in (listing, shown):
        assert not any(ord(ch) < 0x20 and ch not in "\n\t" for ch in out)
        assert not any(0x7F <= ord(ch) < 0xA0 for ch in out)
