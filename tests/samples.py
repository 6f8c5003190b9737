"""The payload corpus: samples of every callback variant, in tests/payloads/<provider>/.

The one place test modules find it (``from samples import PAYLOADS, payload``): pytest
puts this folder on ``sys.path`` for the test modules in it (rootdir-relative
``prepend`` import mode, as for ``serving``), and module-level sample constants need a
plain import rather than a fixture.
"""

from __future__ import annotations

from pathlib import Path

PAYLOADS = Path(__file__).parent / "payloads"


def payload(provider: str, name: str) -> bytes:
    """The bytes of one sample, exactly as stored."""
    return (PAYLOADS / provider / name).read_bytes()
