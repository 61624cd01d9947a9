"""Cached start, side by side in one run: our tag-embedding cache against clip-interrogator 0.6.0's LabelTable.

Both load the same fp16 rows from a safetensors file and hand back float32 on the CPU: ours checks the
vocabulary's fingerprint, the shape and a digest of the rows (label_cache.py), clip-interrogator a SHA-256
of its labels. A random ViT-B-32 times the same as a trained one, so no download is needed.

    python bench/bench_cached_start.py                  # 1,000 tags of the shipped vocabulary
    python bench/bench_cached_start.py --tags 0         # all of them

clip-interrogator itself is used when it can be imported; its dependencies are ours, so
`pip install --no-deps --target .extra-site clip-interrogator==0.6.0` and `PYTHONPATH=.extra-site` do.
Otherwise its LabelTable._load_cached and the CPU conversion after it are reproduced here, line for line.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easy_diffuser import label_cache  # noqa: E402
from easy_diffuser.kinds.clip_loading import LoadedClip, open_clip_module  # noqa: E402
from easy_diffuser.vocabulary import BUILTIN_DIR, load_vocabulary  # noqa: E402

MODEL_NAME = "ViT-B-32/random"  # clip-interrogator names its cache file after the model
DESC = "bench"


def random_model(arch: str) -> LoadedClip:
    open_clip = open_clip_module()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    return LoadedClip(MODEL_NAME, model.eval(), preprocess, open_clip.get_tokenizer(arch), {}, None, "random")


def write_clip_interrogator_cache(folder: Path, labels: list[str], embeddings: torch.Tensor) -> None:
    """The file LabelTable writes after encoding: fp16 rows and the SHA-256 of the labels as int8."""
    from safetensors.numpy import save_file

    digest = hashlib.sha256(",".join(labels).encode()).hexdigest()
    tensors = {"embeds": embeddings.half().numpy(), "hash": np.array([ord(c) for c in digest], dtype=np.int8)}
    save_file(tensors, str(folder / f"{MODEL_NAME.replace('/', '_')}_{DESC}.safetensors"))


def clip_interrogator_load(folder: Path) -> tuple[str, Callable[[list[str]], list[np.ndarray]]]:
    """(what runs, labels -> cached rows): clip-interrogator's LabelTable, or its logic reproduced."""
    try:
        from clip_interrogator import Config, LabelTable
    except ImportError:
        return "its LabelTable logic reproduced (clip-interrogator not importable)", lambda labels: _reproduced(
            folder, labels
        )
    config = Config(cache_path=str(folder), clip_model_name=MODEL_NAME, download_cache=False, device="cpu", quiet=True)
    stand_in = SimpleNamespace(clip_model=None, config=config, tokenize=None)  # a cached load never runs the model

    def load(labels: list[str]) -> list[np.ndarray]:
        table = LabelTable(labels, DESC, stand_in)
        assert len(table.embeds) == len(labels), "clip-interrogator did not find its cache"
        return table.embeds

    return "clip_interrogator.LabelTable 0.6.0", load


def _reproduced(folder: Path, labels: list[str]) -> list[np.ndarray]:
    from safetensors.numpy import load_file

    digest = hashlib.sha256(",".join(labels).encode()).hexdigest()
    tensors = load_file(str(folder / f"{MODEL_NAME.replace('/', '_')}_{DESC}.safetensors"))
    assert np.array_equal(tensors["hash"], np.array([ord(c) for c in digest], dtype=np.int8))
    embeds = [tensors["embeds"][i] for i in range(tensors["embeds"].shape[0])]
    return [e.astype(np.float32) for e in embeds]  # LabelTable.__init__ on a CPU device


def old_row_check(embeddings: torch.Tensor) -> None:
    """What every cached start did before the digest: isfinite, float() and norm over all rows."""
    values = embeddings.half().float()
    assert torch.isfinite(values).all()
    assert ((values.norm(dim=-1) - 1).abs() <= label_cache.UNIT_TOLERANCE).all()


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--tags", type=int, default=1000, help="the first N tags of the shipped vocabulary (0: all)")
    parser.add_argument("--repeat", type=int, default=50, help="loads per side; the median is shown")
    args = parser.parse_args()
    shipped = load_vocabulary([BUILTIN_DIR])
    count = args.tags or len(shipped)
    vocabulary = replace(shipped, tags=shipped.tags[:count], categories=shipped.categories[:count])
    labels = list(vocabulary.tags)
    loaded = random_model(args.arch)
    with tempfile.TemporaryDirectory() as work:
        ours_dir, theirs_dir = Path(work) / "ours", Path(work) / "theirs"
        theirs_dir.mkdir()
        embeddings = label_cache.text_embeddings(loaded, vocabulary, ours_dir)  # builds and writes our cache
        write_clip_interrogator_cache(theirs_dir, labels, embeddings)
        theirs_name, theirs_load = clip_interrogator_load(theirs_dir)
        assert np.array_equal(np.stack(theirs_load(labels)), label_cache.text_embeddings(loaded, vocabulary, ours_dir))
        ours, theirs, check = [], [], []
        for _ in range(args.repeat):  # interleaved, so a busy moment of the machine costs both sides alike
            ours.append(seconds(lambda: label_cache.text_embeddings(loaded, vocabulary, ours_dir)))
            theirs.append(seconds(lambda: theirs_load(labels)))
            check.append(seconds(lambda: old_row_check(embeddings)))
    ours_s, theirs_s, check_s = (statistics.median(times) for times in (ours, theirs, check))
    print(
        f"\n{args.arch}, random weights, {count:,} tags, CPU ({torch.get_num_threads()} threads), "
        f"median of {args.repeat} loads each; clip-interrogator side: {theirs_name}\n"
    )
    print(f"| {'cached load of the tag embeddings':<58} | {'seconds':>8} | notes")
    print(f"|{'-' * 60}|{'-' * 10}|------")
    print(f"| {'clip-interrogator 0.6.0 LabelTable (SHA-256 of the labels)':<58} | {theirs_s:>8.4f} |")
    print(
        f"| {'easy-diffuser label_cache.text_embeddings (digest of rows)':<58} | {ours_s:>8.4f} | "
        f"{theirs_s / ours_s:.2f}x clip-interrogator's speed"
    )
    print(
        f"| {'  for reference: the per-row check the digest replaces':<58} | {check_s:>8.4f} | "
        "isfinite, float() and norm over every row"
    )


if __name__ == "__main__":
    main()
