"""Attacks on the fixes b401e81 / 94efd96 / 72cdda3 / 1bc7906 / a5cfd61 (branch attack2).

Each test fails on main at the time of writing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient
from test_attack import APP_ID, NONCE, aspnet_app, aspnet_signature, stored
from test_journal import db_path, decode, rows, wait_until
from test_nothing_lost import ONEPOINT_MESSAGE, CrmDown, make_app

from receiver import Event, Reply, hookimpl

JSON = {"content-type": "application/json"}

# ------------------------------------------------------------------ 1. kept replies


class OnePointReplier:
    @hookimpl
    def on_message(self, event: Event) -> Reply:
        return Reply(text="thanks, noted")


def test_attack2_onepoint_partly_failed_reply_not_given_to_a_resent_callback(
    tmp_path: Path,
) -> None:
    """OnePoint, journal on: plugin CRM raises, another plugin replies. The reply goes out
    in the body of the first answer (good), but it is not stored with the failed entry
    (redelivery.failed is called without it, and pending.reply is never set). OnePoint
    re-sends the callback when it did not get that first answer (the only reason a re-send
    happens): the duplicate is answered 200 with an empty body, so the reply is lost.
    When every plugin succeeds, a duplicate gets the original reply
    (test_journal_duplicate_message_gets_same_reply); a failing bystander plugin must not
    change that."""
    crm = CrmDown()
    app = make_app(tmp_path, plugins=[crm, OnePointReplier()], retry_delays=[60])
    with TestClient(app) as client:
        first = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        assert first.status_code == 200
        assert b"thanks, noted" in first.content
        again = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        assert again.status_code == 200
        (row,) = rows(db_path(tmp_path))
        assert row["state"] == "failed"
        # What should happen: the re-sent callback is answered with the same reply.
        assert again.content == first.content, (again.content, row)


# ------------------------------------------------------------------ 3. lower-urlencoded


def _signed_get(query: str, timestamp: str, nonce: str = NONCE) -> dict[str, str]:
    """test_attack.aspnet_signature's signer, with a Nonce of the caller's choice."""
    signature = aspnet_signature("GET", f"http://testserver/sms?{query}", timestamp, nonce=nonce)
    return {"Authorization": f"X-DIY-Signature {APP_ID}:{signature}:{nonce}:{timestamp}"}


def test_attack2_lower_urlencoded_two_genuine_gets_differing_in_case_second_swallowed(
    tmp_path: Path,
) -> None:
    """Two genuine, separately signed (own Timestamp and Nonce each) OnePoint GET
    callbacks: the same person replies "Yes", then a minute later "YES" (no Timestamp
    field in the callback, so only the body hash guards it). The second one's query,
    lowercased, hashes like the first's, so it is answered as a duplicate and never
    dispatched or stored: a genuine inbound message is lost without a trace (within
    duplicate_body_window, 600 s). The fold in 72cdda3 swallows real callbacks, not just
    re-spelled replays."""
    client, recorder, db = aspnet_app(tmp_path)
    first = "Type=Message&MessageID=M1&Source=447700900987&Message=Yes"
    second = "Type=Message&MessageID=M1&Source=447700900987&Message=YES"
    now = int(time.time())
    with client:
        assert (
            client.get(
                f"/sms?{first}", headers=_signed_get(first, str(now - 60), "a" * 32)
            ).status_code
            == 200
        )
        answer = client.get(f"/sms?{second}", headers=_signed_get(second, str(now), "b" * 32))
        assert answer.status_code == 200
    texts = [event.text for event in recorder.events]
    # What should happen: both genuine messages are dispatched (or at least stored).
    assert texts == ["Yes", "YES"], (texts, stored(db))


def _raw_get(client: TestClient, query: bytes, headers: dict[str, str]) -> int:
    """A GET through the real app with ``query`` sent as raw bytes (a client need not
    percent-escape them; h11/uvicorn pass them through)."""
    app = client.app
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/sms",
        "raw_path": b"/sms",
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    sent: list[MutableMapping[str, Any]] = []

    async def run() -> None:
        done = False

        async def receive() -> dict[str, Any]:
            nonlocal done
            if done:
                await asyncio.sleep(3600)
            done = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope["state"] = dict(getattr(client, "_lifespan_state", {}) or {})
        await app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(run)
    return int(sent[0]["status"])


def test_attack2_lower_urlencoded_unicode_case_replay_is_a_new_event(tmp_path: Path) -> None:
    """The signature check lowercases the query as Unicode text (str.lower, after taking
    raw bytes as UTF-8), but the duplicate check folds only ASCII (bytes.lower). A replay
    of a genuine signed GET with Message=OK, re-sent with the K as U+212A KELVIN SIGN
    (raw bytes E2 84 AA, which str.lower maps to 'k'), verifies and is stored and
    dispatched as a second, different event (text 'O\u212a'). Same for 'CAFÉ' -> 'CAFé'
    in raw UTF-8. A signed callback re-spelled is accepted as new: what 72cdda3 meant to
    stop.

    Reach: only under an ASGI server that passes raw non-ASCII request-target bytes on;
    `receiver serve` (httptools) and h11 both refuse them (400), so this is theoretical
    there; percent-escaped bytes are not folded by the signature (no issue)."""
    client, recorder, db = aspnet_app(tmp_path)
    query = "Type=Message&MessageID=M7&Source=447700900987&Message=OK"
    headers = _signed_get(query, str(int(time.time())))
    forged = query.replace("Message=OK", "Message=O\u212a").encode("utf-8")
    with client:
        assert _raw_get(client, query.encode(), headers) == 200
        status = _raw_get(client, forged, headers)
    texts = [event.text for event in recorder.events]
    # What should happen: 401, or a duplicate that dispatches nothing.
    assert status in (200, 401)
    assert texts == ["OK"], (status, texts, stored(db))


class SlowOnRetry:
    """on_event raises the first time; the retry succeeds, but only after ``delay`` s
    (past reply_timeout: the handlers finish in the background)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    @hookimpl
    async def on_event(self, event: Event) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("crm down")
        await asyncio.sleep(self.delay)


