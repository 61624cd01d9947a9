"""Shapes-world test images, shared by the core tests and the webui tests (tests/ui/ runs in other venvs).

pytest puts tests/ on sys.path when it loads tests/conftest.py, so both suites `from scenes import draw_scene`.
"""

from __future__ import annotations

import random
from pathlib import Path


def draw_scene(path: Path, pixels: int = 256, **fixed) -> Path:
    """Save the seed-0 shapes-world scene with the given colour, shape, background or size; return `path`."""
    from easy_diffuser.shapes.world import draw, random_scene

    draw(random_scene(random.Random(0), **fixed), pixels).save(path)
    return path
