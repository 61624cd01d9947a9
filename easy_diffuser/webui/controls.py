"""The tab's webui-free logic: a click on a tag, and the Calibrate section's number fields."""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

from ..options import CaptionOptions, ExtractOptions
from ..prompt import prompts
from ..selection import Role, TagScore, with_role

NEXT_ROLE: dict[Role, Role] = {"positive": "negative", "negative": "off", "off": "positive"}

def extract_options(
    max_tags: float, auto_tau: bool, tau: float, weights: bool, quality_negatives: float, negatives: float,
    caption: Optional[CaptionOptions] = None,
) -> ExtractOptions:
    """The tab's control values as ExtractOptions, checked by the options schema (sliders give floats: 12.0 is 12)."""
    return ExtractOptions(
        max_tags=max_tags, tau=None if auto_tau else tau, weights=weights, quality_negatives=quality_negatives,
        negatives=negatives, caption=caption,
    )


def cycle_tag(tags: Sequence[TagScore], tag: str, weights: bool) -> tuple[list[TagScore], str, str]:
    """A click on a tag: positive -> negative -> off -> positive; returns (tags, prompt, negative prompt)."""
    role = next((item.role for item in tags if item.tag == tag), None)
    changed = with_role(tags, tag, NEXT_ROLE[role]) if role else list(tags)
    return (changed, *prompts(changed, weights))


def numbers_text(values: Sequence[float]) -> str:
    """A sweep as the text field shows it: "-1, -0.75, 0"."""
    return ", ".join(f"{value:g}" for value in values)


def parse_taus(text: str) -> tuple[float, ...]:
    """The taus field: numbers separated by commas or spaces; ValueError with a message for the user."""
    return tuple(dict.fromkeys(_numbers(text, "taus", float, "-0.5, 0, 0.5, 1")))  # a repeat would only cost time


def parse_negatives(text: str) -> tuple[int, ...]:
    """The negatives field: whole numbers of negative tags, 0 or more."""
    counts = _numbers(text, "negatives", int, "2, 4, 8")
    if any(count < 0 for count in counts):
        raise ValueError("negatives: the numbers of negative tags can't be below 0.")
    return tuple(dict.fromkeys(counts))


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
            raise ValueError(f"{name}: {token!r} is not {what}; separate numbers with commas, e.g. {example}.") from None
        if not math.isfinite(value):  # float() reads "nan" and "inf", which no sweep can use
            raise ValueError(f"{name}: {token!r} is not a finite number.")
        values.append(value)
    return values

