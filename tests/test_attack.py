"""Attacks on issues 13 and 14 (review branch attack-13-14): each test fails on main."""

from __future__ import annotations

import base64
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from recorder import EventRecorder
from starlette.testclient import TestClient

from receiver import Channel, Config, create_app
from receiver.providers.onepoint_signature import OnePointOptions
from receiver.testing import sign_onepoint

# ------------------------------------------------------------------ HMAC, lower-urlencoded

APP_ID = "demo-app"
SECRET_B64 = base64.b64encode(b"attack-secret-0123456789").decode()
NONCE = "5d41402abc4b2a76b9719d911017c592"
ASPNET = OnePointOptions(
    credentials={APP_ID: SECRET_B64},
    hmac_hash="sha256",
    hmac_key_encoding="base64",
    hmac_body="md5",
    hmac_uri="lower-urlencoded",
)


def aspnet_signature(
    method: str, url: str, timestamp: str, body: bytes = b"", nonce: str = NONCE
) -> str:
    """The ASP.NET sample's signature (sha256, base64 key, md5 body, lower-urlencoded URI),
    by receiver.testing.sign_onepoint: the Signature part of its Authorization value."""
    value = sign_onepoint(
        method,
        url,
        body,
        app_id=APP_ID,
        secret=SECRET_B64,
        options=ASPNET,
        nonce=nonce,
        timestamp=timestamp,
    )
    return value.split(":")[1]


def aspnet_app(tmp_path: Path) -> tuple[TestClient, EventRecorder, Path]:
    db = tmp_path / "journal.db"
    recorder = EventRecorder()
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
    config = Config(channels={"sms": channel}, journal=f"sqlite:///{db}")
    return TestClient(create_app(config, plugins=[recorder])), recorder, db


def stored(db: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(db)) as conn:
        return list(conn.execute("SELECT message_id, state FROM events ORDER BY received_at"))


GET_REPLY = (
    "Type=Message&MessageID=MsgAbC123&Source=447700900987&Destination=447537410000"
    "&Message=Yes&Timestamp=2024-05-21T08%3A59%3A01Z&Inbound=true"
)


def test_attack_hmac_lower_urlencoded_case_reshaped_get_is_refused_or_a_duplicate(
    tmp_path: Path,
) -> None:
    """hmac_uri = lower-urlencoded (the ASP.NET sample) signs the URL lowercased, so
    every letter of a GET callback's query can change case without changing the
    signature. A replay of a genuine signed GET, with `Message=Yes` -> `Message=YES`
    and `MessageID=MsgAbC123` -> `MessageID=msgabc123`, is accepted (200) and stored and
    dispatched as a second, different event: neither the provider key (MessageID and
    Message differ) nor the body hash (the query differs) sees a duplicate."""
    client, recorder, db = aspnet_app(tmp_path)
    timestamp = str(int(time.time()))
    genuine_url = f"http://testserver/sms?{GET_REPLY}"
    signature = aspnet_signature("GET", genuine_url, timestamp)
    auth = {"Authorization": f"X-DIY-Signature {APP_ID}:{signature}:{NONCE}:{timestamp}"}
    reshaped = GET_REPLY.replace("Message=Yes", "Message=YES").replace("MsgAbC123", "msgabc123")
    assert reshaped.lower() == GET_REPLY.lower()  # the same signed string
    with client:
        assert client.get(f"/sms?{GET_REPLY}", headers=auth).status_code == 200
        answer = client.get(f"/sms?{reshaped}", headers=auth)
    texts = [event.text for event in recorder.events]
    # What should happen: the reshaped request is not a second callback (401, or a
    # duplicate that dispatches nothing).
    assert answer.status_code in (200, 401)
    assert texts == ["Yes"], texts
    assert len(stored(db)) == 1, stored(db)


def test_attack_hmac_lower_urlencoded_respelled_get_without_provider_key_dispatched_twice(
    tmp_path: Path,
) -> None:
    """A GET callback without a Timestamp field has no provider key; only the body hash
    (of the query) guards it. Re-sent with its field names in another case and a percent
    escape in lower-case hex (`Type` -> `TYPE`, `%3F` -> `%3f`), it signs the same string
    under lower-urlencoded and means the very same callback, yet it is dispatched a
    second time (README: "a callback without a provider key cannot be replayed as new
    while its signature is fresh")."""
    client, recorder, _ = aspnet_app(tmp_path)
    query = "Type=Message&MessageID=M1&Source=447700900987&Message=Really%3F"
    respelled = "TYPE=Message&MESSAGEID=M1&SOURCE=447700900987&MESSAGE=Really%3f"
    assert respelled.lower() == query.lower()
    timestamp = str(int(time.time()))
    signature = aspnet_signature("GET", f"http://testserver/sms?{query}", timestamp)
    auth = {"Authorization": f"X-DIY-Signature {APP_ID}:{signature}:{NONCE}:{timestamp}"}
    with client:
        assert client.get(f"/sms?{query}", headers=auth).status_code == 200
        assert client.get(f"/sms?{respelled}", headers=auth).status_code in (200, 401)
    assert [event.text for event in recorder.events] == ["Really?"]


