"""The installable example plugin (examples/plugin_package) and entry-point loading.

Installing is slow, so the package's module is imported from its folder and passed to
``create_app(plugins=[...])``; entry-point loading is tested with a fake distribution
(a ``*.dist-info`` folder with an ``entry_points.txt``) put on ``sys.path``.
"""

from __future__ import annotations

import importlib
import json
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from samples import payload
from starlette.testclient import TestClient

from receiver import Channel, Config, ConfigError, create_app

PACKAGE = Path(__file__).parent.parent / "examples" / "plugin_package"
AUTOLOAD = "RECEIVER_DISABLE_PLUGIN_AUTOLOAD"
CONFIG = Config(channels={"sms": Channel(provider="onepoint", auth="none")})


def body(name: str, **changes: Any) -> bytes:
    data = json.loads(payload("onepoint", name))
    data.update(changes)
    return json.dumps(data).encode()


def post(client: TestClient, content: bytes) -> Any:
    return client.post("/sms", content=content, headers={"Content-Type": "application/json"})


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv(AUTOLOAD, "1")  # only the plugins passed (it may be installed too)
    monkeypatch.syspath_prepend(str(PACKAGE))
    monkeypatch.delitem(sys.modules, "receiver_example_plugin", raising=False)
    yield importlib.import_module("receiver_example_plugin")
    sys.modules.pop("receiver_example_plugin", None)


def test_plugin_package_join_keyword_is_answered(example: ModuleType) -> None:
    client = TestClient(create_app(CONFIG, plugins=[example]))
    response = post(client, body("keyword.json", Message="  join now"))
    assert response.status_code == 200
    assert response.json() == {
        "Source": "60777",
        "Destination": "447700900654",
        "Message": example.DEFAULT_JOIN_REPLY,
    }


def test_plugin_package_other_keyword_is_not_answered(example: ModuleType) -> None:
    client = TestClient(create_app(CONFIG, plugins=[example]))
    response = post(client, body("keyword.json", Message="HOURS"))
    assert response.status_code == 200
    assert response.content == b""


def test_plugin_package_join_reply_from_settings(example: ModuleType) -> None:
    config = Config(channels=CONFIG.channels, settings={"stop_and_keyword": {"join_reply": "Hi!"}})
    response = post(TestClient(create_app(config, plugins=[example])), body("keyword.json"))
    assert response.json()["Message"] == "Hi!"


def test_plugin_package_bad_setting_is_a_config_error(example: ModuleType) -> None:
    config = Config(channels=CONFIG.channels, settings={"stop_and_keyword": {"join_reply": 1}})
    with pytest.raises(ConfigError, match=r"settings\.stop_and_keyword\.join_reply"):
        create_app(config, plugins=[example])


def test_plugin_package_stop_is_recorded(example: ModuleType) -> None:
    client = TestClient(create_app(CONFIG, plugins=[example]))
    assert post(client, body("stop.json")).status_code == 200
    assert example.stopped == ["447700900654"]
    create_app(CONFIG, plugins=[example])  # a new app starts a new record
    assert example.stopped == []


def test_plugin_package_declares_its_entry_point() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))
    entry_points = project["project"]["entry-points"]["receiver"]
    assert entry_points == {"stop_and_keyword": "receiver_example_plugin"}
    assert (PACKAGE / entry_points["stop_and_keyword"] / "__init__.py").is_file()
    assert (PACKAGE / "README.md").is_file()


# Entry points ----------------------------------------------------------------------------

FAKE_MODULE = """
from receiver import hookimpl

@hookimpl
def on_keyword(event):
    return "from the fake plugin"
"""


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution ``fake-plugin`` with entry point ``fake`` in ``receiver``."""
    info = tmp_path / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[receiver]\nfake = fake_receiver_plugin\n")
    (tmp_path / "fake_receiver_plugin.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(AUTOLOAD, raising=False)
    monkeypatch.delitem(sys.modules, "fake_receiver_plugin", raising=False)
    yield tmp_path
    sys.modules.pop("fake_receiver_plugin", None)


def test_plugin_package_entry_point_is_loaded(fake_distribution: Path) -> None:
    app = create_app(CONFIG)
    plugin = app.state.plugin_manager.get_plugin("fake")
    assert plugin is not None
    assert plugin.__name__ == "fake_receiver_plugin"
    response = post(TestClient(app), body("keyword.json"))
    assert response.json()["Message"] == "from the fake plugin"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_plugin_package_autoload_can_be_disabled(
    fake_distribution: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(AUTOLOAD, value)
    app = create_app(CONFIG)
    assert app.state.plugin_manager.get_plugin("fake") is None
    assert "fake_receiver_plugin" not in sys.modules
    assert post(TestClient(app), body("keyword.json")).content == b""


def test_plugin_package_explicit_plugin_also_installed_loads_once(
    fake_distribution: Path,
) -> None:
    # A plugin's own tests pass its module to create_app while the package is installed
    # (pip install -e): the entry point then finds the same module already registered.
    # Fails while receiver/plugins.py registers it twice (pluggy: ValueError -> ConfigError).
    module = importlib.import_module("fake_receiver_plugin")
    app = create_app(CONFIG, plugins=[module])
    manager = app.state.plugin_manager
    assert [p for _, p in manager.list_name_plugin()].count(module) == 1


def test_plugin_package_configured_module_also_installed_loads_once(
    fake_distribution: Path,
) -> None:
    # Same with the module listed in the configuration's plugins = [...].
    config = Config(channels=CONFIG.channels, plugins=["fake_receiver_plugin"])
    app = create_app(config)
    module = sys.modules["fake_receiver_plugin"]
    manager = app.state.plugin_manager
    assert [p for _, p in manager.list_name_plugin()].count(module) == 1
