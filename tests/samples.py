"""The payload corpus (samples of every callback variant, in tests/payloads/<provider>/),
and the examples/ modules, imported afresh for a test.

The one place test modules find it (``from samples import PAYLOADS, payload``): pytest
puts this folder on ``sys.path`` for the test modules in it (rootdir-relative
``prepend`` import mode, as for ``serving``), and module-level sample constants need a
plain import rather than a fixture.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PAYLOADS = Path(__file__).parent.parent / "receiver" / "samples"
EXAMPLES = Path(__file__).parent.parent / "examples"


def payload(provider: str, name: str) -> bytes:
    """The bytes of one sample, exactly as stored."""
    return (PAYLOADS / provider / name).read_bytes()


def import_example(name: str, monkeypatch: pytest.MonkeyPatch, prefix: str) -> ModuleType:
    """Import examples/<name>.py afresh as module ``<prefix>_<name>`` (removed again when
    the test ends)."""
    module_name = f"{prefix}_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module
