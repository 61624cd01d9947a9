"""The tab's webui-free logic: its controls as options, re-selection without the model, a click on a
tag, and the Calibrate section's number fields."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence

import torch

from ..captioner import join
from ..engine import Engine, Extraction, framed
from ..errors import ModelError
from ..images import ImageInput, load_image
from ..models import declared_defaults
from ..options import CAPTION_FILE_OPTIONS, OPTION, CaptionFileOptions, CaptionOptions, ExtractOptions, OptionError
from ..prompt import escape, prompts
from ..registry import kind_for, kinds
from ..selection import Role, TagScore, with_role

NEXT_ROLE: dict[Role, Role] = {"positive": "negative", "negative": "off", "off": "positive"}
# The tab's controls, in the order the tab lays them out; the values of a handler's `values` mapping.
CONTROLS = (
    "max_tags",
    "auto_tau",
    "tau",
    "negatives",
    "quality_negatives",
    "general_threshold",
    "character_threshold",
    "general_mcut",
    "character_mcut",
    "family",
    "exclude_tags",
    "first_tags",
    "weights",
    "caption",
    "caption_model",
    "prompt_style",
)
THRESHOLDS = ("general_threshold", "character_threshold")  # a tagger's, which a model may set (PixAI's card)


def model_thresholds(spec: str) -> dict[str, float]:
    """The thresholds the tab first shows: the model's own where they are known without loading it (PixAI's card:
    0.30 and 0.75), else the schema's."""
    declared = declared_defaults(spec)
    own = declared[1] if declared else {}
    return {name: float(own.get(name, OPTION[name].default)) for name in THRESHOLDS}


def own_thresholds(values: Mapping[str, Any], shown: Mapping[str, float]) -> dict[str, Any]:
    """The values, with each threshold still where the page showed it read as "the model's own" (the schema's
    default, which the engine replaces by the model's): a model chosen in Settings since then keeps its own."""
    return {**values, **{name: OPTION[name].default for name, value in shown.items() if values.get(name) == value}}


# The batch section's caption-file controls: the schema's caption-file options and the tag replacements,
# which the batch's own extractions take.
CAPTION_FILE_CONTROLS = (*(option.name for option in CAPTION_FILE_OPTIONS), "replace_tags")
# The controls a re-selection answers at once; the captioner ones need the image again (Extract), Weights has
# a handler of its own. The prompt style re-selects with the caption it has; only a description the image has
# not had yet needs Extract.
RESELECTING = tuple(name for name in CONTROLS if name not in ("weights", "caption", "caption_model"))
STALE = "The model changed since this image was extracted: press Extract."
NEEDS_DESCRIPTION = "The sentences style needs a description of this image: press Extract."
# Controls that mean something for some kinds of model only (each kind's `controls`: a tagger's thresholds decide
# how many tags go in, CLIP's max_tags); the tab shows those of the model that made the tags.
KIND_CONTROLS = tuple(name for name in CONTROLS if any(name in kind.controls for kind in kinds()))


def shown_for(kind_name: str) -> dict[str, bool]:
    """{control in KIND_CONTROLS: whether it shows} for the models of a kind (by its name)."""
    kind = next((kind for kind in kinds() if kind.name == kind_name), None)
    return {name: kind is not None and name in kind.controls for name in KIND_CONTROLS}


def kind_name(model: str) -> str:
    """The kind of the model a setting names; "" while it names none (Extract then says why)."""
    try:
        return kind_for(model).name
    except ModelError:
        return ""


def extract_options(values: Mapping[str, Any], caption_decoding: Mapping[str, int] | None = None) -> ExtractOptions:
    """The tab's control values (keyed by CONTROLS) as ExtractOptions, checked by the options schema
    (sliders give floats: 12.0 is 12). `caption_decoding`: the captioner settings (beams, lengths).

    Automatic covers tau and the number of negatives, which a calibration learns together: the
    engine then resolves both (the calibration, else the model's defaults)."""
    caption = CaptionOptions(values["caption_model"], **(caption_decoding or {})) if values["caption"] else None
    automatic = values["auto_tau"]
    # Every control named after a schema option passes as it is; a new one needs no line here.
    passed = {name: values[name] for name in CONTROLS if name in OPTION}
    if automatic:
        passed.update(tau=None, negatives=OPTION["negatives"].default)
    return ExtractOptions(**passed, caption=caption)


def batch_options(values: Mapping[str, Any], options: ExtractOptions) -> tuple[ExtractOptions, CaptionFileOptions]:
    """The batch section's values (keyed by CAPTION_FILE_CONTROLS): the tab's options with its tag replacements,
    and the caption-file options; OptionError (a ValueError) names a bad one."""
    files = CaptionFileOptions(**{option.name: values[option.name] for option in CAPTION_FILE_OPTIONS})
    return replace(options, replace_tags=values["replace_tags"]), files


def extract(engine: Engine, image: ImageInput, options: ExtractOptions) -> "Extracted":
    """One image through the model (caption, embedding), kept for re-selection."""
    (result,), embedding = engine.extract_with_embeddings([load_image(image)], options)
    return _kept(engine, embedding, options, result)


