"""The engine's one seam: a model gives every vocabulary tag a score for an image.

    TagScorer.features(pixels) -> per-image features, kept for re-selection without the model
    TagScorer.scores(features) -> Scores (score, relevance, probability) per image -> selection.py

Two implementations, one interface (as the wd14-tagger's Interrogator has one subclass per backend):

  ClipScorer    CLIP: the image embedding against the vocabulary's cached text embeddings; the score is the
                cosine, relevance the cosine standardised over the vocabulary; features: the image embedding
  TaggerScorer  a WD tagger: backbone + head, sigmoid; the vocabulary is its selected_tags.csv; the score is
                the probability (the presence guard's directly), relevance the log-odds standardised over the
                vocabulary; features: the probabilities

Everything after the seam (selection, prompt syntax, options, re-selection and its token, batch, records,
the folder pipeline, Ray, HTTP, calibration) is one path for both.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch

from . import booru, embedding, label_cache, scoring
from .embedding import ProgressFn
from .models import LoadedModel
from .scoring import Scores
from .tagger import LoadedTagger
from .vocabulary import BUILTIN_DIR, Vocabulary, load_vocabulary

# Probabilities are kept off 0 and 1: a tag the model rules out is one the vocabulary's log-odds can standardise.
PROBABILITY_FLOOR = 1e-4
LOGIT_LIMIT = 9.25  # the floor's log-odds (9.21) and fp16's rounding of them


class TagScorer(ABC):
    """A loaded model that scores every tag of its vocabulary for an image."""

    loaded: LoadedModel | LoadedTagger
    vocabulary: Vocabulary
    token_costs: list[int]  # each tag's tokens in a prompt
    twins: torch.Tensor | None = None  # unit rows: tags whose rows nearly agree count as one; None: none do
    booru: bool = False  # tags chosen by threshold and written in booru order (booru.py)
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

    @abstractmethod
    def checked(self, token: torch.Tensor) -> torch.Tensor | None:
        """One image's features from a reselect token (`for_token`'s values) as `features` makes them
        ([1, width]), or None if they can't be this model's."""

    @abstractmethod
    def token_count(self, text: str) -> int:
        """Tokens a text costs in a prompt."""

    @abstractmethod
    def fingerprint(self) -> bytes:
        """Changes whenever a score would: the weights and the vocabulary (keys calibration's saved results)."""


class ClipScorer(TagScorer):
    def __init__(
        self,
        loaded: LoadedModel,
        cache_dir: Path,
        vocabulary_dirs: Sequence[str | Path] = (),
        progress: ProgressFn | None = None,
    ) -> None:
        self.loaded = loaded
        folders = [loaded.vocabulary_dir or BUILTIN_DIR, *map(Path, vocabulary_dirs)]
        self.vocabulary = load_vocabulary(folders)
        self.text_embeddings = label_cache.text_embeddings(loaded, self.vocabulary, cache_dir, progress)
        self.twins = self.text_embeddings
        self.token_costs = (embedding.token_lengths(embedding.tokenize(loaded, self.vocabulary.tags)) - 2).tolist()
        self.cache_file = label_cache.cache_path(cache_dir, loaded.cache_key, self.vocabulary)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return embedding.encode_preprocessed(self.loaded, batch)

    def scores(self, features: torch.Tensor) -> list[Scores]:
        return scoring.score(features, self.text_embeddings)

    def checked(self, token: torch.Tensor) -> torch.Tensor | None:
        features = token.float().flatten()
        if features.numel() != self.text_embeddings.shape[1] or not torch.isfinite(features).all():
            return None
        return torch.nn.functional.normalize(features, dim=0)[None] if features.norm() >= 1e-3 else None

    def token_count(self, text: str) -> int:
        return embedding.token_count(self.loaded, text)

    def fingerprint(self) -> bytes:
        return self.text_embeddings.float().contiguous().numpy().tobytes()


class TaggerScorer(TagScorer):
    booru = True

    def __init__(self, loaded: LoadedTagger, vocabulary_dirs: Sequence[str | Path] = ()) -> None:
        if vocabulary_dirs:
            raise ValueError(
                f"vocabulary folder {vocabulary_dirs[0]}: a tagger's tags are its selected_tags.csv; "
                "extra tag lists are for CLIP models"
            )
        self.loaded = loaded
        names = [booru.written(name) for name in loaded.tags.names]
        self.vocabulary = Vocabulary(tuple(names), loaded.tags.categories)
        self.token_costs = prompt_token_costs(names)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loaded.probabilities(batch).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)

    def scores(self, features: torch.Tensor) -> list[Scores]:
        probabilities = features.float()
        relevance = scoring.standardised(torch.logit(probabilities))
        return [Scores(p, r, p) for p, r in zip(probabilities, relevance)]

    def for_token(self, features: torch.Tensor) -> torch.Tensor:
        """The log-odds: fp16 keeps them to 0.01 where it would round a probability of 0.9995 to 0.9990."""
        return torch.logit(features).half()

    def checked(self, token: torch.Tensor) -> torch.Tensor | None:
        logits = token.float().flatten()
        if logits.numel() != len(self.vocabulary) or not torch.isfinite(logits).all():
            return None
        if logits.abs().max() > LOGIT_LIMIT:
            return None
        return torch.sigmoid(logits).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)[None]

    def token_count(self, text: str) -> int:
        return prompt_token_costs([text])[0]

    def fingerprint(self) -> bytes:
        return f"{self.loaded.cache_key} {self.vocabulary.fingerprint}".encode()


def scorer(
    loaded: LoadedModel | LoadedTagger,
    cache_dir: Path,
    vocabulary_dirs: Sequence[str | Path] = (),
    progress: ProgressFn | None = None,
) -> TagScorer:
    """The scorer of a loaded model (models.load_model gives either kind)."""
    if isinstance(loaded, LoadedTagger):
        return TaggerScorer(loaded, vocabulary_dirs)
    return ClipScorer(loaded, cache_dir, vocabulary_dirs, progress)


def prompt_token_costs(texts: Sequence[str]) -> list[int]:
    """Tokens each text costs in a Stable Diffusion prompt: CLIP-L's tokenizer (SD 1.x and SDXL's first
    encoder; bundled with open_clip, nothing downloaded), without the start and end tokens."""
    tokens = _sd_tokenizer()(list(texts))
    return (embedding.token_lengths(tokens) - 2).tolist()


@functools.lru_cache(maxsize=1)
def _sd_tokenizer():
    from .models import _open_clip

    return _open_clip().get_tokenizer("ViT-L-14")
