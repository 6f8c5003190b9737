"""What one per-callback log line costs a mounted app whose host logs with the standard
library: the host's own line, receiver's line through structlog's stdlib chain, and a
line below the level (microseconds each; 20,000 lines to /dev/null through the load
bench's ``JsonLines`` formatter).

Run from the repository's root: ``.venv/bin/python bench/logline.py``.
"""

import logging
import os
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.apps import JsonLines  # noqa: E402
from receiver.logs import get_logger  # noqa: E402

FIELDS = {
    "channel": "sms",
    "provider": "whispir",
    "client": "127.0.0.1",
    "type": "message",
    "message_id": "3F1C7A9E0B2D4C68A5E1",
    "event_id": "01a22fe6-0ae8-7b0c-bd0c-bd9e6ebbc094",
    "status": 200,
    "duration_ms": 0.152,
    "request_id": "37c31ef1b12a-1",
}
LINES = 20_000


def main() -> None:
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonLines())
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        host = logging.getLogger("host")
        receiver_log = get_logger("receiver.app")

        def each(line: object) -> float:
            return timeit.timeit(line, number=LINES) / LINES * 1e6  # type: ignore[arg-type]

        own = each(lambda: host.info("callback", extra=FIELDS))
        ours = each(lambda: receiver_log.info("callback", **FIELDS))
        root.setLevel(logging.WARNING)
        below = each(lambda: receiver_log.info("callback", **FIELDS))
    print(f"the host's own line:              {own:6.1f} us")
    print(f"receiver's line (stdlib logging): {ours:6.1f} us")
    print(f"receiver's line below the level:  {below:6.2f} us")


if __name__ == "__main__":
    main()