def test_attack2_kept_reply_lost_when_the_retry_runs_past_its_timeout(tmp_path: Path) -> None:
    """Whispir, journal on: plugin CRM raises, another plugin replies, send_reply raises
    once: the reply is kept with the failed entry (failed_plugins [CRM, REPLY_ONLY]).
    The retry calls CRM only; it succeeds but takes longer than reply_timeout, so its
    outcome is recorded in the background (Redelivery._settle). _settle calls
    finished(event, reply) with the retry's own reply (None) and never the kept one
    (retry() uses `reply or pending`, _settle does not; partly_failed there gets no
    pending either): the entry becomes done and the kept reply is never delivered."""
    from test_nothing_lost import FlakySender, Replier

    crm, replier, sender = SlowOnRetry(0.4), Replier(), FlakySender(failures=1)
    app = make_app(
        tmp_path, plugins=[crm, replier, sender], retry_delays=[0.05, 0.05], reply_timeout=0.1
    )
    db = db_path(tmp_path)
    whispir = (
        Path(__file__).parent.parent / "receiver" / "samples" / "whispir" / "reply_sms.json"
    ).read_bytes()
    with TestClient(app) as client:
        assert client.post("/w", content=whispir, headers=JSON).status_code == 200
        (row,) = rows(db)
        assert decode(row["reply"])["text"] == "reply 1"  # kept
        assert wait_until(lambda: rows(db)[0]["state"] in ("done", "dead"), timeout=5)
        time.sleep(0.3)
    (row,) = rows(db)
    assert crm.calls == 2 and replier.calls == 1
    texts = [text for _, text, _ in sender.calls]
    # What should happen: the kept reply is delivered once the retry succeeded.
    assert texts == ["reply 1", "reply 1"], (texts, row["state"], row["failed_plugins"])


# ------------------------------------------------------------------ 5. receiver serve


def test_attack2_pipelined_garbage_answers_a_running_callback_with_400(tmp_path: Path) -> None:
    """A keep-alive client sends callback 1 whole and, in the same write, a malformed
    pipelined request (`BLAH\\r\\n\\r\\n`, or a head with both Transfer-Encoding: chunked
    and Content-Length). HttpProtocol.data_received answers the parse error at once with
    uvicorn's send_400_response and closes: the first (and only) response the client gets
    is `400 Invalid HTTP request received.`, while callback 1 is dispatched (its handler
    runs to the end, 1.5 s later). The sender reads 400 as callback 1's answer (refused:
    not retried, or a OnePoint reply lost). a5cfd61 made a *limit* tripping while an answer
    is due close only after that answer; a parse error must wait for it too."""
    import socket

    from serving import serve
    from test_attack import LIMITS_CONFIG, SLOW_PLUGIN, _whispir_request

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow.py").write_text(SLOW_PLUGIN)
    with serve(tmp_path, LIMITS_CONFIG, "--plugins-dir", str(plugins)) as server:
        port = int(server.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=6) as sock:
            sock.sendall(_whispir_request("first") + b"BLAH\r\n\r\n")
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert wait_until(lambda: (plugins / "dispatched").exists(), timeout=4)
    assert (plugins / "dispatched").read_text() == "first\n"  # callback 1 was handled
    # What should happen: callback 1's 200 first; the 400 (if any) after it.
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


