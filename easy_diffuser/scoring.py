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
