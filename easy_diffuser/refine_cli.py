"""`easy-diffuser refine IMAGE --generator shapes|webui|URL [--rounds N] [--json]` and `easy-diffuser check IMAGE ...`.

Check generates once from the prompt pair (extracted from the image, or given with --prompt and
--negative-prompt) and prints its score and tag diff; refine then tries up to N better pairs and
prints each round as it is scored, then the best pair. Exit codes: 0 done, 1 the image or a
generation failed (finished rounds are still printed), 2 a setup error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Sequence

from PIL import Image

from .calibration.generators import Generator, make_generator
from .devices import default_device
from .engine import Engine
from .errors import ModelError
from .exit_codes import EXIT_IMAGE_FAILED, EXIT_SETUP_FAILED
from .images import ImageError, load_image
from .models import DEFAULT_MODEL
from .options import (
    OPTIONS,
    PROMPT_OPTION,
    REFINE_OPTIONS,
    CommandLineParser,
    ExtractOptions,
    OptionError,
    RefineOptions,
    add_argument,
)
from .refine import SCORE_HELP, Refinement, Round, checked_pair, refine
from .scoring import NonFiniteScores

CHECK_ONLY = {"rounds", "seeds"}  # Check is round 0 on one seed: these flags are refine's


def build_parser(command: str) -> argparse.ArgumentParser:
    what = (
        "Generate once from the prompt pair and compare with the image"
        if command == "check"
        else "Generate from the prompt pair, compare with the image, and try better pairs round by round"
    )
    parser = CommandLineParser(prog=f"easy-diffuser {command}", description=f"{what}. {SCORE_HELP}.")
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument(
        "--generator",
        required=True,
        help="shapes (the shapes-world renderer), shapes-cooccur, webui (a webui with --api at "
        "http://127.0.0.1:7860) or the URL of one",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registry name, ARCH/TAG, model folder or checkpoint")
    for option in PROMPT_OPTION.values():
        extracted = " (default: extracted from IMAGE)" if option.name == "prompt" else ""
        parser.add_argument(
            option.flag, default=None, help=f"{option.help}{extracted}; at most {option.maximum:,.0f} characters"
        )
    parser.add_argument("--json", action="store_true", help="print one JSON object: the rounds and the best pair")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument(
        "--cache-dir", default=None, help="weights and embedding cache (default: ~/.cache/easy_diffuser)"
    )
    generation = parser.add_argument_group("generation and rounds")
    for option in REFINE_OPTIONS:
        if command == "refine" or option.name not in CHECK_ONLY:
            add_argument(generation, option, option.name)
    extraction = parser.add_argument_group("the start pair, when --prompt is not given")
    for option in OPTIONS:
        add_argument(extraction, option, option.name)
    return parser


def main(command: str, argv: Sequence[str]) -> int:
    args = build_parser(command).parse_args(argv)
    settings = RefineOptions(**{o.name: getattr(args, o.name) for o in REFINE_OPTIONS if o.name in vars(args)})
    if command == "check":
        settings = replace(settings, rounds=0, seeds=1)
    try:
        checked_pair(args.prompt or "", args.negative_prompt or "")
    except OptionError as error:  # one line, as the HTTP route's 422 says it
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    try:
        image = load_image(args.image)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_IMAGE_FAILED
    try:
        generator = make_generator(args.generator, settings.width, settings.height, settings.steps)
        engine = Engine(args.model, args.device or default_device(), cache_dir=args.cache_dir)
    except (ModelError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    try:
        result = _refine(engine, image, generator, settings, args)
    except NonFiniteScores as error:  # the source image: there is nothing to compare with
        print(f"error: {args.image}: {error}", file=sys.stderr)
        return EXIT_IMAGE_FAILED
    if args.json:  # allow_nan=False: never a NaN that isn't JSON, should one get past the metric
        print(json.dumps(result.to_dict(), ensure_ascii=False, allow_nan=False))
    else:
        _print_best(result)
    if result.error or result.stopped:
        print(f"error: {result.error or 'stopped'}; the finished rounds are above", file=sys.stderr)
        return EXIT_IMAGE_FAILED
    return 0


def _refine(
    engine: Engine, image: Image.Image, generator: Generator, settings: RefineOptions, args: argparse.Namespace
) -> Refinement:
    """The rounds from the given pair, or from the one extracted from the image (NonFiniteScores when the model
    can't score the image)."""
    prompt, negative = args.prompt, args.negative_prompt or ""
    if prompt is None:
        extracted = engine.extract_many([image], ExtractOptions(**{o.name: getattr(args, o.name) for o in OPTIONS}))
        prompt, negative = extracted[0].prompt, args.negative_prompt or extracted[0].negative_prompt
    if not args.json:
        print(SCORE_HELP)
    return refine(engine, image, generator, prompt, negative, settings, None if args.json else _print_round)


def _print_round(scored: Round) -> None:
    label = "round 0 (start)" if scored.index == 0 else f"round {scored.index}"
    print(f"{label}: loss {scored.loss:.4f}, cosine {scored.cosine:.4f}")
    print(f"  prompt: {scored.prompt}\n  negative prompt: {scored.negative_prompt}")
    print(f"  lost: {', '.join(scored.lost) or '-'}\n  added: {', '.join(scored.added) or '-'}", flush=True)


def _print_best(result: Refinement) -> None:
    best = result.best
    if best is None:
        return
    if len(result.rounds) > 1:
        start = result.rounds[0].loss
        print(f"best: round {best.index}, loss {best.loss:.4f} (start {start:.4f}; {result.generations} generations)")
    print(f"Prompt: {best.prompt}\nNegative prompt: {best.negative_prompt}")
