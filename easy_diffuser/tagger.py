"""WD taggers (SmilingWolf's WD v3) in the webui's own process, through timm: no onnxruntime, no TensorFlow.

A tagger spec is one of:
  * a registry name (models.REGISTRY, `tagger=True`): "SmilingWolf/wd-vit-tagger-v3", ... fetched on first use
    into the model folder, only its three files;
  * a local folder in the hub's layout: `model.safetensors` (timm's state dict, head included), `config.json`
    (timm's `architecture`, `num_classes`, `model_args`, `pretrained_cfg`) and `selected_tags.csv`
    (`tag_id,name,category,count`; category 9 rating, 0 general, 4 character, 3 copyright).

The network is built as timm's own hub loader builds it, from config.json's architecture and model_args, on
every timm from 0.9.5 (sd-webui-controlnet's pin) to the newest: we pass model_args ourselves (timm reads
them from a hub config only from 0.9.11), resolve a named act_layer to its class (ViT takes a name only from
0.9.10) and give SwinV2 the activation it asked for (before 1.0.3 it ignores act_layer and keeps exact GELU).
The weights are read from safetensors and loaded strictly: timm's pretrained loader would drop a classifier
whose size differs from its default config. ONNX, pickle and TensorFlow files are refused, never run.

Preprocessing is the reference one (SmilingWolf's demo, kohya, wdv3-timm): alpha onto white (images.py),
pad to a centred white square, bicubic to the input size, [-1, 1], BGR; the logits go through a sigmoid.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from .booru import prompt_syntax
from .files import FileTooLarge, NotARegularFile, read_regular_file, safe_name
from .model_args import MAX_CLASSES, check_model_args, number, quoted, whole
from .models import (
    DATA_DIR,
    REGISTRY,
    ModelError,
    ModelFileError,
    OnDevice,
    content_hash,
    cpu_matmuls,
    folder_defaults,
    hub_offline,
    one_line,
    register_kind,
    require_reachable,
)

TAGGER_FILES = ("model.safetensors", "config.json", "selected_tags.csv")
WEIGHTS, CONFIG, TAGS = TAGGER_FILES
CSV_HEADER = ["tag_id", "name", "category", "count"]
# selected_tags.csv's categories (Danbooru's numbers) as the vocabulary names them.
CATEGORIES = {9: "rating", 0: "general", 4: "character", 3: "copyright", 1: "artist", 5: "meta"}
# What a hub repository may hold instead of safetensors, and why it is not read.
REFUSED = {
    ".onnx": "ONNX models are run by onnxruntime, which this extension does without",
    ".pt": "pickle files can run code when read",
    ".pth": "pickle files can run code when read",
    ".bin": "pickle files can run code when read",
    ".ckpt": "pickle files can run code when read",
    ".h5": "TensorFlow models are not run",
    ".pb": "TensorFlow models are not run",
    ".keras": "TensorFlow models are not run",
}
MAX_CONFIG_BYTES = 1 << 20
MAX_TAGS_BYTES = 64 << 20  # WD's list of 10,861 tags is 300 KB
CPU_CHUNK = 2  # images per forward pass on a CPU (LoadedTagger.probabilities)
# The longest side an image is padded at: a 1 x 1,000,000 strip would otherwise become a 3 TB square.
# Larger images are first shrunk to it (bicubic), then padded and resized as the reference does.
PAD_LIMIT = 4096
_CATEGORY = re.compile(r"[0-9]{1,3}")  # not str.isdigit: "²" is a digit int() can't read
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class TagTable:
    """selected_tags.csv: one row per output of the model's head, in order."""

    names: tuple[str, ...]  # as the CSV writes them: "long_hair", "saber_(fate)"
    categories: tuple[str, ...]  # CATEGORIES' names


@dataclass
class LoadedTagger(OnDevice):
    """A timm tagger with everything needed to use it (the counterpart of models.LoadedModel)."""

    model_id: str
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> CxHxW tensor, a torchvision Compose ending in ToTensor, Normalize
    tags: TagTable
    image_size: int
    defaults: dict[str, Any]
    cache_key: str  # model_id plus a hash of the weights: new weights, new calibration results
    vocabulary_dir: None = None  # a tagger's vocabulary is its CSV

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "LoadedTagger":
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [N, 3, H, W] -> the probability of every tag [N, tags], float32 on the CPU."""
        device = self.device
        # A CPU gains nothing from a large batch and loses its caches to it (a ViT-B at 448 px: 0.53 s an image
        # in pairs, 0.87 in sixteens); a GPU takes the batch whole.
        chunks = batch.split(CPU_CHUNK) if device.type == "cpu" else (batch,)
        with cpu_matmuls(device):
            logits = torch.cat([self.model(chunk.to(device, self.dtype)) for chunk in chunks])
        return torch.sigmoid(logits.float()).cpu()


def is_tagger(spec: str) -> bool:
    """Whether a model spec names a tagger: a registry tagger, a tagger folder, or a file a tagger ships."""
    info = REGISTRY.get(spec)
    if info is not None:
        return info.tagger
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".onnx", ".h5", ".pb", ".keras"):
        return True
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    return folder is not None and _is_tagger_folder(folder)


def _is_tagger_folder(folder: Path) -> bool:
    """A folder in the hub's tagger layout, complete or not (so that what is missing gets named)."""
    if (folder / "open_clip_config.json").exists():
        return False
    return any((folder / name).exists() for name in (TAGS, CONFIG, "model.onnx", "saved_model.pb"))


