"""`easy-diffuser calibrate FOLDER ...`: learn a model's tau from the command line."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..engine import Engine, calibration_path
from ..models import DEFAULT_MODEL, ModelError, default_device
from .generators import make_generator
from .report import table_text
from .run import calibrate
from .sweep import DEFAULT_NEGATIVES, DEFAULT_TAUS, Calibration, calibration_options

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easy-diffuser calibrate", description="Learn the negative-prompt tau of a model by generating from extracted prompts and comparing.")
    parser.add_argument("folder", type=Path, help="images to calibrate on")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registry name, ARCH/TAG, model folder or checkpoint file")
    parser.add_argument("--generator", default="shapes", help="'shapes' or the URL of a webui started with --api (e.g. http://127.0.0.1:7860)")
    parser.add_argument("--taus", type=float, nargs="+", default=list(DEFAULT_TAUS))
    parser.add_argument("--negatives", type=int, nargs="+", default=list(DEFAULT_NEGATIVES))
    parser.add_argument("--tags", type=int, default=None, help="positive tags while calibrating (default: the model's calibration_tags)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=256, help="webui generation size")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="webui sampling steps")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out-dir", type=Path, default=None, help="write the result here instead of the cache folder (not used by default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        engine = Engine(args.model, args.device or default_device(), cache_dir=args.cache_dir)
        generator = make_generator(args.generator, args.width, args.height, args.steps)
    except (ModelError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = replace(calibration_options(engine), max_tags=args.tags) if args.tags else None
    bar = tqdm(desc="Calibrating", unit="generation", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = calibrate(engine, args.folder, generator, args.taus, args.negatives, options, args.seed, args.out_dir, progress)
    except (ValueError, OSError, RuntimeError) as error:  # WebuiError is a RuntimeError
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    bar.close()
    _print_result(result, engine)
    return 0


def _print_result(result: Calibration, engine: Engine) -> None:
    assert result.best is not None and result.path is not None
    print(table_text(result.rows + result.baselines))
    print(f"\nbest: {result.best.setting.describe()} (loss {result.best.loss:.4f}) over {len(result.images)} images")
    print(f"wrote {result.path}")
    for name, path in result.report.items():
        print(f"{name}: {path}")
    if result.path.parent == calibration_path(engine.cache_dir, engine.model_id).parent:
        tau, source = engine.resolve_tau(None)
        print(f"tau in force for {engine.model_id}: {tau:g} ({source})")

