"""Text-embedding cache: a vocabulary is encoded once per model, then loaded in milliseconds.

Files are safetensors named by model id and the vocabulary's fingerprint, so a changed list or
another model never reuses stale embeddings; a file that is corrupt, truncated or does not
match is rebuilt, never trusted. The rows are checked (finite, unit length) once, before they are
written, and a digest of their bytes is written with them: a cached start checks the digest,
which costs less than reading the file, instead of checking every row again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .embedding import ProgressFn, encode_texts
from .errors import ModelFileError
from .files import safe_name, write_atomically
from .kinds.clip_loading import LoadedClip
from .vocabulary import Vocabulary

log = logging.getLogger(__name__)
# Rows are stored as fp16: a unit row comes back within about 1e-3 of length 1.
UNIT_TOLERANCE = 1e-2
NON_FINITE_TAGS = "gave non-finite tag embeddings: its weights may be damaged (NaN/inf); re-download them"


def cache_path(cache_dir: Path, cache_key: str, vocabulary: Vocabulary) -> Path:
    return Path(cache_dir) / "text_embeddings" / f"{safe_name(cache_key)}-{vocabulary.fingerprint}.safetensors"


def text_embeddings(
    loaded: LoadedClip, vocabulary: Vocabulary, cache_dir: Path, progress: ProgressFn | None = None
) -> torch.Tensor:
    """Unit-length embeddings of every tag (float32, CPU), from the cache or built and cached."""
    path = cache_path(cache_dir, loaded.cache_key, vocabulary)
    cached = _read(path, vocabulary, embedding_width(loaded))
    if cached is not None:
        return cached
    # Round through fp16 as the file stores it, so the first run and cached runs agree exactly.
    embeddings = _build(loaded, vocabulary, progress).half().float()
    if not torch.isfinite(embeddings).all():  # every image's scores would be NaN: the model is unusable
        raise ModelFileError(f"the model {loaded.model_id} {NON_FINITE_TAGS}")
    _write(path, embeddings, vocabulary)
    return embeddings


def _read(path: Path, vocabulary: Vocabulary, width: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        # As numpy: torch's thread pool would cost more than the whole read on a busy CPU.
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("fingerprint") != vocabulary.fingerprint:
                raise ValueError("written for other tags")
            rows = handle.get_tensor("embeddings")
        if rows.dtype != np.float16 or rows.shape != (len(vocabulary), width):
            raise ValueError(
                f"{rows.dtype} values of shape {rows.shape}, expected float16 ({len(vocabulary)}, {width})"
            )
        if metadata.get("digest") != _digest(rows):
            raise ValueError(
                "rows that do not match their digest (damaged, or by an older easy-diffuser or another program)"
            )
        embeddings = rows.astype(np.float32)
        if not np.isfinite(embeddings).all():  # only a file made to match its digest gets here with these
            raise ValueError("values that are not finite")
    except Exception as error:  # any damage at all means: rebuild
        log.warning("rebuilding text-embedding cache %s: %s", path, error)
        return None
    return torch.from_numpy(embeddings)


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows).data).hexdigest()


def _check(embeddings: torch.Tensor) -> None:
    """Finite unit-length rows, as the model's encoder gives them: what a cache file may hold."""
    if not torch.isfinite(embeddings).all():
        raise ValueError("values that are not finite")
    lengths = embeddings.float().norm(dim=-1)
    if ((lengths - 1).abs() > UNIT_TOLERANCE).any():
        raise ValueError(f"rows that are not unit length (lengths {lengths.min():.3g} to {lengths.max():.3g})")


def _build(loaded: LoadedClip, vocabulary: Vocabulary, progress: ProgressFn | None) -> torch.Tensor:
    if progress is not None:
        return encode_texts(loaded, vocabulary.tags, progress=progress)
    with tqdm(total=len(vocabulary), desc=f"Embedding {len(vocabulary)} tags", unit="tag") as bar:
        return encode_texts(loaded, vocabulary.tags, progress=lambda done, _: bar.update(done - bar.n))


def _write(path: Path, embeddings: torch.Tensor, vocabulary: Vocabulary) -> None:
    from safetensors.torch import save_file

    rows = embeddings.half().contiguous()
    try:
        _check(embeddings)
        digest = _digest(rows.numpy())
        metadata = {"fingerprint": vocabulary.fingerprint, "tags": str(len(vocabulary)), "digest": digest}
        write_atomically(path, lambda temp: save_file({"embeddings": rows}, str(temp), metadata))
    except Exception as error:  # a full disk (SafetensorError) or a read-only folder: slower next time, nothing lost
        log.warning("cannot write text-embedding cache %s: %s", path, error)


def embedding_width(loaded: LoadedClip) -> int:
    """The width of the model's joint embedding space: what each cached row must have."""
    projection = getattr(loaded.model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if isinstance(projection, torch.Tensor):
        return projection.shape[-1]
    return int(loaded.model.encode_text(loaded.tokenizer(["a"]).to(loaded.device)).shape[-1])
