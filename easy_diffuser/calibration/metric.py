"""The round trip's metric: does the generated image y have the tags the source image x has?

Each image gets a probability per vocabulary tag from its relevance (scoring.py):

    p = sigmoid((relevance - center) / temperature)

and the loss is the mean binary cross-entropy with the source's p(x) as the target and the
generated image's p(y) as the prediction:

    loss = mean over tags of -[p(x) log p(y) + (1 - p(x)) log(1 - p(y))]

A missing feature (p(x) high, p(y) low) and an unwanted one (p(x) low, p(y) high) both cost;
the loss cannot reach 0 when p(x) is not 0 or 1 (its floor is the entropy of p(x)), but only
differences between settings matter. Beside it the CLIP image-image cosine is reported.

The probabilities are the core's (presence.py), so the metric and the negative prompt's guard
agree on which tags an image shows: center and temperature per model, from its easy_diffuser.json
("prob_center", "prob_temperature", fitted with `fit_tag_calibration` where labelled images exist,
see docs/calibration.md) or the built-in default. A tagger gives its probabilities itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..presence import TagCalibration

if TYPE_CHECKING:  # the engine calls this module (Engine.refine): a type, not an import at run time
    from ..engine import Engine

_EPS = 1e-6  # keeps log() finite for probabilities that round to 0 or 1
BATCH = 64  # images per forward pass


def tag_calibration(engine: Engine) -> TagCalibration:
    """The model's own center/temperature from its defaults, else the built-in default."""
    return engine.tag_calibration


def fit_tag_calibration(relevance: torch.Tensor, present: torch.Tensor, steps: int = 500) -> TagCalibration:
    """Logistic regression of "tag is present" on relevance ([images, tags] each) -> center, temperature."""
    x, y = relevance.flatten().float(), present.flatten().float()
    weight = torch.ones((), requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(weight * x + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    w, b = weight.item(), bias.item()
    # sigmoid(w * r + b) = sigmoid((r - center) / temperature)
    return TagCalibration(center=-b / w, temperature=1.0 / w, source="fitted")


def bce(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the last dimension (tags), one value per row."""
    prediction = prediction.clamp(_EPS, 1 - _EPS)
    return -(target * prediction.log() + (1 - target) * (1 - prediction).log()).mean(dim=-1)


@dataclass(frozen=True)
class Embedded:
    """What the metric needs of a batch of images: unit embeddings and tag probabilities."""

    embeddings: torch.Tensor  # [images, dim]
    probabilities: torch.Tensor  # [images, tags]


class Metric:
    """BCE between tag probabilities, and image-image cosine, with one model."""

    def __init__(self, engine: Engine, calibration: TagCalibration | None = None) -> None:
        self.engine = engine
        self.calibration = calibration or tag_calibration(engine)

    @cached_property  # hashing a large vocabulary's embeddings once is enough
    def fingerprint(self) -> str:
        """Changes when any loss would: the model's weights and vocabulary (through the tag
        embeddings) or the probability calibration. Keys the calibration's saved results."""
        digest = hashlib.sha1(self.engine.scorer.fingerprint())
        digest.update(f"{self.engine.model_id} {self.calibration.center} {self.calibration.temperature}".encode())
        return digest.hexdigest()[:16]

    def embed(self, images: Sequence[Image.Image]) -> Embedded:
        return self.embedded(self.encode(images))

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's features [images, dim] (Engine.encode), in bounded batches: a big folder mustn't fill the GPU."""
        return torch.cat([self.engine.encode(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])

    def embedded(self, embeddings: torch.Tensor) -> Embedded:
        scores = self.engine.scorer.scores(embeddings)
        if scores and scores[0].probability is not None:  # a tagger's own
            return Embedded(embeddings, torch.stack([s.probability for s in scores]))
        return Embedded(embeddings, self.calibration.probabilities(torch.stack([s.relevance for s in scores])))

    def relevance(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Relevance of every tag [images, tags] for the model's features [images, dim]."""
        return torch.stack([s.relevance for s in self.engine.scorer.scores(embeddings)])

    def compare(self, source: Embedded, generated: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, cosine) per pair of rows: source row i against generated row i (the cosine of the features:
        CLIP's image-image cosine; for a tagger, of the two images' probability vectors)."""
        loss = bce(source.probabilities, generated.probabilities)
        cosine = F.cosine_similarity(source.embeddings, generated.embeddings, dim=-1)
        return loss, cosine