# ------------------------------------------------------------------ receiver serve limits

SLOW_PLUGIN = """
import asyncio
from pathlib import Path
from receiver import hookimpl

@hookimpl
async def on_message(event):
    await asyncio.sleep(1.5)
    with open(Path(__file__).parent / "dispatched", "a") as out:
        out.write(event.text + "\\n")
"""

LIMITS_CONFIG = """
journal = "none"
handler_timeout = 5.0
reply_timeout = 5.0

[server]
header_timeout = 3.0
body_timeout = 0.5

[channels.w]
provider = "whispir"
auth = "query"
keys = ["${WHISPIR_KEY}"]
"""


def _whispir_request(text: str, body_cut: int | None = None) -> bytes:
    import json

    from serving import SECRET

    payload = json.loads(
        (
            Path(__file__).parent.parent / "receiver" / "samples" / "whispir" / "reply_sms.json"
        ).read_bytes()
    )
    payload["responseMessage"]["content"] = text
    body = json.dumps(payload).encode()
    head = (
        f"POST /w?auth={SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + (body if body_cut is None else body[:body_cut])


def test_attack_pipelined_next_request_body_timeout_cuts_off_a_running_handler_answer(
    tmp_path: Path,
) -> None:
    """A keep-alive client sends callback 1 whole, then pipelines callback 2's head and
    the start of its body. uvicorn stops reading while callback 1 is handled, but the body
    deadline of callback 2 is already running: at body_timeout (0.5 s here, 30 s by
    default) the connection is closed while callback 1's handler (1.5 s, well within
    handler_timeout) still runs, so callback 1, dispatched, never gets its 200 (a Whispir
    callback counted as failed; a OnePoint reply in the response lost). README: "A running
    handler is never cut off"; callback 2's body could not be read because the server had
    stopped reading, not because the client was slow."""
    import socket

    from serving import serve

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow.py").write_text(SLOW_PLUGIN)
    with serve(tmp_path, LIMITS_CONFIG, "--plugins-dir", str(plugins)) as server:
        port = int(server.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(_whispir_request("first") + _whispir_request("second", body_cut=10))
            sock.settimeout(5)
            answer = b""
            try:
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            except ConnectionResetError:
                pass
        time.sleep(1.8)  # the handler's 1.5 s
        out = plugins / "dispatched"
        dispatched = out.read_text() if out.exists() else ""
        log = server.log_text()
    assert "first" in dispatched  # the handler ran to the end
    assert answer.startswith(b"HTTP/1.1 200"), answer  # ... and its answer must reach the client
    assert "Exception in ASGI application" not in log


# ------------------------------------------------------------------ issue 14


def test_attack_whispir_reply_lost_when_another_plugin_fails_and_send_reply_raises(
    tmp_path: Path,
) -> None:
    """Journal on, Whispir (the reply goes to send_reply): plugin A replies, plugin B
    raises, and send_reply raises (the provider API is down). The reply is not kept: the
    log says "reply lost: ... not kept for a retry", the entry is `failed` for B only,
    and when B's retry succeeds the entry becomes `done` with no reply; send_reply is
    never called again. README: "with the journal the reply is kept and re-sent in the
    background"."""
    from test_journal import db_path, rows, state_of, wait_until
    from test_nothing_lost import JSON, WHISPIR_REPLY, CrmDown, FlakySender, Replier, make_app

    replier, crm, sender = Replier(), CrmDown(), FlakySender(failures=1)
    app = make_app(tmp_path, plugins=[replier, crm, sender], retry_delays=[0.05, 0.05])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
        ((entry_id, _),) = [(row["id"], row["state"]) for row in rows(db)]
        crm.up = True
        assert wait_until(lambda: state_of(db, entry_id) in ("done", "dead"), timeout=5)
        time.sleep(0.2)
    texts = [text for _, text, _ in sender.calls]
    assert replier.calls == 1
    # The reply must eventually be delivered (send_reply works from its second call).
    assert texts == ["reply 1", "reply 1"], texts


def test_attack_late_reply_lost_when_another_plugin_fails_after_the_timeout(
    tmp_path: Path,
) -> None:
    """Journal on, reply_timeout 0.2 s: an async replier answers after 0.4 s while another
    plugin raises. The callback is answered 200 without a reply (as documented: a late
    reply goes to send_reply). But the late outcome is a HandlerError carrying the reply,
    and Redelivery._settle records only the failure: the reply never reaches send_reply,
    and the retry runs only the failed plugin. The inbound message is never answered."""
    import asyncio

    from test_journal import db_path, rows, state_of, wait_until
    from test_nothing_lost import JSON, ONEPOINT_MESSAGE, CrmDown, FlakySender, make_app

    from receiver import Event, Reply, hookimpl

    class SlowReplier:
        calls = 0

        @hookimpl
        async def on_message(self, event: Event) -> Reply:
            SlowReplier.calls += 1
            await asyncio.sleep(0.4)
            return Reply(text="late reply")

    crm, sender = CrmDown(), FlakySender(failures=0)
    app = make_app(
        tmp_path, plugins=[SlowReplier(), crm, sender], retry_delays=[0.3], reply_timeout=0.2
    )
    db = db_path(tmp_path)
    with TestClient(app) as client:
        response = client.post("/sms", content=ONEPOINT_MESSAGE, headers=JSON)
        assert response.status_code == 200 and "late reply" not in response.text
        ((entry_id, _),) = [(row["id"], row["state"]) for row in rows(db)]
        time.sleep(0.35)  # the late handlers have finished: B failed, A replied
        crm.up = True
        assert wait_until(lambda: state_of(db, entry_id) in ("done", "dead"), timeout=5)
        time.sleep(0.2)
    assert SlowReplier.calls == 1
    assert [text for _, text, _ in sender.calls] == ["late reply"]


SENDER_PLUGIN = """
from pathlib import Path
from receiver import hookimpl

@hookimpl
def send_reply(event, reply):
    with open(Path(__file__).parent / "sent", "a") as out:
        out.write(reply.text + "\\n")
    return True
"""


def test_attack_replay_dead_undelivered_reply_refused_as_an_unloaded_plugin(
    tmp_path: Path,
) -> None:
    """A reply whose delivery ran out of attempts is `dead` with failed_plugins
    ["<send_reply>"] (journal.REPLY_ONLY). `receiver replay --dead`, with a working
    send_reply plugin loaded, refuses it (exit 2: "failed in <send_reply>, not loaded
    here"): the marker is taken for a plugin name. README: "`receiver replay` of it
    re-sends the reply only"."""
    import os
    import subprocess
    import sys

    from test_journal import db_path, rows, state_of, wait_until
    from test_nothing_lost import JSON, WHISPIR_REPLY, FlakySender, Replier, make_app

    app = make_app(tmp_path, plugins=[Replier(), FlakySender()], retry_delays=[0.02])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/w", content=WHISPIR_REPLY, headers=JSON).status_code == 200
        entry_id = rows(db)[0]["id"]
        assert wait_until(lambda: state_of(db, entry_id) == "dead")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sender.py").write_text(SENDER_PLUGIN)
    config = tmp_path / "ops.toml"
    config.write_text(
        f'journal = "sqlite:///{db}"\nplugins_dir = "plugins"\n'
        '[channels.w]\nprovider = "whispir"\nauth = "none"\n'
        '[channels.sms]\nprovider = "onepoint"\nauth = "none"\n'
    )
    env = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "replay", "--dead", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (plugins / "sent").read_text() == "reply 1\n"
    assert state_of(db, entry_id) == "done"


def test_attack_retry_after_restart_runs_the_failed_plugin_object_again(tmp_path: Path) -> None:
    """create_app(config, plugins=[obj]) registers an object plugin under pluggy's default
    name, str(id(obj)). A failure records that number in failed_plugins; after a restart
    (a new process, new objects) the retry calls "only the plugins that failed", i.e.
    none, and marks the event `done`: the failed plugin's work is never redone (the
    same with `receiver replay` refusing such an entry forever)."""
    from test_journal import db_path, rows, state_of, wait_until
    from test_nothing_lost import JSON, ONEPOINT_DELIVERED, CrmDown, make_app

    first = CrmDown()
    app = make_app(tmp_path, plugins=[first], retry_delays=[0.3])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    ((entry_id, state),) = [(row["id"], row["state"]) for row in rows(db)]
    assert state == "failed"
    # The process restarts: the same plugin, a new object, and it works now.
    second = CrmDown()
    second.up = True
    app = make_app(tmp_path, plugins=[second], retry_delays=[0.3])
    with TestClient(app):
        assert wait_until(lambda: state_of(db, entry_id) in ("done", "dead"), timeout=5)
    assert second.calls == 1  # what failed ran again


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs (root only)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_attack_readyz_says_ready_while_the_disk_is_still_full(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    """The journal on a disk with 8 KiB free: callbacks get 503 (right), but ~50 ms after each
    failed record the writer's no-op probe write succeeds ("journal writable again" is
    logged), the failure is cleared and /readyz answers 200 ready, while every callback
    still gets 503. A readiness probe / load balancer sees a ready instance that stores
    nothing (Whispir does not re-send: each is a lost callback). README: /readyz checks
    "the journal writable and not failing"; runbook: "/readyz turns ready; new callbacks
    are stored again"."""
    import os
    import subprocess

    from serving import SECRET, serve

    config = (
        f'journal = "sqlite:///{small_tmpfs}/j.db"\n'
        '[channels.w]\nprovider = "whispir"\nauth = "query"\nkeys = ["${WHISPIR_KEY}"]\n'
    )
    with serve(tmp_path, config) as server:
        post = lambda text: server.request(  # noqa: E731
            f"/w?auth={SECRET}",
            _whispir_request(text).partition(b"\r\n\r\n")[2],
            {"Content-Type": "application/json"},
        )[0]
        for n in range(5):
            assert post(f"before {n} " + "x" * 2000) == 200
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={small_tmpfs}/filler", "bs=4k"],
            capture_output=True,
            check=False,
        )
        filler = small_tmpfs / "filler"
        os.truncate(filler, filler.stat().st_size - 8192)  # 8 KiB free: one page, not a record
        for n in range(3):
            assert post(f"while full {n} " + "x" * 2000) == 503
        time.sleep(0.5)
        ready = server.request("/readyz")
        assert post("while full 4 " + "x" * 2000) == 503  # still full: nothing is stored
    assert ready[0] == 503, ready


def test_attack_immutable_shm_file_kills_the_server_with_sigbus(tmp_path: Path) -> None:
    """README runbook, "Unwritable journal (read-only mount, permissions, chattr +i)": a
    callback whose record cannot be committed is answered 503. With `chattr +i` on the
    journal's `-shm` file while serving (e.g. `chattr -R +i state/`), the next callback
    kills the whole process with SIGBUS (SQLite writes to the mmapped -shm): no 503, the
    connection is dropped, every other in-flight callback dies with it, and nothing
    serves until restarted (where serve then refuses to start)."""
    import os
    import shutil
    import subprocess

    from serving import SECRET, serve

    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr")
    state = tmp_path / "st"
    config = (
        f'journal = "sqlite:///{state}/j.db"\n'
        '[channels.w]\nprovider = "whispir"\nauth = "query"\nkeys = ["${WHISPIR_KEY}"]\n'
    )
    body = _whispir_request("x").partition(b"\r\n\r\n")[2]
    headers = {"Content-Type": "application/json"}
    with serve(tmp_path, config) as server:
        assert server.request(f"/w?auth={SECRET}", body, headers)[0] == 200
        shm = state / "j.db-shm"
        if subprocess.run(["chattr", "+i", str(shm)], check=False).returncode != 0:
            pytest.skip("this filesystem has no immutable flag")
        try:
            try:
                status = server.request(f"/w?auth={SECRET}", body.replace(b"x", b"y"), headers)[0]
            except OSError as exc:
                status = repr(exc)
            time.sleep(0.3)
            alive = server.process.poll()
        finally:
            subprocess.run(["chattr", "-i", str(shm)], check=False)
    assert (status, alive) == (503, None)


def test_attack_retry_worker_marks_done_an_entry_whose_failed_plugin_is_not_loaded(
    tmp_path: Path,
) -> None:
    """`receiver replay` refuses an entry whose failed plugin is not loaded ("replaying
    without them would mark the entry done with its failed work never redone"), but the
    retry worker of a restarted server does exactly that: restarted without the plugin
    (say `serve` run without its --plugins-dir), the due retry calls no plugin and marks
    the entry `done`. It should stay failed (or dead) for an operator to replay."""
    import types

    from test_journal import db_path, rows, state_of
    from test_nothing_lost import JSON, ONEPOINT_DELIVERED, make_app

    from receiver import Event, hookimpl

    crm = types.ModuleType("crm_plugin")

    @hookimpl
    def on_event(event: Event) -> None:
        raise RuntimeError("crm down")

    crm.on_event = on_event  # type: ignore[attr-defined]
    app = make_app(tmp_path, plugins=[crm], retry_delays=[0.2])
    db = db_path(tmp_path)
    with TestClient(app) as client:
        assert client.post("/sms", content=ONEPOINT_DELIVERED, headers=JSON).status_code == 200
    ((entry_id, failed_plugins),) = [(r["id"], r["failed_plugins"]) for r in rows(db)]
    assert b"crm_plugin" in failed_plugins
    app = make_app(tmp_path, plugins=[], retry_delays=[0.2])  # restarted without it
    with TestClient(app):
        time.sleep(1.5)
    assert state_of(db, entry_id) in ("failed", "dead")
