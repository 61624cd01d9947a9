"""Text-embedding cache: a vocabulary is encoded once per model, then loaded in milliseconds.

Files are safetensors named by model id and the vocabulary's fingerprint, so a changed list or
another model never reuses stale embeddings; a file that is corrupt, truncated or does not
match is rebuilt, never trusted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from .embedding import ProgressFn, encode_texts
from .files import safe_name, write_atomically
from .models import LoadedModel
from .vocabulary import Vocabulary

log = logging.getLogger(__name__)
# Rows are stored as fp16: a unit row comes back within about 1e-3 of length 1; anything further was not written by us.
UNIT_TOLERANCE = 1e-2


def cache_path(cache_dir: Path, cache_key: str, vocabulary: Vocabulary) -> Path:
    return Path(cache_dir) / "text_embeddings" / f"{safe_name(cache_key)}-{vocabulary.fingerprint}.safetensors"


def text_embeddings(
    loaded: LoadedModel, vocabulary: Vocabulary, cache_dir: Path, progress: ProgressFn | None = None
) -> torch.Tensor:
    """Unit-length embeddings of every tag (float32, CPU), from the cache or built and cached."""
    path = cache_path(cache_dir, loaded.cache_key, vocabulary)
    cached = _read(path, vocabulary, embedding_width(loaded))
    if cached is not None:
        return cached
    # Round through fp16 as the file stores it, so the first run and cached runs agree exactly.
    embeddings = _build(loaded, vocabulary, progress).half().float()
    _write(path, embeddings, vocabulary)
    return embeddings


def _read(path: Path, vocabulary: Vocabulary, width: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") != vocabulary.fingerprint:
                raise ValueError("written for other tags")
            embeddings = handle.get_tensor("embeddings")
        _check(embeddings, len(vocabulary), width)
    except Exception as error:  # any damage at all means: rebuild
        log.warning("rebuilding text-embedding cache %s: %s", path, error)
        return None
    return embeddings.float()


def _check(embeddings: torch.Tensor, tags: int, width: int) -> None:
    """One finite unit-length row per tag, as wide as the model's embeddings; else the file is not ours."""
    if not embeddings.is_floating_point():
        raise ValueError(f"{embeddings.dtype} values, not floating point")
    if embeddings.shape != (tags, width):
        raise ValueError(f"shape {tuple(embeddings.shape)}, expected ({tags}, {width})")
    values = embeddings.float()
    if not torch.isfinite(values).all():
        raise ValueError("values that are not finite")
    lengths = values.norm(dim=-1)
    if ((lengths - 1).abs() > UNIT_TOLERANCE).any():
        raise ValueError(f"rows that are not unit length (lengths {lengths.min():.3g} to {lengths.max():.3g})")


def _build(loaded: LoadedModel, vocabulary: Vocabulary, progress: ProgressFn | None) -> torch.Tensor:
    if progress is not None:
        return encode_texts(loaded, vocabulary.tags, progress=progress)
    with tqdm(total=len(vocabulary), desc=f"Embedding {len(vocabulary)} tags", unit="tag") as bar:
        return encode_texts(loaded, vocabulary.tags, progress=lambda done, _: bar.update(done - bar.n))


def _write(path: Path, embeddings: torch.Tensor, vocabulary: Vocabulary) -> None:
    from safetensors.torch import save_file

    metadata = {"fingerprint": vocabulary.fingerprint, "tags": str(len(vocabulary))}
    try:
        write_atomically(
            path, lambda temp: save_file({"embeddings": embeddings.half().contiguous()}, str(temp), metadata)
        )
    except (
        Exception
    ) as error:  # a full disk (SafetensorError) or read-only folder costs speed next time, not this result
        log.warning("cannot write text-embedding cache %s: %s", path, error)


def embedding_width(loaded: LoadedModel) -> int:
    """The width of the model's joint embedding space: what each cached row must have."""
    projection = getattr(loaded.model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if isinstance(projection, torch.Tensor):
        return projection.shape[-1]
    return int(loaded.model.encode_text(loaded.tokenizer(["a"]).to(loaded.device)).shape[-1])
