"""Requests per second of receiver under a real uvicorn, next to a bare app and a naive one.

Run: ``.venv/bin/python bench/load.py`` (needs ``wrk``: ``apt-get install wrk``).

Each scenario is served, one after another, by its own ``python -m uvicorn --factory
bench.apps:<scenario>`` (uvloop, httptools, one worker, no access log) on a free loopback
port, pinned to one CPU, and driven for ``--duration`` seconds by ``wrk -t1 -c64`` pinned
to another. The scenarios:

* ``baseline``: a bare Starlette route that reads the body and answers 200;
* ``naive``: FastAPI + a pydantic model of the Whispir reply + a callback-key check;
* ``whispir_json``, ``whispir_xml``, ``onepoint_reply`` (answered "thanks" in the response
  body), ``onepoint_hmac`` (a signed OnePoint receipt): receiver, each with the journal
  off, with the SQLite journal on and with the PostgreSQL journal on, logging one JSON
  line per callback to a file. The PostgreSQL rows run on ``bench/postgres.py``'s server
  (a throwaway PostgreSQL of its own, or ``$RECEIVER_BENCH_POSTGRES``), a new database
  each; a second table gives, per journaled callback, the receiver's CPU, PostgreSQL's
  CPU (all its processes) and pg_stat_statements' statements, round trips and commits.
* ``mounted_warning``, ``mounted_info``: receiver's Whispir channel (journal off) mounted
  at ``/hooks`` in a Starlette app that configured the standard library's ``logging``
  (JSON lines to the file, by a plain ``logging.Formatter``) and not structlog, its root
  logger at WARNING (no line per callback) or INFO (one line per callback through
  ``logging``); ``mounted_fastapi_warning``, ``mounted_fastapi_info``: the same in a
  FastAPI app (not judged: FastAPI's own routing costs more than receiver's logging).

Baseline runs first, again after every three other scenarios, and last; each row's ratio
to baseline is against the mean of the baseline runs just before and after it, because
this kind of host's load drifts within a run (one baseline at the start misjudged the
late rows by a third).

A Lua ``response()`` checks every answer (status 200; for ``onepoint_reply`` a body with
"thanks") in every scenario, so all pay the same client-side cost. The table gives
requests/s, p50/p99 latency, ratios to ``baseline`` and ``naive`` from the same run, the
server's peak RSS and a check column; then the targets, pass or miss. The memory check
(``--memory``, part of the full run) serves about 200k requests to ``whispir_json`` and
compares the server's RSS after the first ~10k and at the end.

Exit status: 0 all correct (and, in a full run, every target met); 1 a scenario answered
wrongly, failed or wrk reported errors; 2 wrk is not installed; 3 correct but a target
was missed. ``--quick`` runs everything for 1 s and does not judge the targets.

``--workers 1,2`` adds rows served by ``receiver serve --workers N`` (Whispir JSON,
journal on SQLite and on PostgreSQL; alone, with baseline only): not pinned, so the
workers, PostgreSQL and wrk share the machine's CPUs; CPU is the server's processes'.

``--compare-http MODULE:CLASS`` runs each journal-off receiver row a second time, just
after the first, served by that uvicorn HTTP protocol class instead of httptools' (for
``receiver serve``'s: ``--compare-http receiver.server:HttpProtocol``, the protocol with
the ``[server]`` limits at their defaults), and prints each pair's ratios.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make ``bench.apps`` importable
    sys.path.insert(0, str(ROOT))

from bench.apps import (  # noqa: E402
    APP_ID,
    CHANNEL,
    KEY_HEADER,
    MOUNT,
    ONEPOINT_KEY,
    SECRET,
    WHISPIR_KEY,
)
from bench.postgres import Postgres, PostgresError, Statements  # noqa: E402
from bench.postgres import server as postgres_server  # noqa: E402

PAYLOADS = ROOT / "receiver" / "samples"
HOST = "127.0.0.1"
CONNECTIONS = 64
NONCE = "be0c4be0c4be0c4be0c4be0c4be0c400"  # a GUID
UVICORN_OPTIONS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--no-proxy-headers",
    "--log-level",
    "warning",
]
MEMORY_TOTAL, MEMORY_FIRST, MEMORY_CAP_S, MEMORY_GROWTH_MB = 200_000, 10_000, 60, 10.0
QUICK_MEMORY_TOTAL, QUICK_MEMORY_CAP_S = 20_000, 5

# Targets: requests/s of a journal-off (or journal-on) row, as a fraction of baseline's.
BASELINE_TARGETS = [
    ("whispir_json", False, 0.75),
    ("onepoint_reply", False, 0.65),
    ("whispir_xml", False, 0.60),
    ("onepoint_hmac", False, 0.60),
    ("whispir_json", True, 0.50),
    ("mounted_warning", False, 0.85),
    ("mounted_info", False, 0.60),
]
NAIVE_FACTOR = 2.5  # every receiver row (not mounted), in requests/s, at least this times naive's
P99_FACTOR = 2.0  # every journal-off receiver row's p99 at most this times baseline's
BASELINE_EVERY = 3  # baseline runs again after this many other scenarios


# -- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    body: bytes
    content_type: str
    headers: dict[str, str]
    receiver: bool = True
    journal: bool = False
    signed: bool = False
    expect_in_body: str | None = None  # wrk checks every response body contains it
    expect_json: Any = None  # the probe checks the first response is exactly this
    http: str = "httptools"  # uvicorn's --http: a protocol name or "module:Class"
    path: str = f"/{CHANNEL}"  # the callback's path (a mounted app's includes the mount)
    store: str = "sqlite"  # the journal when ``journal``: "sqlite" or "postgresql"
    workers: int = 0  # > 0: served by ``receiver serve --workers N``, not uvicorn --factory

    @property
    def mounted(self) -> bool:
        return self.path != f"/{CHANNEL}"

    @property
    def title(self) -> str:
        """The name, marked ``+limits`` when served by another HTTP protocol class, and
        with the worker count when served by ``receiver serve``."""
        if self.workers:
            return f"{self.name}/{self.workers}w"
        return self.name if self.http == "httptools" else f"{self.name}+limits"

    @property
    def journal_label(self) -> str:
        return (self.store if self.journal else "off") if self.receiver else "-"

    @property
    def postgres(self) -> bool:
        return self.journal and self.store == "postgresql"

    @property
    def label(self) -> str:
        journal = (
            ("journal" if self.store == "sqlite" else f"{self.store} journal")
            if (self.journal)
            else "no journal"
        )
        if self.workers:
            return f"{self.name} ({journal}, receiver serve --workers {self.workers})"
        return (
            f"{self.title} ({journal})"
            if self.http == "httptools"
            else (f"{self.title} ({journal}, --http {self.http})")
        )

    def request_headers(self, port: int) -> dict[str, str]:
        """The headers of every request: Host is the signed URL's, as wrk will send it."""
        headers = {"Host": f"{HOST}:{port}", "Content-Type": self.content_type, **self.headers}
        if self.signed:
            url = f"http://{HOST}:{port}{self.path}"
            headers["Authorization"] = opg_authorization(
                APP_ID, SECRET, "POST", url, self.body, NONCE, str(int(time.time()))
            )
        return headers


