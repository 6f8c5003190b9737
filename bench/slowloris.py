"""Slow, idle and greedy clients against a real ``receiver serve`` (issue 13).

Run: ``.venv/bin/python bench/slowloris.py`` (about 25 s; no extra tools).

It starts ``receiver serve`` on a free loopback port with the default ``[server]`` limits
and the default journal (SQLite in a temp dir), then:

1. **Attack**: holds ``--idle`` connections that send nothing (2,000) and ``--slowloris``
   connections that send a request head one header line every second and never finish it
   (1,000); a connection the server closes is opened again after a second, as an attacker
   would. Meanwhile a legitimate Whispir callback is sent every ``--every`` seconds on a
   fresh connection (another thread, blocking ``http.client``), and its status and latency
   printed, with the attack connections open (as the client sees them) and the server's
   open descriptors (``/proc/PID/fd``).
2. **Header flood**: ``--flood`` connections each send a ``--flood-mb`` MB header
   (4 x 100 MB, the attack that took the server from 56 to 451 MB); the server's VmRSS
   before and after, and its peak (VmHWM), are printed.

The server starts with a soft descriptor limit of ``--server-nofile`` (1,024, the usual
default; its hard limit is this process's), which ``receiver serve`` raises; the client
raises its own to its hard limit. ``--pythonpath DIR`` serves the receiver package found
in DIR instead (a worktree of an older commit: ``git worktree add /tmp/before <commit>``),
to measure the same attack without these limits.

Exit status: 0 every callback got 200 within 1 s and the flood grew RSS by at most
10 MB; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KEY = "bench-slowloris-key"
BODY = (ROOT / "receiver" / "samples" / "whispir" / "reply_sms.json").read_bytes()
CONFIG = f"""
[channels.w]
provider = "whispir"
auth = "query"
keys = ["{KEY}"]
"""
LATENCY_TARGET_S = 1.0
RSS_GROWTH_MB = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def soft_nofile(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return "soft {} / hard {}".format(*line.split()[3:5])
    return "?"


def start_server(
    workdir: Path, port: int, nofile: int, pythonpath: str | None
) -> subprocess.Popen[bytes]:
    config = workdir / "receiver.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "RECEIVER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

    with (workdir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            preexec_fn=lower_soft_limit,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    raise SystemExit(f"server did not start:\n{(workdir / 'serve.log').read_text()}")


# -- the attack ---------------------------------------------------------------------------


class Attack:
    """Idle and slowloris connections, reopened a second after the server closes one."""

    def __init__(self, port: int, idle: int, slow: int) -> None:
        self.port = port
        self.idle, self.slow = idle, slow
        self.open = 0
        self.closed_by_server = 0
        self.connect_errors = 0
        self.stop = asyncio.Event()

    async def _one(self, slow: bool, delay: float) -> None:
        await asyncio.sleep(delay)
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                self.connect_errors += 1
                await asyncio.sleep(1)
                continue
            self.open += 1
            try:
                if slow:
                    writer.write(b"POST /w HTTP/1.1\r\nHost: x\r\n")
                    line = 0
                    while not self.stop.is_set():
                        try:
                            await asyncio.wait_for(reader.read(65536), 1.0)
                            break  # answered (408) or closed: gone
                        except TimeoutError:
                            pass
                        line += 1
                        writer.write(b"X-Slow-%d: a\r\n" % line)
                else:
                    stop = asyncio.ensure_future(self.stop.wait())
                    read = asyncio.ensure_future(reader.read(65536))
                    await asyncio.wait([stop, read], return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    read.cancel()
            except OSError:
                pass
            finally:
                self.open -= 1
                writer.close()
            if not self.stop.is_set():
                self.closed_by_server += 1
                await asyncio.sleep(1)

    async def run(self) -> None:
        # Spread the opening over the first second, as a real client would ramp up.
        total = self.idle + self.slow
        tasks = [asyncio.ensure_future(self._one(i >= self.idle, i / total)) for i in range(total)]
        await self.stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)


def callback(port: int) -> tuple[int | str, float]:
    """One legitimate callback on a fresh connection: (status or error, seconds)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(
            "POST", f"/w?auth={KEY}", body=BODY, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        status: int | str = response.status
    except OSError as exc:
        status = type(exc).__name__
    finally:
        connection.close()
    return status, time.perf_counter() - started


def attack_phase(port: int, pid: int, args: argparse.Namespace) -> list[tuple[int | str, float]]:
    loop = asyncio.new_event_loop()
    attack = Attack(port, args.idle, args.slowloris)
    thread = threading.Thread(target=loop.run_until_complete, args=(attack.run(),))
    thread.start()
    results: list[tuple[int | str, float]] = []
    started = time.monotonic()
    print(
        f"attack: {args.idle:,} idle + {args.slowloris:,} slowloris connections for "
        f"{args.seconds:g} s; a callback every {args.every:g} s"
    )
    print(f"{'t s':>6}  {'attack open':>11}  {'server fds':>10}  callback")
    try:
        while (elapsed := time.monotonic() - started) < args.seconds:
            time.sleep(args.every)
            status, seconds = callback(port)
            results.append((status, seconds))
            print(
                f"{elapsed:6.1f}  {attack.open:>11,}  {open_fds(pid):>10,}  "
                f"{status} in {seconds * 1000:.1f} ms",
                flush=True,
            )
    finally:
        loop.call_soon_threadsafe(attack.stop.set)
        thread.join(timeout=30)
    print(
        f"attack connections closed by the server: {attack.closed_by_server:,} "
        f"(each reopened a second later); connect errors: {attack.connect_errors:,}"
    )
    return results


def flood_phase(port: int, pid: int, args: argparse.Namespace) -> float:
    """``args.flood`` headers of ``args.flood_mb`` MB at once; the VmRSS growth in MB."""
    before = proc_status_mb(pid, "VmRSS")
    chunk = b"a" * (1 << 20)
    sent = [0] * args.flood
    answers: list[bytes] = [b""] * args.flood

    def one(i: int) -> None:
        with socket.create_connection((HOST, port)) as sock:
            try:
                sock.sendall(b"POST /w HTTP/1.1\r\nHost: x\r\nX-Flood: ")
                for _ in range(args.flood_mb):
                    sock.sendall(chunk)
                    sent[i] += 1
                sock.sendall(b"\r\n\r\n")
                answers[i] = sock.recv(200)
            except OSError as exc:
                try:
                    answers[i] = sock.recv(200)
                except OSError:
                    answers[i] = type(exc).__name__.encode()

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.flood)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    time.sleep(0.3)
    after = proc_status_mb(pid, "VmRSS")
    peak = proc_status_mb(pid, "VmHWM")
    print(
        f"header flood: {args.flood} x {args.flood_mb} MB headers in {elapsed:.1f} s; "
        f"MB each sent before the server stopped reading: {sent}"
    )
    firsts = Counter(a.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed)" for a in answers)
    print(f"  answers: {dict(firsts)}")
    print(
        f"  server VmRSS {before:.1f} MB before, {after:.1f} MB after "
        f"(growth {after - before:+.1f} MB); peak VmHWM {peak:.1f} MB"
    )
    return after - before


