"""Attacks on the PostgreSQL journal (receiver/journal/postgres.py): each test is a
behaviour that should hold; a failing one is a finding."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from postgres import admin, postgres_server, postgres_url
from samples import PAYLOADS
from starlette.testclient import TestClient

from receiver import Channel, Config, Event, Reply, create_app, hookimpl
from receiver.journal.postgres import PostgresJournal

__all__ = ["postgres_server", "postgres_url"]

ONEPOINT_MESSAGE = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
ONEPOINT_DELIVERED = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
JSON = {"content-type": "application/json"}


def pg_app(url: str, plugins: Any = (), **config: Any) -> Any:
    channels = config.pop("channels", None) or {"sms": Channel(provider="onepoint", auth="none")}
    return create_app(Config(channels=channels, journal=url, **config), plugins=plugins)


def fetch(url: str, sql: str) -> list[Any]:
    return asyncio.run(admin(url, sql))


def sqlite_app(tmp: Any) -> Any:
    channels = {"sms": Channel(provider="onepoint", auth="none")}
    return create_app(Config(channels=channels, journal=f"sqlite:///{tmp / 'j.db'}"))


# -- odd input ------------------------------------------------------------------------


def _message(**fields: Any) -> bytes:
    body = json.loads(ONEPOINT_MESSAGE)
    body.update(fields)
    return json.dumps(body).encode()


@pytest.mark.parametrize("field", ["MessageID", "Message", "Source", "Destination", "Carrier"])
def test_nul_in_a_field_stored_or_4xx_never_500(postgres_url: str, field: str) -> None:
    payload = _message(**{field: "ab\u0000cd"})
    with TestClient(pg_app(postgres_url), raise_server_exceptions=False) as client:
        answer = client.post("/sms", content=payload, headers=JSON)
    assert answer.status_code < 500, (answer.status_code, answer.text)
    if answer.status_code == 200:
        rows = fetch(postgres_url, "SELECT raw FROM events")
        assert [r["raw"] for r in rows] == [payload]


def test_nul_in_message_id_stored_by_the_sqlite_reference(tmp_path: Any) -> None:
    """The reference behaviour the PostgreSQL journal should match (this one passes)."""
    payload = _message(MessageID="ab\u0000cd")
    with TestClient(sqlite_app(tmp_path), raise_server_exceptions=False) as client:
        assert client.post("/sms", content=payload, headers=JSON).status_code == 200


def test_lone_surrogate_in_message_id_stored_or_4xx_never_500(postgres_url: str) -> None:
    payload = ONEPOINT_MESSAGE.replace(b'"MS1312312312323"', b'"MS\\ud800x"')
    with TestClient(pg_app(postgres_url), raise_server_exceptions=False) as client:
        answer = client.post("/sms", content=payload, headers=JSON)
    assert answer.status_code < 500, (answer.status_code, answer.text)


@pytest.mark.parametrize("query", ["a=%00b", "a=%FF%FE", "x=" + "%00" * 100])
def test_odd_query_stored_never_500(postgres_url: str, query: str) -> None:
    with TestClient(pg_app(postgres_url), raise_server_exceptions=False) as client:
        answer = client.post(f"/sms?{query}", content=ONEPOINT_MESSAGE, headers=JSON)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    assert len(fetch(postgres_url, "SELECT id FROM events")) == 1


def test_nul_in_an_unreadable_body_rejected_not_500(postgres_url: str) -> None:
    payload = _message(Type="Mess\u0000age")
    with TestClient(pg_app(postgres_url), raise_server_exceptions=False) as client:
        answer = client.post("/sms", content=payload, headers=JSON)
    assert answer.status_code < 500, (answer.status_code, answer.text)


class NulRaiser:
    @hookimpl
    def on_message(self, event: Event) -> Reply:
        raise ValueError("broken \u0000 here")


def test_handler_error_with_nul_in_its_message_is_kept_for_a_retry(postgres_url: str) -> None:
    with TestClient(pg_app(postgres_url, [NulRaiser()]), raise_server_exceptions=False) as client:
        answer = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        time.sleep(0.5)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    (row,) = fetch(postgres_url, "SELECT state, attempts FROM events")
    assert row["state"] in ("failed", "dead"), dict(row)


def test_long_message_text_stored_never_500(postgres_url: str) -> None:
    """A 3,000-character inbound text (a long concatenated SMS in a non-Latin script is
    of this size in UTF-8): onepoint's dedupe key holds the whole text, and a btree index
    entry is at most 2704 bytes."""
    import random

    rng = random.Random(7)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(3000))
    payload = _message(Message=text)
    with TestClient(pg_app(postgres_url), raise_server_exceptions=False) as client:
        answer = client.post("/sms", content=payload, headers=JSON)
    assert answer.status_code == 200, (answer.status_code, answer.text[:200])
    (row,) = fetch(postgres_url, "SELECT raw FROM events")
    assert row["raw"] == payload


def test_one_mib_body_and_long_channel_stored(postgres_url: str) -> None:
    name = "c" * 200
    channels = {name: Channel(provider="onepoint", auth="none")}
    payload = _message(Message="x" * (1024 * 1024 - 2000))
    app = pg_app(postgres_url, channels=channels, max_body_bytes=2 * 1024 * 1024)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post(f"/{name}", content=payload, headers=JSON)
    assert answer.status_code == 200, (answer.status_code, answer.text[:200])
    (row,) = fetch(postgres_url, "SELECT length(raw) AS n FROM events")
    assert row["n"] == len(payload)


# -- secrets --------------------------------------------------------------------------


def test_password_in_the_url_query_never_printed_by_migrate(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    postgres_url: str,
) -> None:
    """libpq (and asyncpg) take the password as ``?password=`` too; redact_url only
    knows the ``user:password@`` form."""
    import urllib.parse

    import receiver.logs
    from receiver.cli import main

    parts = urllib.parse.urlsplit(postgres_url)
    password = parts.password or ""
    bare = parts._replace(netloc=f"{parts.username}@{parts.hostname}:{parts.port}")
    monkeypatch.setenv("PG_TEST_PASSWORD", password)
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    for name in ("RECEIVER_CONFIG", "RECEIVER_JOURNAL", "RECEIVER_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    config = tmp_path / "receiver.toml"
    url = urllib.parse.urlunsplit(bare) + "?password=${PG_TEST_PASSWORD}"
    config.write_text(f'journal = "{url}"\n[channels.sms]\nprovider = "onepoint"\nauth = "none"\n')
    assert main(["migrate", "--config", str(config)]) == 0  # the form works
    captured = capsys.readouterr()
    assert password not in captured.out + captured.err, captured.out


# -- data loss ------------------------------------------------------------------------


class CountingReplier:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_message(self, event: Event) -> Reply:
        self.calls += 1
        return Reply(text=f"reply {self.calls}")


def test_commit_whose_acknowledgement_is_lost_is_still_dispatched(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT reaches the server but its answer is lost (the connection resets right
    after: a network cut, a proxy, a failover). The record is answered 503, the row is
    committed as ``received``; the provider's re-send finds it as the original and is
    answered 200 as a duplicate, and nothing in this process ever dispatches the event
    (resume only takes entries received before the process started; due() only failed
    ones): a 200 for a callback not dispatched."""
    import asyncpg.transaction

    real_commit = asyncpg.transaction.Transaction.commit
    cut = {"armed": False}

    real_record = PostgresJournal.record

    async def commit_then_reset(self: Any) -> None:
        await real_commit(self)
        if cut["armed"] and cut.get("task") is asyncio.current_task():
            cut["armed"] = False
            raise ConnectionResetError("connection reset by peer")

    async def record(self: Any, *args: Any) -> Any:
        cut["task"] = asyncio.current_task()  # only the callback's own transaction
        return await real_record(self, *args)

    monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", commit_then_reset)
    monkeypatch.setattr(PostgresJournal, "record", record)
    replier = CountingReplier()
    with TestClient(pg_app(postgres_url, [replier]), raise_server_exceptions=False) as client:
        cut["armed"] = True
        first = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        # Fixed: the journal asks whether the row is stored; it is, so this callback
        # goes on (dispatched, 200), and the re-send is its duplicate.
        assert first.status_code == 200
        again = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        assert again.status_code == 200
        assert again.headers.get("x-receiver-duplicate")
        deadline = time.monotonic() + 5
        while replier.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    (row,) = fetch(postgres_url, "SELECT state FROM events")
    assert replier.calls == 1, "answered 200 and never dispatched"
    assert row["state"] == "done"


