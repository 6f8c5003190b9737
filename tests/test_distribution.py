"""Issue 16 parts 1 and 4: receiver installs by its distribution name, ``receiver-webhooks``;
the wheel and the sdist carry the package, ``py.typed``, the first-party plugins and the
sample corpus and nothing else; the installed wheel works from anywhere without the
checkout; ``receiver --version``; ``make run`` names and honours its port."""

from __future__ import annotations

import email
import subprocess
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from installed_wheel import (
    DECOYS,
    DISTRIBUTION,
    ROOT,
    Built,
    built_distributions,
    clean_env,
    installed_wheel,
    run_in_venv,
)

import receiver
from receiver.cli import main

VERSION = receiver.__version__


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return built_distributions(tmp_path_factory)


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_wheel(tmp_path_factory)


def _expected_package_files(built: Built) -> set[str]:
    """Paths (relative to the archive's root) the archives must hold: py.typed, every module
    of receiver.contrib and receiver.samples, and every sample file."""
    package = built.source / "receiver"
    expected = {"receiver/py.typed", "receiver/__init__.py", "receiver/__main__.py"}
    expected |= {f"receiver/contrib/{module.name}" for module in package.glob("contrib/*.py")}
    expected |= {"receiver/samples/__init__.py", "receiver/samples/whispir/reply_sms.json"}
    samples = {
        path.relative_to(built.source).as_posix()
        for path in package.glob("samples/*/*")
        if path.is_file() and path.suffix != ".pyc"
    }
    assert len(samples) > 50, "the sample corpus is missing from the copy built from"
    return expected | samples


def _assert_nothing_else(names: set[str]) -> None:
    assert not [name for name in names if name.startswith(("tests/", ".venv/"))]
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]
    assert not [name for name in names if Path(name).name == "decoy.py"], DECOYS


def test_the_distribution_is_named_receiver_webhooks_and_versioned_by_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert "version" in project["dynamic"]
    assert project["scripts"] == {"receiver": "receiver.cli:main"}
    template = tomllib.loads((ROOT / "examples/plugin_package/pyproject.toml").read_text())
    assert template["project"]["dependencies"] == [DISTRIBUTION]
    readme = (ROOT / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    assert f"pip install {DISTRIBUTION}" in install
    assert f"pip install '{DISTRIBUTION}[test]'" in install
    assert set(project["optional-dependencies"]) == {"test", "dev", "postgresql"}
    assert set(project["optional-dependencies"]["test"]) <= set(
        project["optional-dependencies"]["dev"]
    )


def test_the_wheel_holds_the_package_its_data_and_nothing_else(built: Built) -> None:
    assert built.wheel.name == f"receiver_webhooks-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"receiver_webhooks-{VERSION}.dist-info"
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert _expected_package_files(built) <= names
    assert all(name.startswith(("receiver/", f"{info}/")) for name in names), sorted(names)
    _assert_nothing_else(names)
    assert metadata["Name"] == DISTRIBUTION
    assert metadata["Version"] == VERSION
    assert "receiver = receiver.cli:main" in entry_points


def test_the_sdist_holds_the_package_its_data_and_no_tests(built: Built) -> None:
    assert built.sdist.name == f"receiver_webhooks-{VERSION}.tar.gz"
    root = f"receiver_webhooks-{VERSION}/"
    with tarfile.open(built.sdist) as sdist:
        names = {member.name.removeprefix(root) for member in sdist.getmembers() if member.isfile()}
    assert _expected_package_files(built) <= names
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
    _assert_nothing_else(names)
    assert not [name for name in names if name.startswith(("examples/", "bench/", "docs/"))]


def test_the_installed_wheel_runs_without_the_checkout(
    venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("user")
    version = run_in_venv(venv, ["receiver", "--version"], cwd=elsewhere)
    assert (version.returncode, version.stdout) == (0, f"receiver {VERSION}\n"), version
    for command in (["python", "-m", "receiver", "--help"], ["receiver", "serve", "--help"]):
        result = run_in_venv(venv, command, cwd=elsewhere)
        assert result.returncode == 0, result
        assert "usage: receiver" in result.stdout
    script = (
        "import importlib.metadata, importlib.resources, receiver, receiver.contrib.opt_outs\n"
        "print(receiver.__file__)\n"
        f"print(importlib.metadata.version({DISTRIBUTION!r}))\n"
        "print(importlib.resources.files('receiver').joinpath('py.typed').is_file())\n"
    )
    result = run_in_venv(venv, ["python", "-c", script], cwd=elsewhere)
    assert result.returncode == 0, result
    location, installed_version, typed = result.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(venv.resolve())
    assert not Path(location).resolve().is_relative_to(ROOT)
    assert (installed_version, typed) == (VERSION, "True")
    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config


def test_receiver_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"receiver {VERSION}\n"


def test_make_run_says_and_passes_the_port() -> None:
    """``make -n`` prints the commands without running them (nor installing anything):
    the port comes from RECEIVER_PORT, on the command line or in the environment."""
    env = clean_env()
    for arguments, environment, port in (
        (["RECEIVER_PORT=8123"], {}, 8123),
        ([], {"RECEIVER_PORT": "8124"}, 8124),
        ([], {}, 8000),
    ):
        plan = subprocess.run(
            ["make", "-C", str(ROOT), "-n", "run", *arguments],
            env={**env, **environment},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert f"receiver on http://127.0.0.1:{port} " in plan
        serve = f"receiver serve --config examples/receiver.toml --host 127.0.0.1 --port {port}"
        assert serve in plan
