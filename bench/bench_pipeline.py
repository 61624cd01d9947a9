"""Folder captioning throughput, side by side in one run, on the same JPEGs and the same model:

  model only      encode_tensors + tag selection on tensors preprocessed beforehand (the ceiling)
  pipeline        caption_folder: decode threads -> model batches -> writer thread (what the CLI runs)
  pipeline, full  the same, but every JPEG decoded at full size (no libjpeg draft scaling)
  old loop        decode on the model's thread, then the batch (the loop before pipeline.py)

Random weights of a real architecture time the same as trained ones, so nothing is downloaded.

    python bench/bench_pipeline.py                                   # CPU: ViT-B-32, 200 JPEGs of 1024 px
    python bench/bench_pipeline.py --arch ViT-L-14 --device cuda --batch-size 64 --images 2000
    python bench/bench_pipeline.py --tagger base                     # a WD-v3-ViT-shaped tagger (448 px)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_core import random_checkpoint  # noqa: E402
from bench_tagger import SIZES, random_tagger  # noqa: E402

from easy_diffuser import pipeline  # noqa: E402
from easy_diffuser.batch import caption_folder, find_images  # noqa: E402
from easy_diffuser.caption_files import caption_path  # noqa: E402
from easy_diffuser.devices import default_dtype  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.images import load_image  # noqa: E402
from easy_diffuser.shapes.world import draw, random_scene  # noqa: E402


def write_jpegs(folder: Path, count: int, pixels: int) -> list[Path]:
    """Photos stand-ins: shapes scenes with sensor-like noise (JPEG decode cost depends on detail)."""
    rng, noise = random.Random(0), np.random.default_rng(0)
    for index in range(count):
        scene = np.asarray(draw(random_scene(rng), pixels), dtype=np.int16)
        grain = noise.normal(0, 12, scene.shape).astype(np.int16)
        Image.fromarray(np.clip(scene + grain, 0, 255).astype(np.uint8)).save(folder / f"{index:04d}.jpg", quality=90)
    return find_images(folder)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_only(engine: Engine, images: list[Path], batch_size: int, device: str) -> tuple[float, float]:
    """(forward-only images/s, forward + tag selection images/s) on tensors preprocessed beforehand."""
    prepare = pipeline.Preprocessor(engine.loaded)
    batches = [
        torch.stack([prepare(path, str(path)) for path in images[start : start + batch_size]])
        for start in range(0, len(images), batch_size)
    ]
    engine.encode_tensors(batches[0])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    embeddings = [engine.encode_tensors(batch) for batch in batches]
    synchronize(device)
    forward = time.perf_counter() - start
    start = time.perf_counter()
    for batch in embeddings:
        engine.extract_embeddings(batch)
    return len(images) / forward, len(images) / (forward + time.perf_counter() - start)


def pipeline_rate(engine: Engine, folder: Path, batch_size: int, workers: int | None) -> float:
    summary = caption_folder(engine, folder, overwrite=True, batch_size=batch_size, workers=workers)
    assert not summary.failed, summary.failed
    return len(summary.written) / summary.seconds


def old_loop_rate(engine: Engine, images: list[Path], batch_size: int) -> float:
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        chunk = images[first : first + batch_size]
        for result in engine.extract_many([load_image(path) for path in chunk], names=[str(path) for path in chunk]):
            caption_path(Path(result.source)).write_text(result.prompt + "\n")
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--tagger", choices=SIZES, default=None, help="a random WD-v3-ViT-shaped tagger instead")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--pixels", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: the pipeline's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help="measure each N times, interleaved; keep the best")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "images"
        folder.mkdir()
        images = write_jpegs(folder, args.images, args.pixels)
        if args.tagger:
            spec = str(random_tagger(Path(work) / "wd-random", args.tagger))
        else:
            spec = random_checkpoint(args.arch, Path(work))
        engine = Engine(spec, args.device, default_dtype(args.device), cache_dir=Path(work) / "cache")

        best: dict[str, float] = {}
        for _ in range(args.rounds):  # interleaved rounds, best of each: a shared CPU's load comes and goes
            rates = dict(zip(("forward", "ceiling"), model_only(engine, images, args.batch_size, args.device)))
            rates["piped"] = pipeline_rate(engine, folder, args.batch_size, args.workers)
            draft = pipeline.Preprocessor.load
            pipeline.Preprocessor.load = lambda self, source, name: load_image(source, name)  # full-size decode
            rates["piped_full"] = pipeline_rate(engine, folder, args.batch_size, args.workers)
            pipeline.Preprocessor.load = draft
            rates["old"] = old_loop_rate(engine, images, args.batch_size)
            best = {key: max(rate, best.get(key, 0.0)) for key, rate in rates.items()}
        names = ("forward", "ceiling", "piped", "piped_full", "old")
        forward, ceiling, piped, piped_full, old = (best[name] for name in names)

    workers = args.workers or pipeline.default_workers()
    model = f"WD-v3-ViT-shaped tagger ({args.tagger})" if args.tagger else args.arch
    print(
        f"{model} on {args.device}, {args.images} JPEGs of {args.pixels} px, batch {args.batch_size}, "
        f"{workers} decoding threads, {torch.get_num_threads()} torch threads, best of {args.rounds} rounds\n"
    )
    rows = [
        ("model only: forward", forward, ""),
        ("model only: forward + tag selection", ceiling, "the ceiling"),
        (
            "pipeline (draft-scaled JPEG decode)",
            piped,
            f"{piped / ceiling:.0%} of the ceiling, {piped / forward:.0%} of forward",
        ),
        ("pipeline, full-size decode", piped_full, f"{piped_full / ceiling:.0%} of the ceiling"),
        ("old loop (decode on the model's thread)", old, f"pipeline is {piped / old:.2f}x faster"),
    ]
    width = max(len(row[0]) for row in rows)
    for name, rate, note in rows:
        print(f"{name:<{width}}  {rate:8.1f} images/s  {note}")


if __name__ == "__main__":
    main()
