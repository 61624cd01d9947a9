"""Shared fixtures: a random-weight tiny CLIP folder for mechanics, the shipped shapes-demo model for semantics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenes import draw_scene

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_VOCABULARY = {
    "colour": ["red", "green", "blue", "yellow", "crimson red", "light blue (sky)"],
    "shape": ["circle", "square", "triangle", "star", "five pointed star shape"],
    "negative_quality": ["blurry", "lowres", "watermark"],
}


def write_model_folder(folder: Path, seed: int = 0) -> Path:
    """A model folder in the hub layout (config + safetensors + vocabulary) with random weights."""
    import torch
    from safetensors.torch import save_file

    from easy_diffuser.kinds.clip_loading import open_clip_module, register_config

    open_clip = open_clip_module()
    (folder / "vocabulary").mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}))
    for category, tags in TINY_VOCABULARY.items():
        (folder / "vocabulary" / f"{category}.txt").write_text("\n".join(tags) + "\n")
    torch.manual_seed(seed)
    model = open_clip.create_model(register_config("test-tiny", TINY_CONFIG))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_model_folder(tmp_path_factory.mktemp("tiny") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_arch(tiny_model_dir) -> str:
    """The tiny config registered with open_clip, usable as ARCH in "ARCH=PATH" specs."""
    from easy_diffuser.kinds.clip_loading import register_config

    return register_config("test-tiny", TINY_CONFIG)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def shapes_engine(tmp_path_factory):
    from easy_diffuser.engine import Engine

    return Engine("shapes-demo", "cpu", cache_dir=tmp_path_factory.mktemp("shapes-cache"))


@pytest.fixture
def shapes_red_circle(tmp_path) -> Path:
    return draw_scene(tmp_path / "red_circle.png", colour="red", shape="circle", background="gray")


@pytest.fixture
def one_thread():
    """Models this small run slower, not faster, on several threads of a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def transparent_strip(tmp_path) -> Path:
    """A non-square RGBA image: coloured, half transparent, with a fully transparent band (a kind's preprocessing
    must composite and fit it as its reference does)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (23, 61, 4), dtype=np.uint8)
    pixels[:, :10, 3] = 0
    path = tmp_path / "strip.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


@pytest.fixture
def blank_images_give_nan(monkeypatch):
    """shapes-demo gives NaN for a one-colour image alone (as a half-precision overflow would for one image)."""
    import torch

    from easy_diffuser.kinds.clip import ClipScorer

    features = ClipScorer.features

    def one_bad_row(self, batch: torch.Tensor) -> torch.Tensor:
        result = features(self, batch).clone()
        result[batch.flatten(2).std(dim=2).amax(dim=1) < 1e-6] = float("nan")
        return result

    monkeypatch.setattr(ClipScorer, "features", one_bad_row)
