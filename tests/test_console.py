"""The operator console (issue 18), in a real browser: Playwright driving Debian's
chromium against a ``receiver serve`` subprocess with the console on.

``make test`` installs chromium (``make tools``); without it these tests skip, except in
CI (``CI=true``), where a missing browser fails them. Screenshots of each page go to
``$RECEIVER_CONSOLE_SCREENSHOTS`` (README's are made so: docs/console/), else to a
temporary folder.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres import postgres_server, postgres_url
from serving import SECRET, Server, serve

__all__ = ["postgres_server", "postgres_url"]  # fixtures, used by name

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "console-token-5b1e9d2c7a"
SAMPLE = json.loads(
    (
        Path(__file__).parent.parent / "receiver" / "samples" / "whispir" / "reply_sms.json"
    ).read_bytes()
)
CONFIG = """
plugins_dir = "plugins"
retry_delays = [3600.0]

[console]
token = "${CONSOLE_TOKEN}"

[channels.w]
provider = "whispir"
auth = "query"
keys = ["${WHISPIR_KEY}"]

[channels.other]
provider = "whispir"
auth = "query"
keys = ["${WHISPIR_KEY}"]
"""
# Raises for a text with "boom" in it until the file "fixed" exists beside it.
FLAKY_PLUGIN = """
from pathlib import Path
from receiver import hookimpl

@hookimpl
def on_message(event):
    if "boom" in (event.text or "") and not (Path(__file__).parent / "fixed").exists():
        raise RuntimeError("the CRM is down")
