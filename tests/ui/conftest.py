"""Fixtures of the webui tests. The modules that need gradio, fastapi or playwright skip themselves without."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

SHAPES_MODEL = "shapes-demo"  # the tiny CLIP shipped in the package: real semantics, no download


def draw_scene(path: Path, pixels: int = 256, **fixed) -> Path:
    from easy_diffuser.shapes.world import draw, random_scene

    draw(random_scene(random.Random(0), **fixed), pixels).save(path)
    return path


@pytest.fixture(scope="session")
def red_circle(tmp_path_factory) -> Path:
    return draw_scene(tmp_path_factory.mktemp("images") / "red_circle.png", colour="red", shape="circle", background="gray", size="large")


@pytest.fixture(scope="session")
def models_path(tmp_path_factory) -> Path:
    """The webui's models/ folder; the extension keeps its cache in models/easy_diffuser/."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def shapes_model() -> str:
    return SHAPES_MODEL
