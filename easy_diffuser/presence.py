"""Which tags a model believes an image may show: a probability per tag from its relevance (scoring.py).

    p = sigmoid((relevance - center) / temperature)

A tag with p >= MAY_BE_PRESENT is never a negative (selection.py): a negative prompt naming what
the image shows makes the generator leave it out, which costs more than one negative fewer. 0.5
("more likely than not") was not enough: on held-out shapes-world scenes over the settings a user
can reach, a true attribute still landed in the negative prompt in 1.6-2.7% of results (the tiny
model cannot tell "small" from "large" near the boundary); 0.2 gave 0.5-0.9%, 0.1 gives 0.1-0.4%
(`python -m easy_diffuser.calibration.negative_guard`). Calibration's metric compares images by
the same probabilities.

center and temperature are per model: relevance is a z-score over the vocabulary, so how many
standard deviations make a tag present depends on how many of the vocabulary's tags an image
usually shows. A model folder states them in easy_diffuser.json as "prob_center" and
"prob_temperature" (shapes-demo's were fitted by logistic regression on labelled scenes,
calibration/metric.py's fit_tag_calibration). Without them the built-in default holds, made for
vocabularies of thousands of tags (the shipped 3,770): an image shows a small fraction of them, so
a tag counts as present from about two standard deviations above the image's average tag, and with
temperature 0.2 the guard starts at relevance 1.56 (p = 0.1), just above the tau of 1.5 the
registry's models ship with, so their default negatives stay as they were. (The only fit in such a
vocabulary, shapes-demo with the 3,770 tags added, gave center 2.6, temperature 0.24.) A small own
vocabulary puts true tags lower (shapes-demo: 13 tags, 4 true for every image, center 0.70): fit
its values rather than rely on the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .errors import ModelError

DEFAULT_CENTER = 2.0
DEFAULT_TEMPERATURE = 0.2
MAY_BE_PRESENT = 0.1  # p from which the image may show a tag: never a negative (relevance >= center - 2.2 temperature)


@dataclass(frozen=True)
class TagCalibration:
    center: float = DEFAULT_CENTER
    temperature: float = DEFAULT_TEMPERATURE
    source: str = "built-in default"

    def probabilities(self, relevance: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((relevance - self.center) / self.temperature)

    def may_be_present(self, relevance: torch.Tensor) -> torch.Tensor:
        """True where the image may show the tag (p >= MAY_BE_PRESENT): never a negative."""
        return self.probabilities(relevance) >= MAY_BE_PRESENT

    def to_dict(self) -> dict:
        return {"center": round(self.center, 4), "temperature": round(self.temperature, 4), "source": self.source}


BUILT_IN = TagCalibration()  # for models without their own prob_center and prob_temperature


def model_tag_calibration(defaults: Mapping[str, Any], where: str = "easy_diffuser.json") -> TagCalibration:
    """The model's "prob_center"/"prob_temperature" from its defaults, else the built-in default.

    ModelError (naming `where` and the field) for one without the other, a non-number, a value that
    is not finite or a temperature <= 0."""
    given = [name for name in ("prob_center", "prob_temperature") if name in defaults]
    if not given:
        return BUILT_IN
    if len(given) == 1:
        raise ModelError(f"{where}: {given[0]} needs prob_center and prob_temperature together; set both or neither")
    center, temperature = (_finite(defaults[name], name, where) for name in ("prob_center", "prob_temperature"))
    if temperature <= 0:
        raise ModelError(f"{where}: prob_temperature must be a number > 0, not {defaults['prob_temperature']!r}")
    return TagCalibration(center, temperature, "model default")


def _finite(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelError(f"{where}: {name} must be a finite number, not {value!r}")
    return float(value)