# ------------------------------------------------------------------ 2. stable names


class Forward:
    """Two instances of one class, told apart only by their target (no name given)."""

    def __init__(self, target: str, down: bool = False) -> None:
        self.target = target
        self.down = down
        self.received: list[str] = []

    @hookimpl
    def on_event(self, event: Event) -> None:
        if self.down:
            raise ConnectionError(f"{self.target} down")
        self.received.append(event.id)


def test_attack2_second_instance_name_follows_order_retry_runs_the_wrong_instance(
    tmp_path: Path,
) -> None:
    """plugins=[Forward("a"), Forward("b")]: named test_attack2.Forward and
    test_attack2.Forward#2. "b" is down: the entry fails in ...Forward#2. The app restarts
    with the same two plugins listed the other way round (or with a third instance put
    first): ...Forward#2 is now "a". The retry finds a plugin of that name, calls "a" a
    second time, and marks the entry done: "b" never gets the event, and nothing says so.
    A retry should find the plugin that failed, or refuse (PluginNotLoaded)."""
    from test_nothing_lost import make_app as make

    from receiver.errors import ConfigError

    # Fixed: two instances of one class cannot share a name any more; the app refuses
    # to start and says to name them, so a reorder cannot swap which one a retry runs.
    with pytest.raises(ConfigError, match=r"two plugins are named 'test_attack2\.Forward'"):
        make(tmp_path, plugins=[Forward("a"), Forward("b", down=True)], retry_delays=[3600])
    a, b = Forward("a"), Forward("b", down=True)
    app = make(tmp_path, plugins=[("a", a), ("b", b)], retry_delays=[3600])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON).status_code == 200
    (row,) = rows(db)
    assert decode(row["failed_plugins"]) == ["b"]
    # Restart, the list reordered; "b" is up again; the retry is due now.
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE events SET next_attempt_at = 0")
    a2, b2 = Forward("a"), Forward("b")
    app = make(tmp_path, plugins=[("b", b2), ("a", a2)], retry_delays=[3600])
    with TestClient(app):
        wait_until(lambda: rows(db)[0]["state"] != "failed", timeout=3)
    (row,) = rows(db)
    assert b2.received and not a2.received, (row["state"], a2.received, b2.received)
    assert row["state"] == "done"


def test_attack2_lower_urlencoded_post_with_query_fields_respelled_is_a_new_event(
    tmp_path: Path,
) -> None:
    """A signed POST with an empty body and the callback's fields in the query (the
    provider parses the query when the body is blank: Provider.parse) is signed with the
    query lowercased just like a GET, but the duplicate check folds case only when
    scope["method"] == "GET" (endpoint.py). Replayed with `Message=Yes` -> `Message=YES`
    it verifies and is dispatched as a second event. The fold should follow where the
    event came from (the query), not the method."""
    client, recorder, db = aspnet_app(tmp_path)
    query = "Type=Message&MessageID=M9&Source=447700900987&Message=Yes"
    timestamp = str(int(time.time()))
    signature = aspnet_signature("POST", f"http://testserver/sms?{query}", timestamp)
    headers = {"Authorization": f"X-DIY-Signature {APP_ID}:{signature}:{NONCE}:{timestamp}"}
    respelled = query.replace("Message=Yes", "Message=YES")
    with client:
        first = client.post(f"/sms?{query}", content=b"", headers=headers)
        assert first.status_code == 200, first.text
        again = client.post(f"/sms?{respelled}", content=b"", headers=headers)
    texts = [event.text for event in recorder.events]
    assert again.status_code in (200, 401)
    assert texts == ["Yes"], (again.status_code, texts, stored(db))


