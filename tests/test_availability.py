"""Availability under real load: real ``receiver serve`` processes on loopback, replaced,
restarted or killed while a few hundred callbacks a second arrive (tests/availability.py).

Every test asserts exact figures: the connection errors and non-2xx answers the load
saw, and, read back from the journal and the counting plugin's file, that each callback
was stored and handled exactly once (for ``kill -9``: that none acknowledged is lost and
that the dead process's unfinished work is handled by the survivor).
"""

from __future__ import annotations

import socket
from pathlib import Path

from availability import (
    Figures,
    Load,
    exactly_once,
    processes,
    read_handled,
    serve_command,
    sqlite_journal,
    sqlite_rows,
    stop,
    wait_ready,
    wait_settled,
    write_config,
    write_counting_plugin,
)

RATE = 200.0
"""Callbacks a second."""


def test_availability_fd_replacement_refuses_nothing(tmp_path: Path) -> None:
    """The test holds the listening socket (as systemd would) and replaces the receiver on
    it three times under load: SIGTERM, wait for the exit, start the next one.

    The next process starts only once the last one has exited, not right after the
    SIGTERM: the SQLite journal serves one process, and a process starting while the
    old one still finishes its in-flight callbacks would take their ``received`` entries
    for unfinished work of a dead process and handle them a second time. Meanwhile (the
    shutdown plus about a second of start-up) connections wait in the kernel's backlog
    (1024 here: well above the ~400 that 2 s at 200/s bring) and the next process answers
    them: nothing is refused.
    """
    handled = write_counting_plugin(tmp_path)
    journal = sqlite_journal(tmp_path)
    config = write_config(tmp_path, journal)
    with socket.socket() as sock, processes(tmp_path) as started:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        fd, address = sock.fileno(), sock.getsockname()
        command = serve_command(config, "--fd", str(fd))
        current = started.start(command, "serve-0", (fd,))
        wait_ready(address, current)
        with Load(address, rate=RATE) as load:
            load.wait_answered(200)
            for n in range(1, 4):
                assert stop(current) == 0
                current = started.start(command, f"serve-{n}", (fd,))
                wait_ready(address, current)
                load.wait_answered(200)  # the new one serves a while before it is replaced
            outcomes = load.stop()
        rows = wait_settled(lambda: sqlite_rows(journal), len(outcomes))
        assert stop(current) == 0
    figures = Figures(outcomes, rows, read_handled(handled), load.finished - load.began)
    exactly_once(figures, "fd replacement x3")
    assert len({pid for _, pid in figures.handled}) == 4  # every process handled some
