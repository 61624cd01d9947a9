"""What a tagger folder's config.json may ask timm to build: its `model_args`, checked before timm sees them.

`timm.create_model(**model_args)` also takes keywords that make timm read or fetch a file (`checkpoint_path`
torch.loads a pickle on timm 0.9.5, `pretrained`, `pretrained_cfg`, `pretrained_cfg_overlay`, ...), and sizes
that allocate whatever they say. A tagger folder may come from anyone, so only the keys that shape a network of
the WD v3 families (ViT, EVA, SwinV2, ConvNeXt) pass, each of its type and within its range, and the network's
size is estimated from them before anything is allocated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ModelFileError

# WD EVA02-Large, the largest WD v3 tagger, has 0.32 B parameters; a network of more is not a tagger's.
MAX_TAGGER_PARAMETERS = 7 * 10**8
MAX_CLASSES = 1_000_000  # WD v3 has 10,861 tags
# A ViT's or EVA's attention costs tokens^2 an image: WD EVA02-Large sees 32 x 32 patches (448 px in 14s).
MAX_TOKENS = 128 * 128
QUOTE_LIMIT = 60  # the most of a value a message quotes (10**400 has 401 digits)


@dataclass(frozen=True)
class Rule:
    """What a model_args value must be: `check` says whether it is, `wanted` says it in words."""

    check: Callable[[Any], bool]
    wanted: str


def _whole(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def whole(low: int, high: int) -> Rule:
    return Rule(lambda value: _whole(value, low, high), f"a whole number from {low} to {high}")


def wholes(low: int, high: int, most: int = 8) -> Rule:
    """One whole number per stage (a list), as depths, dims and SwinV2's num_heads are."""
    return Rule(
        lambda value: isinstance(value, list) and 0 < len(value) <= most and all(_whole(v, low, high) for v in value),
        f"a list of at most {most} whole numbers from {low} to {high}",
    )


def side(low: int, high: int) -> Rule:
    """A size in pixels or tokens: one whole number, or [height, width]."""
    return Rule(
        lambda value: (
            _whole(value, low, high)
            or (isinstance(value, list) and len(value) == 2 and all(_whole(v, low, high) for v in value))
        ),
        f"a whole number from {low} to {high} or two of them",
    )


def number(low: float, high: float, none: bool = False) -> Rule:
    def check(value: Any) -> bool:
        return (none and value is None) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
        )

    return Rule(check, f"a number from {low:g} to {high:g}" + (" or null" if none else ""))


def one_of(*choices: Any) -> Rule:
    listed = ", ".join(json.dumps(choice) for choice in choices)
    return Rule(lambda value: any(value == c and type(value) is type(c) for c in choices), f"one of {listed}")


FLAG = Rule(lambda value: isinstance(value, bool), "true or false")
FLAG_OR_NULL = Rule(lambda value: value is None or isinstance(value, bool), "true, false or null")
# A name timm's get_act_layer resolves (tagger._activation checks it is one).
ACTIVATION = Rule(lambda value: isinstance(value, str) and 0 < len(value) <= 40, "an activation's name")
POOL = one_of("", "avg", "token", "max", "avgmax")
VIT_POOL = one_of("", "avg", "token", "max", "avgmax", "map")  # map: SigLIP's attention pool (one more block)

# The keys the WD v3 configs use and those that shape the network: nothing that names a file, a URL or a hub,
# nothing that makes timm read or fetch (pretrained, pretrained_cfg, checkpoint_path, ...), no device.
TRANSFORMER = {
    "img_size": side(1, 4096),
    "patch_size": whole(1, 64),
    "embed_dim": whole(1, 8192),
    "depth": whole(1, 96),
    "num_heads": whole(1, 256),
    "mlp_ratio": number(0.1, 16),
    "qkv_bias": FLAG,
    "init_values": number(-1e3, 1e3, none=True),
    "class_token": FLAG,
    "global_pool": POOL,
}
VIT_KEYS = {
    **TRANSFORMER,
    "qk_norm": FLAG,
    "no_embed_class": FLAG,
    "reg_tokens": whole(0, 64),
    "pre_norm": FLAG,
    "final_norm": FLAG,
    "fc_norm": FLAG_OR_NULL,
    "act_layer": ACTIVATION,
    "global_pool": VIT_POOL,
}
EVA_KEYS = {
    **TRANSFORMER,
    "qkv_fused": FLAG,
    "swiglu_mlp": FLAG,
    "scale_mlp": FLAG,
    "scale_attn_inner": FLAG,
    "num_reg_tokens": whole(0, 64),
    "use_abs_pos_emb": FLAG,
    "use_rot_pos_emb": FLAG,
    "use_post_norm": FLAG,
    "ref_feat_shape": Rule(lambda v: v is None or side(1, 1024).check(v), "null or a whole number or two"),
}
SWINV2_KEYS = {
    "img_size": side(1, 4096),
    "patch_size": whole(1, 64),
    "embed_dim": whole(1, 4096),
    "depths": wholes(0, 96),
    "num_heads": wholes(1, 256),
    "window_size": side(1, 64),
    "pretrained_window_sizes": wholes(0, 64),
    "mlp_ratio": number(0.1, 16),
    "qkv_bias": FLAG,
    "global_pool": POOL,
    "act_layer": ACTIVATION,
}
CONVNEXT_KEYS = {
    "depths": wholes(0, 96),
    "dims": wholes(1, 8192),
    "kernel_sizes": Rule(
        lambda v: whole(1, 31).check(v) or wholes(1, 31).check(v), "a whole number from 1 to 31, or one a stage"
    ),
    "ls_init_value": number(-1e3, 1e3, none=True),
    "stem_type": one_of("patch", "overlap", "overlap_tiered"),
    "patch_size": whole(1, 64),
    "head_norm_first": FLAG,
    "head_hidden_size": Rule(lambda v: v is None or _whole(v, 1, 8192), "null or a whole number from 1 to 8192"),
    "conv_mlp": FLAG,
    "conv_bias": FLAG,
    "use_grn": FLAG,
    "global_pool": POOL,
    "act_layer": ACTIVATION,
}

