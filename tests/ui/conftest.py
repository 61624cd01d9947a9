"""Fixtures of the webui tests. The modules that need gradio, fastapi or playwright skip themselves without."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenes import draw_scene

SHAPES_MODEL = "shapes-demo"  # the tiny CLIP shipped in the package: real semantics, no download


@pytest.fixture(scope="session")
def red_circle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    return draw_scene(folder / "red_circle.png", colour="red", shape="circle", background="gray", size="large")


@pytest.fixture(scope="session")
def models_path(tmp_path_factory) -> Path:
    """The webui's models/ folder; the extension keeps its cache in models/easy_diffuser/."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def shapes_model() -> str:
    return SHAPES_MODEL
