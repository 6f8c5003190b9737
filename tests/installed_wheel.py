"""receiver as a user gets it: the wheel and sdist built from a copy of this checkout, and
the wheel installed into a fresh virtual environment that cannot see the checkout.

Both are built once per test session (whichever test asks first) and shared::

    @pytest.fixture(scope="session")
    def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return installed_wheel(tmp_path_factory)

    def test_something(venv: Path, tmp_path: Path) -> None:
        result = run_in_venv(venv, ["receiver", "--version"], cwd=tmp_path)

The build goes through ``python -m build`` (sdist, then the wheel from that sdist, so
the sdist is proven complete), with build isolation: setuptools comes from the package
index, as it does for anyone installing from the sdist. The wheel's dependencies come
from the package index too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "receiver-webhooks"

# What a developer's checkout holds that is no part of a build.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "state",
    "*.db",
    "*.db-wal",
    "*.db-shm",
)
# Written into the copy to prove they stay out of the archives: a virtual environment and
# a byte-compiled file inside the package.
DECOYS = (".venv/lib/python3/site-packages/decoy.py", "receiver/__pycache__/decoy.cpython.pyc")


@dataclass(frozen=True)
class Built:
    source: Path  # the copy of the checkout the archives were built from
    sdist: Path
    wheel: Path
    seconds: float


_built: Built | None = None
_venv: Path | None = None


def run(
    command: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    """Run ``command``; its stdout, or an AssertionError with everything it printed."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{command} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result.stdout


def source_copy(destination: Path) -> Path:
    """A copy of the checkout as a fresh clone would have it, plus the decoys."""
    shutil.copytree(ROOT, destination, ignore=_NOT_COPIED)
    for decoy in DECOYS:
        (destination / decoy).parent.mkdir(parents=True, exist_ok=True)
        (destination / decoy).write_text("# must not be packaged\n")
    return destination


def built_distributions(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist and wheel of this checkout, built once per session."""
    global _built
    if _built is None:
        base = tmp_path_factory.mktemp("build")
        source = source_copy(base / "source")
        started = time.monotonic()
        run(
            [sys.executable, "-m", "build", "--outdir", str(base / "dist"), str(source)],
            cwd=base,
            env=clean_env(),
        )
        (sdist,) = (base / "dist").glob("*.tar.gz")
        (wheel,) = (base / "dist").glob("*.whl")
        _built = Built(source, sdist, wheel, time.monotonic() - started)
    return _built


def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (no system site packages) with the wheel installed;
    once per session. Run things in it with :func:`run_in_venv`."""
    global _venv
    if _venv is None:
        wheel = built_distributions(tmp_path_factory).wheel
        venv = tmp_path_factory.mktemp("venv") / "venv"
        elsewhere = tmp_path_factory.mktemp("elsewhere")
        run([sys.executable, "-m", "venv", str(venv)], cwd=elsewhere, env=clean_env())
        run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
            cwd=elsewhere,
            env=clean_env(venv),
        )
        _venv = venv
    return _venv


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """This process's environment without anything that points Python at the checkout or
    at another environment; with ``venv`` activated (its bin first on PATH)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
        and not name.startswith("RECEIVER_")
        and not name.startswith("PYTEST_")
    }
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_in_venv(
    venv: Path, command: list[str], *, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``command`` (``receiver ...``, ``python ...``, ``pytest ...``: looked up in the
    venv's bin first) run from ``cwd`` in the venv, with a clean environment."""
    env = clean_env(venv)
    executable = shutil.which(command[0], path=env["PATH"]) or command[0]
    return subprocess.run(
        [executable, *command[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
