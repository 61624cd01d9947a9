"""Step 3 of the data flow: a model's output for an image -> a score and a relevance for every tag.

Raw cosine similarities sit at different levels for every image and every model (ViT-L's
cosines cluster near 0.2, a tiny model's near 0.5), so a fixed threshold on them means
nothing. Relevance is the cosine standardised over the whole vocabulary for this image:

    relevance = (cosine - mean over tags) / standard deviation over tags

A tag with relevance 2 stands two standard deviations above the image's average tag, whatever
the image or model. The negative-prompt threshold tau is a relevance, so one tau means the
same for every image. A tagger (scorers.py) scores by probability; its relevance is the same
standardisation of the log-odds, and its probabilities are the presence guard's directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scores:
    score: torch.Tensor  # [tags]: the model's own score (CLIP: cosine similarity; a tagger: probability)
    relevance: torch.Tensor  # [tags]: standardised over the vocabulary for this image
    # [tags]: the probability that the image shows each tag where the model gives one (a tagger);
    # None: the model's TagCalibration makes one from relevance (presence.py)
    probability: torch.Tensor | None = None


def score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> list[Scores]:
    """Scores for each image (rows of unit-length embeddings) against every tag."""
    cosine = image_embeddings.float() @ text_embeddings.float().T
    return [Scores(c, r) for c, r in zip(cosine, standardised(cosine))]


def standardised(values: torch.Tensor) -> torch.Tensor:
    """(value - mean) / standard deviation over the last dimension (the vocabulary)."""
    return (values - values.mean(dim=-1, keepdim=True)) / values.std(dim=-1, keepdim=True).clamp_min(1e-6)


NON_FINITE = "gave non-finite scores for this image: its weights may be damaged (NaN/inf); re-download them"
HALF_PRECISION = (torch.float16, torch.bfloat16)


class NonFiniteScores(ValueError):
    """A model gave NaN or inf for images of a batch: each of them is a failed image, never a score.

    Raised where a model's output enters the pipeline (Engine.encode_tensors). It carries the batch's features
    and which rows are finite, so that a folder run fails the bad images alone and keeps the others."""

    def __init__(self, model: str, features: torch.Tensor, finite: torch.Tensor, dtype: torch.dtype) -> None:
        overflow = " (or it overflowed in half precision: run it in float32)" if dtype in HALF_PRECISION else ""
        super().__init__(f"the model {model} {NON_FINITE}{overflow}")
        self.model, self.features, self.finite = model, features, finite


def finite_rows(features: torch.Tensor) -> torch.Tensor:
    """[images] bool: which images' features (one row each) are finite throughout."""
    return torch.isfinite(features.reshape(len(features), -1)).all(dim=1)


def require_finite(features: torch.Tensor, model: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The features as they are, or NonFiniteScores when any image's are not finite (`dtype`: the model's)."""
    finite = finite_rows(features)
    if not finite.all():
        raise NonFiniteScores(model, features, finite, dtype)
    return features
