"""Does the relevant-subset rule beat the whole-vocabulary rule where the two can differ?

    python -m easy_diffuser.calibration.cooccur_proof [--model DIR] [--out DIR]

In the plain shapes world every tag is something the renderer obeys, so the lowest tags of the
whole vocabulary and the lowest inside the relevant subset are the same tags. The co-occurrence
world (`cooccur.py`) has what real models have: unasked attributes follow from asked ones, and most
of the vocabulary is tags the generator never draws. This calibrates shapes-cooccur on one set of
scenes with the product's own sweep (`calibration.calibrate`), then compares on held-out scenes:
the calibrated subset rule, the whole-vocabulary rule at the same number of negatives and at its
own best number, the sweep's lower edge (tau -1, the whole-vocabulary end of the sweep), and no
negative prompt. The scenes are known, so it also counts negatives that name a true attribute and
negatives that name a distractor (a tag the world never draws).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..engine import Engine
from ..shapes import cooccur, world
from .run import calibrate
from .shapes_proof import comparison_table as shapes_comparison_table
from .shapes_proof import true_in_negative, write_folder
from .sweep import NO_NEGATIVES, WHOLE_VOCABULARY, WHOLE_VOCABULARY_LABEL, Row, Setting, calibration_options, measure

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "shapes-cooccur"
CALIBRATION_SEED, HELD_OUT_SEED = 1, 2
LOWER_EDGE_LABEL = "sweep's lower edge"
LOWER_EDGE_TAU = -1.0


@dataclass
class Compared:
    name: str
    row: Row
    true_in_negative: float  # share of images whose negative prompt names one of their true tags
    distractor_share: float  # share of all negative tags that the world never draws


def distractor_share(row: Row) -> float:
    negatives = [tag for _, negative in row.prompts for tag in world.parse_tags(negative)]
    return sum(tag in cooccur.DISTRACTOR_TAGS for tag in negatives) / max(1, len(negatives))


def best_whole_vocabulary(baselines: Sequence[Row]) -> Setting:
    """The whole-vocabulary rule at its own best number of negatives (on the calibration images)."""
    rows = [row for row in baselines if row.setting.label == WHOLE_VOCABULARY_LABEL]
    return min(rows, key=lambda row: (row.loss, row.setting.negatives)).setting


def compare_held_out(
    engine: Engine, chosen: Setting, whole_count: int, items: Sequence[world.Scene], seed: int = 0
) -> list[Compared]:
    """The calibrated subset rule against the alternatives, on scenes calibration never saw."""
    settings = [
        Setting(chosen.tau, chosen.negatives, "calibrated subset rule"),
        Setting(WHOLE_VOCABULARY, chosen.negatives, WHOLE_VOCABULARY_LABEL),
        Setting(WHOLE_VOCABULARY, whole_count, f"{WHOLE_VOCABULARY_LABEL}, its best count"),
        Setting(LOWER_EDGE_TAU, chosen.negatives, LOWER_EDGE_LABEL),
        Setting(0.0, 0, NO_NEGATIVES),
    ]
    images = [world.draw(scene) for scene in items]
    rows, _ = measure(engine, images, cooccur.CooccurGenerator(), settings, calibration_options(engine), seed=seed)
    return [
        Compared(s.label, row, true_in_negative(row, items), distractor_share(row)) for s, row in zip(settings, rows)
    ]


def comparison_table(compared: Sequence[Compared]) -> str:
    never_drawn = {"negatives the world never draws": lambda item: f"{item.distractor_share:.0%}"}
    return shapes_comparison_table(compared, never_drawn)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate on the co-occurrence world, compare the rules held out.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the world's model folder")
    parser.add_argument("--out", type=Path, default=Path("out/calibration-cooccur"), help="images, JSON and report")
    parser.add_argument("--train", type=int, default=60, help="calibration images")
    parser.add_argument("--held-out", type=int, default=400, help="held-out images")
    args = parser.parse_args(argv)
    engine = Engine(str(args.model), cache_dir=args.out / "cache")
    folder = args.out / "images"
    write_folder(folder, cooccur.scenes(args.train, CALIBRATION_SEED))
    result = calibrate(engine, folder, cooccur.CooccurGenerator(), out_dir=args.out)
    assert result.best is not None
    whole = best_whole_vocabulary(result.baselines)
    print(
        f"calibrated: {result.best.setting.describe()} (loss {result.best.loss:.4f}); "
        f"whole-vocabulary rule best at {whole.negatives} negatives; wrote {result.path}"
    )
    held_out = cooccur.scenes(args.held_out, HELD_OUT_SEED)
    print(comparison_table(compare_held_out(engine, result.best.setting, whole.negatives, held_out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
