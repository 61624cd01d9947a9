"""What the README tells a user to type stays true: the troubleshooting fixes name what CI installs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def release(version: str) -> tuple[int, int]:
    """ "2.14.1+cpu" -> (2, 14); patch levels are not paired (torch 2.0.1 went with torchvision 0.15.2)."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def torchvision_for(torch_version: str) -> tuple[int, int]:
    """The README's rule: torch 2.N.x goes with torchvision 0.(N+15).x."""
    major, minor = release(torch_version)
    assert major == 2
    return 0, minor + 15


def test_the_torchvision_row_names_the_pair_ci_installs_and_its_rule_holds():
    import torch
    import torchvision

    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if "torchvision::nms" in line)
    torch_pin, vision_pin = re.search(r"pip install torch==(\S+) torchvision==(\S+)`", row).groups()
    assert f"pip install -q torch=={torch_pin} torchvision=={vision_pin}" in (ROOT / ".ci" / "test.sh").read_text()
    assert torchvision_for(torch_pin) == release(vision_pin)
    assert torchvision_for(torch.__version__) == release(torchvision.__version__)  # the rule, on a real pair
