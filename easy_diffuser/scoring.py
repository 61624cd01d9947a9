"""Step 3 of the data flow: image and tag embeddings -> a score and a relevance for every tag.

Raw cosine similarities sit at different levels for every image and every model (ViT-L's
cosines cluster near 0.2, a tiny model's near 0.5), so a fixed threshold on them means
nothing. Relevance is the cosine standardised over the whole vocabulary for this image:

    relevance = (cosine - mean over tags) / standard deviation over tags

A tag with relevance 2 stands two standard deviations above the image's average tag, whatever
the image or model. The negative-prompt threshold tau is a relevance, so one tau means the
same for every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scores:
    cosine: torch.Tensor  # [tags]
    relevance: torch.Tensor  # [tags]


def score(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> list[Scores]:
    """Scores for each image (rows of unit-length embeddings) against every tag."""
    cosine = image_embeddings.float() @ text_embeddings.float().T
    relevance = (cosine - cosine.mean(dim=-1, keepdim=True)) / cosine.std(dim=-1, keepdim=True).clamp_min(1e-6)
    return [Scores(c, r) for c, r in zip(cosine, relevance)]
