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


# PixAI v0.9's layout (tags_v0.9_13k.json, char_ip_map.json, model_v0.9.pth), at toy size: general tags first,
# then characters, in tag_map's indices (written in another order than the indices, as a JSON object may be).
PIXAI_GENERAL = ("1girl", "solo", "long_hair", "smile", "^_^", "red_circle")
PIXAI_CHARACTERS = ("saber_(fate)", "hatsune_miku", "new_character_(2025)")
PIXAI_CHARACTER_MAP = {
    "saber_(fate)": ["fate_(series)", "fate/stay_night"],
    "hatsune_miku": ["vocaloid"],
    "rin_tohsaka": ["fate_(series)"],  # a character this model doesn't know
}


def write_pixai(folder: Path, logits: list[float] | None = None, seed: int = 0, config: bool = True) -> Path:
    """A PixAI folder with random weights in its published layout; with `logits`, the head gives exactly those for
    every image (its weights 0). `config`: a WD-format config.json of a tiny EVA02 beside the weights."""
    import timm

    architecture, model_args, size = ARCHITECTURES["eva02"]
    names = PIXAI_GENERAL + PIXAI_CHARACTERS
    folder.mkdir(parents=True, exist_ok=True)
    if config:
        (folder / "config.json").write_text(
            json.dumps(
                {
                    "architecture": architecture,
                    "num_classes": len(names),
                    "model_args": model_args,
                    "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.5] * 3, "std": [0.5] * 3},
                }
            )
        )
    tag_map = {name: index for index, name in reversed(list(enumerate(names)))}
    split = {"gen_tag_count": len(PIXAI_GENERAL), "character_tag_count": len(PIXAI_CHARACTERS)}
    (folder / "tags_v0.9_13k.json").write_text(json.dumps({"tag_map": tag_map, "tag_split": split}))
    (folder / "char_ip_map.json").write_text(json.dumps(PIXAI_CHARACTER_MAP))
    torch.manual_seed(seed)
    encoder = timm.create_model(architecture, pretrained=False, **model_args)
    encoder.reset_classifier(0)
    head = torch.nn.Linear(encoder.num_features, len(names))
    if logits is None:
        torch.nn.init.normal_(head.weight, std=0.3)
    else:
        torch.nn.init.zeros_(head.weight)
        head.bias.data = torch.tensor(logits, dtype=torch.float32)
    state = {f"0.{key}": value for key, value in encoder.state_dict().items()}
    state.update({"1.head.0.weight": head.weight.data, "1.head.0.bias": head.bias.data})
    torch.save(state, folder / "model_v0.9.pth")
    return folder


def pixai_logits(probabilities: dict[str, float], rest: float = 0.001) -> list[float]:
    names = PIXAI_GENERAL + PIXAI_CHARACTERS
    return [float(torch.logit(torch.tensor(probabilities.get(name, rest)))) for name in names]


# JTP PILOT2's layout (JTP_PILOT2-e3-vit_so400m_patch14_siglip_384.safetensors, tags.json {tag: index}) at toy size:
# the SigLIP SO400M ViT of timm, attention pool and all, with JTP's gated head.
JTP_TAGS = ("anthro", "canid", "mammal", "fur", "smile", "<3", "solo", "red_background")
JTP_WEIGHTS = "JTP_PILOT2-e3-vit_so400m_patch14_siglip_384.safetensors"
JTP_ARGS = {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def write_jtp(folder: Path, logits: list[float] | None = None, seed: int = 0) -> Path:
    """A JTP folder with random weights; with `logits` (values then gates, 2 per tag) the head gives exactly those."""
    import timm

    folder.mkdir(parents=True, exist_ok=True)
    architecture, size = "vit_so400m_patch14_siglip_384", JTP_ARGS["img_size"]
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": architecture,
                "num_classes": len(JTP_TAGS),
                "model_args": JTP_ARGS,
                "pretrained_cfg": {"input_size": [3, size, size], "mean": [0.5] * 3, "std": [0.5] * 3},
            }
        )
    )
    tags = {name: index for index, name in reversed(list(enumerate(JTP_TAGS)))}  # another order than the indices
    (folder / "tags.json").write_text(json.dumps(tags))
    torch.manual_seed(seed)
    model = timm.create_model(architecture, pretrained=False, num_classes=len(JTP_TAGS), **JTP_ARGS)
    linear = torch.nn.Linear(model.head.in_features, 2 * len(JTP_TAGS))
    if logits is None:
        torch.nn.init.normal_(linear.weight, std=0.3)
    else:
        torch.nn.init.zeros_(linear.weight)
        linear.bias.data = torch.tensor(logits, dtype=torch.float32)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("head.")}
    state.update({"head.linear.weight": linear.weight.data, "head.linear.bias": linear.bias.data})
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / JTP_WEIGHTS))
    return folder


def jtp_logits(probabilities: dict[str, float], rest: float = 0.001) -> list[float]:
    """Values and gates that give these probabilities: each gate wide open (sigmoid(30) is 1 in float32)."""
    values = [float(torch.logit(torch.tensor(probabilities.get(name, rest)))) for name in JTP_TAGS]
    return values + [30.0] * len(JTP_TAGS)


def set_nan(weights: Path, key: str) -> Path:
    """Damage a safetensors file as a bad download or a diverged training run would: one NaN in tensor `key`."""
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(weights))
    return weights
