"""How the positive prompt reads: which style, which captioner, which token budget, counted how.

    tags       CLIP's tags, optionally behind a caption: `caption, tag, tag`, 75 CLIP tokens (SD 1.x, 2.x, SDXL)
    sentences  a describing captioner's paragraph, then the tags it does not say: `A woman ... light. tag, tag`,
               within the target text encoder's budget: 512 T5 tokens for Flux, SD3 and Qwen-Image
    booru      a booru tagger model's tags (the WD tagger backend, booru.py); not a style a CLIP model writes
    automatic  booru for a tagger model; else the style of the checkpoint family (checkpoint_family.py),
               `tags` when the family is unknown

The negative prompt is the project's own in every style.

T5 counts without T5's tokenizer. None can be had here (nor assumed on a user's machine), so the
sentences budget is counted with a bound that can only over-count: T5's SentencePiece tokenizer
normalises the text (NFKC), turns each run of spaces and the start into one "▁" character, and
every token it makes covers at least one character of that, so

    T5 tokens <= characters after NFKC with runs of whitespace as one + 1 ("▁" at the start) + 1 (the end token).

That holds for any text, also unknown characters (one <unk> each). It is cautious: English
averages about 4 characters a T5 token, so 512 tokens are 510 characters of description rather
than about 2,000. With the real tokenizer (`t5_counter(tokenizer)`, e.g. the host's when Flux is
loaded) the count is exact.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from .checkpoint_family import UNKNOWN, Detected, Family
from .options import DEFAULT_DESCRIBER, CaptionOptions, ExtractOptions, OptionError

TokenCounter = Callable[[str], int]
WRITTEN = ("tags", "sentences")  # the styles any model's extraction writes; booru needs a booru tagger


@dataclass(frozen=True)
class Style:
    """The style in force for an extraction, and what it needs."""

    name: str  # "tags", "sentences" or "booru"
    reason: str  # why, for the status line: "automatic: the loaded model is a Flux"
    caption: CaptionOptions | None  # the captioner to run; sentences: the default describer unless one is chosen
    family: Family  # the checkpoint family the prompt is for (UNKNOWN when none is known)

    @property
    def sentences(self) -> bool:
        return self.name == "sentences"

    @property
    def uses_t5(self) -> bool:
        """Whether the budget counts T5 tokens: sentences for a T5 family, or for no known family."""
        return self.sentences and (self.family.text_encoder == "t5" or self.family is UNKNOWN)


def resolve(options: ExtractOptions, target: Detected | None = None, writes: str | None = None) -> Style:
    """The style `options.prompt_style` means for the checkpoint `target` (None: none known) and a model whose
    kind `writes` a style of its own ("booru": a booru tagger's) or none (CLIP: the checkpoint's style)."""
    target = target or Detected(UNKNOWN, "no checkpoint is known")
    family, requested = target.family, options.prompt_style
    if requested == "automatic" and writes:
        name, reason = writes, f"automatic: {writes}, as the model is a {writes} tagger"
    elif requested == "automatic":
        name = family.prompt_style if family.prompt_style in WRITTEN else "tags"
        known = f" for {family.label}" if family is not UNKNOWN else ""
        reason = f"automatic: {name}{known}, as {target.reason}"
    elif requested not in WRITTEN and requested != writes:
        raise OptionError(
            "prompt_style",
            f"{requested} is the prompt of a {requested} tagger model; this model writes tags or sentences",
        )
    else:
        name, reason = requested, "chosen"
    caption = options.caption
    if name == "sentences" and caption is None:
        caption = CaptionOptions(DEFAULT_DESCRIBER)
    return Style(name, reason, caption, family)


def t5_token_bound(text: str) -> int:
    """At least as many as T5 tokens `text` costs with its end token (see the module docstring)."""
    return len(" ".join(unicodedata.normalize("NFKC", text).split())) + 2


def t5_counter(tokenizer: Any) -> TokenCounter:
    """Exact T5 token counts (its end token included) from a `transformers` T5 tokenizer."""
    return lambda text: len(tokenizer(text).input_ids)


def status(style: Style) -> str:
    """The status line's words for the style: which one, why, and whether the negative prompt counts."""
    text = f"prompt style {style.name} ({style.reason})"
    return f"{text}; {style.family.negative_note}" if style.family.negative_note else text