def test_concurrent_callbacks_and_identical_pairs_all_stored_one_original_each(
    postgres_url: str,
) -> None:
    """200 different callbacks and 100 identical pairs at once on a pool of 10: every 200
    has its row, each pair one original, no 5xx, nothing past reply_timeout."""
    from concurrent.futures import ThreadPoolExecutor

    body = json.loads(ONEPOINT_DELIVERED)
    payloads = [json.dumps({**body, "MessageID": f"c-{n}"}).encode() for n in range(200)]
    pairs = [json.dumps({**body, "MessageID": f"p-{n}"}).encode() for n in range(100)]
    sent = payloads + pairs + pairs
    with TestClient(pg_app(postgres_url), raise_server_exceptions=False) as client:

        def post(payload: bytes) -> tuple[int, float]:
            started = time.monotonic()
            answer = client.post("/sms", content=payload, headers=JSON)
            return answer.status_code, time.monotonic() - started

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(post, sent))
    codes = [code for code, _ in results]
    assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    assert max(took for _, took in results) < 10
    rows = fetch(postgres_url, "SELECT message_id, state FROM events")
    ids = sorted(r["message_id"] for r in rows)
    assert ids == sorted([f"c-{n}" for n in range(200)] + [f"p-{n}" for n in range(100)])


