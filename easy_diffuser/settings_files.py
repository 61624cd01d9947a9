"""The small JSON files we read back: a model's calibration and a model folder's easy_diffuser.json.

A user, an editor or an interrupted run may have written them. A damaged one (not JSON, NaN or
Infinity anywhere, nesting deep enough to exhaust the parser, a value of the wrong type or out of
range) raises SettingsFileError: one line naming the file and the field, never a traceback, and
none of its values are used. The calibration writer validates with the same functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .files import read_regular_file
from .options import OPTION

# tau is a z-score over the vocabulary: beyond +-10 no tag (or every tag) is relevant.
TAU_RANGE = (float(OPTION["tau"].minimum), float(OPTION["tau"].maximum))  # the options schema's, as on every surface
MAX_NEGATIVES = int(OPTION["negatives"].maximum)
# Ours are a few KB (a calibration with its whole table, a model's config); a larger one is not ours.
SETTINGS_FILE_LIMIT = 4 * 2**20


class SettingsFileError(ValueError):
    """A settings file that cannot be used; the message names the file and the field."""


def read_calibration(path: Path) -> dict[str, Any]:
    """What `easy-diffuser calibrate` learned; {} when there is no file. Raises SettingsFileError when damaged."""
    if not Path(path).exists():
        return {}
    return check_calibration(read_json_object(path), path)


def check_calibration(data: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """A calibration's tau and negatives, checked: tau a finite number in TAU_RANGE, negatives a whole number."""
    _check_number(data, "tau", path, *TAU_RANGE, required=True)
    _check_whole(data, "negatives", path, 0, MAX_NEGATIVES)
    return data


def check_model_defaults(data: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """A model folder's defaults, checked field by field (every other number is already known to be finite)."""
    _check_number(data, "tau", path, *TAU_RANGE)
    _check_whole(data, "negatives", path, 0, MAX_NEGATIVES)
    _check_whole(data, "max_per_category", path, 1, 1000)
    _check_number(data, "general_threshold", path, 0, 1)
    _check_number(data, "character_threshold", path, 0, 1)
    _check_whole(data, "calibration_tags", path, 1, 1000)
    _check_number(data, "prob_center", path, -1e6, 1e6)
    _check_number(data, "prob_temperature", path, 1e-6, 1e6)  # a divisor: 0 would make every probability NaN
    return data


# open_clip builds the model from a folder's config before any weights are read, so a width of 10**9 would
# allocate terabytes. Bounds per field (ViT-bigG-14, the largest CLIP, is well inside), then the whole model.
MODEL_CONFIG_BOUNDS = {
    "embed_dim": (1, 16384),
    "width": (1, 16384),
    "layers": (1, 256),
    "heads": (1, 1024),
    "head_width": (1, 4096),
    "image_size": (1, 4096),
    "patch_size": (1, 4096),
    "context_length": (1, 4096),
    "vocab_size": (1, 1_000_000),
    "mlp_ratio": (0.01, 64),
}
MAX_MODEL_PARAMETERS = 10**10  # about 40 GB in float32; ViT-bigG-14 has 2.5e9


def check_model_config(config: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """An open_clip_config.json's `model_cfg`, checked before open_clip builds (allocates) the model: objects
    where objects belong, every size a whole number in MODEL_CONFIG_BOUNDS, and at most MAX_MODEL_PARAMETERS."""
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise SettingsFileError(f"{path}: 'model_cfg' must be an object, not {json.dumps(model_cfg)[:40]}")
    _check_sizes(model_cfg, "model_cfg", path)
    for tower in ("vision_cfg", "text_cfg"):
        if not isinstance(model_cfg.get(tower), dict):
            raise SettingsFileError(f"{path}: 'model_cfg.{tower}' must be an object")
        _check_sizes(model_cfg[tower], f"model_cfg.{tower}", path)
    preprocess_cfg = config.get("preprocess_cfg", {})
    if not isinstance(preprocess_cfg, dict):
        raise SettingsFileError(f"{path}: 'preprocess_cfg' must be an object")
    for key in ("mean", "std"):
        value = preprocess_cfg.get(key)
        if value is not None and not (
            isinstance(value, list) and len(value) == 3 and all(_is_number(v) and 0 < abs(v) < 1e3 for v in value)
        ):
            raise SettingsFileError(f"{path}: 'preprocess_cfg.{key}' must be three numbers, one per colour channel")
    if _parameters(model_cfg) > MAX_MODEL_PARAMETERS:
        raise SettingsFileError(
            f"{path}: a model of about {_parameters(model_cfg):.2g} parameters; the largest allowed has "
            f"{MAX_MODEL_PARAMETERS:.0e}"
        )
    return config


def _check_sizes(section: dict[str, Any], where: str, path: Path | str) -> None:
    for key, (low, high) in MODEL_CONFIG_BOUNDS.items():
        value = section.get(key)
        if value is None:  # open_clip's default (a ResNet's patch_size is null)
            continue
        listed = isinstance(value, list) and key in ("layers", "image_size") and 0 < len(value) <= 4
        values = value if listed else [value]
        whole = key != "mlp_ratio"
        if not all(_is_number(v) and low <= v <= high and (not whole or float(v).is_integer()) for v in values):
            kind = "whole number" if whole else "number"
            raise SettingsFileError(
                f"{path}: '{where}.{key}' must be a {kind} from {low:g} to {high:g}, not {json.dumps(value)[:40]}"
            )


def _parameters(model_cfg: dict[str, Any]) -> float:
    """About how many parameters the towers have: 12 width^2 per transformer layer, the token and patch tables,
    the projections into the shared embedding."""
    total = 0.0
    for tower in ("vision_cfg", "text_cfg"):
        cfg = {key: value for key, value in model_cfg[tower].items() if value is not None}
        layers, width, size = cfg.get("layers", 12), float(cfg.get("width", 768)), cfg.get("image_size", 0)
        layers = sum(layers) if isinstance(layers, list) else layers
        size = max(size) if isinstance(size, list) else size
        total += 12 * layers * width**2 * cfg.get("mlp_ratio", 4) / 4
        total += (cfg.get("vocab_size", 0) + cfg.get("context_length", 0) + (model_cfg.get("embed_dim") or 0)) * width
        total += (size / cfg.get("patch_size", 16)) ** 2 * width
    return total


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, every number in it finite; SettingsFileError (one line) otherwise."""
    try:
        text = read_regular_file(path, SETTINGS_FILE_LIMIT).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsFileError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise SettingsFileError(f"{path}: nested too deeply to be a settings file") from None
    except ValueError as error:
        raise SettingsFileError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise SettingsFileError(f'{path}: must hold a JSON object such as {{"tau": 1.0}}')
    return data


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(data: dict, key: str, path: Path | str, low: float, high: float, required: bool = False) -> None:
    if key not in data:
        if required:
            raise SettingsFileError(f"{path}: no {key!r}")
        return
    value = data[key]
    if not _is_number(value) or not low <= value <= high:
        raise SettingsFileError(
            f"{path}: {key!r} must be a number from {low:g} to {high:g}, not {json.dumps(value)[:40]}"
        )


def _check_whole(data: dict, key: str, path: Path | str, low: int, high: int) -> None:
    value = data.get(key, low)
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()) or not low <= value <= high:
        raise SettingsFileError(
            f"{path}: {key!r} must be a whole number from {low} to {high}, not {json.dumps(value)[:40]}"
        )
    if key in data:
        data[key] = int(value)
