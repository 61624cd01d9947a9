"""torch and torchvision that do not match (pip mixed two indexes): one line with the fix when a command starts
(tests/ui/test_adapter.py: when the extension loads), not a traceback at the first model. The failure is simulated
with a stand-in torchvision put first on sys.path of a subprocess; the environment itself is never touched."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from easy_diffuser import torch_versions

ROOT = Path(__file__).resolve().parents[1]
NMS = "operator torchvision::nms does not exist"  # what a torchvision built for another torch says at import


@pytest.fixture
def broken_torchvision(tmp_path) -> Path:
    package = tmp_path / "stand-in" / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise RuntimeError({NMS!r})\n")
    return package.parent


def run(python: str, args: list[str], first_on_path: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(first_on_path), str(ROOT)])}
    return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def expected_line() -> str:
    torch, vision = importlib.metadata.version("torch"), importlib.metadata.version("torchvision")
    return f"torchvision {vision} does not work with torch {torch} ({NMS}): reinstall both from one index: pip install "


@pytest.mark.parametrize(
    "args",
    [
        ["image.png", "--model", "shapes-demo"],
        ["calibrate", "folder", "--generator", "shapes"],
        ["refine", "image.png", "--generator", "shapes"],
    ],
)
def test_every_command_says_how_to_fix_a_mismatched_torchvision_in_one_line(broken_torchvision, tmp_path, args):
    done = run(sys.executable, ["-m", "easy_diffuser", *args], broken_torchvision, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {expected_line()}--force-reinstall torch==")
    release = importlib.metadata.version("torch").split("+")[0]
    assert f"torch=={release} torchvision==0.{int(release.split('.')[1]) + 15}." in line


def test_a_matching_torchvision_is_no_message():
    assert torch_versions.mismatch() is None


@pytest.mark.parametrize(
    "torch, torchvision",
    [("2.1.2", "0.16.2"), ("2.5.1", "0.20.1"), ("2.14.1", "0.29.1"), ("2.0.1", None), ("3.0.0", None)],
)
def test_the_torchvision_release_made_with_each_torch_release(torch, torchvision):
    assert torch_versions._torchvision_for(torch) == torchvision


def test_a_cpu_build_is_sent_to_its_own_index_and_pypi_named_as_the_fallback(monkeypatch):
    versions = {"torch": "2.5.1+cpu", "torchvision": "0.19.0"}
    monkeypatch.setattr(torch_versions, "_version", versions.__getitem__)
    line = torch_versions._fix(RuntimeError(NMS))
    assert "pip install --force-reinstall torch==2.5.1 torchvision==0.20.1 --index-url " in line
    assert line.endswith(
        "https://download.pytorch.org/whl/cpu; if that index cannot be reached, the same command "
        "without --index-url (from PyPI)"
    )
