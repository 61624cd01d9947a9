"""The tab's webui-free logic: a click on a tag, and the Calibrate section's number fields."""
from __future__ import annotations

import math
import re
import time
from typing import Optional, Sequence

from ..options import OPTION, CaptionOptions, ExtractOptions, OptionError
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
            raise ValueError(f"{name}: {value:g} is out of range: each must be from {option.minimum:g} to {option.maximum:g}.") from None


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
            raise ValueError(f"{name}: {token!r} is not {what}; separate numbers with commas, e.g. {example}.") from None
        if not math.isfinite(value):  # float() reads "nan" and "inf", which no sweep can use
            raise ValueError(f"{name}: {token!r} is not a finite number.")
        values.append(value)
    return values