def load(spec: str, cache_dir: Path) -> LoadedTagger:
    """The tagger a spec names, on the CPU (models.load_model moves it); ModelError in one line otherwise."""
    info = REGISTRY.get(spec)
    if info is not None:
        folder = DATA_DIR / info.shipped if info.shipped else _fetch(spec, cache_dir)
        return load_folder(folder, model_id=spec, defaults=info.defaults)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder(path)
    refused = _refusal(path)
    if refused:
        raise ModelFileError(refused)
    raise ModelFileError(f"{path}: a tagger is loaded from its folder ({', '.join(TAGGER_FILES)}); pass {path.parent}")


def placed_folder(repo: str, cache_dir: Path) -> Path:
    """Where a user without network puts a tagger's three files by hand."""
    return Path(cache_dir) / "taggers" / safe_name(repo)


def _fetch(repo: str, cache_dir: Path) -> Path:
    """The folder holding the repository's three files: placed by hand, cached by the hub, or downloaded.
    Only those three files are ever fetched (the repositories also hold a model.onnx)."""
    placed = placed_folder(repo, cache_dir)
    if all((placed / name).is_file() for name in TAGGER_FILES):
        return placed
    try:
        return _hub_folder(repo, cache_dir, local_only=True)
    except Exception:
        pass
    try:
        if hub_offline():
            raise ConnectionError("HF_HUB_OFFLINE is set")
        from huggingface_hub import constants

        require_reachable(constants.ENDPOINT)
        return _hub_folder(repo, cache_dir, local_only=False)
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        raise ModelError(
            f"cannot get tagger {repo} ({type(error).__name__}: {one_line(error, 200)}). Without network: download "
            f"{', '.join(TAGGER_FILES)} from https://huggingface.co/{repo} into {placed}, or pass a tagger folder"
        ) from None


def _hub_folder(repo: str, cache_dir: Path, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    paths = [
        Path(hf_hub_download(repo, name, cache_dir=str(cache_dir), local_files_only=local_only))
        for name in TAGGER_FILES
    ]
    return paths[0].parent  # the hub puts a revision's files in one snapshot folder


def load_folder(folder: Path, model_id: str | None = None, defaults: dict[str, Any] | None = None) -> LoadedTagger:
    """A tagger folder in the hub's layout; every fault is one ModelError naming the file and what is wrong.
    An easy_diffuser.json beside the files (what a calibration learnt, as in a CLIP model's folder) overrides
    `defaults`."""
    weights = _weights_file(folder)
    config = _read_config(folder / CONFIG)
    tags = read_tags(folder / TAGS)
    num_classes = config["num_classes"]
    if len(tags.names) != num_classes:
        raise ModelFileError(
            f"{folder / TAGS}: {len(tags.names)} tags, but {CONFIG}'s head gives {num_classes} outputs; "
            "the files are from different models: take all three from one repository"
        )
    model = build_network(config, folder / CONFIG)
    load_weights(model, weights, config["architecture"])
    cache_key = f"{folder.name}-{content_hash(weights)}"
    image_size = int(config["pretrained_cfg"]["input_size"][-1])
    return LoadedTagger(
        model_id or cache_key,
        model,
        reference_transform(config["pretrained_cfg"]),
        tags,
        image_size,
        {**(defaults or {}), **folder_defaults(folder / "easy_diffuser.json")},
        cache_key,
    )


def _weights_file(folder: Path) -> Path:
    weights = folder / WEIGHTS
    if weights.is_file():
        return weights
    others = sorted(p.name for p in folder.iterdir() if _refusal(p)) if folder.is_dir() else []
    found = f"; {others[0]} is not read ({_refusal(folder / others[0], reason_only=True)})" if others else ""
    raise ModelFileError(f"{folder}: no {WEIGHTS}{found}; a tagger needs {', '.join(TAGGER_FILES)}")


def _refusal(path: Path, reason_only: bool = False) -> str:
    """Why a file that isn't safetensors is not read ("" for one that may be)."""
    suffix = ".pb" if path.name == "saved_model.pb" else path.suffix.lower()
    reason = REFUSED.get(suffix, "")
    if not reason or reason_only:
        return reason
    return f"{path}: not read ({reason}); a tagger needs {WEIGHTS} beside {CONFIG} and {TAGS}, as the hub has them"


def _read_capped(path: Path, limit: int) -> bytes:
    try:
        return read_regular_file(path, limit)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing; a tagger needs {', '.join(TAGGER_FILES)} in its folder") from None
    except (FileTooLarge, NotARegularFile) as error:
        raise ModelFileError(f"{path}: {error.strerror}; not a tagger's {path.name}") from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror or error})") from None


