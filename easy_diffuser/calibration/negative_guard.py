"""How often the negative prompt names what the image shows, on held-out shapes-world scenes.

    python -m easy_diffuser.calibration.negative_guard [--scenes 400] [--seed 3000]

Over the settings a user can reach (Number of tags 1-4, tau -1 to 2 in steps of 0.5, 4, 8 or 12
negatives), every held-out scene is extracted once per setting, with the guard (a tag the model
believes present is never a negative, presence.py) and without it (SelectionOptions.presence None,
the rule before the guard). A result is one scene at one setting; it fails when its negative prompt
names one of the scene's true colour, shape, background or size. Beside it: the positive prompt's
accuracy (the true colour and shape among 3 tags), which the guard must leave as it was.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..engine import Engine, ExtractOptions
from ..shapes import world
from .shapes_proof import scenes

GRID_TAGS = (1, 2, 3, 4)
GRID_TAUS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
GRID_NEGATIVES = (4, 8, 12)
# Scenes none of the others drew: the trainer (seed 0), its evaluation (12345), the shapes proof (1, 2, 7).
HELD_OUT_SEED = 3000
ACCURACY_TAGS = 3


@dataclass(frozen=True)
class GuardMeasurement:
    guarded: bool
    results: int  # scenes x settings
    true_in_negative: float  # share of results whose negative prompt names a true attribute of the scene
    colour_in_top: float  # share of scenes with the true colour among ACCURACY_TAGS positive tags
    shape_in_top: float

    def describe(self) -> str:
        rule = "with the guard   " if self.guarded else "without the guard"
        return (
            f"{rule}: true attribute in the negative prompt {self.true_in_negative:6.2%} of {self.results} results; "
            f"colour in top {ACCURACY_TAGS} {self.colour_in_top:.1%}, shape {self.shape_in_top:.1%}"
        )


def grid() -> list[ExtractOptions]:
    return [
        ExtractOptions(max_tags=tags, tau=tau, negatives=negatives)
        for tags in GRID_TAGS
        for tau in GRID_TAUS
        for negatives in GRID_NEGATIVES
    ]


def measure_guard(
    engine: Engine, items: Sequence[world.Scene], guarded: bool = True, settings: Sequence[ExtractOptions] | None = None
) -> GuardMeasurement:
    """The failure rate over the settings (default: the grid above) and the positive prompt's accuracy."""
    embeddings = engine.encode([world.draw(scene) for scene in items])
    truths = [set(scene.tags().values()) for scene in items]
    settings = grid() if settings is None else settings
    failures = sum(
        bool(set(negatives) & truth)
        for options in settings
        for negatives, truth in zip(_tags(engine, embeddings, options, guarded, "negative"), truths)
    )
    top = _tags(engine, embeddings, ExtractOptions(max_tags=ACCURACY_TAGS), guarded, "positive")
    colour = sum(scene.colour in tags for scene, tags in zip(items, top)) / len(items)
    shape = sum(scene.shape in tags for scene, tags in zip(items, top)) / len(items)
    return GuardMeasurement(guarded, len(settings) * len(items), failures / (len(settings) * len(items)), colour, shape)


def _tags(
    engine: Engine, embeddings: torch.Tensor, options: ExtractOptions, guarded: bool, role: str
) -> list[list[str]]:
    """Each image's tags of one role, as the engine selects them (without the guard when not guarded)."""
    selection, _ = engine.selection_options(options)
    if not guarded:
        selection = replace(selection, presence=None)
    results = engine.extract_embeddings(embeddings, options, selection=selection)
    return [[tag.tag for tag in result.tags if tag.role == role] for result in results]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="True attributes in the negative prompt, with and without the guard.")
    parser.add_argument("--scenes", type=int, default=400, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="seed of the held-out scenes")
    args = parser.parse_args(argv)
    engine = Engine("shapes-demo")
    items = scenes(args.scenes, args.seed)
    print(
        f"shapes-demo, {args.scenes} held-out scenes (seed {args.seed}), {len(grid())} settings: "
        f"Number of tags {GRID_TAGS}, tau {GRID_TAUS}, negatives {GRID_NEGATIVES}; tag probabilities "
        f"{engine.tag_calibration.to_dict()}"
    )
    for guarded in (False, True):
        print(measure_guard(engine, items, guarded).describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
