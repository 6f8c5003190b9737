"""examples/receiver.toml documents every option (issue 12): each field of Config, Channel
and every built-in provider's options struct is written there (set or commented out), and
the file loads as it is."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from receiver.config import Channel, Config, ServerLimits, load_config
from receiver.providers.onepoint import DiyProvider, OnePointProvider
from receiver.providers.whispir import WhispirProvider

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "receiver.toml"


def _keys_written(text: str) -> set[str]:
    """Every ``key =`` at the start of a line, commented out or not, and every table name."""
    keys = set(re.findall(r"^\s*#?\s*([a-z_]+)\s*=", text, re.MULTILINE))
    keys |= set(re.findall(r"^\s*#?\s*\[([a-z_]+)[.\]]", text, re.MULTILINE))
    keys |= set(re.findall(r"^\s*#?\s*\[channels\.[^.\]]+\.([a-z_]+)\]", text, re.MULTILINE))
    return keys


@pytest.mark.parametrize(
    "struct",
    [
        Config,
        Channel,
        ServerLimits,
        *(p.options for p in (WhispirProvider, OnePointProvider, DiyProvider)),
    ],
    ids=lambda struct: struct.__name__,
)
def test_example_config_documents_every_option(struct: type[msgspec.Struct]) -> None:
    missing = set(struct.__struct_fields__) - _keys_written(EXAMPLE.read_text())
    assert not missing, f"examples/receiver.toml lacks {sorted(missing)}"


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WHISPIR_KEY", "ONEPOINT_SECRET", "DIY_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-value")
    config = load_config(EXAMPLE)
    config.validate()
    assert set(config.channels) >= {"whispir", "sms", "diy"}
    assert config.retry_delays == [10.0, 60.0, 300.0, 1800.0]
