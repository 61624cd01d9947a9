"""The pipeline every entry point calls: image -> features -> scores -> tags -> prompts.

The model behind the features is of any kind (kinds/: CLIP, a WD tagger, a plugin's), behind the scorer seam
(scorers.py); the kind also says how its tags are chosen and framed. Everything else is one path for all.

    engine = Engine("shapes-demo")
    result = engine.extract("image.png")
    result.prompt, result.negative_prompt, result.tags

With `ExtractOptions(caption=CaptionOptions(MODEL))` a captioner (captioner.py) runs first and its caption leads
the positive prompt: `caption, tag, tag, ...` in the same token budget. `prompt_style` (prompt_style.py) says
how the prompt reads: with `sentences` a describing captioner's paragraph leads, in the target encoder's budget;
`automatic` follows `Engine.target`, the checkpoint the prompts are for (checkpoint_family.py).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from . import prompt_style
from .captioner import Captioner, check_supported, compose, join, load_captioner
from .checkpoint_family import T5_TOKENS, Detected
from .devices import HostPlacement, check_device
from .embedding import ProgressFn
from .families import Preset
from .files import safe_name
from .images import ImageInput, load_image
from .kinds.base import Kind, Loaded
from .models import DEFAULT_CACHE_DIR, DEFAULT_MODEL, declared_defaults, load_model
from .options import CaptionOptions, ExtractOptions
from .presence import TagCalibration, model_tag_calibration
from .prompt import escape, format_prompt, prompts
from .registry import kind_for
from .scorers import TagScorer
from .scoring import require_finite
from .selection import SelectionOptions, TagScore, select
from .settings_files import SettingsFileError, read_calibration
from .tag_replacement import TagView, replaced
from .tag_text import normal, tag_list
from .vocabulary import Vocabulary

if TYPE_CHECKING:
    from .describe_server import ServerDescriber

DEFAULT_TAU = 1.0
# Options whose default a model may set (ModelInfo.defaults, a folder's easy_diffuser.json): used only where the
# option is left at its schema default, as automatic tau is resolved.
MODEL_DEFAULT_OPTIONS = ("max_per_category", "general_threshold", "character_threshold")
__all__ = ["CaptionOptions", "Engine", "ExtractOptions", "Extraction"]
log = logging.getLogger(__name__)


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
    prompt_style: str = "tags"  # the style in force: "tags" or "sentences" (automatic resolved)
    style_note: str = ""  # which style and why, for a status line (prompt_style.status)
    preset: Preset | None = None  # a tagger's checkpoint family preset, and why (None for CLIP)

    def to_dict(self) -> dict:
        data = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "tags": [t.to_dict() for t in self.tags],
        }
        data.update(model=self.model, tau=self.tau, tau_source=self.tau_source, caption=self.caption)
        data.update(prompt_style=self.prompt_style, prompt_style_note=self.style_note)
        data["preset"] = self.preset.status if self.preset else None  # null for CLIP, as the HTTP answer says
        if self.source:
            data["source"] = self.source
        return data


class Engine:
    """A loaded model of any kind with its vocabulary and scorer, ready to extract."""

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
        # The webui's rules for putting the captioner on the GPU and taking it off (its memory manager's, under
        # Forge); None: the captioner moves itself, and keep_in_vram decides.
        self.placement: HostPlacement | None = None
        self.low_vram = False  # the host's --lowvram/--medvram: captioners larger than such a GPU are refused
        self.loaded: Loaded = load_model(model, check_device(device), dtype, self.cache_dir)
        self.kind: Kind = kind_for(model)  # its policy: how tags are chosen, budgeted and framed
        # Which tags an image shows, for the negative prompt's guard and calibration's metric (a tagger's
        # probabilities say it directly).
        self.tag_calibration: TagCalibration = model_tag_calibration(
            self.loaded.defaults, f"{model}: easy_diffuser.json"
        )
        self.scorer: TagScorer = self.kind.scorer(self.loaded, self.cache_dir, vocabulary_dirs, progress)
        self._lock = threading.Lock()  # one model, many callers (HTTP routes, the tab)
        # The checkpoint the prompts are for (checkpoint_family.detect*): automatic prompt style follows its family,
        # and family=automatic picks a tagger's preset from its name and metadata. The webui sets it when the
        # checkpoint changes; the CLI and Ray from --checkpoint.
        self.target: Detected | None = None
        self.t5_tokens: prompt_style.TokenCounter = prompt_style.t5_token_bound  # the host's T5 tokenizer if it has one
        # A VLM server that describes in place of any in-process captioner (describe_server.py): set by the surfaces
        # from --caption-url or the webui's settings; None: nothing is sent anywhere.
        self.describer: ServerDescriber | None = None
        self._views: dict[str, TagView] = {}  # the last --replace-tags rules' view of the vocabulary

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def vocabulary(self) -> Vocabulary:
        return self.scorer.vocabulary

    @property
    def token_costs(self) -> list[int]:
        return self.scorer.token_costs

    def extract(
        self, image: ImageInput, options: ExtractOptions = ExtractOptions(), name: str | None = None
    ) -> Extraction:
        """One image (path, bytes or PIL image); a path is the result's `source` unless `name` is given."""
        source = name or (str(image) if isinstance(image, (str, os.PathLike)) else "")
        return self.extract_many([load_image(image, name)], options, [source])[0]

    def extract_many(
        self, images: Sequence, options: ExtractOptions = ExtractOptions(), names: Sequence[str] = ()
    ) -> list[Extraction]:
        """Extract a batch of already loaded PIL images (one forward pass)."""
        return self.extract_with_embeddings(images, options, names)[0]

    def extract_with_embeddings(
        self, images: Sequence, options: ExtractOptions = ExtractOptions(), names: Sequence[str] = ()
    ) -> tuple[list[Extraction], torch.Tensor]:
        """extract_many, and the images' features, from which a re-selection needs no model pass."""
        caption = self.style(options).caption
        embeddings = self.encode(images)  # first: a server's instruction may hold the image's tags
        captions = self.caption(images, caption, self.grounding(embeddings, options)) if caption else []
        return self.extract_embeddings(embeddings, options, names, captions), embeddings

    def encode(self, images: Sequence) -> torch.Tensor:
        """The model's features of each image (float32, CPU; scorers.py): CLIP's unit-length image embedding,
        a tagger's tag probabilities. What re-selection keeps."""
        return self.encode_tensors(torch.stack([self.loaded.preprocess(image) for image in images]))

    def encode_tensors(self, batch: torch.Tensor) -> torch.Tensor:
        """encode() for images already through `self.loaded.preprocess`, stacked (pipeline.py decodes in workers).
        NonFiniteScores when the model gives NaN or inf for any of them (a batch run fails those alone)."""
        with self._lock:
            features = self.scorer.features(batch)
        return require_finite(features, self.model_id, self.loaded.dtype)

    def extract_embeddings(
        self,
        image_embeddings: torch.Tensor,
        options: ExtractOptions = ExtractOptions(),
        names: Sequence[str] = (),
        captions: Sequence[str] = (),
        selection: SelectionOptions | None = None,
    ) -> list[Extraction]:
        """Extract from images already encoded (`encode`): calibration tries many settings on the same images.

        With options.caption, `captions` holds each image's caption (extract_many makes them).
        `selection` replaces what options would resolve to (calibration's sweep sets tau itself)."""
        if selection is None:
            selection, tau_source = self.selection_options(options)
        else:
            tau_source = "set by the caller"
        style = self.style(options)
        preset = self.kind.preset(options, self.target)
        note = prompt_style.status(style) + (f"; {self.describer.status}" if style.caption and self.describer else "")
        results = []
        view = self.tag_view(options.replace_tags)
        for index, scores in enumerate(self.scorer.scores(image_embeddings)):
            tags = select(view.scores(scores), view.vocabulary, view.twins, view.token_costs, selection)
            prompt, negative = prompts(tags, options.weights)
            caption = ""
            if style.caption:
                prompt, tags, caption = self._with_caption(captions[index], tags, options, style)
            prompt, negative = framed(preset, prompt, negative, tags)
            source = names[index] if index < len(names) else ""
            result = Extraction(prompt, negative, tags, self.model_id, selection.tau, tau_source, source, caption)
            result = replace(result, prompt_style=style.name, style_note=note, preset=preset)
            results.append(result)
        return results

    def tag_view(self, rules: str) -> TagView:
        """The vocabulary selection sees: the model's, or as `replace_tags` rules rename it (tag_replacement.py)."""
        if rules not in self._views:
            scorer = self.scorer
            self._views = {rules: replaced(self.vocabulary, scorer.twins, self.token_costs, scorer.token_count, rules)}
        return self._views[rules]

    def selection_options(self, options: ExtractOptions) -> tuple[SelectionOptions, str]:
        """What the options mean for this model now, and where tau came from: automatic tau
        and the default counts resolve to the calibration file or the model's own defaults."""
        learned = self._calibration()  # read once per call, not once per image
        tau, tau_source = self._tau(options.tau, learned)
        options = self.model_options(options)
        selection = SelectionOptions(
            max_tags=options.max_tags,
            max_per_category=options.max_per_category,
            tau=tau,
            negatives=self._learned_negatives(options, learned).get("negatives", options.negatives),
            quality_negatives=options.quality_negatives,
            token_budget=self.token_budget(options),
            dedup_threshold=options.dedup_threshold,
            presence=self.tag_calibration,
            rule=self.kind.rule(options, self.kind.preset(options, self.target)),
            exclude=tag_list(options.exclude_tags),
            first=tag_list(options.first_tags),
        )
        return selection, tau_source

    def token_budget(self, options: ExtractOptions) -> int:
        """The positive prompt's tokens: the option, else the kind's (one CLIP chunk; three for a tagger)."""
        return options.token_budget if options.token_budget is not None else self.kind.token_budget

    def captioner(self, spec: str) -> Captioner:
        """The captioner, loaded on first use (loaded early, its errors show early) in CLIP's dtype, on CLIP's device
        or, under a host's placement, where it is until each use places it."""
        check_supported(spec, self.low_vram)
        device = None if self.placement else self.loaded.device  # a host places it at each use
        return load_captioner(spec, device, self.loaded.dtype, self.cache_dir)

    def style(self, options: ExtractOptions) -> prompt_style.Style:
        """The prompt style the options mean for `self.target`, with the captioner it runs."""
        return prompt_style.resolve(options, self.target, self.kind.writes)

    def caption(self, images: Sequence, options: CaptionOptions, tags: Sequence[str] = ()) -> list[str]:
        """One caption per image; the captioner then leaves the GPU so that it and CLIP never share VRAM.
        A server describes instead when one is set (`tags`: each image's, for its instruction)."""
        if self.describer is not None:  # nothing of it on this machine: no lock while the server answers
            return self.describer.caption_all(images, options, tags)
        with self._lock, self._placed(self.captioner(options.model)) as captioner:
            return [captioner.caption(image, options) for image in images]

    @contextmanager
    def _placed(self, captioner: Captioner) -> Iterator[Captioner]:
        """The captioner on the device for its captions, through the host's placement where one is set (a memory
        manager makes room for it beside CLIP, evicting the checkpoint if need be); else it leaves unless kept."""
        if self.placement is not None:
            self.placement.acquire(captioner)
        try:
            yield captioner
        finally:
            if self.placement is not None:
                self.placement.release(captioner)
            elif not self.keep_in_vram and captioner.device.type != "cpu":
                captioner.to("cpu")

    def grounding(self, embeddings: torch.Tensor, options: ExtractOptions) -> list[str]:
        """Each image's positive tags as text, for a server whose instruction asks for them; else none."""
        if self.describer is None or not self.describer.grounded:
            return []
        untagged = replace(options, caption=None, prompt_style="tags")  # the tags alone: no caption, no preset
        results = self.extract_embeddings(embeddings, untagged)
        return [", ".join(tag.tag for tag in result.tags if tag.role == "positive") for result in results]

    def _with_caption(
        self, caption: str, tags: list[TagScore], options: ExtractOptions, style: prompt_style.Style
    ) -> tuple[str, list[TagScore], str]:
        """(prompt, tags, caption): caption then tags in the style's token budget; positive tags the caption
        repeats or that no longer fit go "off", so the tags' roles still match the prompt."""
        if style.uses_t5:
            cost, budget = self.t5_tokens, T5_TOKENS
        else:
            cost, budget = self.scorer.token_count, self.token_budget(options)
        caption, kept = compose(caption, tags, cost, budget, style.sentences)
        dropped = {tag.tag for tag in tags if tag.role == "positive"} - {tag.tag for tag in kept}
        tags = [replace(tag, role="off") if tag.tag in dropped else tag for tag in tags]
        return join(escape(caption), [format_prompt(kept, options.weights)], style.sentences), tags, caption

    def model_options(self, options: ExtractOptions) -> ExtractOptions:
        """The options with the model's own defaults where they are left at the schema's: a model (its ModelInfo,
        its folder's easy_diffuser.json) may ask for other MODEL_DEFAULT_OPTIONS (shapes-demo: one tag per
        category; PixAI: the thresholds of its card)."""
        changes = {
            name: type(getattr(options, name))(self.loaded.defaults[name])
            for name in MODEL_DEFAULT_OPTIONS
            if name in self.loaded.defaults and getattr(options, name) == getattr(ExtractOptions, name)
        }
        return replace(options, **changes) if changes else options

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
        return _automatic_tau(learned, self.loaded.defaults, calibration_path(self.cache_dir, self.model_id))

    def _calibration(self) -> dict:
        return _learned(self.cache_dir, self.model_id)


