"""Where plugins come from, in which order, and what a broken one does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from receiver import Channel, Config, ConfigError, Event, create_app, hookimpl
from receiver.plugins import make_plugin_manager

EXAMPLES = Path(__file__).parent.parent / "examples"
CHANNELS = {"sms": Channel(provider="onepoint", auth="none")}


class Given:
    @hookimpl
    def on_stop(self, event: object) -> None:
        return None


@pytest.fixture(autouse=True)
def no_installed_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_plugins_load_in_documented_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configured_plugin.py").write_text(
        "from receiver import hookimpl\n\n@hookimpl\ndef on_stop(event):\n    pass\n"
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "from_folder.py").write_text(
        "from receiver import hookimpl\n\n@hookimpl\ndef on_help(event):\n    pass\n"
    )
    (folder / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    given = Given()
    app = create_app(
        Config(channels=CHANNELS, plugins=["configured_plugin"], plugins_dir=str(folder)),
        plugins=[given],
    )
    names = [name for name, _ in app.state.plugin_manager.list_name_plugin()]
    assert names[0] == "receiver.builtin"
    assert names[2:] == ["configured_plugin", "from_folder"]
    assert app.state.plugin_manager.get_plugin(names[1]) is given


def test_plugin_that_fails_to_import_stops_start_up_with_its_name(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(ConfigError) as caught:
        create_app(Config(channels=CHANNELS, plugins_dir=str(folder)))
    message = str(caught.value)
    assert "broken.py" in message
    assert "ModuleNotFoundError" in message and "no_such_module_anywhere" in message


def test_configured_module_that_does_not_exist_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("plugin 'not.a.real.module' failed to load")):
        create_app(Config(channels=CHANNELS, plugins=["not.a.real.module"]))


def test_serve_refuses_to_start_with_a_broken_plugin(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken.py").write_text("def on_stop(:\n")
    config = tmp_path / "receiver.toml"
    config.write_text('[channels.sms]\nprovider = "onepoint"\nauth = "none"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "serve",
            "--config",
            str(config),
            "--plugins-dir",
            str(folder),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("receiver: configuration error: plugin ")
    assert "broken.py" in last and "SyntaxError" in last


def test_example_config_is_valid_with_its_keys_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("WHISPIR_KEY", "ONEPOINT_SECRET", "DIY_KEY"):
        monkeypatch.setenv(name, f"test-{name.lower()}")
    from receiver.config import load_config

    config = load_config(EXAMPLES / "receiver.toml")
    app = create_app(config)
    assert set(app.state.endpoint.channels) == {"whispir", "whispir-query", "sms", "diy"}
    assert config.channels["whispir"].keys == ["test-whispir_key"]
    assert config.channels["sms"].options["credentials"] == {"demo-app": "test-onepoint_secret"}


class _Named:
    name = "crm-sync"

    @hookimpl
    def on_event(self, event: Event) -> None:
        pass


class _Plain:
    @hookimpl
    def on_event(self, event: Event) -> None:
        pass


def test_plugin_objects_have_stable_readable_names() -> None:
    """A plugin object's name is the same in every process (its ``name``, its class's
    qualified name, or the name given in a pair), never pluggy's ``id()``: retries after a
    restart look the failed plugin up by it (found by the attack on issue 14)."""
    import types

    module = types.ModuleType("shop.hooks")
    manager = make_plugin_manager([_Named(), _Plain(), ("billing", _Plain()), module])
    names = [name for name, _ in manager.list_name_plugin()]
    assert names[1:5] == ["crm-sync", f"{__name__}._Plain", "billing", "shop.hooks"]
    again = make_plugin_manager([_Named(), _Plain()])
    assert [n for n, _ in again.list_name_plugin()][1:3] == names[1:3]


def test_plugin_two_under_one_name_is_a_config_error() -> None:
    """Two instances of one class (or an object named like another plugin) would share a
    name a retry finds the failed one by: refused, saying how to name them (an order-based
    ``#2`` ran the wrong instance after a reorder: found by the second attack)."""
    with pytest.raises(ConfigError, match=r"two plugins are named '.*_Plain'.*pairs"):
        make_plugin_manager([_Plain(), _Plain()])
    with pytest.raises(ConfigError, match="two plugins are named 'crm-sync'"):
        make_plugin_manager([_Named(), ("crm-sync", _Plain())])
    plain = _Plain()
    assert len(make_plugin_manager([plain, plain]).list_name_plugin()) >= 2  # once


class _Misspelled:
    @hookimpl
    def on_mesage(self, event: Event) -> None:
        pass


class _Optional:
    @hookimpl(optionalhook=True)
    def on_something_later(self, event: Event) -> None:
        pass


def test_plugin_unknown_hook_is_refused_naming_the_closest() -> None:
    """Issue 15: ``def on_mesage`` loaded and was never called; now start-up refuses it,
    naming the plugin, the hook and the closest known hook."""
    with pytest.raises(ConfigError) as info:
        create_app(Config(), plugins=[("typo", _Misspelled())])
    message = str(info.value)
    assert "plugin typo: 'on_mesage' is not a receiver hook" in message
    assert "did you mean 'on_message'?" in message
    create_app(Config(), plugins=[_Optional()])  # optionalhook=True: allowed


def test_plugin_unknown_hook_fails_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from receiver.cli import main

    monkeypatch.setenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", "1")
    toml = _vip_site(tmp_path, monkeypatch, "on_keywrod")
    assert main(["check-config", "--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "plugin vip: 'on_keywrod' is not a receiver hook; did you mean 'on_keyword'?" in err


def test_plugin_settings_table_for_no_loaded_plugin_is_named_in_a_warning() -> None:
    """Issue 15: ``[settings.vipp]`` for no loaded plugin was silently ignored."""
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        create_app(
            Config(settings={"vipp": {"numbers": []}, "crm-sync": {}}),
            plugins=[_Named()],
        )
    warned = [line for line in logs if line["event"].startswith("settings table for no")]
    assert [(line["table"], line["closest_plugin"]) for line in warned] == [("settings.vipp", None)]


def _installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed distribution with the entry point ``audit`` (group ``receiver``)."""
    site = tmp_path / "site"
    dist = site / "audit_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: audit-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[receiver]\naudit = audit_plugin_mod\n")
    (site / "audit_plugin_mod.py").write_text(
        "from receiver import hookimpl\n@hookimpl\ndef on_event(event):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("RECEIVER_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def test_plugin_autoload_is_per_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15 part 5: an installed plugin loaded into every app in the process; now one
    app can say autoload=False (or autoload_plugins = false) while another loads it."""
    _installed_plugin(tmp_path, monkeypatch)

    def names(app: object) -> list[str]:
        manager = app.state.plugin_manager  # type: ignore[attr-defined]
        return [name for name, plugin in manager.list_name_plugin() if plugin]

    assert "audit" in names(create_app(Config()))
    assert "audit" not in names(create_app(Config(), autoload=False))
    assert "audit" not in names(create_app(Config(autoload_plugins=False)))
    assert "audit" in names(create_app(Config(autoload_plugins=False), autoload=True))


def test_plugin_disabled_by_name_wherever_it_comes_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``disabled_plugins`` blocks a plugin by name, as pytest's ``-p no:name``: an
    installed one, a passed one, a plugins_dir file."""
    _installed_plugin(tmp_path, monkeypatch)
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "vip.py").write_text(
        "from receiver import hookimpl\n@hookimpl\ndef on_event(event):\n    pass\n"
    )
    config = Config(plugins_dir=str(folder), disabled_plugins=["audit", "vip", "crm-sync"])
    app = create_app(config, plugins=[_Named(), ("kept", _Plain())])
    manager = app.state.plugin_manager
    loaded = [name for name, plugin in manager.list_name_plugin() if plugin is not None]
    assert "kept" in loaded
    assert not {"audit", "vip", "crm-sync"} & set(loaded)


def test_plugin_command_says_where_each_plugin_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15 part 1: ``receiver plugins`` names each plugin's source: an installed
    distribution with its version, a dotted module, a plugins_dir file, receiver itself."""
    from receiver.cli import main

    _installed_plugin(tmp_path, monkeypatch)
    toml = _vip_site(tmp_path, monkeypatch, "on_stop", 'plugins = ["json"]\n')
    folder = tmp_path / "plugins"
    assert main(["plugins", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "audit: on_event  [entry point of audit-plugin 1.0]" in out
    assert f"vip: on_stop  [plugins_dir ({folder / 'vip.py'})]" in out
    assert "json: (no hooks)  [plugins (module)]" in out
    assert "receiver.builtin: register_providers  [receiver]" in out


def _vip_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str, extra: str = "") -> Path:
    """A configuration whose plugins_dir holds ``vip.py`` implementing ``hook``; the CLI's
    logging set-up kept local (it configures process-wide structlog)."""
    import receiver.logs

    monkeypatch.setattr(receiver.logs, "configure_logging", lambda *args, **kwargs: None)
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "vip.py").write_text(
        f"from receiver import hookimpl\n\n@hookimpl\ndef {hook}(event):\n    pass\n"
    )
    toml = tmp_path / "receiver.toml"
    toml.write_text(f"{extra}plugins_dir = {str(folder)!r}\n")
    return toml