def opg_authorization(
    app_id: str, secret: str, method: str, url: str, body: bytes, nonce: str, timestamp: str
) -> str:
    """``X-OPG-Signature AppId:Signature:Nonce:Timestamp``, OnePoint's default scheme.

    Signature = Base64(HMAC-SHA1(Secret, AppId + METHOD + URL + Timestamp + Nonce +
    Base64(body))). Computed here independently of ``receiver.auth``; there is no replay
    window, so one signature serves every request of the run.
    """
    message = f"{app_id}{method}{url}{timestamp}{nonce}{base64.b64encode(body).decode()}"
    mac = hmac.new(secret.encode(), message.encode(), hashlib.sha1).digest()
    return f"X-OPG-Signature {app_id}:{base64.b64encode(mac).decode()}:{nonce}:{timestamp}"


def scenarios() -> list[Scenario]:
    whispir_json = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
    whispir_xml = (PAYLOADS / "whispir" / "reply_sms_ns2.xml").read_bytes()
    message = (PAYLOADS / "onepoint" / "message_inbound.json").read_bytes()
    receipt = (PAYLOADS / "onepoint" / "receipt_delivered.json").read_bytes()
    sent = json.loads(message)
    thanks = {"Source": sent["Destination"], "Destination": sent["Source"], "Message": "thanks"}
    whispir_key = {"X-Whispir-Callback-Key": WHISPIR_KEY}
    json_type, xml_type = "application/json", "application/xml"
    references = [  # the same request bytes as whispir_json
        Scenario("baseline", whispir_json, json_type, whispir_key, receiver=False),
        Scenario("naive", whispir_json, json_type, whispir_key, receiver=False),
    ]
    receivers = [
        Scenario("whispir_json", whispir_json, json_type, whispir_key),
        Scenario("whispir_xml", whispir_xml, xml_type, whispir_key),
        Scenario(
            "onepoint_reply",
            message,
            json_type,
            {KEY_HEADER: ONEPOINT_KEY},
            expect_in_body="thanks",
            expect_json=thanks,
        ),
        Scenario("onepoint_hmac", receipt, json_type, {}, signed=True),
    ]
    journaled = [dataclasses.replace(s, journal=True) for s in receivers]
    on_postgres = [dataclasses.replace(s, store="postgresql") for s in journaled]
    path = f"{MOUNT}/{CHANNEL}"
    mounted = [
        Scenario("host_baseline", whispir_json, json_type, whispir_key, receiver=False, path=path),
        Scenario("mounted_warning", whispir_json, json_type, whispir_key, path=path),
        Scenario("mounted_info", whispir_json, json_type, whispir_key, path=path),
        Scenario("mounted_fastapi_warning", whispir_json, json_type, whispir_key, path=path),
        Scenario("mounted_fastapi_info", whispir_json, json_type, whispir_key, path=path),
    ]
    return [*references, *receivers, *journaled, *on_postgres, *mounted]


SERVE = "serve"
"""The ``--workers`` rows' name: Whispir JSON served by ``receiver serve``."""


def serve_scenarios(workers: list[int]) -> list[Scenario]:
    """Whispir JSON, journaled on SQLite and on PostgreSQL, served by ``receiver serve
    --workers N`` for each N."""
    body = (PAYLOADS / "whispir" / "reply_sms.json").read_bytes()
    key = {"X-Whispir-Callback-Key": WHISPIR_KEY}
    return [
        Scenario(SERVE, body, "application/json", key, journal=True, store=store, workers=n)
        for store in ("sqlite", "postgresql")
        for n in workers
    ]


