"""The CLIP kind: a CLIP model ranks a vocabulary of tag phrases against the image.

claims    the CLIP_MODELS names, any open_clip ARCH/TAG pair, a model folder (open_clip_config.json and
          open_clip_model.safetensors or open_clip_pytorch_model.bin, as published on model hubs), a checkpoint
          file whose architecture its name says ("ViT-L-14-openai.safetensors") or "ARCH=PATH"; it is asked
          last, so whatever no other kind claims is tried as CLIP (and its error names what a model can be)
loads     kinds/clip_loading.py: open_clip builds the network, the weights are read as data
scores    the image embedding against the vocabulary's cached text embeddings (label_cache.py): the score is
          the cosine, relevance the cosine standardised over the vocabulary; features: the image embedding
policy    the most relevant tags, at most max_per_category each, near-duplicates merged (selection.py's
          TopRelevance), in one CLIP chunk of 75 tokens; `max_tags` is its control; no family preset
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import torch

from .. import embedding, label_cache, scoring
from ..embedding import ProgressFn
from ..scorers import TagScorer
from ..scoring import Scores
from ..vocabulary import BUILTIN_DIR, load_vocabulary
from .base import DATA_DIR, Kind, ModelInfo
from .clip_loading import (
    CLIP_MODELS,
    WEIGHT_SUFFIXES,
    LoadedClip,
    arch_from_file_name,
    load_file,
    load_folder,
    load_pretrained,
)


class ClipKind(Kind):
    name = "clip"
    models: ClassVar[Sequence[ModelInfo]] = tuple(CLIP_MODELS.values())
    controls = frozenset({"max_tags"})

    def claims(self, spec: str) -> bool:
        """ARCH/TAG pairs, ARCH=PATH, folders and checkpoint files: asked last, after the more particular kinds."""
        local = Path(spec).expanduser()
        return "/" in spec or "=" in spec or local.exists() or local.suffix in WEIGHT_SUFFIXES

    def load(self, spec: str, cache_dir: Path) -> LoadedClip:
        info = CLIP_MODELS.get(spec)
        if info is not None and info.shipped:
            return load_folder(DATA_DIR / info.shipped, model_id=spec, defaults=info.defaults)
        arch, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        local = Path(path).expanduser()
        if local.is_dir():
            return load_folder(local)
        if local.is_file() or local.suffix in WEIGHT_SUFFIXES:
            return load_file(local, arch or arch_from_file_name(local))
        return load_pretrained(*spec.split("/", 1), cache_dir=cache_dir)

    def scorer(
        self,
        loaded: LoadedClip,
        cache_dir: Path,
        vocabulary_dirs: Sequence[str | Path] = (),
        progress: ProgressFn | None = None,
    ) -> "ClipScorer":
        return ClipScorer(loaded, cache_dir, vocabulary_dirs, progress)


class ClipScorer(TagScorer):
    def __init__(
        self,
        loaded: LoadedClip,
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