def framed(preset: Preset | None, positive: str, negative: str, tags: Sequence[TagScore]) -> tuple[str, str]:
    """A tagger's prompts inside its checkpoint family's preset: quality tags around the positive one, the
    family's template after the image's own negatives (CLIP's, with no preset, as they are)."""
    if preset is None:
        return positive, negative
    shown = {normal(tag.tag) for tag in tags if tag.role == "positive"}
    return preset.positive([positive]), preset.negative([negative], _wd_rating(tags, preset), shown)


def _wd_rating(tags: Sequence[TagScore], preset: Preset) -> str | None:
    """The image's rating in WD's word (general, ...), read back from the family's word in the prompt."""
    words = {tag.tag for tag in tags if tag.category == "rating" and tag.role == "positive"}
    ratings = preset.family.ratings if preset.family else {}
    return next((wd for wd, word in ratings.items() if word in words), None)


def automatic_values(spec: str, cache_dir: str | os.PathLike) -> tuple[float, int] | None:
    """What automatic tau and negatives mean for a model, read without loading it (the tab shows them
    before the first extraction); None when that needs the model itself (model folders, checkpoint files)."""
    declared = declared_defaults(spec)
    if declared is None:
        return None
    model_id, defaults = declared
    learned = _learned(Path(cache_dir), model_id)
    tau, _ = _automatic_tau(learned, defaults, calibration_path(Path(cache_dir), model_id))
    return tau, int(learned.get("negatives", defaults.get("negatives", ExtractOptions.negatives)))


def _automatic_tau(learned: dict, defaults: dict, path: Path) -> tuple[float, str]:
    """tau and where it came from: this model's calibration file, else its defaults, else the built-in one."""
    if isinstance(learned.get("tau"), (int, float)):
        return float(learned["tau"]), f"calibrated ({path})"
    if "tau" in defaults:
        return float(defaults["tau"]), "model default"
    return DEFAULT_TAU, "built-in default"


def _learned(cache_dir: Path, model_id: str) -> dict:
    """What `easy-diffuser calibrate` learned for this model; {} when nothing (or a damaged file)."""
    try:
        return read_calibration(calibration_path(cache_dir, model_id))
    except SettingsFileError as error:  # a damaged file falls back to the defaults, never breaks extraction
        _warn_once(f"ignoring calibration: {error}; using the defaults")
        return {}


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Once per process: a batch must not repeat the same line for every image."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def calibration_path(cache_dir: Path, model_id: str) -> Path:
    """Where a learned tau for this model lives (written by `easy_diffuser calibrate`)."""
    return Path(cache_dir) / "calibration" / f"{safe_name(model_id)}.json"
