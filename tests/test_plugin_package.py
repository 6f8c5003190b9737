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
    client = TestClient(create_app(CONFIG, plugins=[example.StopAndKeyword]))
    response = post(client, body("keyword.json", Message="  join now"))
    assert response.status_code == 200
    assert response.json() == {
        "Source": "60777",
        "Destination": "447700900654",
        "Message": example.DEFAULT_JOIN_REPLY,
    }


def test_plugin_package_other_keyword_is_not_answered(example: ModuleType) -> None:
    client = TestClient(create_app(CONFIG, plugins=[example.StopAndKeyword]))
    response = post(client, body("keyword.json", Message="HOURS"))
    assert response.status_code == 200
    assert response.content == b""


def test_plugin_package_join_reply_from_settings(example: ModuleType) -> None:
    config = Config(channels=CONFIG.channels, settings={"stop_and_keyword": {"join_reply": "Hi!"}})
    app = create_app(config, plugins=[example.StopAndKeyword])
    response = post(TestClient(app), body("keyword.json"))
    assert response.json()["Message"] == "Hi!"


def test_plugin_package_bad_setting_is_a_config_error(example: ModuleType) -> None:
    config = Config(channels=CONFIG.channels, settings={"stop_and_keyword": {"join_reply": 1}})
    with pytest.raises(ConfigError, match=r"settings\.stop_and_keyword\.join_reply: Expected"):
        create_app(config, plugins=[example.StopAndKeyword])


def test_plugin_package_stop_is_recorded(example: ModuleType) -> None:
    app = create_app(CONFIG, plugins=[example.StopAndKeyword])
    assert post(TestClient(app), body("stop.json")).status_code == 200
    assert app.state.plugin_manager.get_plugin("stop_and_keyword").stopped == ["447700900654"]
    other = create_app(CONFIG, plugins=[example.StopAndKeyword])  # its own instance
    assert other.state.plugin_manager.get_plugin("stop_and_keyword").stopped == []


def test_plugin_package_declares_its_entry_point() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))
    entry_points = project["project"]["entry-points"]["receiver"]
    assert entry_points == {"stop_and_keyword": "receiver_example_plugin:StopAndKeyword"}
    module = entry_points["stop_and_keyword"].partition(":")[0]
    assert (PACKAGE / module / "__init__.py").is_file()
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


FAKE_CLASS_MODULE = """
from receiver import hookimpl

class Fake:
    name = "fake"

    def __init__(self):
        self.seen = 0

    @hookimpl
    def on_keyword(self, event):
        self.seen += 1
        return f"from the fake plugin's instance, {self.seen}"
"""


@pytest.fixture
def fake_class_distribution(fake_distribution: Path) -> Path:
    """The same distribution, its entry point naming a class: ``fake_receiver_plugin:Fake``."""
    info = fake_distribution / "fake_plugin-0.1.dist-info"
    (info / "entry_points.txt").write_text("[receiver]\nfake = fake_receiver_plugin:Fake\n")
    (fake_distribution / "fake_receiver_plugin.py").write_text(FAKE_CLASS_MODULE)
    return fake_distribution


def test_plugin_package_entry_point_class_gets_an_instance_per_app(
    fake_class_distribution: Path,
) -> None:
    first, second = create_app(CONFIG), create_app(CONFIG)
    one = first.state.plugin_manager.get_plugin("fake")
    assert type(one).__name__ == "Fake"
    assert second.state.plugin_manager.get_plugin("fake") is not one
    answer = post(TestClient(first), body("keyword.json")).json()["Message"]
    assert answer == "from the fake plugin's instance, 1"
    assert post(TestClient(second), body("keyword.json")).json()["Message"].endswith(", 1")


def test_plugin_package_entry_point_class_also_passed_loads_once(
    fake_class_distribution: Path,
) -> None:
    # A class-based plugin's own tests pass the class (or an instance) while the package
    # is installed: the entry point then finds it registered, not a second plugin "fake".
    module = importlib.import_module("fake_receiver_plugin")
    for given in (module.Fake, module.Fake()):
        manager = create_app(CONFIG, plugins=[given]).state.plugin_manager
        found = [p for _, p in manager.list_name_plugin() if type(p) is module.Fake]
        assert len(found) == 1


def test_plugin_package_configured_module_also_installed_loads_once(
    fake_distribution: Path,
) -> None:
    # Same with the module listed in the configuration's plugins = [...].
    config = Config(channels=CONFIG.channels, plugins=["fake_receiver_plugin"])
    app = create_app(config)
    module = sys.modules["fake_receiver_plugin"]
    manager = app.state.plugin_manager
    assert [p for _, p in manager.list_name_plugin()].count(module) == 1
