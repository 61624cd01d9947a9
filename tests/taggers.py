"""Tiny WD taggers of the real architectures (timm's vit, swinv2, convnext, eva02 at toy sizes through
model_args), written in the hub's folder layout, as tests need them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# WD v3's architecture names and model_args keys, at toy sizes (the real ones are 448 px and 10,861 tags).
ARCHITECTURES = {
    "vit": (
        "vit_base_patch16_224",
        {"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "class_token": False,
         "global_pool": "avg", "fc_norm": False, "act_layer": "gelu_tanh"},
        32,
    ),
    "swinv2": (
        "swinv2_base_window8_256",
        {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
         "act_layer": "gelu_tanh"},
        32,
    ),
    "convnext": ("convnext_base", {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "act_layer": "gelu_tanh"}, 32),
    "eva02": ("eva02_large_patch14_448", {"img_size": 28, "embed_dim": 32, "depth": 1, "num_heads": 2}, 28),
}  # fmt: skip
# (name, category) as selected_tags.csv has them: ratings first.
TAGS = (
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("solo", 0), ("long_hair", 0), ("smile", 0), ("^_^", 0), ("multiple_girls", 0),
    ("red_circle", 0), ("blue_square", 0), ("saber_(fate)", 4), ("hatsune_miku", 4), ("fate_(series)", 3),
)  # fmt: skip


def write_tagger(
    folder: Path,
    kind: str = "vit",
    tags: tuple[tuple[str, int], ...] = TAGS,
    logits: list[float] | None = None,
    seed: int = 0,
) -> Path:
    """A tagger folder (model.safetensors, config.json, selected_tags.csv) with random weights; with `logits`,
    the head gives exactly those for every image (its weights 0, its bias the logits)."""
    import timm
    from timm.layers import get_act_layer

    architecture, model_args, size = ARCHITECTURES[kind]
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architecture": architecture,
        "num_classes": len(tags),
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "num_classes": len(tags),
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    with (folder / "selected_tags.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows([index, name, category, 1000 - index] for index, (name, category) in enumerate(tags))
    torch.manual_seed(seed)
    args = {**model_args}
    if "act_layer" in args:
        args["act_layer"] = get_act_layer(args["act_layer"])
    model = timm.create_model(architecture, pretrained=False, num_classes=len(tags), **args)
    for module in model.modules():  # SwinV2 starts its residual norms at 0, which would hide its activation
        if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
    head = model.get_classifier()
    if logits is None:  # timm starts some heads near zero (EVA), which would make every probability 0.5
        torch.nn.init.normal_(head.weight, std=0.3)
    else:
        torch.nn.init.zeros_(head.weight)
        head.bias.data = torch.tensor(logits, dtype=torch.float32)
    save_file(
        {key: value.contiguous().clone() for key, value in model.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    return folder


def logits_for(probabilities: dict[str, float], tags=TAGS, rest: float = 0.001) -> list[float]:
    """Head biases that give these probabilities (and `rest` to every other tag)."""
    return [float(torch.logit(torch.tensor(probabilities.get(name, rest)))) for name, _ in tags]


def set_nan(weights: Path, key: str) -> Path:
    """Damage a safetensors file as a bad download or a diverged training run would: one NaN in tensor `key`."""
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(weights))
    return weights