def test_attack2_pipelined_head_past_max_header_bytes_is_served(tmp_path: Path) -> None:
    """max_header_bytes (64 KiB by default) is charged only for the bytes of a read that
    arrives while a head is due (HttpProtocol.data_received checks the read's length at
    its start): a second request's head that comes in the same read as the first
    request's end is parsed uncharged, and the next read starts a fresh allowance. A
    pipelined GET with a 100 KB header is answered 200 instead of 431."""
    import socket

    from serving import serve

    config = 'journal = "none"\n\n[channels.w]\nprovider = "whispir"\nauth = "none"\n'
    with serve(tmp_path, config) as server:
        port = int(server.base.rsplit(":", 1)[1])
        first = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        second = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=6) as sock:
            sock.sendall(first + second)
            answer = b""
            try:
                while answer.count(b"HTTP/1.1 ") < 2 and (chunk := sock.recv(65536)):
                    answer += chunk
            except (ConnectionResetError, TimeoutError):
                pass
    import re

    statuses = re.findall(rb"HTTP/1\.1 \d{3}[^\r]*", answer)
    # What should happen: the second request is refused, 431.
    assert statuses[1:2] == [b"HTTP/1.1 431 Request Header Fields Too Large"], statuses


def test_attack2_entry_point_silently_skipped_when_an_object_plugin_has_its_name(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """An installed package registers entry point `audit` (group `receiver`); the app
    is also given an unrelated plugin object whose `name` attribute is "audit". Since
    94efd96 object plugins are named by that attribute, and make_plugin_manager skips an
    entry point whenever *a plugin of that name* is registered (meant for the same object
    passed twice): the installed plugin is silently not loaded, its hooks never run, and
    every event is marked done without it. Should be loaded (or a ConfigError naming both)."""
    import sys

    from receiver.plugins import DISABLE_AUTOLOAD, make_plugin_manager

    site = tmp_path / "site"
    dist = site / "audit_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: audit-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[receiver]\naudit = audit_plugin_mod\n")
    (site / "audit_plugin_mod.py").write_text(
        "from receiver import hookimpl\n@hookimpl\ndef on_event(event):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_AUTOLOAD, raising=False)

    class Mine:
        name = "audit"

        @hookimpl
        def on_event(self, event: Event) -> None:
            pass

    try:
        manager = make_plugin_manager([Mine()])
    except Exception as exc:  # a clear refusal is acceptable
        assert "audit" in str(exc)
        return
    finally:
        sys.modules.pop("audit_plugin_mod", None)
    loaded = [plugin for _, plugin in manager.list_name_plugin()]
    names = [getattr(plugin, "__name__", type(plugin).__name__) for plugin in loaded]
    assert "audit_plugin_mod" in names, names


def test_attack2_retention_shorter_than_the_signature_window_lets_a_replay_in(
    tmp_path: Path,
) -> None:
    """README: a signed request passes for up to 600 s after it first arrives, "exactly
    duplicate_body_window, so even a callback without a provider key cannot be replayed
    as new while its signature is fresh". But `retention` (README's own examples: "12h",
    "90s") is not held to that: with retention = "90s", a restart (the worker prunes at
    start) 2 minutes after a signed GET callback without a provider key deletes its entry,
    and the very same request, replayed byte for byte with its still-fresh signature, is
    dispatched as a new callback. Config should refuse retention < duplicate_body_window
    (or prune keep entries inside the duplicate windows)."""
    import sqlite3
    from contextlib import closing

    from test_attack import SECRET_B64

    from receiver import Channel, Config, create_app

    db = tmp_path / "journal.db"
    channel = Channel(
        provider="diy",
        auth="hmac",
        options={
            "credentials": {APP_ID: SECRET_B64},
            "hmac_hash": "sha256",
            "hmac_key_encoding": "base64",
            "hmac_body": "md5",
            "hmac_uri": "lower-urlencoded",
        },
    )
    query = "Type=Message&MessageID=M3&Source=447700900987&Message=Stop"
    headers = _signed_get(query, str(int(time.time())))

    def app(recorder: EventRecorder) -> TestClient:
        config = Config(channels={"sms": channel}, journal=f"sqlite:///{db}", retention="90s")
        return TestClient(create_app(config, plugins=[recorder]))

    first = EventRecorder()
    with app(first) as client:
        assert client.get(f"/sms?{query}", headers=headers).status_code == 200
    with closing(sqlite3.connect(db)) as conn, conn:  # two minutes pass
        conn.execute("UPDATE events SET received_at = received_at - 120")
    second = EventRecorder()
    with app(second) as client:
        wait_until(lambda: not stored(db), timeout=3)  # pruned at start
        assert client.get(f"/sms?{query}", headers=headers).status_code == 200
    # What should happen: the replay is a duplicate (or the config is refused).
    assert [event.text for event in first.events + second.events] == ["Stop"]
