"""Step 2 of the data flow: images and tag texts -> unit-length CLIP embeddings.

Text encoding is trimmed: tags are sorted by token length and each batch is cut right after
its longest end token. CLIP's text transformer is causal, so tokens after the end token never
influence it; dropping the padding gives the same embedding (to float rounding) at a fraction
of the cost of always running 77 positions.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .devices import cpu_matmuls
from .kinds.clip_loading import LoadedClip

ProgressFn = Callable[[int, int], None]  # (done, total)


@torch.inference_mode()
def encode_preprocessed(loaded: LoadedClip, batch: torch.Tensor) -> torch.Tensor:
    """Unit-length image embeddings, float32 on the CPU, one row per image already through `loaded.preprocess`
    (stacked: decoding can run elsewhere)."""
    with cpu_matmuls(loaded.device):
        features = loaded.model.encode_image(batch.to(loaded.device, loaded.dtype))
    return F.normalize(features.float(), dim=-1).cpu()


def tokenize(loaded: LoadedClip, texts: Sequence[str]) -> torch.Tensor:
    return loaded.tokenizer(list(texts))


def token_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Position of each row's end token (CLIP's end token has the highest id), plus one."""
    return tokens.argmax(dim=-1) + 1


def token_count(loaded: LoadedClip, text: str) -> int:
    """Tokens a text costs in a prompt: its length without the start and end tokens."""
    return int(token_lengths(tokenize(loaded, [text]))[0]) - 2


@torch.inference_mode()
def encode_texts(
    loaded: LoadedClip,
    texts: Sequence[str],
    batch_size: int = 512,
    trim: bool = True,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Unit-length text embeddings, float32 on the CPU, in the order of `texts`."""
    if not texts:
        return torch.zeros(0, 0)
    tokens = tokenize(loaded, texts)
    lengths = token_lengths(tokens)
    order = torch.argsort(lengths, stable=True)
    encode = trimmed_encoder(loaded) if trim else None
    out: list[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        batch = tokens[rows]
        with cpu_matmuls(loaded.device):
            if encode is not None:
                features = encode(batch[:, : int(lengths[rows].max())])
            else:
                features = loaded.model.encode_text(batch.to(loaded.device))
        out.append(F.normalize(features.float(), dim=-1).cpu())
        if progress:
            progress(min(start + batch_size, len(texts)), len(texts))
    embeddings = torch.empty(len(texts), out[0].shape[1])
    embeddings[order] = torch.cat(out)
    return embeddings


def trimmed_encoder(loaded: LoadedClip) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """CLIP.encode_text with the sequence cut short, for open_clip 2.x and 3.x.

    None for text towers that are not open_clip's own causal transformer (e.g. Hugging Face
    text models); those are encoded padded.
    """
    model = loaded.model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    if not all(hasattr(model, name) for name in needed) or model.attn_mask is None:
        return None
    batch_first = getattr(model.transformer, "batch_first", False)
    pool_type = getattr(model, "text_pool_type", "argmax")
    if pool_type != "argmax":
        return None

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        tokens = tokens.to(loaded.device)
        x = model.token_embedding(tokens).to(cast_dtype)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        mask = model.attn_mask[:length, :length]
        if batch_first:
            x = model.transformer(x, attn_mask=mask)
        else:
            x = model.transformer(x.permute(1, 0, 2), attn_mask=mask).permute(1, 0, 2)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        projection = model.text_projection
        return projection(x) if isinstance(projection, torch.nn.Module) else x @ projection

    return encode
