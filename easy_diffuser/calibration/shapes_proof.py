"""Proof on the shapes world that calibration works, and the fit of shapes-demo's tag probabilities.

    python -m easy_diffuser.calibration.shapes_proof [--model shapes-demo|shapes-booru] [--out DIR]

Calibrates a shipped shapes model (shapes-demo, or the tagger shapes-booru: one path for both) on one set
of random scenes, then compares on held-out scenes the loss
of the calibrated setting against three alternatives at the same number of negatives: the lowest
tags of the whole vocabulary, no negative prompt, and a tau too high. Because the scenes are known,
it also counts how often a true attribute of the image lands in the negative prompt, the failure
that makes the shapes renderer (and Stable Diffusion) leave out something the image has.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image

from ..engine import Engine
from ..shapes import world
from .generators import ShapesGenerator
from .metric import Metric, TagCalibration, fit_tag_calibration
from .run import calibrate
from .sweep import NO_NEGATIVES, WHOLE_VOCABULARY, WHOLE_VOCABULARY_LABEL, Row, Setting, calibration_options, measure

TOO_HIGH_LABEL = "tau too high"
TOO_HIGH_TAU = 1.0  # shapes-demo's shipped tau before calibration
# A tagger's relevance is standardised log-odds (scorers.py): at tau 3 only the tags it is sure of pass.
TOO_HIGH_TAUS = {"shapes-demo": TOO_HIGH_TAU, "shapes-booru": 3.0}


@dataclass
class Compared:
    name: str
    row: Row
    true_in_negative: float  # share of images whose negative prompt names one of their true tags


def scenes(count: int, seed: int) -> list[world.Scene]:
    rng = random.Random(seed)
    return [world.random_scene(rng) for _ in range(count)]


def write_folder(folder: str | Path, items: Sequence[world.Scene], pixels: int = 64) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(items):
        world.draw(scene, pixels).save(folder / f"scene-{index:04d}.png")


def fit_probabilities(engine: Engine, count: int = 400, seed: int = 7) -> TagCalibration:
    """center/temperature of p = sigmoid((relevance - center)/temperature), fitted to known scenes."""
    items = scenes(count, seed)
    metric = Metric(engine)
    relevance = metric.relevance(metric.encode([world.draw(s) for s in items]))
    truth = [set(s.tags().values()) for s in items]
    present = torch.tensor([[float(tag in true) for tag in engine.vocabulary.tags] for true in truth])
    return fit_tag_calibration(relevance, present)


def true_in_negative(row: Row, items: Sequence[world.Scene]) -> float:
    hits = [
        bool(set(world.parse_tags(negative)) & set(s.tags().values())) for (_, negative), s in zip(row.prompts, items)
    ]
    return sum(hits) / len(hits)


def compare_held_out(
    engine: Engine, chosen: Setting, too_high_tau: float, items: Sequence[world.Scene], seed: int = 0
) -> list[Compared]:
    """The calibrated setting against the three alternatives, on scenes it never saw."""
    settings = [
        Setting(chosen.tau, chosen.negatives, "calibrated"),
        Setting(WHOLE_VOCABULARY, chosen.negatives, WHOLE_VOCABULARY_LABEL),
        Setting(0.0, 0, NO_NEGATIVES),
        Setting(too_high_tau, chosen.negatives, TOO_HIGH_LABEL),
    ]
    images: list[Image.Image] = [world.draw(s) for s in items]
    rows, _ = measure(engine, images, ShapesGenerator(), settings, calibration_options(engine), seed=seed)
    return [Compared(s.label, row, true_in_negative(row, items)) for s, row in zip(settings, rows)]


def comparison_table(compared: Sequence[Compared], extra: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """The held-out comparison as a Markdown table; `extra` adds columns (heading -> cell of an item)."""
    extra = extra or {}
    headings = ["negative prompt", "tau", "negatives", "loss (BCE)", "image cosine", "true attribute in negative"]
    lines = ["| " + " | ".join([*headings, *extra]) + " |", "|" + "---|" * (len(headings) + len(extra))]
    for item in compared:
        s = item.row.setting
        tau = "all tags" if s.tau == WHOLE_VOCABULARY else ("-" if s.label == NO_NEGATIVES else f"{s.tau:g}")
        losses = [f"{item.row.loss:.4f}", f"{item.row.cosine:.4f}", f"{item.true_in_negative:.0%}"]
        cells = [item.name, tau, s.negatives, *losses]
        lines.append("| " + " | ".join(map(str, [*cells, *(cell(item) for cell in extra.values())])) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate a shapes model and compare on held-out scenes.")
    parser.add_argument("--model", choices=TOO_HIGH_TAUS, default="shapes-demo")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/calibration-shapes"),
        help="folder for images, calibration JSON and report",
    )
    parser.add_argument("--train", type=int, default=60, help="calibration images")
    parser.add_argument("--held-out", type=int, default=400, help="held-out images")
    parser.add_argument("--too-high", type=float, help="the 'tau too high' of the comparison (default: per model)")
    parser.add_argument("--fit", action="store_true", help="also fit and print shapes-demo's tag probabilities")
    args = parser.parse_args(argv)
    if args.fit and args.model != "shapes-demo":
        parser.error("--fit: a tagger gives its own tag probabilities, there is nothing to fit")
    too_high = TOO_HIGH_TAUS[args.model] if args.too_high is None else args.too_high
    engine = Engine(args.model, cache_dir=args.out / "cache")
    if args.fit:
        fitted = fit_probabilities(engine)
        print(f"fitted tag probabilities: prob_center {fitted.center:.3f}, prob_temperature {fitted.temperature:.3f}")
    folder = args.out / "images"
    write_folder(folder, scenes(args.train, seed=1))
    result = calibrate(engine, folder, ShapesGenerator(), out_dir=args.out)
    assert result.best is not None
    print(f"calibrated: {result.best.setting.describe()} (loss {result.best.loss:.4f}); wrote {result.path}")
    print(comparison_table(compare_held_out(engine, result.best.setting, too_high, scenes(args.held_out, seed=2))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
