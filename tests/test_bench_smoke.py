"""bench/load.py --quick: every scenario is served by a real uvicorn and answers correctly.

This checks correctness only (status, body, no wrk errors), never speed. It needs wrk
(``apt-get install wrk``, or ``make wrk``): without it the test fails, it does not skip.
The PostgreSQL journal rows run on tests/postgres.py's server (``$RECEIVER_BENCH_POSTGRES``
set to it): without one, the test fails in CI and skips elsewhere, as every PostgreSQL test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from postgres import admin, postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures, used by name

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = [
    ("baseline", "-"),
    ("naive", "-"),
    *[
        (name, journal)
        for journal in ("off", "sqlite", "postgresql")
        for name in ("whispir_json", "whispir_xml", "onepoint_reply", "onepoint_hmac")
    ],
    ("host_baseline", "-"),
    ("mounted_warning", "off"),
    ("mounted_info", "off"),
    ("mounted_fastapi_warning", "off"),
    ("mounted_fastapi_info", "off"),
]


def table(stdout: str) -> list[list[str]]:
    """The split lines of the results table: after its header and rule, up to a blank."""
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("scenario ")), None)
    assert start is not None, f"no results table in the output:\n{stdout}"
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_bench_quick_runs_every_scenario(postgres_server: str) -> None:
    if shutil.which("wrk") is None:
        pytest.fail(
            "wrk is not installed: `apt-get install wrk` (or `make wrk`); "
            "the load benchmark's smoke test needs it"
        )
    done = subprocess.run(
        [sys.executable, "bench/load.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "RECEIVER_BENCH_POSTGRES": postgres_server},
    )
    output = f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, output
    rows = {(fields[0], fields[1]): fields for fields in table(done.stdout)}
    for name, journal in SCENARIOS:
        assert (name, journal) in rows, f"no row for {name} ({journal})\n{output}"
        assert rows[name, journal][-1] == "ok", f"{name} ({journal}) not ok\n{output}"
    assert "memory check:" in done.stdout, output
    assert "journal cost per callback" in done.stdout, output


@pytest.mark.parametrize(
    "name", ["baseline", "whispir_json", "whispir_xml", "onepoint_reply", "onepoint_hmac"]
)
def test_bench_instructions_driver_answers_every_request_200(name: str) -> None:
    # The loop bench/instructions.py counts under valgrind, run here without valgrind:
    # it exits non-zero when any answer is not a 200 (e.g. the signature no longer matches).
    done = subprocess.run(
        [sys.executable, "bench/instructions.py", "--drive", name, "--requests", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1", "BENCH_JOURNAL": "none",
             "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answers other than 200" not in done.stderr


def test_bench_load_compares_each_row_with_the_baseline_runs_around_it() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench.load import Row, WrkResult, bracket, interleave, scenarios
    finally:
        sys.path.remove(str(ROOT))
    every = scenarios()
    order = interleave(every, 3)
    names = [s.name for s in order]
    assert names[0] == names[-1] == "baseline"
    others = [s for s in order if s.name != "baseline"]
    assert others == [s for s in every if s.name != "baseline"]  # each once, in order
    gaps = "".join("b" if n == "baseline" else "x" for n in names).split("b")
    assert [len(gap) for gap in gaps[1:-1]] == [3] * 6  # 18 others, 3 at a time

    def row(name: str, rate: float) -> Row:
        scenario = next(s for s in every if s.name == name)
        return Row(scenario, WrkResult(requests=int(rate), seconds=1.0, p99_ms=rate / 1000))

    rows = [row("baseline", 1000), row("naive", 10), row("baseline", 3000), row("naive", 20)]
    bracket(rows)
    first, last = rows[1].reference(), rows[3].reference()
    assert first is not None and last is not None
    assert (first.rate, first.p99_ms) == (2000, 2.0)  # the mean of the runs around it
    assert last.rate == 3000  # after the last baseline run: that run alone
    whole = rows[0].reference()
    assert whole is not None and whole.rate == 2000  # a baseline run: all of baseline's


def test_bench_instructions_driver_with_journal_and_requests_in_flight(tmp_path: Path) -> None:
    # The --journal rows' loop: 16 requests in flight to a SQLite journal, all answered 200
    # and all stored.
    done = subprocess.run(
        [sys.executable, "bench/instructions.py", "--drive", "whispir_json", "--requests", "40",
         "--in-flight", "16"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin",
             "BENCH_JOURNAL": f"sqlite:///{tmp_path / 'journal.db'}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        done_rows = "SELECT count(*) FROM events WHERE state = 'done'"
        (stored,) = connection.execute(done_rows).fetchone()
    assert stored == 40 + 300  # the requests and the warm-up ones


def test_bench_instructions_driver_with_the_postgresql_journal(postgres_url: str) -> None:
    # The --journal PostgreSQL row's loop: 16 requests in flight to a PostgreSQL journal,
    # all answered 200 and all stored.
    done = subprocess.run(
        [sys.executable, "bench/instructions.py", "--drive", "whispir_json", "--requests", "40",
         "--in-flight", "16", "--uvloop"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin",
             "BENCH_JOURNAL": postgres_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (stored,) = asyncio.run(admin(postgres_url, "SELECT count(*) FROM events WHERE state = 'done'"))
    assert stored[0] == 40 + 300  # the requests and the warm-up ones


def test_bench_postgres_counts_round_trips() -> None:
    # asyncpg's reset on releasing a pooled connection is four statements in one round trip.
    sys.path.insert(0, str(ROOT))
    try:
        from bench.postgres import Statements
    finally:
        sys.path.remove(str(ROOT))
    calls = Statements(
        {"BEGIN": 2, "COMMIT": 2, "INSERT INTO events VALUES ($1)": 1, "RESET ALL": 2,
         "CLOSE ALL": 2, "UNLISTEN *": 2, "SELECT pg_advisory_unlock_all()": 2}
    )  # fmt: skip
    assert (calls.total, calls.round_trips()) == (13, 7)