# -- wrk ----------------------------------------------------------------------------------


def lua_string(data: bytes) -> str:
    """A Lua string literal holding ``data`` exactly (decimal escapes for other bytes)."""
    out = ['"']
    for byte in data:
        if byte in (0x22, 0x5C):  # " and backslash
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


_LUA_TEMPLATE = """\
-- generated by bench/load.py for {label}
wrk.method = "POST"
wrk.path = {path}
wrk.body = {body}
{headers}

local expect = {expect}
bad_status = 0
bad_body = 0

-- runs in each thread, for every response (defined in every scenario: equal cost)
function response(status, headers, body)
  if status ~= 200 then
    bad_status = bad_status + 1
  end
  if expect ~= nil and (body == nil or not string.find(body, expect, 1, true)) then
    bad_body = bad_body + 1
  end
end

local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local bs, bb = 0, 0
  for _, thread in ipairs(threads) do
    bs = bs + thread:get("bad_status")
    bb = bb + thread:get("bad_body")
  end
  local e = summary.errors
  io.write(string.format(
    '{{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "bad_status": %d, "bad_body": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, bs, bb,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def lua_script(scenario: Scenario, headers: dict[str, str]) -> str:
    lines = [
        f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}"
        for k, v in headers.items()
    ]
    expect = scenario.expect_in_body
    return _LUA_TEMPLATE.format(
        label=scenario.label,
        path=lua_string(scenario.path.encode()),
        body=lua_string(scenario.body),
        headers="\n".join(lines),
        expect=lua_string(expect.encode()) if expect is not None else "nil",
    )


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(pin: list[str], script: Path, url: str, seconds: int) -> WrkResult:
    command = [
        *pin,
        "wrk",
        "-t1",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    result = WrkResult()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        result.problems.append("wrk did not finish")
        return result
    line = next(
        (x for x in reversed(done.stdout.splitlines()) if x.startswith('{"requests"')), None
    )
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        result.problems.append(f"wrk failed (exit {done.returncode}): {tail[0]}")
        return result
    data = json.loads(line)
    result.requests = data["requests"]
    result.seconds = data["duration_us"] / 1e6
    result.p50_ms, result.p99_ms = data["p50_us"] / 1000, data["p99_us"] / 1000
    if data["bad_status"]:
        result.problems.append(f"{data['bad_status']} non-200")
    if data["bad_body"]:
        result.problems.append(f"{data['bad_body']} bad body")
    errors = {k: data[k] for k in ("connect", "read", "write", "timeout") if data[k]}
    if errors:
        result.problems.append("wrk errors: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    if not result.requests:
        result.problems.append("no requests completed")
    return result


# -- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def uvicorn_command(
    pin: list[str], factory: str, port: int | str, http: str = "httptools"
) -> list[str]:
    options = list(UVICORN_OPTIONS)
    options[options.index("--http") + 1] = http
    return [
        *pin,
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        f"bench.apps:{factory}",
        "--host",
        HOST,
        "--port",
        str(port),
        *options,
    ]


class Server:
    """One uvicorn serving one scenario, its stdout and stderr in ``log``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def status_mb(self, key: str) -> float | None:
        """A ``/proc/<pid>/status`` memory figure (VmRSS, VmHWM) in MB, None if unknown."""
        try:
            text = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process (all its threads) so far, with
        its children's (``receiver serve --workers N``'s workers), running or exited."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                child = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(child[1]) == self.process.pid:
                ticks += int(child[11]) + int(child[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def logged_errors(self) -> int:
        try:
            data = self.log.read_bytes()
        except OSError:
            return 0
        return data.count(b'"level":"error"') + data.count(b"Traceback (most recent")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class StartError(Exception):
    pass


def serve_command(pin: list[str], config: Path | str, port: int | str, workers: int) -> list[str]:
    """``receiver serve`` (as ``python -m receiver``) with ``workers`` workers."""
    level = os.environ.get("BENCH_LOG_LEVEL") or "info"
    return [
        *pin, sys.executable, "-m", "receiver", "serve", "--config", str(config), "--host",
        HOST, "--port", str(port), "--workers", str(workers), "--log-format", "json",
        "--log-level", level,
    ]  # fmt: skip


def serve_config(path: Path, journal: str) -> None:
    """A ``receiver serve`` configuration of the ``--workers`` rows: the Whispir channel
    of ``bench.apps.whispir_json``, its no-op plugin, metrics off, duplicate windows 0."""
    path.write_text(
        f"journal = {json.dumps(journal)}\n"
        f"state_dir = {json.dumps(str(path.parent))}\n"
        "duplicate_window = 0\nduplicate_body_window = 0\nmetrics = false\n"
        'autoload_plugins = false\nplugins = ["bench.quiet:Quiet"]\n'
        f'[channels.{CHANNEL}]\nprovider = "whispir"\nauth = "header"\n'
        f"keys = [{json.dumps(WHISPIR_KEY)}]\n"
    )


@contextmanager
def serve(
    scenario: Scenario, pin: list[str], workdir: Path, journal: str | None = None
) -> Iterator[Server]:
    """Start uvicorn (or ``receiver serve``) on a free port, wait until it accepts
    connections; stop it on exit. ``journal``: the journal's URL (default: SQLite in
    ``workdir`` when the scenario's journal is on)."""
    port = free_port()
    if journal is None:
        journal = f"sqlite:///{workdir / 'journal.db'}" if scenario.journal else "none"
    env = {
        **os.environ,
        "BENCH_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL") or "info",
        "BENCH_JOURNAL": journal,
        "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if scenario.workers:
        config = workdir / "receiver.toml"
        serve_config(config, journal)
        command = serve_command(pin, config, port, scenario.workers)
    else:
        command = uvicorn_command(pin, scenario.name, port, scenario.http)
    log = workdir / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    break
            except OSError:
                pass
            if process.poll() is not None:
                raise StartError(f"server exited ({process.returncode}) before accepting")
            if time.monotonic() > deadline:
                raise StartError("server did not accept connections within 30 s")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def probe(scenario: Scenario, port: int, headers: dict[str, str]) -> str | None:
    """One request before the load: None if the answer is right, else what is wrong."""
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("POST", scenario.path, body=scenario.body, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        return f"probe failed: {exc}"
    finally:
        connection.close()
    if response.status != 200:
        return f"probe answered {response.status}: {body[:120].decode(errors='replace')}"
    if scenario.expect_json is not None:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = body[:120].decode(errors="replace")
        if answer != scenario.expect_json:
            return f"probe body {answer!r}, expected {scenario.expect_json!r}"
    return None


# -- one row ------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: Scenario
    result: WrkResult | None = None
    peak_mb: float | None = None
    cpu_us: float | None = None
    pg_cpu_us: float | None = None
    """PostgreSQL's CPU time per request (all the server's processes), PostgreSQL rows."""
    statements: Statements | None = None
    """pg_stat_statements' calls over the measured run, PostgreSQL rows."""
    transactions: int | None = None
    """Transactions committed from the measured run's start to the server's stop."""
    problems: list[str] = field(default_factory=list)
    detail: str = ""
    bracket: list[Row] = field(default_factory=list)
    """The baseline runs just before and just after this row's (its reference)."""

    @property
    def ok(self) -> bool:
        return not self.problems and self.result is not None

    def reference(self) -> Reference | None:
        """Baseline's figures next to this row: the mean of its bracketing runs."""
        runs = [r for r in self.bracket if r.ok and r.result is not None and r.result.requests]
        if not runs:
            return None
        cpus = [r.cpu_us for r in runs if r.cpu_us]
        return Reference(
            rate=sum(r.result.rate for r in runs if r.result) / len(runs),
            p99_ms=sum(r.result.p99_ms for r in runs if r.result) / len(runs),
            cpu_us=sum(cpus) / len(cpus) if cpus else None,
        )


@dataclass(frozen=True)
class Reference:
    rate: float
    p99_ms: float
    cpu_us: float | None


def interleave(selected: list[Scenario], every: int) -> list[Scenario]:
    """``selected`` with baseline run again after every ``every`` other scenarios and at
    the end, so that each row is compared with baseline runs made just before and after
    it (the host's load drifts over a run; one baseline at the start misjudges late rows).
    """
    base = next((s for s in selected if s.name == "baseline"), None)
    others = [s for s in selected if s.name != "baseline"]
    if base is None:
        return others
    order = [base]
    for start in range(0, len(others), every):
        order.extend(others[start : start + every])
        order.append(base)
    return order


def bracket(rows: list[Row]) -> None:
    """Give each row its bracketing baseline runs (a baseline run: the two around it)."""
    positions = [i for i, r in enumerate(rows) if r.scenario.name == "baseline"]
    for i, row in enumerate(rows):
        before = [p for p in positions if p < i]
        after = [p for p in positions if p > i]
        if row.scenario.name == "baseline":
            row.bracket = [rows[p] for p in positions]  # against all of baseline's runs
        else:
            row.bracket = [rows[p] for p in (before[-1:] + after[:1])]


def run_scenario(
    scenario: Scenario, pins: Pins, seconds: int, workdir: Path, pg: Postgres | str | None = None
) -> Row:
    """One row. ``pg``: the PostgreSQL server of the PostgreSQL rows (or why there is
    none: the row fails saying so)."""
    row = Row(scenario)
    if not scenario.postgres:
        return _run_scenario(row, pins, seconds, workdir, None, None)
    if not isinstance(pg, Postgres):
        row.problems.append(f"no PostgreSQL: {pg or 'not started'}")
        return row
    try:
        database = pg.database()
    except Exception as exc:
        row.problems.append(f"PostgreSQL: {type(exc).__name__}: {exc}")
        return row
    try:
        return _run_scenario(row, pins, seconds, workdir, pg, database)
    finally:
        pg.drop(database)


def _run_scenario(
    row: Row, pins: Pins, seconds: int, workdir: Path, pg: Postgres | None, database: str | None
) -> Row:
    scenario = row.scenario
    committed: int | None = None
    server_pin = [] if scenario.workers else pins.server
    wrk_pin = [] if scenario.workers else pins.wrk
    try:
        with serve(scenario, server_pin, workdir, database) as server:
            headers = scenario.request_headers(server.port)
            problem = probe(scenario, server.port, headers)
            if problem is not None:
                row.problems.append(problem)
            else:
                script = workdir / f"{scenario.name}.lua"
                script.write_text(lua_script(scenario, headers))
                url = f"http://{HOST}:{server.port}{scenario.path}"
                if pg is not None and database is not None:
                    pg.reset_statements(database)
                    committed = pg.transactions(database)
                pg_before = pg.cpu_seconds() if pg is not None else None
                cpu_before = server.cpu_seconds()
                row.result = run_wrk(wrk_pin, script, url, seconds)
                cpu_after = server.cpu_seconds()
                pg_after = pg.cpu_seconds() if pg is not None else None
                if pg is not None and database is not None:
                    row.statements = pg.statements(database)
                requests = row.result.requests
                if cpu_before is not None and cpu_after is not None and requests:
                    row.cpu_us = (cpu_after - cpu_before) / requests * 1e6
                if pg_before is not None and pg_after is not None and requests:
                    row.pg_cpu_us = (pg_after - pg_before) / requests * 1e6
                row.problems.extend(row.result.problems)
            row.peak_mb = server.status_mb("VmHWM")
            if server.process.poll() is not None:
                row.problems.append(f"server died (exit {server.process.returncode})")
        errors = server.logged_errors()
        if errors:
            row.problems.append(f"server logged {errors} errors")
        if pg is not None and database is not None and row.result is not None:
            time.sleep(0.5)  # the server stopped: its backends exit and report their counts
            after = pg.transactions(database)
            if committed is not None and after is not None:
                row.transactions = after - committed
        if scenario.journal and row.result is not None and row.result.requests:
            if pg is not None and database is not None:
                stored = pg.events(database)
            else:
                stored = journal_events(workdir / "journal.db")
            if stored < row.result.requests:
                row.problems.append(
                    f"journal stored {stored} events for {row.result.requests} answered"
                )
        if row.problems:
            row.detail = log_tail(workdir / "server.log")
    except StartError as exc:
        row.problems.append(str(exc))
        row.detail = log_tail(workdir / "server.log")
    return row


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def journal_events(path: Path) -> int:
    try:
        with closing(sqlite3.connect(path)) as connection:
            return int(connection.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


# -- the memory check ---------------------------------------------------------------------


@dataclass
class MemoryCheck:
    lines: list[str]
    problems: list[str]
    growth_mb: float | None
    short: bool = False  # fewer requests than asked for were served within the cap


def memory_check(
    scenario: Scenario, pins: Pins, rate: float | None, total: int, cap: int, workdir: Path
) -> MemoryCheck:
    """Serve about ``total`` requests; compare VmRSS after the first ~10k and at the end."""
    problems: list[str] = []
    lines: list[str] = []
    try:
        with serve(scenario, pins.server, workdir) as server:
            headers = scenario.request_headers(server.port)
            problem = probe(scenario, server.port, headers)
            if problem is not None:
                return MemoryCheck([], [problem], None)
            script = workdir / "memory.lua"
            script.write_text(lua_script(scenario, headers))
            url = f"http://{HOST}:{server.port}{scenario.path}"
            first_s = max(1, round(MEMORY_FIRST / rate)) if rate else 1
            first = run_wrk(pins.wrk, script, url, first_s)
            rss_first = server.status_mb("VmRSS")
            rate = first.rate or rate  # measured just now, on this server
            served, rest_s, problems = first.requests, 0, list(first.problems)
            while served < total and first_s + rest_s < cap and not problems:
                # Sized by the rate so far; again if the host slowed down meanwhile.
                more = math.ceil((total - served) / rate) if rate else 1
                more = max(1, min(more, cap - first_s - rest_s))
                rest = run_wrk(pins.wrk, script, url, more)
                served, rest_s = served + rest.requests, rest_s + more
                problems.extend(rest.problems)
                rate = rest.rate or rate
            rss_end = server.status_mb("VmRSS")
    except StartError as exc:
        return MemoryCheck([], [str(exc)], None)
    if rss_first is None or rss_end is None:
        return MemoryCheck(["VmRSS not readable (no /proc)"], problems, None)
    growth = rss_end - rss_first
    lines.append(
        f"{scenario.name} (journal off), {first_s} s + {rest_s} s of wrk: VmRSS "
        f"{rss_first:.1f} MB after {first.requests:,} requests, {rss_end:.1f} MB after "
        f"{served:,}: growth {growth:+.1f} MB, "
        f"{'within' if growth <= MEMORY_GROWTH_MB else 'NOT within'} {MEMORY_GROWTH_MB:g} MB"
    )
    if served < total:
        lines.append(
            f"only {served:,} of the {total:,} requests within the {cap} s cap: not judged"
        )
    return MemoryCheck(lines, problems, growth, short=served < total)


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pins:
    server: list[str]
    wrk: list[str]
    note: str


def pins() -> Pins:
    taskset = shutil.which("taskset")
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = []
    if taskset is None or len(cpus) < 2:
        why = "no taskset" if taskset is None else "fewer than 2 CPUs available"
        return Pins([], [], f"not pinned ({why}): figures are noisier")
    server, load = str(cpus[0]), str(cpus[1])
    return Pins(
        ["taskset", "-c", server],
        ["taskset", "-c", load],
        f"server on CPU {server}, wrk on CPU {load}",
    )


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or "?"."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for mount in mounts:
        parts = mount.split()
        if len(parts) < 3:
            continue
        point = parts[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = out.splitlines()[0] if out else "?"
    return first.split(" [")[0].removeprefix("wrk ")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    naive = next((r for r in rows if r.scenario.name == "naive" and r.ok), None)
    width = max(15, *(len(r.scenario.title) + 1 for r in rows))
    header = (
        f"{'scenario':<{width}}{'journal':<11}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'x base':>8}{'x naive':>8}{'CPU us':>8}{'x base':>8}{'RSS MB':>8}  check"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        result = row.result if row.result is not None and row.result.requests else None
        rate = result.rate if result else None
        ref = row.reference()
        x_base = rate / ref.rate if rate and ref else None
        x_naive = rate / naive.result.rate if rate and naive and naive.result else None
        p50, p99 = (result.p50_ms, result.p99_ms) if result else (None, None)
        check = "ok" if row.ok else "; ".join(row.problems)
        cpu_base = ref.cpu_us / row.cpu_us if ref and ref.cpu_us and row.cpu_us else None
        print(
            f"{row.scenario.title:<{width}}{row.scenario.journal_label:<11}"
            f"{fmt(rate, ',.0f'):>9}{fmt(p50, '.2f'):>9}{fmt(p99, '.2f'):>9}"
            f"{fmt(x_base, '.2f'):>8}"
            f"{fmt(x_naive, '.2f'):>8}{fmt(row.cpu_us, '.1f'):>8}{fmt(cpu_base, '.2f'):>8}"
            f"{fmt(row.peak_mb, '.1f'):>8}  {check}"
        )
    print("x base: against the mean of the baseline runs just before and after the row")
    print(f"(baseline runs again after every {BASELINE_EVERY} scenarios; a baseline row's")
    print("x base is against the mean of all its runs, which shows the host's drift).")
    print("CPU us: the server's CPU time (user + system, all threads) per request; its")
    print("x base (baseline's CPU per request / this one's) is steadier than req/s when")
    print("the host is busy.")


def print_journal_costs(rows: list[Row]) -> None:
    """Per journaled callback: the receiver's CPU, PostgreSQL's, and pg_stat_statements'
    statements, round trips and commits (PostgreSQL rows)."""
    journaled = [r for r in rows if r.scenario.journal]
    if not journaled:
        return
    width = max(15, *(len(r.scenario.title) + 1 for r in journaled))
    header = (
        f"{'scenario':<{width}}{'journal':<11}{'req/s':>9}{'recv CPU us':>12}{'PG CPU us':>10}"
        f"{'sum CPU us':>11}{'stmts':>7}{'trips':>7}{'commits':>8}"
    )
    print("journal cost per callback (the measured run only; CPU = user + system time / requests):")
    print(header)
    print("-" * len(header))
    for row in journaled:
        result = row.result if row.result is not None and row.result.requests else None
        requests = result.requests if result else 0
        calls = row.statements
        stmts = calls.total / requests if calls and requests else None
        trips = calls.round_trips() / requests if calls and requests else None
        xacts = row.transactions
        commits = xacts / requests if xacts is not None and requests else None
        both = (row.cpu_us or 0) + row.pg_cpu_us if row.pg_cpu_us is not None else None
        print(
            f"{row.scenario.title:<{width}}{row.scenario.journal_label:<11}"
            f"{fmt(result.rate if result else None, ',.0f'):>9}{fmt(row.cpu_us, '.1f'):>12}"
            f"{fmt(row.pg_cpu_us, '.1f'):>10}{fmt(both, '.1f'):>11}{fmt(stmts, '.2f'):>7}"
            f"{fmt(trips, '.2f'):>7}{fmt(commits, '.2f'):>8}"
        )
    print("recv CPU us: the receiver's process(es), the load table's CPU us (SQLite: its")
    print("writer thread included). PG CPU us: every process of the PostgreSQL server (its")
    print("backends, WAL writer, checkpointer...). stmts: pg_stat_statements' calls in the")
    print("row's database (track = all, utility statements: BEGIN and COMMIT included);")
    print("trips: the same, but asyncpg's reset on releasing a pooled connection (four")
    print("statements in one simple query) counted once; commits: transactions committed")
    print("(pg_stat_database's xact_commit, a statement outside BEGIN/COMMIT is one; read")
    print("after the server stopped, so its few background and shutdown ones are in).")
    first = next((r for r in journaled if r.statements and r.result and r.result.requests), None)
    if first is not None and first.statements is not None and first.result is not None:
        print(f"statements per callback, {first.scenario.label}:")
        ordered = sorted(first.statements.calls.items(), key=lambda item: -item[1])
        for query, count in ordered:
            text = " ".join(query.split())
            text = text if len(text) <= 88 else text[:85] + "..."
            print(f"  {count / first.result.requests:6.2f}  {text}")


def print_pairs(rows: list[Row], http: str) -> None:
    """Each row served by ``http`` next to the same scenario just before it."""
    print(
        f"--http {http} against httptools, scenario by scenario (each pair run one after "
        "the other):"
    )
    for i, after in enumerate(rows):
        if after.scenario.http != http:
            continue
        before = next(
            r
            for r in reversed(rows[:i])
            if r.scenario == dataclasses.replace(after.scenario, http="httptools")
        )
        if not (before.ok and after.ok and before.result and after.result):
            print(f"  {after.scenario.name:<15} not comparable (a row failed)")
            continue
        rate = after.result.rate / before.result.rate
        ref_before, ref_after = before.reference(), after.reference()
        x_before = before.result.rate / ref_before.rate if ref_before else None
        x_after = after.result.rate / ref_after.rate if ref_after else None
        cpu = before.cpu_us / after.cpu_us if before.cpu_us and after.cpu_us else None
        print(
            f"  {after.scenario.name:<15} req/s {rate:.3f}x, x base {fmt(x_before, '.2f')}"
            f" -> {fmt(x_after, '.2f')}, CPU us per request {fmt(before.cpu_us, '.1f')} -> "
            f"{fmt(after.cpu_us, '.1f')} (speed {fmt(cpu, '.3f')}x)"
        )
    print()


def judge_targets(rows: list[Row], memory: MemoryCheck | None) -> list[tuple[str, str, str]]:
    """(target, figure, "pass" | "MISS" | "n/a") for each target."""

    def find(name: str, journal: bool) -> Row | None:
        return next(
            (
                r
                for r in rows
                if r.scenario.name == name and r.scenario.journal == journal and r.ok and judged(r)
            ),
            None,
        )

    def judged(row: Row) -> bool:  # issue 6's rows: not PostgreSQL's, not receiver serve's
        return row.scenario.store == "sqlite" and not row.scenario.workers

    out: list[tuple[str, str, str]] = []
    naive = find("naive", False)
    for name, journal, target in BASELINE_TARGETS:
        label = f"{name} {'journal' if journal else 'off'} >= {target:.2f}x baseline req/s"
        row = find(name, journal)
        ref = row.reference() if row is not None else None
        if row is None or ref is None or row.result is None:
            out.append((label, "-", "n/a"))
            continue
        ratio = row.result.rate / ref.rate
        out.append((label, f"{ratio:.2f}x", "pass" if ratio >= target else "MISS"))

    receivers = [
        r for r in rows if r.scenario.receiver and r.ok and r.result is not None and judged(r)
    ]
    label = f"every receiver row >= {NAIVE_FACTOR:g}x naive req/s"
    # (Not the mounted rows: the host's FastAPI routing and logging are the host's cost.)
    served = [r for r in receivers if not r.scenario.mounted]
    if naive is None or naive.result is None or not served:
        out.append((label, "-", "n/a"))
    else:
        ratios = [(r.result.rate / naive.result.rate, r) for r in served if r.result]
        worst, row = min(ratios, key=lambda pair: pair[0])
        figure = f"lowest {worst:.2f}x ({row.scenario.name} {row.scenario.journal_label})"
        out.append((label, figure, "pass" if worst >= NAIVE_FACTOR else "MISS"))

    label = f"every journal-off p99 <= {P99_FACTOR:g}x baseline p99"
    off = [r for r in receivers if not r.scenario.journal]
    if not off or any(r.reference() is None for r in off):  # judged on every row, or not
        out.append((label, "-", "n/a"))
    else:
        ratios = [
            (r.result.p99_ms / ref.p99_ms, r) for r in off if r.result and (ref := r.reference())
        ]
        worst, row = max(ratios, key=lambda pair: pair[0])
        figure = f"highest {worst:.2f}x ({row.scenario.name})"
        out.append((label, figure, "pass" if worst <= P99_FACTOR else "MISS"))

    if memory is not None:
        label = f"memory growth over the run <= {MEMORY_GROWTH_MB:g} MB"
        if memory.growth_mb is None or memory.problems or memory.short:
            out.append((label, "-", "n/a"))
        else:
            ok = memory.growth_mb <= MEMORY_GROWTH_MB
            out.append((label, f"{memory.growth_mb:+.1f} MB", "pass" if ok else "MISS"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Exit status: 0 ok, 1 a wrong answer or error, 2 no wrk, 3 a target missed.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every scenario for 1 s and a small memory check; targets are printed, not judged",
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=5,
        metavar="N",
        help="seconds of load per scenario (default 5)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these scenarios (repeat or comma-separate; ratios "
        "need baseline/naive in the run); no memory check unless --memory",
    )
    parser.add_argument(
        "--compare-http",
        metavar="MODULE:CLASS",
        help="run each journal-off receiver row a second time, right after, "
        "served by this uvicorn HTTP protocol class (e.g. "
        "receiver.server:HttpProtocol), and print the pairs' ratios",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="run the memory check (alone, or with --only's scenarios)",
    )
    parser.add_argument(
        "--workers",
        metavar="N[,M...]",
        help="add rows served by `receiver serve --workers N` (Whispir JSON, journal on "
        "SQLite and on PostgreSQL), for each N; not pinned (server, PostgreSQL and wrk share "
        "the CPUs); alone, with baseline only",
    )
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        print("bench/load.py: wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    seconds = 1 if args.quick else args.duration
    if seconds < 1:
        parser.error("--duration must be at least 1")
    every = scenarios()
    names = {n.strip() for arg in args.only for n in arg.split(",") if n.strip()}
    unknown = names - {s.name for s in every}
    if unknown:
        known = ", ".join(dict.fromkeys(s.name for s in every))
        parser.error(f"unknown scenario {', '.join(sorted(unknown))} (known: {known})")
    try:
        workers = [int(n) for n in (args.workers or "").split(",") if n.strip()]
    except ValueError:
        parser.error("--workers takes worker counts: 1,2")
    if any(n < 1 for n in workers):
        parser.error("--workers counts must be at least 1")
    if names:
        selected = [s for s in every if s.name in names]
    elif args.memory:
        selected = []
    elif workers:
        selected = [s for s in every if s.name == "baseline"]
    else:
        selected = every
    if workers:
        selected = [*selected, *serve_scenarios(workers)]
    with_memory = args.memory or not (names or workers)
    if args.compare_http:
        selected = [
            variant
            for s in selected
            for variant in (
                [s, dataclasses.replace(s, http=args.compare_http)]
                if s.receiver and not s.journal
                else [s]
            )
        ]

    pin = pins()
    started = time.monotonic()
    rows: list[Row] = []
    memory: MemoryCheck | None = None
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as temp, ExitStack() as stack:
        tmp = Path(temp)
        pg: Postgres | str | None = None
        if any(s.postgres for s in selected):
            print("starting PostgreSQL ...", file=sys.stderr, flush=True)
            try:
                pg = stack.enter_context(postgres_server())
            except PostgresError as exc:
                pg = str(exc)  # each PostgreSQL row fails, saying so
        for number, scenario in enumerate(interleave(selected, BASELINE_EVERY)):
            title = scenario.title.replace("/", "-")
            workdir = tmp / f"{number:02d}-{title}-{scenario.journal_label}"
            workdir.mkdir()
            print(f"running {scenario.label} for {seconds} s ...", file=sys.stderr, flush=True)
            rows.append(run_scenario(scenario, pin, seconds, workdir, pg))
            shutil.rmtree(workdir, ignore_errors=True)  # logs and journal grow with the run
        bracket(rows)
        if with_memory:
            target = next(s for s in every if s.name == "whispir_json" and not s.journal)
            measured = next((r for r in rows if r.scenario == target and r.ok), None)
            rate = measured.result.rate if measured and measured.result else None
            total = QUICK_MEMORY_TOTAL if args.quick else MEMORY_TOTAL
            cap = QUICK_MEMORY_CAP_S if args.quick else MEMORY_CAP_S
            print(f"memory check: ~{total:,} requests ...", file=sys.stderr, flush=True)
            workdir = tmp / "memory"
            workdir.mkdir()
            memory = memory_check(target, pin, rate, total, cap, workdir)
        journal_fs = filesystem(tmp)
        pg_note = pg.note if isinstance(pg, Postgres) else pg
        pg_fs = filesystem(Path(tempfile.gettempdir()))
    elapsed = time.monotonic() - started

    print("receiver load benchmark")
    print(
        f"machine:  {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"versions: wrk {wrk_version()}, uvicorn {version('uvicorn')}, starlette "
        f"{version('starlette')}, fastapi {version('fastapi')}, pydantic {version('pydantic')}"
    )
    print(f"pinning:  {pin.note}")
    server_cmd = " ".join(uvicorn_command(pin.server, "<scenario>", "<free port>"))
    print(f"server:   {server_cmd} (one worker)")
    print(
        f"load:     {' '.join([*pin.wrk, 'wrk', '-t1', f'-c{CONNECTIONS}', f'-d{seconds}s'])}"
        f" --latency -s <scenario>.lua http://{HOST}:<port>/{CHANNEL} (mounted: {MOUNT}/{CHANNEL})"
    )
    print("          (the Lua response() checks every answer in every scenario, baseline included)")
    level = os.environ.get("BENCH_LOG_LEVEL") or "info"
    print(
        f"receiver: JSON logs at level {level} to a file; journal rows: SQLite on "
        f"{journal_fs} in a temp dir, with duplicate_window=0 and duplicate_body_window=0 "
        "so wrk's identical bodies are stored, not answered as duplicates"
    )
    if pg_note is not None:
        print(
            f"postgres: {pg_note} (its data on {pg_fs} when of its own; pg_stat_statements.track "
            "= all; other settings at their defaults unless said: fsync and synchronous_commit "
            "on); a new database per row"
        )
    if workers:
        print(
            f"workers:  {' '.join(serve_command([], '<receiver.toml>', '<port>', 0))[:-1]}N rows "
            "(Whispir JSON), not pinned: server, PostgreSQL and wrk share the CPUs"
        )
    print(
        f"mounted:  receiver at {MOUNT} in Starlette (mounted_fastapi_*: FastAPI), whose stdlib "
        "logging (root at WARNING or INFO) writes JSON lines to the file; structlog not "
        "configured"
    )
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print()
    if rows:
        print_table(rows)
        print()
        if any(r.scenario.journal for r in rows):
            print_journal_costs(rows)
            print()
    failed = [r for r in rows if not r.ok]
    for row in failed:
        if row.detail:
            print(f"server log tail, {row.scenario.label}:")
            print("    " + row.detail.replace("\n", "\n    "))
    if memory is not None:
        print("memory check:")
        for line in memory.lines:
            print(f"  {line}")
        for problem in memory.problems:
            print(f"  PROBLEM: {problem}")
        print()

    if args.compare_http:
        print_pairs(rows, args.compare_http)
    targets = judge_targets(rows, memory)
    if args.quick:
        print("targets (NOT judged with --quick: 1 s runs are too short to mean anything):")
    else:
        print("targets:")
    for label, figure, verdict in targets:
        print(f"  {label:<50}{figure:>28}  {verdict}")
    print()
    print(f"took {elapsed:.0f} s")

    if failed or (memory is not None and memory.problems):
        print("FAILED: a scenario answered wrongly or errored (see the check column)")
        return 1
    if not args.quick and any(verdict == "MISS" for _, _, verdict in targets):
        print("correct, but a target was missed")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