def warnings_logged(log: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if "limit" in event:
                counts[f"{event['limit']} ({event['action']})"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slowloris", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=12.0, help="attack duration")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between callbacks")
    parser.add_argument("--flood", type=int, default=4, help="flood connections")
    parser.add_argument("--flood-mb", type=int, default=100, help="MB of header on each")
    parser.add_argument(
        "--server-nofile",
        type=int,
        default=1024,
        help="the server's soft descriptor limit at start (default 1024)",
    )
    parser.add_argument("--pythonpath", help="serve the receiver package found here")
    args = parser.parse_args()

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client's own
    needed = args.idle + args.slowloris + args.flood + 100
    if hard < needed:
        print(f"the client needs {needed} descriptors; its hard limit is {hard}", file=sys.stderr)
        return 1
    port = free_port()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="receiver-slowloris-") as temp:
        workdir = Path(temp)
        server = start_server(workdir, port, args.server_nofile, args.pythonpath)
        try:
            print(f"command: {shlex.join([sys.executable, *sys.argv])}")
            which = args.pythonpath or str(ROOT)
            print(
                f"server:  receiver serve (receiver from {which}), pid {server.pid}, "
                f"started with soft nofile {args.server_nofile}; now {soft_nofile(server.pid)}"
            )
            rss_start = proc_status_mb(server.pid, "VmRSS")
            print(f"server VmRSS at start: {rss_start:.1f} MB")
            print()
            results = attack_phase(port, server.pid, args)
            print()
            time.sleep(1)
            growth = flood_phase(port, server.pid, args)
            print()
            time.sleep(0.3)  # the log is written in batches every 0.1 s
            counts = warnings_logged(workdir / "serve.log")
            print(f"server warnings logged: {dict(counts) or 'none'}")
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    ok = [s for s, t in results if s == 200 and t <= LATENCY_TARGET_S]
    latencies = sorted(t * 1000 for _, t in results)
    print(
        f"callbacks: {len(ok)} of {len(results)} got 200 within {LATENCY_TARGET_S:g} s; "
        f"latency median {statistics.median(latencies):.1f} ms, max {latencies[-1]:.1f} ms"
    )
    print(f"server alive at the end: {alive}; took {time.monotonic() - started:.0f} s")
    passed = len(ok) == len(results) and growth <= RSS_GROWTH_MB and alive
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
