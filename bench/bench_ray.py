"""Single process against Ray Data on this machine, side by side in one run: the same JPEGs, the same
model, records only (no .txt). Prints both rates and Ray's overhead per image.

On one small machine Ray can only add cost (object store, task scheduling, a model in an actor that
gets one of the CPUs); its point is the machines and GPUs beyond this one (docs/scaling.md).

    python bench/bench_ray.py                       # ViT-B-32 random weights, 200 JPEGs of 512 px, local Ray
    python bench/bench_ray.py --ray-address auto    # on a running cluster
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from bench_core import random_checkpoint  # noqa: E402
from bench_pipeline import write_jpegs  # noqa: E402

import easy_diffuser  # noqa: E402
from easy_diffuser import ray_job  # noqa: E402
from easy_diffuser.batch import caption_folder  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.records import RecordWriter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "images"
        folder.mkdir()
        write_jpegs(folder, args.images, args.pixels)
        spec, cache = random_checkpoint(args.arch, Path(work)), Path(work) / "cache"
        Engine(spec, "cpu", cache_dir=cache)  # the tag cache, built before either is timed

        start = time.perf_counter()
        engine = Engine(spec, "cpu", cache_dir=cache)
        records = RecordWriter(Path(work) / "local.jsonl")
        summary = caption_folder(engine, folder, records=records, captions=False, batch_size=args.batch_size)
        records.close()
        local = time.perf_counter() - start
        assert len(summary.written) == args.images

        start = time.perf_counter()
        package = str(Path(easy_diffuser.__file__).parent.parent)
        ray.init(
            address=args.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": package}},
        )
        started = time.perf_counter() - start
        start = time.perf_counter()
        job = ray_job.run_job(
            ray_job.list_inputs([folder]),
            str(Path(work) / "shards.parquet"),
            spec,
            cache_dir=str(cache),
            batch_size=args.batch_size,
        )
        distributed = time.perf_counter() - start
        assert job.images == args.images and not job.errors
        cpus = ray.cluster_resources().get("CPU", 0)
        ray.shutdown()

    print(f"{args.arch} on CPU, {args.images} JPEGs of {args.pixels} px, batch {args.batch_size}, {cpus:g} Ray CPUs\n")
    print(f"single process (load + caption)      {local:7.1f} s  {args.images / local:6.1f} images/s")
    print(
        f"Ray job (driver + actors + shards)   {distributed:7.1f} s  {args.images / distributed:6.1f} images/s  "
        f"{distributed / local:.2f}x the single process's time"
    )
    print(f"Ray start (ray.init, once a session) {started:7.1f} s")
    print(f"Ray's overhead per image             {(distributed - local) / args.images * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
