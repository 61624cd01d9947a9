"""Which family a diffusion checkpoint belongs to, from what a host can tell about it. `detect` is pure (data
in, data out); `detect_checkpoint` also reads a .safetensors file's JSON header (never its weights), once.

    detect(name="flux1-dev-bnb-nf4-v2.safetensors")                  -> FLUX, "its name says Flux"
    detect(name="model.safetensors", metadata={"modelspec.architecture": "stable-diffusion-v3-medium"})
    detect(name="x", model_class="Flux")                              -> Forge's diffusion engine class

The family decides what *automatic* means for the prompt style (prompt_style.py): Flux, SD3 and
Qwen-Image read their prompt with a large language-model text encoder (T5-XXL, Qwen2.5-VL) and want
sentences; SD 1.x, 2.x and SDXL read CLIP's 75-token chunks and want tags.

The evidence is weighed in order of how much it can be trusted:
  1. the host's own class (Forge's `backend.diffusion_engine` classes) or flags (`is_sd3`, `is_sdxl`, ...);
  2. the safetensors header's metadata (`modelspec.architecture`, kohya's `ss_base_model_version`);
  3. the checkpoint's name (fine-tunes without metadata are common: names are the fallback).
This is the one detection entry point of the project: the `Detected` it gives carries the checkpoint's name
and header metadata too, and families.py derives the presets of tag-prompted SDXL fine-tunes (Illustrious,
Pony, Animagine) from that same evidence rather than reading the checkpoint a second time.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

TOKEN_BUDGET = 75  # one CLIP chunk: 77 positions minus the start and end tokens
T5_TOKENS = 512  # Flux and SD3 train T5-XXL at a 512-token sequence (its end token included)
MAX_HEADER_BYTES = 16 << 20  # an SDXL checkpoint's header is about 200 KB; a larger length is not a header


@dataclass(frozen=True)
class Family:
    name: str  # "flux", "sd3", ...; "" when unknown
    label: str  # what the status line calls it
    prompt_style: str  # the style automatic picks: "sentences" or "tags"
    text_encoder: str  # whose tokens the budget counts: "t5" or "clip"
    negative_note: str = ""  # said in the status line when the family ignores the negative prompt
    names: str = ""  # a regular expression over the checkpoint's name and metadata texts
    classes: tuple[str, ...] = ()  # Forge's diffusion engine class names
    flag: str = ""  # the sd_model attribute that is True for the family (A1111 and Forge)

    @property
    def token_budget(self) -> int:
        return T5_TOKENS if self.text_encoder == "t5" else TOKEN_BUDGET


UNKNOWN = Family("", "an unknown checkpoint", "tags", "clip")
FAMILIES: tuple[Family, ...] = (
    # Chroma is a Flux model trained to use real CFG: it reads the negative prompt.
    Family("chroma", "Chroma", "sentences", "t5", names=r"chroma", classes=("Chroma",)),
    Family(
        "flux",
        "Flux",
        "sentences",
        "t5",
        negative_note="Flux dev and schnell ignore the negative prompt at distilled CFG (CFG scale 1)",
        names=r"flux",
        classes=("Flux",),
    ),
    Family(
        "sd3",
        "SD 3",
        "sentences",
        "t5",
        names=r"sd[-_ ]?3|stable[-_ ]?diffusion[-_ ]?(v?3|3\.5)",
        classes=("StableDiffusion3",),
        flag="is_sd3",
    ),
    Family("qwen-image", "Qwen-Image", "sentences", "t5", names=r"qwen[-_ ]?image", classes=("QwenImage",)),
    Family(
        "sdxl",
        "SDXL",
        "tags",
        "clip",
        names=r"sd[-_ ]?xl|stable[-_ ]?diffusion[-_ ]?xl",
        classes=("StableDiffusionXL", "StableDiffusionXLRefiner"),
        flag="is_sdxl",
    ),
    Family(
        "sd2",
        "SD 2",
        "tags",
        "clip",
        names=r"sd[-_ ]?v?2(\.[01])?(?!\d)|stable[-_ ]?diffusion[-_ ]?v2|^v2[-_]",
        classes=("StableDiffusion2",),
        flag="is_sd2",
    ),
    Family(
        "sd1",
        "SD 1.x",
        "tags",
        "clip",
        names=r"sd[-_ ]?v?1(\.?5)?(?!\d)|stable[-_ ]?diffusion[-_ ]?v1|^v1[-_]5",
        classes=("StableDiffusion",),
        flag="is_sd1",
    ),
)
FAMILY = {family.name: family for family in FAMILIES}
# Metadata keys whose text names the architecture (modelspec is the SAI standard, ss_* kohya's trainer).
ARCHITECTURE_KEYS = ("modelspec.architecture", "ss_base_model_version", "modelspec.title")


@dataclass(frozen=True)
class Detected:
    family: Family
    reason: str  # the evidence, for the status line: "Forge's engine class Flux", "its name flux1-dev..."
    name: str = ""  # the checkpoint's display name ("ponyDiffusionV6XL"); "" when none is known
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)  # its header metadata's text values


def detect(
    name: str = "",
    metadata: Mapping[str, Any] | None = None,
    model_class: str = "",
    flags: Mapping[str, bool] | None = None,
) -> Detected:
    """The family of a checkpoint: `name` (file name or title), the safetensors header's `metadata`,
    the host's `model_class` (type(sd_model).__name__) and `flags` ({"is_sd3": True, ...})."""
    texts = {key: value for key, value in (metadata or {}).items() if isinstance(key, str) and isinstance(value, str)}
    family, reason = _weigh(name, texts, model_class, flags or {})
    return Detected(family, reason, _display_name(name), texts)


