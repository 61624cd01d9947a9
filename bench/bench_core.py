"""Core speed, side by side in one run: trimmed vs padded vocabulary encoding, cold vs cached
start, and warm per-image extraction. Random weights of a real architecture time the same as
trained ones, so no download is needed.

    python bench/bench_core.py                                   # CPU, ViT-B-32, shipped vocabulary
    python bench/bench_core.py --arch ViT-L-14 --device cuda     # GPU, fp16
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easy_diffuser import models  # noqa: E402
from easy_diffuser.devices import default_dtype  # noqa: E402
from easy_diffuser.embedding import encode_texts  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.kinds.clip_loading import open_clip_module  # noqa: E402
from easy_diffuser.shapes.world import draw, random_scene  # noqa: E402
from easy_diffuser.vocabulary import BUILTIN_DIR, load_vocabulary  # noqa: E402


def timed(function, repeat: int = 1) -> tuple[float, object]:
    result, times = None, []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def random_checkpoint(arch: str, folder: Path) -> str:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip_module().create_model(arch)
    path = folder / f"{arch}-random.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"{arch}={path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tags", type=int, default=0, help="use only the first N tags (0: all)")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    dtype = default_dtype(args.device)
    vocabulary = load_vocabulary([BUILTIN_DIR])
    tags = vocabulary.tags[: args.tags or None]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        spec = random_checkpoint(args.arch, Path(work))
        loaded = models.load_model(spec, args.device, dtype, cache_dir=work)
        padded_s, padded = timed(lambda: encode_texts(loaded, tags, trim=False))
        trimmed_s, trimmed = timed(lambda: encode_texts(loaded, tags, trim=True))
        rows.append((f"encode {len(tags)} tags, padded to 77", padded_s, f"{len(tags) / padded_s:,.0f} tags/s"))
        rows.append(
            (
                f"encode {len(tags)} tags, trimmed",
                trimmed_s,
                f"{padded_s / trimmed_s:.2f}x faster; max |diff| {(padded - trimmed).abs().max():.1e}",
            )
        )

        models.unload_models()
        cold_s, engine = timed(lambda: Engine(spec, args.device, dtype, cache_dir=Path(work) / "cache"))
        models.unload_models()
        cached_s, engine = timed(lambda: Engine(spec, args.device, dtype, cache_dir=Path(work) / "cache"))
        rows.append(("start, empty cache (load + build vocabulary)", cold_s, ""))
        rows.append(("start, cached vocabulary", cached_s, f"{cold_s / cached_s:.1f}x faster than cold"))

        rng = random.Random(0)
        images = [draw(random_scene(rng), 512) for _ in range(args.images)]
        engine.extract(images[0])  # warm-up
        per_image, _ = timed(lambda: [engine.extract(image) for image in images])
        batched, _ = timed(lambda: engine.extract_many(images))
        rows.append(("extract one image (warm)", per_image / len(images), f"{len(images) / per_image:.1f} images/s"))
        rows.append(
            (
                f"extract {len(images)} images in one batch",
                batched / len(images),
                f"{per_image / batched:.1f}x the one-by-one rate",
            )
        )
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\n{args.arch}, random weights, {str(dtype).removeprefix('torch.')}, {device}, "
        f"{len(vocabulary)} tags in the vocabulary\n"
    )
    print(f"| {'measure':<46} | {'seconds':>9} | notes")
    print(f"|{'-' * 48}|{'-' * 11}|------")
    for name, seconds, note in rows:
        print(f"| {name:<46} | {seconds:>9.4f} | {note}")


if __name__ == "__main__":
    main()
