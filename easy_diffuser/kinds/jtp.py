"""The JTP kind: the Joint Tagger Project's PILOT2 (https://huggingface.co/RedRocket/JointTaggerProject, Apache-2.0),
e621 tags for the e621-trained checkpoints (Pony's furry side, NoobAI's e621 half, furry finetunes). A booru tagger
like WD's, so it keeps the WD kind's scorer and policy; only this differs:

  files     `JTP_PILOT2-e3-vit_so400m_patch14_siglip_384.safetensors` and `tags.json` ({tag: index}, 9,083 tags,
            underscores, no categories: every tag is general), in the repository's JTP_PILOT2 folder.
  network   timm vit_so400m_patch14_siglip_384 (a config.json in WD's format beside the weights replaces it: tests,
            later versions), its head replaced by a gated one: Linear(features, 2 x tags), then
            sigmoid(x[:, :tags]) * sigmoid(x[:, tags:]), already a probability (keys head.linear.weight, .bias).
  scores    the reference app's preprocessing: the longest side to 384 (Lanczos, aspect kept), alpha over 0.5 grey
            (from the picture before images.py flattened it on white), [-1, 1], centred on a grey 384 x 384.
  policy    one threshold, 0.2 by default (the app's); no character threshold, its vocabulary has no categories.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ModelError, ModelFileError, one_line
from ..families import Preset
from ..images import with_alpha
from ..options import ExtractOptions
from ..tag_text import prompt_syntax
from ..weights import content_hash, read_state_dict
from .base import ModelInfo, folder_defaults
from .timm_network import build_network, read_config, read_json
from .wd_tagger import MAX_TAGS_BYTES, TAGGER_DEFAULTS, LoadedTagger, TagTable, WdTaggerKind, fetch

if TYPE_CHECKING:
    from ..checkpoint_family import Detected

REPOSITORY = "RedRocket/JointTaggerProject"
WEIGHTS, TAGS = "JTP_PILOT2-e3-vit_so400m_patch14_siglip_384.safetensors", "tags.json"
REPOSITORY_FILES = tuple(f"JTP_PILOT2/{name}" for name in (WEIGHTS, TAGS))
CONFIG = "config.json"  # optional: the network's config in WD's format (else SO400M)
NEEDS = f"a JTP tagger needs {WEIGHTS} and {TAGS} in its folder"
SO400M: dict[str, Any] = {  # the network JTP PILOT2 was trained from, as a WD-format config.json would give it
    "architecture": "vit_so400m_patch14_siglip_384",
    "num_classes": 9083,
    "model_args": {},
    "pretrained_cfg": {"input_size": [3, 384, 384], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}
# The reference app's recommended threshold ("A threshold of 0.2 is recommended").
JTP_DEFAULTS: dict[str, Any] = {**TAGGER_DEFAULTS, "general_threshold": 0.2}
JTP_MODELS = (
    ModelInfo(
        REPOSITORY,
        "e621 checkpoints (Pony's furry side, NoobAI's e621 half, furry finetunes), e621 tags: JTP PILOT2, "
        "a SigLIP SO400M tagger (about 1.8 GB)",
        JTP_DEFAULTS,
    ),
)
GREY = 0.5  # what transparency is composited over, and the padding (0 in [-1, 1])


class GatedHead(torch.nn.Module):
    """JTP's head: each tag's sigmoid gated by a second one; the product is the tag's probability."""

    def __init__(self, features: int, tags: int) -> None:
        super().__init__()
        self.tags = tags
        self.linear = torch.nn.Linear(features, 2 * tags)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        outputs = self.linear(features)
        return torch.sigmoid(outputs[:, : self.tags]) * torch.sigmoid(outputs[:, self.tags :])


