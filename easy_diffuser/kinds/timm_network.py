"""A timm network from a config.json in the WD taggers' layout (`architecture`, `num_classes`, `model_args`,
`pretrained_cfg`): read and checked (kinds/model_args.py keeps model_args to what shapes a network, within a size),
built as timm's own hub loader builds it on every timm from 0.9.5 (sd-webui-controlnet's pin) to the newest, and
given its weights from safetensors, strictly. The WD tagger kind builds its network here; so may any kind whose
files carry such a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ModelFileError, one_line
from ..files import FileTooLarge, NotARegularFile, read_regular_file
from .model_args import MAX_CLASSES, check_model_args, number, quoted, whole

MAX_CONFIG_BYTES = 1 << 20
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def read_capped(path: Path, limit: int, needs: str) -> bytes:
    """A model folder's file, at most `limit` bytes; `needs` says what the folder must hold."""
    try:
        return read_regular_file(path, limit)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing; {needs}") from None
    except (FileTooLarge, NotARegularFile) as error:
        raise ModelFileError(f"{path}: {error.strerror}; not a model's {path.name}") from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror or error})") from None


def read_config(path: Path, needs: str) -> dict[str, Any]:
    """config.json, checked: architecture (a name timm knows), num_classes, model_args, pretrained_cfg."""
    import timm

    config = read_json(path, MAX_CONFIG_BYTES, needs)
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
    if not isinstance(interpolation, str) or interpolation not in RESAMPLING:
        raise ModelFileError(
            f"{path}: pretrained_cfg.interpolation must be one of {', '.join(RESAMPLING)}, not {quoted(interpolation)}"
        )
    return config


def read_json(path: Path, limit: int, needs: str) -> Any:
    """A model folder's JSON file (at most `limit` bytes), NaN and Infinity refused: one line naming it otherwise."""
    try:
        return json.loads(read_capped(path, limit, needs), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({one_line(error, 120)})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
        replace_gelu(model, model_args["act_layer"])
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


def replace_gelu(model: torch.nn.Module, activation: type) -> None:
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
            f"{weights}: the weights don't fit {architecture} as config.json describes it "
            f"({type(error).__name__}: {one_line(error, 200)})"
        ) from None
