"""Attacks on the operator console (issue 18): an attacker on the network and a careless
operator. Each test names a problem found; they fail until it is fixed."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import serve
from starlette.testclient import TestClient

from receiver import hookimpl
from receiver.app import create_app
from receiver.config import Channel, Config, Console

TOKEN = "console-token-5b1e9d2c7a"
BEARER = {"authorization": "Bearer " + TOKEN}
SAMPLE = (
    Path(__file__).parent.parent / "receiver" / "samples" / "whispir" / "reply_sms.json"
).read_bytes()


def _config(tmp_path: Path, **extra: Any) -> Config:
    return Config(
        channels={"w": Channel(provider="whispir", auth="none")},
        journal=f"sqlite:///{tmp_path / 'journal.db'}",
        console=Console(token=TOKEN),
        **extra,
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(_config(tmp_path), autoload=False)
    with TestClient(app, raise_server_exceptions=False) as running:
        yield running


def _login(client: TestClient) -> str:
    """Log in as a browser does; the session cookie's value."""
    page = client.get("/console/", headers={"accept": "text/html"})
    csrf = re.search(r'name="csrf" value="([^"]*)"', page.text)
    assert csrf is not None
    answer = client.post(
        "/console/login",
        data={"token": TOKEN, "csrf": csrf.group(1), "next": "/console/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    return str(answer.cookies["receiver_console"])


def _page_csrf(client: TestClient) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', client.get("/console/").text)
    assert found is not None and found.group(1)
    return found.group(1)


# -- authentication ---------------------------------------------------------------------


def test_cookie_with_a_non_ascii_mac_is_401_not_500(tmp_path: Path) -> None:
    """Anyone on the network, no token: a session cookie holding a non-ASCII character
    makes ``hmac.compare_digest(str, str)`` raise TypeError: a 500 before authentication."""
    config = f"""
journal = "sqlite:///{tmp_path / "j.db"}"
[console]
token = "{TOKEN}"
[channels.w]
provider = "whispir"
auth = "none"
"""
    with serve(tmp_path, config) as server:
        status, _ = server.request("/console/", headers={"Cookie": "receiver_console=n.\xe9"})
        assert status == 401
        # the server's own log: no traceback for an unauthenticated request
        assert "TypeError" not in server.log_text()


def test_csrf_field_with_a_non_ascii_character_is_403_not_500(client: TestClient) -> None:
    """A forged form (a page on another site can't, but a browser extension, a proxy or a
    careless script can) with csrf=é: TypeError in compare_digest, a 500 not a 403."""
    _login(client)
    answer = client.post("/console/replay", data={"csrf": "\u00e9", "scope": "filter"})
    assert answer.status_code == 403
    answer = client.post("/console/logout", data={"csrf": "\u00e9"}, follow_redirects=False)
    assert answer.status_code == 403


def test_logout_revokes_the_session_cookie(client: TestClient) -> None:
    """Log out deletes the cookie in this browser only: its value (copied, stolen from a
    shared machine, a proxy log) stays valid for ever, until the token itself changes."""
    session = _login(client)
    answer = client.post(
        "/console/logout", data={"csrf": _page_csrf(client)}, follow_redirects=False
    )
    assert answer.status_code == 303
    client.cookies.clear()
    replayed = client.get("/console/", headers={"cookie": f"receiver_console={session}"})
    assert replayed.status_code == 401


# -- what a callback holds ----------------------------------------------------------------


def test_event_page_of_a_deeply_nested_json_body_is_not_500(client: TestClient) -> None:
    """An unauthenticated sender posts ``[[[[...`` (20 KB): rejected and journaled, fine;
    the operator who opens it gets a 500 (json.loads raises RecursionError, not ValueError)."""
    assert (
        client.post(
            "/w", content=b"[" * 20000, headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    ids = re.findall(r'/console/events/([^"]+)"', client.get("/console/", headers=BEARER).text)
    assert len(ids) == 1
    answer = client.get(f"/console/events/{ids[0]}", headers=BEARER)
    assert answer.status_code == 200
    assert "[[[[" in answer.text  # shown as text, unindented


# -- filters and replay past the scan window ----------------------------------------------


def _journal_with_old_failures(tmp_path: Path, newer: int = 5100, failed: int = 3) -> None:
    """One real callback, then ``newer`` + ``failed`` copies of it straight into the
    journal: the ``failed`` oldest in state failed, the rest done, all in the last day."""
    app = create_app(_config(tmp_path), autoload=False)
    with TestClient(app) as client:
        sent = client.post("/w", content=SAMPLE, headers={"content-type": "application/json"})
        assert sent.status_code == 200
    db = sqlite3.connect(tmp_path / "journal.db")
    columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
    fixed = ("id", "received_at", "state", "message_id", "dedupe_key", "body_hash")
    other = ", ".join(c for c in columns if c not in fixed)
    now = time.time()
    db.execute(
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        f"INSERT INTO events (id, received_at, state, message_id, {other}) "
        f"SELECT 'bulk-' || i, ? + i, CASE WHEN i <= ? THEN 'failed' ELSE 'done' END, "
        f"'M' || i, {other} FROM n, (SELECT * FROM events LIMIT 1)",
        (newer + failed, now - 80000, failed),
    )
    db.commit()
    db.close()


def test_replay_of_a_filter_finds_failed_entries_older_than_the_scan_window(
    tmp_path: Path,
) -> None:
    """README: Replay takes "every failed, reply_failed and dead entry of the current
    filter (at most 500)". With 5,100 newer done entries, the 3 failed ones of the last
    day are past the 5,000-row window: "Nothing to replay here", and nothing says why."""
    _journal_with_old_failures(tmp_path)
    app = create_app(_config(tmp_path), autoload=False)
    with TestClient(app) as client:
        answer = client.post(
            "/console/replay", data={"scope": "filter", "state": "failed"}, headers=BEARER
        )
        assert answer.status_code == 200
        assert "Replay these 3 entries" in answer.text, answer.text[-800:]


def test_events_filter_does_not_say_none_match_when_older_ones_do(tmp_path: Path) -> None:
    """State=failed over a journal whose failures are past the window: the page says
    "No entries match this filter." though three do (an Older link is all there is)."""
    _journal_with_old_failures(tmp_path)
    app = create_app(_config(tmp_path), autoload=False)
    with TestClient(app) as client:
        answer = client.get("/console/?state=failed", headers=BEARER)
        assert answer.status_code == 200
        shown = answer.text.count('class="state-failed"')
        assert shown == 3 or "match this filter" not in answer.text


# -- replay: a reload of the result page --------------------------------------------------


def test_replay_confirmation_sent_twice_dispatches_once(tmp_path: Path) -> None:
    """The result of a replay is the answer to the confirming POST (no redirect after it):
    a double click, or a reload of the result page ("resend the form?"), replays the
    entries again: an entry already done goes to every plugin a second time."""
    calls: list[str] = []

    class Crm:
        @hookimpl
        def on_message(self, event: Any) -> None:
            calls.append(event.id)
            if len(calls) == 1:
                raise RuntimeError("the CRM is down")

    config = _config(tmp_path, retry_delays=[3600.0])
    with TestClient(create_app(config, plugins=[Crm()], autoload=False)) as client:
        sent = client.post("/w", content=SAMPLE, headers={"content-type": "application/json"})
        assert sent.status_code == 200
        ids = re.findall(r'/console/events/([^"]+)"', client.get("/console/", headers=BEARER).text)
        assert len(ids) == 1 and len(calls) == 1
        asked = client.post("/console/replay", data={"id": ids[0]}, headers=BEARER)
        (once,) = re.findall(r'name="once" value="([^"]+)"', asked.text)
        confirm = {"confirm": "yes", "id": ids[0], "once": once}
        first = client.post("/console/replay", data=confirm, headers=BEARER)
        assert "1 succeeded" in first.text and len(calls) == 2
        again = client.post("/console/replay", data=confirm, headers=BEARER)  # the reload
        assert len(calls) == 2, "a done entry was dispatched again by a resent form"
        assert again.status_code == 409 and "already run" in again.text


# -- paging --------------------------------------------------------------------------------


def test_older_page_keeps_an_entry_with_the_same_received_time(tmp_path: Path) -> None:
    """*Older* goes on strictly before the last row's received_at: an entry sharing that
    time (a rejected entry recovered by ``receiver replay --rejected`` keeps its
    received_at) is on neither page."""
    import asyncio
    from datetime import UTC, datetime

    from receiver.events import Event, EventType
    from receiver.journal import SQLiteJournal

    async def run() -> list[str]:
        journal = SQLiteJournal(tmp_path / "j.db", duplicate_window=0, body_window=0)
        await journal.start()
        now = time.time()
        for number in range(60):
            at = now - 1000 + (9 if number == 10 else number)  # 9 and 10: the same time
            event = Event(
                id=f"evt-{number:03d}",
                received_at=datetime.fromtimestamp(at, UTC),
                channel="w",
                provider="whispir",
                type=EventType.message,
                raw=b"{}",
                message_id=f"M{number}",
            )
            await journal.record(event, {}, None)
        seen: list[str] = []
        before = None
        while True:
            page = await journal.browse(limit=50, before=before)
            seen += [e.id for e in page.entries]
            if page.older is None:
                break
            before = page.older
        await journal.stop()
        return seen

    seen = asyncio.run(run())
    assert len(seen) == len(set(seen))
    assert sorted(seen) == [f"evt-{n:03d}" for n in range(60)]
