"""The PixAI tagger kind: PixAI Tagger v0.9 (https://huggingface.co/pixai-labs/pixai-tagger-v0.9, Apache-2.0), booru
tags with the characters of a 2025 Danbooru snapshot. A WD tagger in all but its files and preprocessing, so it
keeps the WD kind's scorer and policy (booru order, thresholds or MCut, family presets); only this differs:

  files     `model_v0.9.pth`, a state dict read with torch.load(weights_only=True) (weights.read_state_dict): `0.*`
            the encoder, `1.head.0.weight` [tags, 1024] and `1.head.0.bias`; `tags_v0.9_13k.json`
            ({"tag_map": {name: index}, "tag_split": {"gen_tag_count", "character_tag_count"}}: the indices below
            gen_tag_count are general tags, the rest characters); `char_ip_map.json` ({character: [copyright]}).
            The hub repository is gated: a name with no files says how to get them.
  network   WD EVA02-L v3's encoder (timm eva02_large_patch14_448, the config of SmilingWolf's repository, shipped
            here as WD_EVA02_LARGE; a config.json in WD's format beside the weights replaces it), classifier reset
            to 0 outputs, then Linear(features, tags); a sigmoid.
  copyright not predicted: each follows from the characters char_ip_map.json gives it. Its probability is that of
            its likeliest character, so it passes the character threshold exactly when one of them does.
  scores    PixAI's preprocessing: alpha onto white (images.py), a plain resize to 448 x 448 (bilinear, no
            padding), RGB, [-1, 1]
  defaults  the card's: general 0.30, character 0.75 (where the options are left at their defaults)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..errors import ModelError, ModelFileError, one_line
from ..tag_text import prompt_syntax
from ..weights import content_hash, read_state_dict
from .base import ModelInfo, folder_defaults
from .timm_network import build_network, read_capped, read_config
from .wd_tagger import MAX_TAGS_BYTES, TAGGER_DEFAULTS, LoadedTagger, TagTable, WdTaggerKind, fetch

REPOSITORY = "pixai-labs/pixai-tagger-v0.9"
PIXAI_FILES = ("model_v0.9.pth", "tags_v0.9_13k.json", "char_ip_map.json")
WEIGHTS, TAGS, CHARACTER_MAP = PIXAI_FILES
CONFIG = "config.json"  # optional: the encoder's config in WD's format (else WD_EVA02_LARGE)
NEEDS = f"a PixAI tagger needs {', '.join(PIXAI_FILES)} in its folder"
# SmilingWolf/wd-eva02-large-tagger-v3's config.json, the encoder PixAI trained its head on (frozen).
WD_EVA02_LARGE: dict[str, Any] = {
    "architecture": "eva02_large_patch14_448",
    "num_classes": 10861,
    "model_args": {"img_size": 448},
    "pretrained_cfg": {
        "input_size": [3, 448, 448],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}
# The card's recommended defaults (Quickstart: threshold_general 0.30, threshold_character 0.75).
PIXAI_DEFAULTS: dict[str, Any] = {**TAGGER_DEFAULTS, "general_threshold": 0.30, "character_threshold": 0.75}
PIXAI_MODELS = (
    ModelInfo(
        REPOSITORY,
        "anime checkpoints, booru tags with recent characters (Danbooru 2025): PixAI v0.9, an EVA02-L tagger "
        "(about 1.3 GB; gated: log in and accept its terms on the hub)",
        PIXAI_DEFAULTS,
    ),
)


class WithCopyrights(torch.nn.Module):
    """The tagger's logits, then one per copyright: the largest of its characters' (a sigmoid keeps the order, so
    its probability is its likeliest character's)."""

    def __init__(self, tagger: torch.nn.Module, pairs: list[tuple[int, int]], copyrights: int) -> None:
        super().__init__()
        self.tagger = tagger
        self.copyrights = copyrights
        characters, owners = zip(*pairs) if pairs else ((), ())
        self.register_buffer("characters", torch.tensor(characters, dtype=torch.long), persistent=False)
        self.register_buffer("owners", torch.tensor(owners, dtype=torch.long), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.tagger(pixels)
        floor = torch.finfo(logits.dtype).min
        copyrights = logits.new_full((logits.shape[0], self.copyrights), floor)
        index = self.owners.expand(logits.shape[0], -1)
        copyrights = copyrights.scatter_reduce(1, index, logits[:, self.characters], "amax")
        return torch.cat([logits, copyrights], dim=1)


class TaggingHead(torch.nn.Module):
    """PixAI's head, named as its state dict names it (`1.head.0.weight`)."""

    def __init__(self, features: int, tags: int) -> None:
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Linear(features, tags))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


class PixaiKind(WdTaggerKind):
    name = "pixai-tagger"
    models: ClassVar[Sequence[ModelInfo]] = PIXAI_MODELS

    def claims(self, spec: str) -> bool:
        """A folder holding PixAI's tag file or weights, or one of its files."""
        path = Path(spec).expanduser()
        folder = path if path.is_dir() else path.parent if path.is_file() else None
        return folder is not None and any((folder / name).is_file() for name in (TAGS, WEIGHTS))

    def load(self, spec: str, cache_dir: Path) -> LoadedTagger:
        info = self.info(spec)
        if info is not None:
            return load_folder(fetch(spec, cache_dir, PIXAI_FILES, gated=True), spec, info.defaults)
        path = Path(spec).expanduser()
        return load_folder(path if path.is_dir() else path.parent)


def load_folder(folder: Path, model_id: str | None = None, defaults: dict[str, Any] | None = None) -> LoadedTagger:
    """A PixAI folder; every fault is one ModelFileError naming the file and what is wrong."""
    names, general = read_tags(folder / TAGS)
    copyrights, pairs = read_character_map(folder / CHARACTER_MAP, names, general)
    config = read_config(folder / CONFIG, NEEDS) if (folder / CONFIG).exists() else WD_EVA02_LARGE
    tagger = network(config, len(names), folder / CONFIG)
    weights = folder / WEIGHTS
    _load_weights(tagger, weights, len(names), folder / TAGS)
    tags = TagTable(
        (*names, *copyrights),
        ("general",) * general + ("character",) * (len(names) - general) + ("copyright",) * len(copyrights),
    )
    cache_key = f"{folder.name}-{content_hash(weights)}"
    return LoadedTagger(
        model_id or cache_key,
        WithCopyrights(tagger, pairs, len(copyrights)).eval(),
        pixai_transform(config["pretrained_cfg"]),
        tags,
        int(config["pretrained_cfg"]["input_size"][-1]),
        {**PIXAI_DEFAULTS, **(defaults or {}), **folder_defaults(folder / "easy_diffuser.json")},
        cache_key,
    )


def network(config: dict[str, Any], tags: int, config_path: Path) -> torch.nn.Module:
    """PixAI's network without weights, keyed as model_v0.9.pth: the encoder (`0`), its classifier reset to 0
    outputs, then the head (`1.head.0`)."""
    encoder = build_network({**config, "num_classes": 0}, config_path)
    return torch.nn.Sequential(encoder, TaggingHead(encoder.num_features, tags))


def _load_weights(tagger: torch.nn.Module, weights: Path, tags: int, tag_file: Path) -> None:
    """model_v0.9.pth into the network, strictly; nothing in the file runs (torch.load(weights_only=True))."""
    if not weights.is_file():
        raise ModelFileError(f"{weights}: missing; {NEEDS}")
    try:
        state = read_state_dict(weights)
    except ModelError as error:  # a pickle that would run code, a damaged archive: the file's fault
        raise ModelFileError(str(error)) from None
    head = state.get("1.head.0.weight")
    if isinstance(head, torch.Tensor) and head.ndim == 2 and head.shape[0] != tags:
        raise ModelFileError(
            f"{weights}: its head gives {head.shape[0]} outputs, but {tag_file.name} has {tags} tags; "
            "the files are from different models: take all three from one repository"
        )
    try:
        tagger.load_state_dict(state, strict=True)
    except Exception as error:
        raise ModelFileError(
            f"{weights}: the weights don't fit PixAI's network (the EVA02 encoder of "
            f"{CONFIG if (weights.parent / CONFIG).exists() else 'WD EVA02-L'}, then a head of {tags} tags) "
            f"({type(error).__name__}: {one_line(error, 200)})"
        ) from None


def read_tags(path: Path) -> tuple[tuple[str, ...], int]:
    """tags_v0.9_13k.json: (every tag's name in the head's order, how many of the first are general tags)."""
    data = _read_json(path)
    tag_map, split = data.get("tag_map"), data.get("tag_split")
    if not isinstance(tag_map, dict) or not tag_map or not isinstance(split, dict):
        raise ModelFileError(f"{path}: must hold tag_map (name: index) and tag_split, as PixAI's {TAGS} does")
    general, characters = split.get("gen_tag_count"), split.get("character_tag_count")
    if not all(type(count) is int and count >= 0 for count in (general, characters)):
        raise ModelFileError(f"{path}: tag_split's gen_tag_count and character_tag_count must be whole numbers")
    if general + characters != len(tag_map):
        raise ModelFileError(
            f"{path}: tag_split counts {general} + {characters} tags, but tag_map holds {len(tag_map)}"
        )
    names: list[str | None] = [None] * len(tag_map)
    for name, index in tag_map.items():
        if type(index) is not int or not 0 <= index < len(names) or names[index] is not None:
            raise ModelFileError(f"{path}: tag_map's indices must be 0 to {len(names) - 1}, each once ({name!r})")
        _check_name(name, path)
        names[index] = name
    return tuple(names), general  # type: ignore[arg-type]  (every index filled: len(tag_map) distinct ones)


def read_character_map(path: Path, names: Sequence[str], general: int) -> tuple[tuple[str, ...], list[tuple[int, int]]]:
    """char_ip_map.json: the copyrights (in order of first mention) and (character index, copyright index) pairs.
    A character the model doesn't know is skipped; a copyright named like a tag the model predicts is that tag's
    (Danbooru's names are unique across categories, so this happens only in a damaged file) and skipped too."""
    data = _read_json(path)
    index = {name: position for position, name in enumerate(names) if position >= general}
    known = set(names)
    copyrights: dict[str, int] = {}
    pairs = []
    for character, owners in data.items():
        if not isinstance(owners, list) or not all(isinstance(owner, str) for owner in owners):
            raise ModelFileError(f"{path}: {character[:60]!r} must map to a list of copyright names")
        if character not in index:
            continue
        for owner in owners:
            if owner in known:
                continue
            _check_name(owner, path)
            pairs.append((index[character], copyrights.setdefault(owner, len(copyrights))))
    return tuple(copyrights), pairs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_capped(path, MAX_TAGS_BYTES, NEEDS), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({one_line(error, 120)})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: must be a JSON object, as PixAI's {path.name} is")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_name(name: Any, path: Path) -> None:
    refused = prompt_syntax(name) if isinstance(name, str) and name.strip() else f"the tag {name!r:.60} is empty"
    if refused:
        raise ModelFileError(f"{path}: {refused}; a tag's name must be plain text in a prompt")


def pixai_transform(pretrained_cfg: dict[str, Any]) -> Callable:
    """PixAI's preprocessing (its handler's): a plain resize to the input size, bilinear as torchvision's Resize
    does it, no padding, RGB, then ToTensor and Normalize ([-1, 1]). A torchvision Compose: the pipeline runs
    its PIL step in decode workers."""
    from torchvision import transforms as T

    _, height, width = pretrained_cfg["input_size"]
    return T.Compose(
        [
            T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            T.Normalize(pretrained_cfg["mean"], pretrained_cfg["std"]),
        ]
    )