"""


def _browser_or_skip() -> None:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make tools` installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "plugins").mkdir()
    (tmp / "plugins" / "flaky.py").write_text(FLAKY_PLUGIN)
    os.environ["CONSOLE_TOKEN"] = TOKEN
    try:
        with serve(tmp, CONFIG) as running:
            yield running
    finally:
        os.environ.pop("CONSOLE_TOKEN", None)
    assert TOKEN not in running.log_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    yield opened
    context.close()
    assert not [p for p in problems if "Content Security Policy" in p], problems


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("RECEIVER_CONSOLE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def send(
    server: Server, text: str, message_id: str, mobile: str = "61412345678", channel: str = "w"
) -> int:
    body = json.loads(json.dumps(SAMPLE))
    body["messageId"] = message_id
    body["messageLocation"] = f"https://api.au.whispir.com/messages/{message_id}"
    body["from"]["mobile"] = mobile
    body["responseMessage"]["content"] = text
    status, _ = server.request(
        f"/{channel}?auth={SECRET}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    return status


def log_in(page: Any, server: Server) -> None:
    response = page.goto(server.base + "/console/")
    assert response.status == 401
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("table#events")


def test_console_login_with_the_token_sets_a_strict_cookie(
    page: Any, server: Server, shots: Path
) -> None:
    page.goto(server.base + "/console/")
    page.screenshot(path=str(shots / "login.png"))
    page.fill("input[name=token]", "not-the-token-at-all")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-failed")
    log_in(page, server)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "receiver_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]
    assert TOKEN not in page.content()


def test_console_live_tail_shows_a_callback_within_a_second(
    page: Any, server: Server, shots: Path
) -> None:
    log_in(page, server)
    page.goto(server.base + "/console/now")
    page.wait_for_selector("#live-status >> text=/^live$/")  # no eval: the CSP forbids it
    started = time.monotonic()
    assert send(server, "Live tail hello", "TAIL0001") == 200
    page.wait_for_selector("#tail tbody tr:has-text('TAIL0001')", timeout=1000)
    assert time.monotonic() - started < 1.5
    assert page.locator("#tail tbody tr", has_text="TAIL0001").inner_text().count("accepted")
    assert send(server, "Live tail hello", "TAIL0001") == 200  # a re-send: a duplicate
    page.wait_for_selector("#tail tbody tr:has-text('duplicate')", timeout=1000)
    page.goto(server.base + "/console/now")  # the chart and totals, drawn anew
    assert "duplicate: 1" in page.inner_text(".totals")
    page.wait_for_timeout(300)  # the chart image
    page.screenshot(path=str(shots / "now.png"), full_page=True)


def test_console_filters_narrow_the_list(page: Any, server: Server, shots: Path) -> None:
    assert send(server, "Filter me please", "FILTER-A", mobile="61400000001") == 200
    assert send(server, "Another channel", "FILTER-B", mobile="61400000002", channel="other") == 200
    log_in(page, server)
    rows = page.locator("table#events tbody tr")
    assert rows.count() >= 2
    page.screenshot(path=str(shots / "events.png"), full_page=True)
    page.select_option("select[name=channel]", "other")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**channel=other**")
    assert "FILTER-B" in page.inner_text("table#events") and "FILTER-A" not in page.inner_text(
        "table#events"
    )
    page.goto(server.base + "/console/?q=61400000001")
    text = page.inner_text("table#events")
    assert "FILTER-A" in text and "FILTER-B" not in text
    page.goto(server.base + "/console/?state=dead")
    assert "No entries match" in page.inner_text("table#events")


def test_console_event_page_shows_raw_and_normalized(
    page: Any, server: Server, shots: Path
) -> None:
    assert send(server, "Show me whole", "SHOW0001") == 200
    assert send(server, "Show me whole", "SHOW0001") == 200  # a re-send: points at it
    log_in(page, server)
    page.goto(server.base + "/console/?q=SHOW0001")
    page.click("table#events tbody tr a")
    page.wait_for_selector("#normalized pre")
    normalized = page.inner_text("#normalized pre")
    assert '"message_id": "SHOW0001"' in normalized and '"text": "Show me whole"' in normalized
    raw = page.inner_text("#raw pre")
    assert '"messageId": "SHOW0001"' in raw and "\n  " in raw  # pretty-printed JSON
    meta = page.inner_text("#meta")
    assert "content-type" in meta and SECRET not in page.content()
    assert "re-sent as" in page.inner_text("#duplicates")
    page.screenshot(path=str(shots / "event.png"), full_page=True)


def test_console_replays_a_failed_event_and_its_state_changes(
    page: Any, server: Server, shots: Path
) -> None:
    assert send(server, "boom goes the CRM", "FAIL0001") == 200
    log_in(page, server)
    page.goto(server.base + "/console/?q=FAIL0001")
    page.click("table#events tbody tr a")
    assert page.inner_text("#state") == "failed"
    assert "RuntimeError" in page.inner_text("#attempts") and "the CRM is down" in page.inner_text(
        "#attempts"
    )
    (Path(server.log).parent / "plugins" / "fixed").touch()
    page.click("#replay")
    page.wait_for_selector("#confirm")
    page.screenshot(path=str(shots / "replay-confirm.png"), full_page=True)
    page.click("#confirm")
    page.wait_for_selector("#result")
    assert "1 succeeded" in page.inner_text("#result")
    page.screenshot(path=str(shots / "replay-result.png"), full_page=True)
    page.click("table.events tbody tr a")
    assert page.inner_text("#state") == "done"
    (Path(server.log).parent / "plugins" / "fixed").unlink()


def test_console_replays_the_failed_of_a_filter(page: Any, server: Server) -> None:
    assert send(server, "boom one", "BULK0001", channel="other") == 200
    assert send(server, "boom two", "BULK0002", channel="other") == 200
    log_in(page, server)
    page.goto(server.base + "/console/?channel=other&state=failed")
    assert page.locator("table#events tbody tr").count() == 2
    page.click("#replay-filter")
    page.wait_for_selector("#confirm")
    assert page.inner_text("#confirm") == "Replay 2"
    page.click("#confirm")
    page.wait_for_selector("#result")
    assert "2 failed" in page.inner_text("#result")  # the plugin still raises


def test_console_shows_markup_from_a_callback_as_text(page: Any, server: Server) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, server)
    page.goto(server.base + "/console/now")
    page.wait_for_selector("#live-status >> text=/^live$/")  # no eval: the CSP forbids it
    attack = "<img src=x onerror=alert(1)>"
    assert send(server, attack, "XSS00001", mobile="<script>alert(2)</script>") == 200
    page.wait_for_selector("#tail tbody tr:has-text('XSS00001')", timeout=1000)
    assert attack in page.inner_text("#tail")
    assert page.locator("#tail img").count() == 0
    page.goto(server.base + "/console/")
    assert attack in page.inner_text("table#events")
    page.click("table#events tbody tr:has-text('XSS00001') a")
    assert attack in page.inner_text("#normalized")
    assert page.locator("main img, main script").count() == 0
    page.wait_for_timeout(300)
    assert dialogs == []


ROUTES = [
    ("GET", "/console/"),
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/console/events/anything"),
    ("POST", "/console/replay"),
    ("GET", "/console/now"),
    ("GET", "/console/chart.svg"),
    ("GET", "/console/stream"),
    ("GET", "/console/static/console.js"),
    ("GET", "/console/static/console.css"),
    ("POST", "/console/logout"),
]


def _status(server: Server, method: str, path: str, headers: dict[str, str]) -> int:
    data = b"token=wrong&csrf=x" if method == "POST" else None
    request = urllib.request.Request(server.base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_console_routes_are_all_listed_here(tmp_path: Path) -> None:
    from receiver.config import Config
    from receiver.config import Console as ConsoleConfig
    from receiver.console import Console
    from receiver.endpoint import CallbackEndpoint

    endpoint = CallbackEndpoint.from_config(Config(journal=f"sqlite:///{tmp_path}/j.db"))
    listed = {
        (m, "/console" + p.replace("{id}", "anything").replace("{name}", "x"))
        for m, p, _ in Console(ConsoleConfig(token=TOKEN), endpoint).routes()
    }
    covered = {(m, p.replace("console.js", "x").replace("console.css", "x")) for m, p in ROUTES}
    assert listed <= covered


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Accept": "text/html"},
        {"Authorization": "Bearer not-the-token"},
        {"Cookie": "receiver_console=abc.def"},
    ],
    ids=["none", "browser", "wrong-bearer", "forged-cookie"],
)
def test_console_without_the_token_every_route_is_401(
    server: Server, method: str, path: str, headers: dict[str, str]
) -> None:
    sent = {**headers}
    if method == "POST":
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    assert _status(server, method, path, sent) == 401


def test_console_bearer_token_works_for_scripts(server: Server) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert _status(server, "GET", "/console/", bearer) == 200
    assert _status(server, "GET", "/console/chart.svg?span=day", bearer) == 200


def test_console_post_without_the_csrf_token_is_403(page: Any, server: Server) -> None:
    log_in(page, server)
    for data in ({"scope": "filter", "confirm": "yes"}, {"scope": "filter", "csrf": "forged"}):
        response = page.request.post(server.base + "/console/replay", form=data)
        assert response.status == 403
    response = page.request.post(server.base + "/console/logout", form={})
    assert response.status == 403


def test_console_pages_carry_a_strict_content_security_policy(page: Any, server: Server) -> None:
    log_in(page, server)
    response = page.goto(server.base + "/console/now")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy


def test_console_on_the_postgresql_journal_lists_shows_and_replays(
    browser: Any, postgres_url: str, tmp_path: Path
) -> None:
    """The same pages on the PostgreSQL journal (issue 17): list, search, the event page,
    a replay from it."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "flaky.py").write_text(FLAKY_PLUGIN)
    os.environ["CONSOLE_TOKEN"] = TOKEN
    os.environ["CONSOLE_PG_URL"] = postgres_url
    try:
        config = 'journal = "${CONSOLE_PG_URL}"\n' + CONFIG
        with serve(tmp_path, config) as running:
            assert send(running, "hello from postgres", "PGOK0001") == 200
            assert send(running, "boom on postgres", "PGFAIL01") == 200
            context = browser.new_context()
            page = context.new_page()
            try:
                log_in(page, running)
                listed = page.inner_text("table#events")
                assert "PGOK0001" in listed and "PGFAIL01" in listed
                page.goto(running.base + "/console/?q=PGFAIL01")
                page.click("table#events tbody tr a")
                assert page.inner_text("#state") == "failed"
                assert "the CRM is down" in page.inner_text("#attempts")
                (tmp_path / "plugins" / "fixed").touch()
                page.click("#replay")
                page.wait_for_selector("#confirm")
                page.click("#confirm")
                page.wait_for_selector("#result")
                assert "1 succeeded" in page.inner_text("#result")
                page.click("table.events tbody tr a")
                assert page.inner_text("#state") == "done"
            finally:
                context.close()
    finally:
        os.environ.pop("CONSOLE_TOKEN", None)
        os.environ.pop("CONSOLE_PG_URL", None)
