"""Optional step 0 of the data flow: image -> a caption in words, put in front of the CLIP tags.

CLIP tags name what is in an image; a captioner says who does what ("a woman sitting on a bench
in a park"), and Stable Diffusion prompts read best as such a subject phrase followed by tags.
The captioners are Hugging Face `transformers` models (the optional `caption` extra):

  * a registry id ("Salesforce/blip-image-captioning-base", ...) or any Hub id of a BLIP or GIT
    captioning model, downloaded on first use into the same cache folder as the CLIP weights;
  * a local model folder as written by `save_pretrained` (config.json, model.safetensors and the
    processor's tokenizer and preprocessor files).

Weights are read from safetensors; a repository that has only pytorch_model.bin is read with
torch.load(weights_only=True). The original prototype's captioner, a 1.2 GB pickled
`checkpoint.pth` with its own model code, is not loaded: unpickling a file runs whatever code
it carries, so a shared checkpoint of that kind is a way to run someone else's program.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .files import safe_name
from .models import (
    DEFAULT_CACHE_DIR,
    LoadOnce,
    ModelError,
    OnDevice,
    _weights_only_torch_load,
    default_dtype,
    hub_offline,
    require_reachable,
)
from .options import DEFAULT_CAPTIONER, TOKEN_BUDGET, CaptionOptions
from .selection import TagScore

# model_type in config.json -> (model class, processor class) in transformers
MODEL_CLASSES = {"blip": ("BlipForConditionalGeneration", "BlipProcessor"), "git": ("GitForCausalLM", "GitProcessor")}
# Words a tag may share with any caption without repeating it ("a", "in the ...").
STOP_WORDS = frozenset("a an the of in on at with and or to for by from its his her their is are".split())
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class CaptionerInfo:
    name: str
    use: str


CAPTIONERS: dict[str, CaptionerInfo] = {
    info.name: info
    for info in (
        CaptionerInfo(
            "Salesforce/blip-image-captioning-base", "BLIP base (about 1 GB): short captions, the quick default"
        ),
        CaptionerInfo(
            "Salesforce/blip-image-captioning-large",
            "BLIP large (about 1.9 GB): more detailed captions, clip-interrogator's choice",
        ),
        CaptionerInfo(
            "microsoft/git-base-coco", "GIT base tuned on COCO (about 0.7 GB): plain literal captions, the smallest"
        ),
        CaptionerInfo(
            "microsoft/git-large-coco",
            "GIT large tuned on COCO (about 1.6 GB): literal captions, better on busy scenes",
        ),
    )
}


@dataclass
class Captioner(OnDevice):
    """A captioning model and its processor (image preprocessing plus tokenizer)."""

    model_id: str
    model: Any  # a transformers PreTrainedModel; typed loosely so transformers stays optional
    processor: Any
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one model, many callers

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Captioner":
        with self._lock:
            self.model.to(device=device, dtype=dtype or default_dtype(device))
        return self

    @torch.inference_mode()
    def caption(self, image: Image.Image, options: CaptionOptions = CaptionOptions()) -> str:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with self._lock:
            ids = self.model.generate(
                pixel_values=pixels.to(self.device, self.dtype),
                num_beams=options.beams,
                # new tokens, so that the start token (and GIT's image tokens) do not count
                min_new_tokens=min(options.min_length, options.max_length),  # a lowered max wins over the default min
                max_new_tokens=options.max_length,
            )
        text = self.processor.batch_decode(ids, skip_special_tokens=True)[0]
        return " ".join(text.split())


def load_captioner(
    spec: str = DEFAULT_CAPTIONER,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Captioner:
    """Load a captioner once per (spec, cache folder) and reuse it; move it to `device`/`dtype`."""
    return _loaded(spec, Path(cache_dir or DEFAULT_CACHE_DIR)).to(device, dtype)


def unload_captioners() -> None:
    """Forget every loaded captioner so its memory can be freed."""
    _loaded.clear()


def placed_folder(model_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a user without network puts a captioner's files by hand."""
    return Path(cache_dir or DEFAULT_CACHE_DIR) / "captioners" / safe_name(model_id)


def _load(spec: str, cache_dir: Path) -> Captioner:
    _require_transformers()
    local = Path(spec).expanduser()
    if local.is_dir():
        return _load_folder(local, model_id=str(local))
    placed = placed_folder(spec, cache_dir)
    if placed.is_dir():
        return _load_folder(placed, model_id=spec)
    if "/" not in spec:
        raise ModelError(
            f"unknown captioner {spec!r}: use one of {', '.join(CAPTIONERS)}, another Hub id of a BLIP or GIT model, "
            "or a model folder"
        )
    try:
        return _from_hub(spec, cache_dir)
    except ModelError:
        raise
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        raise ModelError(
            f"cannot get captioner {spec} ({type(error).__name__}: {_first_line(error)}). "
            f"Without network: download the files of https://huggingface.co/{spec} (config.json, model.safetensors, "
            f"and the tokenizer and preprocessor files) into {placed}, or pass a local model folder as the captioner"
        ) from error


