"""The engine's one seam: a model gives every vocabulary tag a score for an image.

    TagScorer.features(pixels) -> per-image features, kept for re-selection without the model
    TagScorer.scores(features) -> Scores (score, relevance, probability) per image -> selection.py

Each kind of model (kinds/) has its scorer, one interface for all (as the wd14-tagger's Interrogator has one
subclass per backend): kinds/clip.py's ClipScorer, kinds/wd_tagger.py's TaggerScorer. Everything after the seam
(selection, prompt syntax, options, re-selection and its token, batch, records, the folder pipeline, Ray, HTTP,
calibration) is one path for all.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import torch

from .embedding import token_lengths
from .kinds.clip_loading import open_clip_module
from .scoring import Scores
from .vocabulary import Vocabulary


class TagScorer(ABC):
    """A loaded model that scores every tag of its vocabulary for an image."""

    loaded: Any  # the kind's loaded model (kinds.base.Loaded)
    vocabulary: Vocabulary
    token_costs: list[int]  # each tag's tokens in a prompt
    twins: torch.Tensor | None = None  # unit rows: tags whose rows nearly agree count as one; None: none do
    cache_file: Path | None = None  # a file Ray's workers need beside the model (CLIP's tag embeddings)

    @abstractmethod
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Images already through `loaded.preprocess`, stacked -> features [images, width], float32, CPU."""

    @abstractmethod
    def scores(self, features: torch.Tensor) -> list[Scores]:
        """Every tag's score and relevance, per image."""

    def for_token(self, features: torch.Tensor) -> torch.Tensor:
        """One image's features as a reselect token carries them (fp16)."""
        return features.half()

    def checked(self, token: torch.Tensor) -> torch.Tensor | None:
        """One image's features from a reselect token (`for_token`'s values) as `features` makes them
        ([1, width]), or None if they can't be this model's: one value per tag, all finite, unless a kind knows
        better."""
        values = token.float().flatten()
        return values[None] if values.numel() == len(self.vocabulary) and torch.isfinite(values).all() else None

    def token_count(self, text: str) -> int:
        """Tokens a text costs in a prompt: Stable Diffusion's CLIP-L tokens, unless the kind's model counts its own."""
        return prompt_token_costs([text])[0]

    @abstractmethod
    def fingerprint(self) -> bytes:
        """Changes whenever a score would: the weights and the vocabulary (keys calibration's saved results)."""


def prompt_token_costs(texts: Sequence[str]) -> list[int]:
    """Tokens each text costs in a Stable Diffusion prompt: CLIP-L's tokenizer (SD 1.x and SDXL's first
    encoder; bundled with open_clip, nothing downloaded), without the start and end tokens."""
    tokens = _sd_tokenizer()(list(texts))
    return (token_lengths(tokens) - 2).tolist()


@functools.lru_cache(maxsize=1)
def _sd_tokenizer():
    return open_clip_module().get_tokenizer("ViT-L-14")
