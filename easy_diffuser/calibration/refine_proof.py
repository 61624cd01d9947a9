"""Does Refine lower the round-trip loss on seeds it never saw? Measured on both shapes worlds.

    python -m easy_diffuser.calibration.refine_proof [--scenes 200] [--rounds 4] [--seeds 2]

For each world (shapes-demo with the shapes renderer, shapes-cooccur with the co-occurrence
generator) and each weak start a user can reach (few positive tags, a manual tau far from the
calibrated one), every held-out scene is extracted, refined on seeds 0..S-1, and then the start pair
and the refined best pair are both scored on EVAL_SEEDS other seeds. A scene counts as improved when
the refined pair's held-out loss is lower, as worse when it is higher. The cost is the generations
refining needed per image (the held-out scoring is the measurement, not part of the cost).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..engine import Engine, ExtractOptions
from ..options import REFINE_OPTION, RefineOptions
from ..refine import refine
from ..shapes import cooccur, world
from .cooccur_proof import DEFAULT_MODEL as COOCCUR_MODEL
from .generators import Generator, ShapesGenerator
from .metric import Metric
from .shapes_proof import scenes

HELD_OUT_SEED = 4000  # scenes none of the other proofs drew (0, 1, 2, 7, 12345, 3000)
EVAL_SEED, EVAL_SEEDS = 1000, 4  # generation seeds of the held-out score, far from refine's 0..S-1
EPSILON = 1e-6


@dataclass(frozen=True)
class World:
    name: str
    model: str
    generator: Callable[[], Generator]
    scenes: Callable[[int, int], list[world.Scene]]
    starts: dict[str, ExtractOptions]  # weak settings a user can reach, by label


WORLDS = (
    World(
        "shapes",
        "shapes-demo",
        ShapesGenerator,
        scenes,
        # calibrated: tau -1, 8 negatives
        {"Number of tags 1": ExtractOptions(max_tags=1), "2 tags, tau 2.5": ExtractOptions(max_tags=2, tau=2.5)},
    ),
    World(
        "co-occurrence",
        str(COOCCUR_MODEL),
        cooccur.CooccurGenerator,
        cooccur.scenes,
        # calibrated: tau 1, 8 negatives
        {"Number of tags 1": ExtractOptions(max_tags=1), "2 tags, tau -1": ExtractOptions(max_tags=2, tau=-1.0)},
    ),
)


@dataclass
class Measured:
    world: str
    start: str
    images: int
    improved: float  # share of images whose held-out loss refining lowered
    worse: float  # share whose held-out loss it raised
    start_loss: float  # mean held-out loss of the start pairs
    refined_loss: float  # mean held-out loss of the refined pairs
    median_drop: float  # median of (start - refined) over the images
    generations: float  # generations refining needed per image

    def row(self) -> str:
        cells = [
            self.world,
            self.start,
            self.images,
            f"{self.improved:.0%}",
            f"{self.worse:.0%}",
            f"{self.start_loss:.4f}",
            f"{self.refined_loss:.4f}",
            f"{1 - self.refined_loss / self.start_loss:.0%}",
            f"{self.median_drop:.4f}",
            f"{self.generations:.1f}",
        ]
        return "| " + " | ".join(map(str, cells)) + " |"


HEADINGS = (
    "world",
    "start",
    "images",
    "refining lowered the held-out loss",
    "raised it",
    "held-out loss, start",
    "refined",
    "mean drop",
    "median drop per image",
    "generations per image",
)


def measure(
    engine: Engine, generator: Generator, items: Sequence[world.Scene], start: ExtractOptions, settings: RefineOptions
) -> tuple[list[float], list[float], int]:
    """(held-out loss of each start pair, of each refined pair, generations refining needed)."""
    metric = Metric(engine)
    before, after, generations = [], [], 0
    for scene in items:
        image = world.draw(scene)
        extracted = engine.extract_many([image], start)[0]
        start_pair = (extracted.prompt, extracted.negative_prompt)
        refined = refine(engine, image, generator, *start_pair, settings, metric=metric)
        best = refined.best
        assert best is not None  # the shapes generators never fail
        generations += refined.generations
        before.append(held_out_loss(engine, image, generator, start_pair, metric))
        after.append(held_out_loss(engine, image, generator, (best.prompt, best.negative_prompt), metric))
    return before, after, generations


def held_out_loss(engine: Engine, image, generator: Generator, pair: tuple[str, str], metric: Metric) -> float:
    """The pair's round-trip loss on EVAL_SEEDS seeds refining never used."""
    scored = refine(
        engine, image, generator, *pair, RefineOptions(rounds=0, seeds=EVAL_SEEDS, seed=EVAL_SEED), metric=metric
    )
    return scored.rounds[0].loss


def summarise(name: str, start: str, before: list[float], after: list[float], generations: int) -> Measured:
    count = len(before)
    drops = [b - a for b, a in zip(before, after)]
    return Measured(
        name,
        start,
        count,
        sum(d > EPSILON for d in drops) / count,
        sum(d < -EPSILON for d in drops) / count,
        statistics.fmean(before),
        statistics.fmean(after),
        statistics.median(drops),
        generations / count,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Refine on held-out scenes of both shapes worlds, scored held out.")
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes per world")
    parser.add_argument("--rounds", type=int, default=REFINE_OPTION["rounds"].default, help="refine rounds")
    parser.add_argument("--seeds", type=int, default=REFINE_OPTION["seeds"].default, help="seeds per refine score")
    parser.add_argument("--cache-dir", type=Path, default=Path("out/refine-proof/cache"), help="tag-embedding cache")
    args = parser.parse_args(argv)
    settings = RefineOptions(rounds=args.rounds, seeds=args.seeds)
    print(
        f"refine: {settings.rounds} rounds, {settings.seeds} seeds per score (0..{settings.seeds - 1}); "
        f"held-out score: {EVAL_SEEDS} seeds from {EVAL_SEED}; {args.scenes} held-out scenes per world "
        f"(seed {HELD_OUT_SEED})"
    )
    print("| " + " | ".join(HEADINGS) + " |\n|" + "---|" * len(HEADINGS))
    for item in WORLDS:
        engine = Engine(item.model, cache_dir=args.cache_dir)
        items = item.scenes(args.scenes, HELD_OUT_SEED)
        for label, start in item.starts.items():
            before, after, generations = measure(engine, item.generator(), items, start, settings)
            print(summarise(item.name, label, before, after, generations).row(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