_loaded: LoadOnce[Captioner] = LoadOnce(_load)


def _from_hub(model_id: str, cache_dir: Path) -> Captioner:
    """From the hub's cache in `cache_dir`; the hub is asked only for what is missing, and only if it answers."""
    try:
        # What an earlier run downloaded loads without the hub's update check (which, without network,
        # retries for half a minute before it gives up).
        return _from_pretrained(model_id, model_id, cache_dir=str(cache_dir), local_files_only=True)
    except ModelError:
        raise
    except Exception:
        if hub_offline():
            raise
    from huggingface_hub import constants

    require_reachable(constants.ENDPOINT)
    return _from_pretrained(model_id, model_id, cache_dir=str(cache_dir), local_files_only=False)


def _load_folder(folder: Path, model_id: str) -> Captioner:
    try:
        return _from_pretrained(str(folder), model_id, cache_dir=None, local_files_only=True)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"{folder}: not a usable BLIP or GIT captioner folder ({type(error).__name__}: {_first_line(error)})"
        ) from error


def _from_pretrained(source: str, model_id: str, **hub: Any) -> Captioner:
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(source, **hub).model_type
    if model_type not in MODEL_CLASSES:
        raise ModelError(
            f"{model_id}: a {model_type!r} model; captioners are BLIP or GIT models ({', '.join(CAPTIONERS)})"
        )
    model_name, processor_name = MODEL_CLASSES[model_type]
    processor = getattr(transformers, processor_name).from_pretrained(source, **hub)
    model = _load_weights(getattr(transformers, model_name), source, **hub)
    model.eval()
    model.requires_grad_(False)
    return Captioner(model_id, model, processor)


def _load_weights(model_class: Any, source: str, **hub: Any) -> Any:
    # Repositories from before safetensors hold only pytorch_model.bin; transformers 4.30 reads
    # it with a plain torch.load, which on the webui's torch 2.1 unpickles: force weights_only.
    with _weights_only_torch_load():
        try:
            return model_class.from_pretrained(source, use_safetensors=True, **hub)
        except OSError:
            return model_class.from_pretrained(source, use_safetensors=False, **hub)


def _require_transformers() -> None:
    """transformers is an optional extra: say how to get it rather than fail as a missing model."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError(
            "captions need the transformers package: pip install 'easy-diffuser[caption]' (or transformers>=4.30.2)"
        ) from None


def _first_line(error: Exception) -> str:
    return str(error).strip().split("\n")[0]


def compose(
    caption: str,
    tags: Sequence[TagScore],
    token_cost: Callable[[str], int],
    budget: int = TOKEN_BUDGET,
) -> tuple[str, list[TagScore]]:
    """(caption, positive tags) for the prompt `caption, tag, tag, ...` within `budget` CLIP tokens.

    Positive tags whose words the caption already says are dropped; the others keep their order,
    and a tag that no longer fits is skipped so a shorter one after it may still fit (as in
    selection). Negative tags are not returned: the negative prompt does not change.
    """
    caption = _fit(caption.strip().rstrip(",.;:").strip(), token_cost, budget)
    said = _word_forms(caption)
    left = budget - (token_cost(caption) if caption else 0)
    kept: list[TagScore] = []
    for tag in tags:
        if tag.role != "positive" or _repeats(tag.tag, said):
            continue
        cost = token_cost(tag.tag) + (1 if caption or kept else 0)  # the comma before it
        if cost <= left:
            kept.append(tag)
            left -= cost
    return caption, kept


def _fit(caption: str, token_cost: Callable[[str], int], budget: int) -> str:
    """The caption cut at a word boundary to at most `budget` tokens."""
    words = caption.split()
    while words and token_cost(" ".join(words)) > budget:
        words.pop()
    return " ".join(words)


def _repeats(tag: str, said: set[str]) -> bool:
    """Whether every content word of the tag is a word of the caption (singular or plural)."""
    words = _WORD.findall(tag.lower())
    content = [word for word in words if word not in STOP_WORDS] or words
    return bool(content) and all(_forms(word) & said for word in content)


def _word_forms(text: str) -> set[str]:
    return set().union(*(_forms(word) for word in _WORD.findall(text.lower())))


def _forms(word: str) -> set[str]:
    """The word and the singulars it may be a plural of: horses -> horse, buses -> bus, ponies -> pony."""
    forms = {word}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
        if word.endswith("es"):
            forms.add(word[:-2])
        if word.endswith("ies"):
            forms.add(word[:-3] + "y")
    return forms
