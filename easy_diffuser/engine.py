"""The pipeline every entry point calls: image -> embedding -> scores -> tags -> prompts.

    engine = Engine("shapes-demo")
    result = engine.extract("image.png")
    result.prompt, result.negative_prompt, result.tags

With `ExtractOptions(caption=MODEL)` a captioner (captioner.py) runs first and its caption leads
the positive prompt: `caption, tag, tag, ...` in the same token budget.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from . import embedding, label_cache, scoring
from .captioner import CaptionOptions, Captioner, compose, load_captioner
from .embedding import ProgressFn
from .files import safe_name
from .images import ImageInput, load_image
from .models import DEFAULT_CACHE_DIR, DEFAULT_MODEL, LoadedModel, load_model
from .prompt import escape, format_prompt, prompts
from .selection import SelectionOptions, TagScore, select
from .vocabulary import BUILTIN_DIR, Vocabulary, load_vocabulary

DEFAULT_TAU = 1.0


@dataclass(frozen=True)
class ExtractOptions(SelectionOptions):
    tau: float | None = None  # None: the calibrated tau if there is one, else the model's default
    weights: bool = False
    caption: str | None = None  # a captioner (captioner.CAPTIONERS id or model folder); None: tags only
    caption_beams: int = CaptionOptions.beams
    caption_min_length: int = CaptionOptions.min_length
    caption_max_length: int = CaptionOptions.max_length

    def __post_init__(self) -> None:
        CaptionOptions(self.caption_beams, self.caption_min_length, self.caption_max_length)  # bad ones fail now, not at the first image

    @property
    def caption_options(self) -> CaptionOptions:
        return CaptionOptions(self.caption_beams, self.caption_min_length, self.caption_max_length)


@dataclass(frozen=True)
class Extraction:
    prompt: str
    negative_prompt: str
    tags: list[TagScore]
    model: str
    tau: float
    tau_source: str  # where tau came from: "option", a calibration file, "model default", ...
    source: str = ""  # the image's path or name, for batch output
    caption: str = ""  # the captioner's text at the head of the prompt; "" when captioning is off

    def to_dict(self) -> dict:
        data = {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "tags": [t.to_dict() for t in self.tags]}
        data.update(model=self.model, tau=self.tau, tau_source=self.tau_source, caption=self.caption)
        if self.source:
            data["source"] = self.source
        return data


class Engine:
    """A loaded model with its vocabulary and cached tag embeddings, ready to extract."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | os.PathLike | None = None,
        vocabulary_dirs: Sequence[str | os.PathLike] = (),
        progress: ProgressFn | None = None,
        keep_in_vram: bool = False,
    ) -> None:
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        self.keep_in_vram = keep_in_vram  # False: the captioner leaves the GPU before CLIP runs
        self.loaded: LoadedModel = load_model(model, device, dtype, self.cache_dir)
        folders = [self.loaded.vocabulary_dir or BUILTIN_DIR, *map(Path, vocabulary_dirs)]
        self.vocabulary: Vocabulary = load_vocabulary(folders)
        self.text_embeddings = label_cache.text_embeddings(self.loaded, self.vocabulary, self.cache_dir, progress)
        self.token_costs = (embedding.token_lengths(embedding.tokenize(self.loaded, self.vocabulary.tags)) - 2).tolist()
        self._lock = threading.Lock()  # one model, many callers (HTTP routes, the tab)

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Engine":
        with self._lock:
            self.loaded.to(device, dtype)
        return self

    def extract(self, image: ImageInput, options: ExtractOptions = ExtractOptions(), name: str | None = None) -> Extraction:
        return self.extract_many([load_image(image, name)], options, [name or ""])[0]

    def extract_many(self, images: Sequence, options: ExtractOptions = ExtractOptions(), names: Sequence[str] = ()) -> list[Extraction]:
        """Extract a batch of already loaded PIL images (one forward pass)."""
        captions = self.caption(images, options) if options.caption else []
        return self.extract_embeddings(self.encode(images), options, names, captions)

    def encode(self, images: Sequence) -> torch.Tensor:
        """Unit-length image embeddings (float32, CPU), one row per image."""
        with self._lock:
            return embedding.encode_images(self.loaded, images)

    def encode_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """encode() for images already through `self.loaded.preprocess`, stacked (pipeline.py decodes in workers)."""
        with self._lock:
            return embedding.encode_preprocessed(self.loaded, batch)

    def extract_embeddings(
        self, image_embeddings: torch.Tensor, options: ExtractOptions = ExtractOptions(), names: Sequence[str] = (), captions: Sequence[str] = ()
    ) -> list[Extraction]:
        """Extract from images already encoded: calibration tries many settings on the same images.

        With options.caption, `captions` holds each image's caption (extract_many makes them)."""
        learned = self._calibration()  # read once per call, not once per setting
        tau, tau_source = self._tau(options.tau, learned)
        selection = replace(options, tau=tau, **self._model_selection_defaults(options), **self._learned_negatives(options, learned))
        results = []
        for index, scores in enumerate(scoring.score(image_embeddings, self.text_embeddings)):
            tags = select(scores, self.vocabulary, self.text_embeddings, self.token_costs, selection)
            prompt, negative = prompts(tags, options.weights)
            caption = ""
            if options.caption:
                prompt, tags, caption = self._with_caption(captions[index], tags, options)
            source = names[index] if index < len(names) else ""
            results.append(Extraction(prompt, negative, tags, self.model_id, tau, tau_source, source, caption))
        return results

    def captioner(self, spec: str) -> Captioner:
        """The captioner, loaded on first use, on CLIP's device and dtype (loading it early surfaces its errors early)."""
        return load_captioner(spec, self.loaded.device, self.loaded.dtype, self.cache_dir)

    def caption(self, images: Sequence, options: ExtractOptions) -> list[str]:
        """One caption per image; the captioner then leaves the GPU so that it and CLIP never share VRAM."""
        with self._lock:
            captioner = self.captioner(options.caption)
            try:
                return [captioner.caption(image, options.caption_options) for image in images]
            finally:
                if not self.keep_in_vram and captioner.device.type != "cpu":
                    captioner.to("cpu")

    def _with_caption(self, caption: str, tags: list[TagScore], options: ExtractOptions) -> tuple[str, list[TagScore], str]:
        """(prompt, tags, caption): `caption, tags...` in the token budget; positive tags the caption
        repeats or that no longer fit go "off", so the tags' roles still match the prompt."""
        caption, kept = compose(caption, tags, lambda text: embedding.token_count(self.loaded, text), options.token_budget)
        dropped = {tag.tag for tag in tags if tag.role == "positive"} - {tag.tag for tag in kept}
        tags = [replace(tag, role="off") if tag.tag in dropped else tag for tag in tags]
        return ", ".join(filter(None, [escape(caption), format_prompt(kept, options.weights)])), tags, caption

    def _model_selection_defaults(self, options: ExtractOptions) -> dict:
        """A model folder may ask for other defaults (shapes-demo: one tag per category)."""
        defaults = {}
        if options.max_per_category == ExtractOptions.max_per_category and "max_per_category" in self.loaded.defaults:
            defaults["max_per_category"] = int(self.loaded.defaults["max_per_category"])
        return defaults

    def _learned_negatives(self, options: ExtractOptions, learned: dict) -> dict:
        """With tau automatic and the default count, the count of negatives learned with tau."""
        if options.tau is not None or options.negatives != ExtractOptions.negatives:
            return {}
        count = learned.get("negatives", self.loaded.defaults.get("negatives"))
        return {"negatives": int(count)} if isinstance(count, (int, float)) else {}

    def resolve_tau(self, requested: float | None) -> tuple[float, str]:
        """tau and where it came from: the option, this model's calibration file, or its defaults."""
        return self._tau(requested, self._calibration())

    def _tau(self, requested: float | None, learned: dict) -> tuple[float, str]:
        if requested is not None:
            return float(requested), "option"
        if isinstance(learned.get("tau"), (int, float)):
            return float(learned["tau"]), f"calibrated ({calibration_path(self.cache_dir, self.model_id)})"
        if "tau" in self.loaded.defaults:
            return float(self.loaded.defaults["tau"]), "model default"
        return DEFAULT_TAU, "built-in default"

    def _calibration(self) -> dict:
        """What `easy-diffuser calibrate` learned for this model; {} when nothing (or a damaged file)."""
        try:
            learned = json.loads(calibration_path(self.cache_dir, self.model_id).read_text())
        except (OSError, ValueError):
            return {}  # a missing or damaged calibration file falls back to the defaults, never breaks extraction
        return learned if isinstance(learned, dict) else {}


def calibration_path(cache_dir: Path, model_id: str) -> Path:
    """Where a learned tau for this model lives (written by `easy_diffuser calibrate`)."""
    return Path(cache_dir) / "calibration" / f"{safe_name(model_id)}.json"
