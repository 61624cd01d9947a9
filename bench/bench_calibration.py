"""Calibration's cost, side by side in one run: the full sweep (every setting on every image) against
the default search (successive halving, sweep.search) on the same calibration images, with the
shapes generator. Prints the generations each needed, their ratio, the settings they chose, and
how those settings do on held-out scenes neither saw, beside the full sweep's own noise.

    python bench/bench_calibration.py                   # 60 calibration scenes, 400 held out
    python bench/bench_calibration.py --images 30 --held-out 200 --seed 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easy_diffuser.calibration.generators import CallableGenerator, ShapesGenerator  # noqa: E402
from easy_diffuser.calibration.run import FIRST_IMAGES, calibrate  # noqa: E402
from easy_diffuser.calibration.shapes_proof import scenes, write_folder  # noqa: E402
from easy_diffuser.calibration.sweep import Calibration, calibration_options, measure  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.shapes import world  # noqa: E402


def counted_run(engine: Engine, folder: Path, out: Path, first_images: int | None) -> tuple[Calibration, int, float]:
    """A calibration with its own (empty) partial results: (result, generator calls, seconds)."""
    calls = []
    shapes = ShapesGenerator()
    counting = CallableGenerator(lambda p, n, s: calls.append(1) or shapes.generate(p, n, s), shapes.name)
    start = time.perf_counter()
    result = calibrate(engine, folder, counting, out_dir=out, report=False, first_images=first_images)
    return result, len(calls), time.perf_counter() - start


def standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60, help="calibration scenes")
    parser.add_argument("--held-out", type=int, default=400, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=1, help="seed of the calibration scenes (held out: seed + 1000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        write_folder(root / "images", scenes(args.images, seed=args.seed))
        engine = Engine("shapes-demo", cache_dir=root / "cache")
        full, full_calls, full_seconds = counted_run(engine, root / "images", root / "full", None)
        cheap, cheap_calls, cheap_seconds = counted_run(engine, root / "images", root / "search", FIRST_IMAGES)
        held_out = [world.draw(s) for s in scenes(args.held_out, seed=args.seed + 1000)]
        chosen = [full.best.setting, cheap.best.setting]
        held, _ = measure(engine, held_out, ShapesGenerator(), chosen, calibration_options(engine))
    print(f"shapes-demo, {args.images} calibration scenes (seed {args.seed}), {args.held_out} held-out scenes")
    print(
        f"{'':12} {'generations':>11} {'seconds':>8}  chosen setting                 "
        "loss (calibration)  loss (held out)"
    )
    for name, result, calls, seconds, row in [
        ("full sweep", full, full_calls, full_seconds, held[0]),
        ("search", cheap, cheap_calls, cheap_seconds, held[1]),
    ]:
        print(
            f"{name:12} {calls:>11} {seconds:>8.1f}  {result.best.setting.describe():30} "
            f"{result.best.loss:>18.4f}  {row.loss:>15.4f}"
        )
    print(f"ratio: {full_calls / cheap_calls:.2f}x fewer generations ({full_seconds / cheap_seconds:.2f}x less time)")
    print(
        f"full sweep's noise: standard error of its best row's loss {standard_error(full.best.losses):.4f} "
        f"(calibration), {standard_error(held[0].losses):.4f} (held out)"
    )
    difference = [b - a for a, b in zip(held[0].losses, held[1].losses)]
    print(
        f"held out, search minus full sweep: {statistics.mean(difference):+.4f} "
        f"(paired standard error {standard_error(difference) if any(difference) else 0.0:.4f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