class LoadedJtp(LoadedTagger):
    def activated(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs  # the gated head gives probabilities already


class JtpKind(WdTaggerKind):
    name = "jtp-tagger"
    models: ClassVar[Sequence[ModelInfo]] = JTP_MODELS
    controls = frozenset({"general_threshold", "general_mcut", "family"})  # one category: no character threshold

    def preset(self, options: ExtractOptions, target: "Detected | None") -> Preset:
        """The family's preset; one whose card names a tag for its e621-style data (Pony's source_furry) leads
        these e621 tags with it."""
        preset = super().preset(options, target)
        family = preset.family
        if family is None or not family.furry_source:
            return preset
        prefix = ", ".join(filter(None, (family.prefix, family.furry_source)))
        return replace(preset, family=replace(family, prefix=prefix))

    def claims(self, spec: str) -> bool:
        """A folder holding JTP's weights, or the weights file itself."""
        path = Path(spec).expanduser()
        folder = path if path.is_dir() else path.parent if path.is_file() else None
        return folder is not None and (folder / WEIGHTS).is_file()

    def load(self, spec: str, cache_dir: Path) -> LoadedJtp:
        info = self.info(spec)
        if info is not None:
            return load_folder(fetch(spec, cache_dir, REPOSITORY_FILES), spec, info.defaults)
        path = Path(spec).expanduser()
        return load_folder(path if path.is_dir() else path.parent)


def load_folder(folder: Path, model_id: str | None = None, defaults: dict[str, Any] | None = None) -> LoadedJtp:
    """A JTP folder; every fault is one ModelFileError naming the file and what is wrong."""
    names = read_tags(folder / TAGS)
    config = read_config(folder / CONFIG, NEEDS) if (folder / CONFIG).exists() else SO400M
    model = network(config, len(names), folder / CONFIG)
    weights = folder / WEIGHTS
    _load_weights(model, weights, len(names))
    size = int(config["pretrained_cfg"]["input_size"][-1])
    cache_key = f"{folder.name}-{content_hash(weights)}"
    return LoadedJtp(
        model_id or cache_key,
        model.eval(),
        FitOnGrey(size),
        TagTable(names, ("general",) * len(names)),
        size,
        {**JTP_DEFAULTS, **(defaults or {}), **folder_defaults(folder / "easy_diffuser.json")},
        cache_key,
    )


def network(config: dict[str, Any], tags: int, config_path: Path) -> torch.nn.Module:
    """JTP's network without weights: the ViT config.json (or SO400M) describes, its head the gated one."""
    import timm

    if not timm.is_model(config["architecture"]):  # SigLIP came to timm after 0.9.5, sd-webui-controlnet's pin
        raise ModelError(
            f"JTP PILOT2's network {config['architecture']} is not in timm {timm.__version__}, which this Python "
            "has; update timm (pip install -U timm) to use it"
        )
    model = build_network({**config, "num_classes": tags}, config_path)
    model.head = GatedHead(model.head.in_features, tags)
    return model


def _load_weights(model: torch.nn.Module, weights: Path, tags: int) -> None:
    if not weights.is_file():
        raise ModelFileError(f"{weights}: missing; {NEEDS}")
    try:
        state = read_state_dict(weights)
    except Exception as error:  # a damaged safetensors header is the file's fault
        raise ModelFileError(f"{weights}: not a readable safetensors file ({one_line(error, 160)})") from None
    head = state.get("head.linear.weight")
    if isinstance(head, torch.Tensor) and head.ndim == 2 and head.shape[0] != 2 * tags:
        raise ModelFileError(
            f"{weights}: its gated head gives {head.shape[0]} outputs, but {TAGS} has {tags} tags (twice that: "
            "a value and a gate each); the files are from different models: take both from one folder"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as error:
        raise ModelFileError(
            f"{weights}: the weights don't fit JTP's network ({type(error).__name__}: {one_line(error, 200)})"
        ) from None


def read_tags(path: Path) -> tuple[str, ...]:
    """tags.json: {tag: index}, the indices 0 to tags - 1 each once; the names in the head's order."""
    data = read_json(path, MAX_TAGS_BYTES, NEEDS)
    if not isinstance(data, dict) or not data:
        raise ModelFileError(f"{path}: must be a JSON object of tag: index, as JTP's {TAGS} is")
    names: list[str | None] = [None] * len(data)
    for name, index in data.items():
        if type(index) is not int or not 0 <= index < len(names) or names[index] is not None:
            raise ModelFileError(f"{path}: the indices must be 0 to {len(names) - 1}, each once ({name[:60]!r})")
        refused = prompt_syntax(name) if name.strip() else f"the tag {name!r} is empty"
        if refused:
            raise ModelFileError(f"{path}: {refused}; a tag's name must be plain text in a prompt")
        names[index] = name
    return tuple(names)  # type: ignore[arg-type]  (every index filled: len(data) distinct ones)


class FitOnGrey:
    """JTP's preprocessing: the longest side to `size` (Lanczos, aspect kept; PIL weighs RGBA's colours by their
    alpha), transparency over 0.5 grey, [-1, 1], centred on a grey square. A picklable class (Ray sends it); it
    returns a tensor made from numpy, so the pipeline's decode workers start no torch thread team."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        picture = with_alpha(image)
        width, height = picture.size
        scale = min(self.size / width, self.size / height)
        if scale != 1.0:
            shape = (max(1, min(round(width * scale), self.size)), max(1, min(round(height * scale), self.size)))
            picture = picture.resize(shape, Image.Resampling.LANCZOS)
        pixels = np.asarray(picture, dtype=np.uint8).astype(np.float32) / np.float32(255)
        if pixels.shape[2] == 4:
            alpha = pixels[:, :, 3:]
            pixels = pixels[:, :, :3] * alpha + (1 - alpha) * np.float32(GREY)
        pixels = (pixels - np.float32(0.5)) / np.float32(0.5)
        square = np.zeros((self.size, self.size, 3), dtype=np.float32)  # grey in [-1, 1]
        top, left = (self.size - pixels.shape[0]) // 2, (self.size - pixels.shape[1]) // 2
        square[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        return torch.from_numpy(square.transpose(2, 0, 1).copy())

    def __repr__(self) -> str:
        return f"FitOnGrey(size={self.size})"