def _selected(engine: Engine, embedding: torch.Tensor, options: ExtractOptions, captions: list[str]) -> "Extracted":
    (result,) = engine.extract_embeddings(embedding, options, captions=captions)
    return _kept(engine, embedding, options, result)


def _kept(engine: Engine, embedding: torch.Tensor, options: ExtractOptions, result: Extraction) -> "Extracted":
    negatives, caption = engine.selection_options(options)[0].negatives, engine.style(options).caption
    features = embedding.detach().to("cpu", torch.float32)
    return Extracted(engine.model_id, features, caption, negatives, result, engine.kind.name)


@dataclass(frozen=True)
class Extracted:
    """What the tab keeps of an extraction so that every control can re-select without the model:
    the image embedding (a few KB), the model it belongs to, the caption, and the current tags."""

    model: str  # the engine's model_id: another model's tags can't be scored against this embedding
    embedding: torch.Tensor  # [1, dim], unit length, CPU
    caption: Optional[CaptionOptions]  # how the caption was made; None: captioning was off
    negatives: int  # the number of negative tags in force (automatic: the calibration's or the model's)
    result: Extraction  # the tags, with the roles the user's clicks gave them
    kind: str = "clip"  # the kind of the model that made the tags: the tab shows that kind's controls

    def with_tags(self, tags: list[TagScore]) -> "Extracted":
        return replace(self, result=replace(self.result, tags=tags))


def reselect(engine: Engine, extracted: Extracted, options: ExtractOptions) -> Extracted:
    """The same image under other options, from its stored embedding: no model forward pass.

    Tags and prompts are chosen afresh, so clicks on tags and hand edits give way to the new selection.
    The caption stays the one made at extraction (the captioner controls need Extract)."""
    if engine.model_id != extracted.model:
        raise ValueError(STALE)
    options = replace(options, caption=extracted.caption)
    if engine.style(options).caption != extracted.caption:  # a captioner this image has not been through
        raise ValueError(NEEDS_DESCRIPTION)
    captions = [extracted.result.caption] if extracted.caption else []
    return _selected(engine, extracted.embedding, options, captions)


def cycle_tag(extracted: Extracted, tag: str) -> Extracted:
    """A click on a tag: positive -> negative -> off -> positive."""
    tags = extracted.result.tags
    role = next((item.role for item in tags if item.tag == tag), None)
    return extracted.with_tags(with_role(tags, tag, NEXT_ROLE[role])) if role else extracted


def tab_prompts(extracted: Extracted, weights: bool) -> tuple[str, str]:
    """(prompt, negative prompt) of the current tags, behind the caption when there is one."""
    result = extracted.result
    positive, negative = prompts(result.tags, weights)
    written = join(escape(result.caption), [positive], result.prompt_style == "sentences")
    return framed(result.preset, written, negative, result.tags)


def numbers_text(values: Sequence[float]) -> str:
    """A sweep as the text field shows it: "-1, -0.75, 0"."""
    return ", ".join(f"{value:g}" for value in values)


def parse_taus(text: str) -> tuple[float, ...]:
    """The taus field: numbers separated by commas or spaces; ValueError with a message for the user."""
    taus = _numbers(text, "taus", float, "-0.5, 0, 0.5, 1")
    _in_range(taus, "taus", OPTION["tau"])
    return tuple(dict.fromkeys(taus))  # a repeat would only cost time


def parse_negatives(text: str) -> tuple[int, ...]:
    """The negatives field: whole numbers of negative tags, 0 or more."""
    counts = _numbers(text, "negatives", int, "2, 4, 8")
    _in_range(counts, "negatives", OPTION["negatives"])
    return tuple(dict.fromkeys(counts))


def _in_range(values: list, name: str, option) -> None:
    """The options schema's range, as extraction accepts it (-5 to 5 for tau)."""
    for value in values:
        try:
            option.check(value)
        except OptionError:
            raise ValueError(
                f"{name}: {value:g} is out of range: each must be from {option.minimum:g} to {option.maximum:g}."
            ) from None


class Pace:
    """Seconds per generation, measured from the first report of a calibration (generations found in its
    partial results cost nothing and are not counted)."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None

    def seconds_each(self, done: int) -> float | None:
        now = time.monotonic()
        if self.start is None:
            self.start = (now, done)
            return None
        started, first = self.start
        return (now - started) / (done - first) if done > first else None


def _numbers(text: str, name: str, kind: type, example: str) -> list:
    tokens = [token for token in re.split(r"[,;\s]+", text.strip()) if token]
    if not tokens:
        raise ValueError(f"{name}: enter at least one number, e.g. {example}.")
    values = []
    for token in tokens:
        try:
            value = kind(token)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(
                f"{name}: {token!r} is not {what}; separate numbers with commas, e.g. {example}."
            ) from None
        if not math.isfinite(value):  # float() reads "nan" and "inf", which no sweep can use
            raise ValueError(f"{name}: {token!r} is not a finite number.")
        values.append(value)
    return values