# The default sizes of an architecture, by the size word in its timm name (vit_BASE_patch16_224): what the
# estimate takes where model_args are silent. (embed_dim, depth) for the transformers.
TRANSFORMER_SIZES = {
    "tiny": (192, 12),
    "small": (384, 12),
    "medium": (512, 12),
    "base": (768, 12),
    "large": (1024, 24),
    "so400m": (1152, 27),  # SigLIP's shape-optimised ViT (JTP PILOT2's); its mlp_ratio 3.7 counted as 4
    "huge": (1280, 32),
    "giant": (1408, 40),
    "gigantic": (1664, 48),
}
SWINV2_SIZES = {  # (embed_dim, depths)
    "tiny": (96, [2, 2, 6, 2]),
    "small": (96, [2, 2, 18, 2]),
    "base": (128, [2, 2, 18, 2]),
    "large": (192, [2, 2, 18, 2]),
}
CONVNEXT_SIZES = {  # (depths, the first stage's width; each later stage doubles it)
    "zepto": ([2, 2, 4, 2], 32),
    "atto": ([2, 2, 6, 2], 40),
    "femto": ([2, 2, 6, 2], 48),
    "pico": ([2, 2, 6, 2], 64),
    "nano": ([2, 2, 8, 2], 80),
    "tiny": ([3, 3, 9, 3], 96),
    "small": ([3, 3, 27, 3], 96),
    "base": ([3, 3, 27, 3], 128),
    "large": ([3, 3, 27, 3], 192),
    "xlarge": ([3, 3, 27, 3], 256),
    "xxlarge": ([3, 4, 30, 3], 384),
}


@dataclass(frozen=True)
class Network:
    """A timm network network a tagger may be: its module in timm, its keys, its size estimate."""

    name: str
    module: str
    keys: Mapping[str, Rule]
    parameters: Callable[["Sizes"], float]


@dataclass(frozen=True)
class Sizes:
    """What the estimate reads: the checked model_args, the size word's defaults, the input and the head."""

    args: Mapping[str, Any]
    word: str
    architecture: str
    input_side: int
    num_classes: int
    path: Path

    def get(self, key: str, defaults: Mapping[str, Any]) -> Any:
        if key in self.args:
            return self.args[key]
        if self.word not in defaults:
            raise ModelFileError(
                f"{self.path}: the default sizes of {self.architecture} are not known here; "
                f"give model_args.{key} (a tagger is a ViT, EVA, SwinV2 or ConvNeXt of a size timm names)"
            )
        return defaults[self.word]


def _side(value: Any) -> int:
    return max(value) if isinstance(value, list) else int(value)