def _read_config(path: Path) -> dict[str, Any]:
    """config.json, checked: architecture (a name timm knows), num_classes, model_args, pretrained_cfg."""
    import timm

    try:
        config = json.loads(_read_capped(path, MAX_CONFIG_BYTES), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({one_line(error, 120)})") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: must be a JSON object with architecture, num_classes and pretrained_cfg")
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise ModelFileError(
            f"{path}: unknown architecture {str(architecture)[:80]!r} for timm {timm.__version__}; "
            "a tagger's config names a timm model (vit_base_patch16_224, swinv2_base_window8_256, convnext_base, ...)"
        )
    num_classes = config.get("num_classes")
    if type(num_classes) is not int or not 1 <= num_classes <= MAX_CLASSES:
        raise ModelFileError(
            f"{path}: num_classes must be a whole number from 1 to {MAX_CLASSES}, not {quoted(num_classes)}"
        )
    model_args = config.setdefault("model_args", {})
    pretrained = config.get("pretrained_cfg")
    if not isinstance(model_args, dict) or not isinstance(pretrained, dict):
        raise ModelFileError(f"{path}: model_args and pretrained_cfg must be JSON objects")
    size = pretrained.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and size[0] == 3 and all(whole(1, 4096).check(v) for v in size)):
        raise ModelFileError(f"{path}: pretrained_cfg.input_size must be [3, height, width], not {quoted(size)}")
    check_model_args(architecture, model_args, num_classes, max(size[1:]), path)
    # A std below 1e-3 divides pixels into the thousands (1e-320 into infinity); pixels' means lie in [0, 1].
    for name, low, high in (("mean", 0.0, 1.0), ("std", 1e-3, 1e3)):
        values = pretrained.setdefault(name, [0.5, 0.5, 0.5])
        if not (isinstance(values, list) and len(values) == 3 and all(number(low, high).check(v) for v in values)):
            raise ModelFileError(
                f"{path}: pretrained_cfg.{name} must be three numbers from {low:g} to {high:g}, not {quoted(values)}"
            )
    interpolation = pretrained.setdefault("interpolation", "bicubic")
    if not isinstance(interpolation, str) or interpolation not in _RESAMPLING:
        raise ModelFileError(
            f"{path}: pretrained_cfg.interpolation must be one of {', '.join(_RESAMPLING)}, not {quoted(interpolation)}"
        )
    return config


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_tags(path: Path) -> TagTable:
    """selected_tags.csv: the header `tag_id,name,category,count`, then one row per tag."""
    data = _read_capped(path, MAX_TAGS_BYTES)
    try:
        reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
        rows = [(reader.line_num, row) for row in reader]  # the line each row ends on (a quoted name may span two)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ModelFileError(f"{path}: not a readable CSV file ({one_line(error, 120)})") from None
    if not rows or [cell.strip() for cell in rows[0][1]] != CSV_HEADER:
        header = ",".join(rows[0][1])[:80] if rows else "nothing"
        raise ModelFileError(f"{path}: the header must be {','.join(CSV_HEADER)}, not {header!r}")
    names, categories = [], []
    for line, row in rows[1:]:
        if len(row) != len(CSV_HEADER) or not row[1].strip() or not _CATEGORY.fullmatch(row[2].strip()):
            raise ModelFileError(f"{path}: line {line} is not tag_id,name,category,count with a category from 0 to 999")
        refused = prompt_syntax(row[1].strip())
        if refused:
            raise ModelFileError(f"{path}: line {line}: {refused}; a tag's name must be plain text in a prompt")
        names.append(row[1].strip())
        categories.append(CATEGORIES.get(int(row[2]), "general"))
    if not names:
        raise ModelFileError(f"{path}: holds no tags")
    return TagTable(tuple(names), tuple(categories))