def test_same_body_on_two_channels_both_originals(postgres_url: str) -> None:
    channels = {
        "a": Channel(provider="onepoint", auth="none"),
        "b": Channel(provider="onepoint", auth="none"),
    }
    replier = CountingReplier()
    with TestClient(pg_app(postgres_url, [replier], channels=channels)) as client:
        first = client.post("/a", content=ONEPOINT_MESSAGE, headers=JSON)
        second = client.post("/b", content=ONEPOINT_MESSAGE, headers=JSON)
    assert first.status_code == second.status_code == 200
    assert "x-receiver-duplicate-of" not in {k.lower() for k in second.headers}
    assert replier.calls == 2


# -- schema ---------------------------------------------------------------------------


def test_tables_without_schema_version_refused_with_a_message_not_a_traceback(
    postgres_url: str,
) -> None:
    """A database with receiver's tables but no schema_version (restored without it,
    or created by hand): start must refuse with a ConfigError saying so, not crash with
    asyncpg's DuplicateTableError."""
    from receiver.errors import ConfigError

    async def go() -> None:
        journal = PostgresJournal(postgres_url)
        await journal.start()
        await journal.stop()
        await admin(postgres_url, "DROP TABLE schema_version")
        again = PostgresJournal(postgres_url)
        try:
            await again.start()
        finally:
            await again.stop()

    with pytest.raises(ConfigError):
        asyncio.run(go())


# -- state changes kept in memory --------------------------------------------------------


def _psql_admin(server: str, sql: str) -> None:
    import subprocess
    import urllib.parse

    port = str(urllib.parse.urlsplit(server).port)
    subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-p", port, "-qAtc", sql],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_done_kept_in_memory_then_process_stops_is_dispatched_at_next_start(
    postgres_server: str, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]

    class CutsOff:
        calls = 0

        @hookimpl
        def on_message(self, event: Event) -> Reply:
            CutsOff.calls += 1
            if CutsOff.calls == 1:  # the database goes away while the handler runs
                _psql_admin(postgres_server, f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
                _psql_admin(
                    postgres_server,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{database}'",
                )
            return Reply(text="ok")

    try:
        with TestClient(pg_app(postgres_url, [CutsOff()]), raise_server_exceptions=False) as c:
            assert c.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON).status_code == 200
    finally:
        _psql_admin(postgres_server, f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    (row,) = fetch(postgres_url, "SELECT state FROM events")
    assert row["state"] == "received"  # the done was never written
    with TestClient(pg_app(postgres_url, [CutsOff()]), raise_server_exceptions=False):
        deadline = time.monotonic() + 10
        while CutsOff.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert CutsOff.calls == 2  # dispatched again at the next start: nothing lost
    (row,) = fetch(postgres_url, "SELECT state FROM events")
    assert row["state"] == "done"


def test_malformed_url_port_is_a_config_error_not_a_traceback() -> None:
    """``receiver serve`` with ``...@127.0.0.1:abc/db`` exits 1 with asyncpg's ValueError
    traceback (every other bad URL is a one-line configuration error, exit 2)."""
    from receiver.errors import ConfigError

    async def go() -> None:
        journal = PostgresJournal("postgresql://u:Sup3rSecretPW@127.0.0.1:abc/db")
        try:
            await journal.start()
        finally:
            await journal.stop()

    with pytest.raises(ConfigError) as raised:
        asyncio.run(go())
    assert "Sup3rSecretPW" not in str(raised.value)


def test_operator_filters_with_nul_read_nothing_never_an_error(postgres_url: str) -> None:
    """The console's and the operator commands' filters come from a person (a query
    string): a NUL in them must find nothing, not raise PostgreSQL's text error (a 500)."""

    async def go() -> None:
        journal = PostgresJournal(postgres_url)
        await journal.start()
        try:
            assert await journal.entries(channel="sms\x00", state="failed") == []
            assert await journal.entries(ids=["no\x00such"], limit=1) == []
            found = await journal.browse(channel="a\x00", provider="p\x00", type="t\x00")
            assert found.entries == []
        finally:
            await journal.stop()

    asyncio.run(go())
