"""Step 5 of the data flow: selected tags -> webui prompt text.

Tags are comma-separated; characters the webui reads as attention syntax are escaped; with
weights on, each positive tag gets `(tag:w)` from how far its relevance stands above or below
the other selected tags (the webui drops that syntax before counting tokens, so weights cost
no budget).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # annotations only: selection.py imports options.py, which imports caption_files.py and so this
    from .selection import TagScore

_SPECIAL = re.compile(r"([\\()\[\]])")
WEIGHT_STEP = 0.05
WEIGHT_PER_RELEVANCE = 0.1  # weight added per standard deviation above the selection's mean
WEIGHT_RANGE = (0.8, 1.3)


def escape(tag: str) -> str:
    """Backslash-escape \\ ( ) [ ] so the webui reads them as text, not attention."""
    return _SPECIAL.sub(r"\\\1", tag)


def format_prompt(tags: Sequence[TagScore], weights: bool = False) -> str:
    if not weights:
        return ", ".join(escape(tag.tag) for tag in tags)
    return ", ".join(weighted(escape(tag.tag), weight) for tag, weight in zip(tags, tag_weights(tags)))


def tag_weights(tags: Sequence[TagScore]) -> list[float]:
    """Each tag's weight by how far its relevance stands above the others' mean, in WEIGHT_STEPs."""
    if not tags:
        return []
    mean = sum(tag.relevance for tag in tags) / len(tags)
    low, high = WEIGHT_RANGE
    weights = [1.0 + WEIGHT_PER_RELEVANCE * (tag.relevance - mean) for tag in tags]
    return [round(min(high, max(low, weight)) / WEIGHT_STEP) * WEIGHT_STEP for weight in weights]


def weighted(text: str, weight: float) -> str:
    """`(text:w)`, or the text alone at weight 1."""
    return text if abs(weight - 1.0) < 1e-9 else f"({text}:{weight:.2f})"


def prompts(tags: Sequence[TagScore], weights: bool = False) -> tuple[str, str]:
    """(positive prompt, negative prompt) from tags with roles; weights apply to the positive one."""
    positive = [tag for tag in tags if tag.role == "positive"]
    negative = [tag for tag in tags if tag.role == "negative"]
    return format_prompt(positive, weights), format_prompt(negative)