def _weigh(name: str, metadata: Mapping[str, str], model_class: str, flags: Mapping[str, bool]) -> tuple[Family, str]:
    for family in FAMILIES:
        if model_class and model_class in family.classes:
            return family, f"the loaded model is a {model_class}"
    for family in FAMILIES:
        if family.flag and flags.get(family.flag) is True:
            return family, f"the loaded model has {family.flag}"
    for key in ARCHITECTURE_KEYS:
        text = metadata.get(key, "")
        family = _by_name(text)
        if family:
            return family, f"its metadata {key} is {text[:60]!r}"
    family = _by_name(name)
    if family:
        return family, f"its name {name[:80]!r} says {family.label}"
    return UNKNOWN, f"nothing tells its family ({name[:80]!r})" if name else "no checkpoint is known"


def _display_name(checkpoint: str) -> str:
    """'ponyDiffusionV6XL_v6.safetensors [67ab2fd8ec]' (a webui title) or a path -> 'ponyDiffusionV6XL_v6'."""
    name = re.sub(r"\s*\[[0-9a-fA-F]+\]\s*$", "", checkpoint.strip())
    name = re.split(r"[\\/]", name)[-1]
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", name, flags=re.IGNORECASE)


def _by_name(text: str) -> Family | None:
    lowered = text.lower()
    return next((family for family in FAMILIES if family.names and re.search(family.names, lowered)), None)


def detect_checkpoint(checkpoint: str | os.PathLike) -> Detected:
    """detect() for a checkpoint given by name or by file; a .safetensors file's header metadata is read too (once:
    the Detected carries it). ValueError naming the file when its header is damaged."""
    path = Path(checkpoint)
    metadata = read_metadata(path) if path.suffix.lower() == ".safetensors" and path.is_file() else {}
    return detect(path.name, metadata)


def _shown_path(path: Path) -> str:
    """The file as a message names it: on one line (control characters escaped), a long name cut."""
    text = str(path)
    return _shortened(text if text.isprintable() else text.encode("unicode_escape").decode("ascii"), 200)


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's `__metadata__` (its text values), read from the 8-byte length and the JSON header only,
    never the weights; ValueError naming the file when it is not a safetensors file."""
    with open(path, "rb") as file:
        head = file.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= size <= MAX_HEADER_BYTES:
            raise ValueError(f"{_shown_path(path)}: not a safetensors file (its header length is {size})")
        try:
            header = json.loads(file.read(size))
        except (ValueError, RecursionError) as error:  # not JSON, a 5,000-digit number, nesting past the stack
            problem = "nested too deeply" if isinstance(error, RecursionError) else _shortened(str(error), 100)
            raise ValueError(
                f"{_shown_path(path)}: not a safetensors file (its header is not JSON we read: {problem})"
            ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {key: value for key, value in metadata.items() if isinstance(key, str) and isinstance(value, str)}
