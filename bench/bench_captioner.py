"""Captioner speed on this machine: seconds per image for each captioner class, side by side in one run.

The models are the tests' tiny random ones (tests/tiny_captioners.py: the real classes at hidden size 32,
one layer), so this measures the fixed cost of each class's pipeline (preprocessing, the chat template,
generation's loop), not a real model's arithmetic. Random weights stop at any token, so every model is
made to write exactly `--tokens` new tokens (min = max), and the describer also at its own default length.

    python bench/bench_captioner.py
    python bench/bench_captioner.py --images 10 --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny_captioners import build_blip, build_git, build_joycaption, build_qwen2_vl  # noqa: E402

from easy_diffuser.captioner import DESCRIBER_DEFAULTS, load_captioner  # noqa: E402
from easy_diffuser.options import CaptionOptions  # noqa: E402

BUILDERS = {"BLIP": build_blip, "GIT": build_git, "Qwen2-VL": build_qwen2_vl, "JoyCaption": build_joycaption}


def seconds_per_image(captioner, images: list, options: CaptionOptions) -> float:
    captioner.caption(images[0], options)  # warm-up: first-call allocations
    times = []
    for image in images:
        start = time.perf_counter()
        captioner.caption(image, options)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    # Not 30: a describer reads the schema's default 30 as its own default, 256 (captioner.describing).
    parser.add_argument("--tokens", type=int, default=32, help="new tokens every captioner writes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = [Image.new("RGB", (640, 480), (40 * i % 256, 90, 160)) for i in range(args.images)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, build in BUILDERS.items():
            start = time.perf_counter()
            captioner = load_captioner(str(build(Path(folder) / name)))
            loaded = time.perf_counter() - start
            fixed = CaptionOptions(str(folder), beams=1, min_length=args.tokens, max_length=args.tokens)
            rows.append((name, args.tokens, seconds_per_image(captioner, images, fixed), loaded))
            if name == "Qwen2-VL":
                length = DESCRIBER_DEFAULTS["max_length"]
                own = CaptionOptions(str(folder), beams=1, min_length=length, max_length=length)
                rows.append((f"{name} (its default length)", length, seconds_per_image(captioner, images, own), loaded))
    baseline = rows[0][2]
    print(f"tiny random captioners, CPU, {args.threads} thread(s), {args.images} images of 640x480, greedy")
    print(f"{'captioner':<30} {'new tokens':>10} {'s/image':>9} {'x BLIP':>7} {'load s':>7}")
    for name, tokens, seconds, loaded in rows:
        print(f"{name:<30} {tokens:>10} {seconds:>9.3f} {seconds / baseline:>7.2f} {loaded:>7.2f}")


if __name__ == "__main__":
    main()
