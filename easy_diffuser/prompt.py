"""Step 5 of the data flow: selected tags -> webui prompt text.

Tags are comma-separated; characters the webui reads as attention syntax are escaped; with
weights on, each positive tag gets `(tag:w)` from how far its relevance stands above or below
the other selected tags (the webui drops that syntax before counting tokens, so weights cost
no budget).
"""

from __future__ import annotations

import re
from typing import Sequence

from .selection import TagScore

_SPECIAL = re.compile(r"([\\()\[\]])")
WEIGHT_STEP = 0.05
WEIGHT_PER_RELEVANCE = 0.1  # weight added per standard deviation above the selection's mean
WEIGHT_RANGE = (0.8, 1.3)


def escape(tag: str) -> str:
    """Backslash-escape \\ ( ) [ ] so the webui reads them as text, not attention."""
    return _SPECIAL.sub(r"\\\1", tag)


def format_prompt(tags: Sequence[TagScore], weights: bool = False) -> str:
    if not tags:
        return ""
    mean = sum(tag.relevance for tag in tags) / len(tags)
    return ", ".join(_weighted(tag, mean) if weights else escape(tag.tag) for tag in tags)


def prompts(tags: Sequence[TagScore], weights: bool = False) -> tuple[str, str]:
    """(positive prompt, negative prompt) from tags with roles; weights apply to the positive one."""
    positive = [tag for tag in tags if tag.role == "positive"]
    negative = [tag for tag in tags if tag.role == "negative"]
    return format_prompt(positive, weights), format_prompt(negative)


def _weighted(tag: TagScore, mean_relevance: float) -> str:
    low, high = WEIGHT_RANGE
    weight = 1.0 + WEIGHT_PER_RELEVANCE * (tag.relevance - mean_relevance)
    weight = round(min(high, max(low, weight)) / WEIGHT_STEP) * WEIGHT_STEP
    if abs(weight - 1.0) < 1e-9:
        return escape(tag.tag)
    return f"({escape(tag.tag)}:{weight:.2f})"
