"""Fixtures of the webui tests. The modules that need gradio, fastapi or playwright skip themselves without."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The stand-in webui's `modules` package and the extension folder, on sys.path before any test module is
# imported: the test modules import `modules` at the top, and an import sorter may put that line before
# `import webui_host` (which sets the same paths for scripts run outside pytest).
for _path in (Path(__file__).resolve().parent / "webui_stub", Path(__file__).resolve().parents[2]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from scenes import draw_scene  # noqa: E402

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


@pytest.fixture(scope="session")
def describer_placed(models_path, tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL where the extension looks for the default describing captioner (as an offline
    user places it): the sentences style runs a real describer, without a download."""
    import shutil

    import torch
    from tiny_captioners import build_qwen2_vl

    from easy_diffuser.captioner import placed_folder
    from easy_diffuser.options import DEFAULT_DESCRIBER

    torch.manual_seed(0)
    folder = placed_folder(DEFAULT_DESCRIBER, models_path / "easy_diffuser")
    shutil.copytree(build_qwen2_vl(tmp_path_factory.mktemp("qwen") / "qwen2-vl"), folder)
    return folder
