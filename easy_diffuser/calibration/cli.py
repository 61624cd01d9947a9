"""`easy-diffuser calibrate FOLDER ...`: learn a model's tau from the command line.

A run writes a candidate and changes nothing; `--apply` puts it in force (keeping the previous
calibration), `--undo` takes it back.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from ..devices import default_device
from ..engine import Engine
from ..errors import ModelError
from ..models import DEFAULT_MODEL
from ..options import CALIBRATION_GENERATION, OPTION, REFINE_OPTION, CommandLineParser
from . import store
from .generators import make_generator
from .report import NO_PLOT, summary_lines, table_text
from .run import FIRST_IMAGES, calibrate
from .sweep import DEFAULT_NEGATIVES, DEFAULT_TAUS, Calibration, calibration_options

# The shipped shapes-world models, for which the offline shapes renderer stands in for a real generator.
SHAPES_MODELS = ("shapes-demo", "shapes-booru")
SWEEP_TAU = replace(OPTION["tau"], automatic="")  # the schema's range; a sweep's tau is a number, never "automatic"
EXAMPLES = """examples:
  easy-diffuser calibrate FOLDER --model ViT-L-14/openai --generator http://127.0.0.1:7860
  easy-diffuser calibrate --apply --model ViT-L-14/openai      # put the last result in force
  easy-diffuser calibrate --undo --model ViT-L-14/openai       # back to the calibration before it"""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="easy-diffuser calibrate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
        description="Learn the negative-prompt tau of a model: extract prompts from your images, generate from them "
        "and keep the setting whose images come closest. The result is a candidate until applied.",
    )
    parser.add_argument("folder", type=Path, nargs="?", help="images to calibrate on")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="registry name, ARCH/TAG, model folder or checkpoint file (default: %(default)s)",
    )
    parser.add_argument(
        "--generator",
        default=None,
        help=f"the URL of a webui started with --api (e.g. http://127.0.0.1:7860), or 'shapes' "
        f"(default: shapes for {' and '.join(SHAPES_MODELS)}, required otherwise)",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="put the result in force (without FOLDER: the last candidate); the previous calibration is kept",
    )
    parser.add_argument("--undo", action="store_true", help="put the previous calibration back in force")
    sweep = parser.add_argument_group("the sweep")
    sweep.add_argument(
        "--taus",
        type=SWEEP_TAU.argument_type(),
        nargs="+",
        default=list(DEFAULT_TAUS),
        metavar="TAU",
        help=f"taus to try (default: {' '.join(f'{t:g}' for t in DEFAULT_TAUS)})",
    )
    sweep.add_argument(
        "--negatives",
        type=OPTION["negatives"].argument_type(),
        nargs="+",
        default=list(DEFAULT_NEGATIVES),
        metavar="N",
        help=f"numbers of negative tags to try (default: {' '.join(map(str, DEFAULT_NEGATIVES))})",
    )
    sweep.add_argument(
        "--full",
        action="store_true",
        help=f"every setting on every image (default: a search, every setting on {FIRST_IMAGES} images, "
        "the best fifth on more, ...)",
    )
    sweep.add_argument(
        "--tags",
        type=OPTION["max_tags"].argument_type(),
        default=None,
        help="positive tags while calibrating (default: the model's calibration_tags, else 24)",
    )
    sweep.add_argument("--seed", type=int, default=0, help="generation seed offset (default: %(default)s)")
    webui = parser.add_argument_group("webui generation")
    for name, default in CALIBRATION_GENERATION.items():
        option = REFINE_OPTION[name]
        what = "sampling steps, " if name == "steps" else ""
        webui.add_argument(
            option.flag,
            type=option.argument_type(),
            default=default,
            help=f"{what}{option.minimum:g} to {option.maximum:g} (default: %(default)s)",
        )
    parser.add_argument(
        "--table", action="store_true", help="print the whole table (default: a summary; the table is in the report)"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument(
        "--cache-dir", default=None, help="weights, embeddings and calibrations (default: ~/.cache/easy_diffuser)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="write the result here instead of the cache folder (never in force)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _usage_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    generator_spec = args.generator or "shapes"
    if args.folder and not args.generator:
        print(f"note: --generator shapes (the shapes-world renderer, {args.model}'s default)")
    try:
        engine = Engine(args.model, args.device or default_device(), cache_dir=args.cache_dir)
        generator = make_generator(generator_spec, args.width, args.height, args.steps) if args.folder else None
    except (ModelError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.folder:
        return _change(engine, store.undo if args.undo else store.apply, args)
    options = replace(calibration_options(engine), max_tags=args.tags) if args.tags else None
    bar = tqdm(desc="Calibrating", unit="generation", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        result = calibrate(
            engine,
            args.folder,
            generator,
            args.taus,
            args.negatives,
            options,
            args.seed,
            args.out_dir,
            progress,
            first_images=None if args.full else FIRST_IMAGES,
        )
    except (ValueError, OSError, RuntimeError) as error:  # WebuiError is a RuntimeError
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 1
    bar.close()
    _print_result(result, args.table)
    if args.apply:
        return _change(engine, store.apply, args)
    print(
        f"in force: {store.InForce.of(engine).describe()}"
        + ("" if args.out_dir else f"\nto use the result: {_command(args, '--apply')}")
    )
    return 0


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.undo and (args.apply or args.folder):
        return "--undo takes no FOLDER and no --apply: easy-diffuser calibrate --undo --model MODEL"
    if not (args.folder or args.apply or args.undo):
        return "give the FOLDER of images to calibrate on (or --apply / --undo)"
    if args.out_dir and (args.apply or args.undo):
        return "--apply and --undo work on the cache folder's calibration, not on --out-dir"
    if args.folder and not args.generator and args.model not in SHAPES_MODELS:
        return (
            f"--generator is required for {args.model}: pass the URL of a webui started with --api, "
            "e.g. --generator http://127.0.0.1:7860"
        )
    return None


def _change(engine: Engine, change: Callable[[Path], None], args: argparse.Namespace) -> int:
    """Apply or undo, and say what changed for extraction."""
    target = store.target_path(engine)
    before = store.InForce.of(engine)
    try:
        change(target)
    except (store.CalibrationFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    after = store.InForce.of(engine)
    verb = "applied" if change is store.apply else "undone"
    print(f"{verb} for {engine.model_id}: {store.change_text(before, after)}")
    print(f"in force: {after.describe()}")
    if change is store.apply:
        print(
            f"the previous calibration is kept in {store.previous_path(target)}; to go back: {_command(args, '--undo')}"
        )
    return 0


def _command(args: argparse.Namespace, flag: str) -> str:
    cache = f" --cache-dir {args.cache_dir}" if args.cache_dir else ""
    return f"easy-diffuser calibrate {flag} --model {args.model}{cache}"


def _print_result(result: Calibration, full_table: bool) -> None:
    assert result.best is not None and result.path is not None
    for line in result.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    if full_table:
        print(table_text(result.rows + result.baselines, result.best))
    print("\n".join(summary_lines(result)))
    print(f"wrote {result.path} (a candidate: not in force)")
    for name, path in result.report.items():
        print(f"{name}: {path}")
    if "plot" not in result.report:
        print(f"plot: {NO_PLOT}")