def build_network(config: dict[str, Any], config_path: Path) -> torch.nn.Module:
    """The network config.json describes, without weights (timm's pretrained loader never runs)."""
    import timm

    architecture, model_args = config["architecture"], dict(config["model_args"])
    activation = model_args.get("act_layer")
    if isinstance(activation, str):
        model_args["act_layer"] = _activation(activation, config_path)
    try:
        model = timm.create_model(architecture, pretrained=False, num_classes=config["num_classes"], **model_args)
    except Exception as error:  # a model_args key the architecture doesn't take, a size it can't have, ...
        raise ModelFileError(
            f"{config_path}: timm {timm.__version__} cannot build {architecture} from its model_args "
            f"({type(error).__name__}: {one_line(error, 160)})"
        ) from None
    _check_input_size(model, config["pretrained_cfg"]["input_size"], config_path)
    if activation is not None and architecture.startswith("swinv2") and _timm_version() < (1, 0, 3):
        _replace_gelu(model, model_args["act_layer"])
    return model.eval().requires_grad_(False)


def _check_input_size(model: torch.nn.Module, input_size: list[int], config_path: Path) -> None:
    """Every image is resized to pretrained_cfg.input_size: a ViT, EVA or SwinV2 takes exactly the size it was
    built for (model_args.img_size), and no network takes less than its total stride (ConvNeXt's 32)."""
    _, height, width = input_size
    built_for = getattr(getattr(model, "patch_embed", None), "img_size", None)
    stride = max((info["reduction"] for info in getattr(model, "feature_info", None) or []), default=1)
    if (built_for is not None and tuple(built_for) != (height, width)) or min(height, width) < stride:
        takes = f"{built_for[0]} x {built_for[1]}" if built_for is not None else f"at least {stride} x {stride}"
        raise ModelFileError(
            f"{config_path}: pretrained_cfg.input_size {quoted(input_size)} does not fit the network, which takes "
            f"{takes} pixels (model_args.img_size sets a transformer's)"
        )


def _activation(name: str, config_path: Path) -> type:
    from timm.layers import get_act_layer

    try:
        return get_act_layer(name)
    except (KeyError, ValueError, TypeError):
        raise ModelFileError(
            f"{config_path}: model_args.act_layer {name[:40]!r} is not an activation timm knows"
        ) from None


def _replace_gelu(model: torch.nn.Module, activation: type) -> None:
    """timm before 1.0.3 builds SwinV2 with exact GELU whatever act_layer says; put the asked-for one in."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.GELU and activation is not torch.nn.GELU:
                setattr(parent, name, activation())


def _timm_version() -> tuple[int, ...]:
    import timm

    return tuple(int(part) for part in timm.__version__.split(".")[:3] if part.isdigit())


def load_weights(model: torch.nn.Module, weights: Path, architecture: str) -> None:
    """model.safetensors into the network, strictly: every key, every shape."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as error:
        raise ModelFileError(
            f"{weights}: the weights don't fit {architecture} as {CONFIG} describes it "
            f"({type(error).__name__}: {one_line(error, 200)})"
        ) from None


def reference_transform(pretrained_cfg: dict[str, Any]) -> Callable:
    """The reference preprocessing as a torchvision Compose (pipeline.py runs its PIL steps in decode workers):
    pad to a white square, resize, BGR, then ToTensor and Normalize (mean and std 0.5: [-1, 1])."""
    from torchvision import transforms as T

    _, height, width = pretrained_cfg["input_size"]
    return T.Compose(
        [
            SquareOnWhite((width, height), pretrained_cfg["interpolation"]),
            to_bgr,
            T.ToTensor(),
            T.Normalize(pretrained_cfg["mean"], pretrained_cfg["std"]),
        ]
    )


class SquareOnWhite:
    """Pad to a centred white square, then resize to the model's input size (as SmilingWolf's demo does).
    An image longer than PAD_LIMIT is first shrunk to it, so the square stays within 4096 x 4096."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bicubic") -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        resample = _RESAMPLING[self.interpolation]
        longest = max(image.size)
        if longest > PAD_LIMIT:
            scale = PAD_LIMIT / longest
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
            longest = max(image.size)
        square = Image.new("RGB", (longest, longest), (255, 255, 255))
        square.paste(image.convert("RGB"), ((longest - image.width) // 2, (longest - image.height) // 2))
        return square if square.size == self.size else square.resize(self.size, resample)

    def __repr__(self) -> str:
        return f"SquareOnWhite(size={self.size}, interpolation={self.interpolation})"


def to_bgr(image: Image.Image) -> Image.Image:
    """The channels in BGR order, as the WD models were trained (a module-level function: Ray pickles it)."""
    return Image.merge("RGB", image.split()[::-1])


register_kind(is_tagger, load)  # models.load_model loads taggers from now on