def _transformer(sizes: Sizes, mlp_matrices: int) -> float:
    """Per block 4 d^2 (attention) and mlp_matrices * ratio * d^2 (MLP); the position table; patches; the head.
    Every patch attends to every other, so their number is bounded too."""
    width = sizes.get("embed_dim", {word: size[0] for word, size in TRANSFORMER_SIZES.items()})
    depth = sizes.get("depth", {word: size[1] for word, size in TRANSFORMER_SIZES.items()})
    ratio = sizes.args.get("mlp_ratio", 4 if mlp_matrices == 2 else 8 / 3)
    patch = sizes.args.get("patch_size", 16)
    patches = (_side(sizes.args.get("img_size", sizes.input_side)) // patch) ** 2
    if patches > MAX_TOKENS:  # built in a moment, then hours of attention on every image
        raise ModelFileError(
            f"{sizes.path}: model_args make {patches} patches of an image; a tagger's attention takes at most "
            f"{MAX_TOKENS} (a smaller img_size or a larger patch_size)"
        )
    blocks = depth * (4 + mlp_matrices * ratio) * width**2
    return blocks + (patches + 3 * patch**2 + sizes.num_classes) * width


def _vit(sizes: Sizes) -> float:
    """A ViT's blocks; SigLIP's attention pool ("map", its default) is one block more."""
    pool = sizes.args.get("global_pool", "map" if "siglip" in sizes.architecture else "token")
    width = sizes.get("embed_dim", {word: size[0] for word, size in TRANSFORMER_SIZES.items()})
    pool_block = (4 + 2 * sizes.args.get("mlp_ratio", 4)) * width**2 if pool == "map" else 0
    return _transformer(sizes, mlp_matrices=2) + pool_block


def _eva(sizes: Sizes) -> float:
    swiglu = sizes.args.get("swiglu_mlp", sizes.architecture.startswith("eva02"))
    return _transformer(sizes, mlp_matrices=3 if swiglu else 2)


def _swinv2(sizes: Sizes) -> float:
    """Blocks as a transformer's, each stage twice as wide, each with its position-bias MLP (2 -> 512 -> heads);
    and the buffers of each window attention: its relative position index (window^4, int64) and, every other
    block, its shift mask (resolution^2 window^2)."""
    width = sizes.get("embed_dim", {word: size[0] for word, size in SWINV2_SIZES.items()})
    depths = sizes.get("depths", {word: size[1] for word, size in SWINV2_SIZES.items()})
    named = re.search(r"window(\d+)", sizes.architecture)
    window = _side(sizes.args.get("window_size", int(named.group(1)) if named else 8))
    ratio = sizes.args.get("mlp_ratio", 4)
    resolution = _side(sizes.args.get("img_size", sizes.input_side)) // sizes.args.get("patch_size", 4)
    total = 0.0
    for stage, depth in enumerate(depths):
        stage_width, stage_window = width * 2**stage, max(1, min(window, resolution))
        blocks = (4 + 2 * ratio) * stage_width**2 + 2048 + 2 * stage_window**4 + resolution**2 * stage_window**2
        total += depth * blocks
        resolution = max(1, resolution // 2)
    return total + sizes.num_classes * width * 2 ** (len(depths) - 1)


def _convnext(sizes: Sizes) -> float:
    """Per block a depthwise kernel and an MLP of 8 d^2; a 2x2 downsampling between stages; the head."""
    depths = sizes.get("depths", {word: size[0] for word, size in CONVNEXT_SIZES.items()})
    first = {word: [size[1] * 2**stage for stage in range(len(size[0]))] for word, size in CONVNEXT_SIZES.items()}
    dims = sizes.get("dims", first)
    kernel = _side(sizes.args.get("kernel_sizes", 7))
    total = 3 * sizes.args.get("patch_size", 4) ** 2 * dims[0]
    for stage, (depth, dim) in enumerate(zip(depths, dims)):
        total += depth * (kernel**2 * dim + 8 * dim**2) + (4 * dims[stage - 1] * dim if stage else 0)
    head_hidden = sizes.args.get("head_hidden_size") or 0
    return total + dims[-1] * head_hidden + (head_hidden or dims[-1]) * sizes.num_classes


NETWORKS = (
    Network("ViT", "vision_transformer", VIT_KEYS, _vit),
    Network("EVA", "eva", EVA_KEYS, _eva),
    Network("SwinV2", "swin_transformer_v2", SWINV2_KEYS, _swinv2),
    Network("ConvNeXt", "convnext", CONVNEXT_KEYS, _convnext),
)


def quoted(value: Any) -> str:
    """A value as JSON writes it, cut to QUOTE_LIMIT characters: a message quotes it, never floods with it."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else f"{text[:QUOTE_LIMIT]}..."


def network_of(architecture: str) -> Network | None:
    import timm

    name = architecture.split(".", 1)[0]  # a pretrained tag (vit_base_patch16_224.augreg_in21k) names no other net
    return next((network for network in NETWORKS if name in timm.list_models(module=network.module)), None)


def check_model_args(
    architecture: str, model_args: dict[str, Any], num_classes: int, input_side: int, path: Path
) -> dict[str, Any]:
    """The model_args timm may be given, each checked, and the network they describe within
    MAX_TAGGER_PARAMETERS: ModelFileError in one line naming config.json otherwise. Nothing is built."""
    network = network_of(architecture)
    if network is None:
        raise ModelFileError(
            f"{path}: {quoted(architecture)} is not an architecture a tagger is built from here; a tagger is a timm "
            f"{', '.join(f.name for f in NETWORKS)} (WD v3: vit_base_patch16_224, swinv2_base_window8_256, ...)"
        )
    for key, value in model_args.items():
        rule = network.keys.get(key)
        if rule is None:
            raise ModelFileError(
                f"{path}: model_args.{quoted(key)[1:-1]} is not read (a {network.name} tagger's model_args may hold "
                f"only {', '.join(network.keys)})"
            )
        if not rule.check(value):
            raise ModelFileError(f"{path}: model_args.{key} must be {rule.wanted}, not {quoted(value)}")
    word = architecture.split("_")[1] if "_" in architecture else ""
    estimate = network.parameters(Sizes(model_args, word, architecture, input_side, num_classes, path))
    if estimate > MAX_TAGGER_PARAMETERS:
        raise ModelFileError(
            f"{path}: describes a network of about {estimate:.2g} parameters; a tagger has at most "
            f"{MAX_TAGGER_PARAMETERS:.0e} (WD EVA02-Large has 3.2e+08)"
        )
    return model_args
