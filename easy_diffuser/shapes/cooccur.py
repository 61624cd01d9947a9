"""The co-occurrence world: the shapes world where attributes go together, and most tags are never drawn.

Two things the plain shapes world lacks, and real models have, decide whether the negative prompt
should be the lowest tags of the whole vocabulary or the lowest inside the image's relevant subset:

* **What the generator draws unasked depends on what it was asked.** A star is usually yellow and
  small, a yellow thing is usually on black, and so on (`JOINT`). The generator (`scene_from_prompt`) keeps
  what the prompt names and draws every open attribute from the world's distribution *given* the
  named ones, among the values the negative prompt does not name: "red star" alone usually comes
  out small, and "small" in the negative prompt makes it large.
* **The vocabulary holds many tags the generator never draws** (`DISTRACTORS`, 89 tags taken from
  the product's own vocabulary: "aardvark", "bus", "chiaroscuro", ...). Naming one in a negative
  prompt changes nothing, as "tractor" changes nothing in a portrait.

Scenes are `world.Scene`s and are drawn by `world.draw`; only the sampling is new.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from PIL import Image

from . import world

# P(shape), P(colour | shape), P(size | shape), P(background | colour): the world's joint distribution.
SHAPE_PRIOR: dict[str, float] = {"circle": 0.3, "square": 0.25, "triangle": 0.25, "star": 0.2}
COLOUR_GIVEN_SHAPE: dict[str, dict[str, float]] = {
    "star": {"yellow": 0.7, "red": 0.1, "green": 0.1, "blue": 0.1},
    "circle": {"red": 0.6, "yellow": 0.1, "green": 0.15, "blue": 0.15},
    "square": {"blue": 0.6, "red": 0.15, "green": 0.15, "yellow": 0.1},
    "triangle": {"green": 0.6, "red": 0.15, "blue": 0.15, "yellow": 0.1},
}
SIZE_GIVEN_SHAPE: dict[str, dict[str, float]] = {
    "star": {"small": 0.8, "large": 0.2},
    "circle": {"small": 0.25, "large": 0.75},
    "square": {"small": 0.4, "large": 0.6},
    "triangle": {"small": 0.6, "large": 0.4},
}
BACKGROUND_GIVEN_COLOUR: dict[str, dict[str, float]] = {
    "yellow": {"black": 0.7, "gray": 0.15, "white": 0.15},
    "red": {"white": 0.7, "gray": 0.15, "black": 0.15},
    "blue": {"gray": 0.6, "white": 0.2, "black": 0.2},
    "green": {"white": 0.5, "gray": 0.3, "black": 0.2},
}
CATEGORIES = ("colour", "shape", "background", "size")

# Tags the generator never draws: every 43rd subject, 27th medium, 34th style, 20th lighting and
# 25th mood tag of easy_diffuser/data/vocabulary that names no colour, shape, size or background.
DISTRACTORS: dict[str, tuple[str, ...]] = {
    "subject": (
        "aardvark",
        "android",
        "assassin",
        "bandana",
        "behemoth",
        "bonsai tree",
        "bus",
        "cassette tape",
        "chicken",
        "clover",
        "cottage",
        "crystal cluster",
        "dew drops",
        "duck",
        "escape pod",
        "fig",
        "flower in hair",
        "fruit bowl",
        "ginkgo tree",
        "grand staircase",
        "handbag",
        "holding a lantern",
        "ice dragon",
        "kangaroo",
        "laser gun",
        "lollipop",
        "marbles",
        "microphone",
        "mountain lake",
        "notebook",
        "origami crane",
        "pauldrons",
        "pink hair",
        "portcullis",
        "race car",
        "riding boots",
        "rune stone",
        "scholar",
        "shepherd",
        "slime monster",
        "spaghetti",
        "steam locomotive",
        "sunglasses",
        "taxi",
        "toga",
        "truck",
        "venus flytrap",
        "waterfall",
        "woman",
    ),
    "medium": (
        "35mm film",
        "blender render",
        "colored pencil drawing",
        "editorial photography",
        "fresco",
        "knitted",
        "monotype print",
        "polaroid photo",
        "soft pastel",
        "underwater photograph",
    ),
    "style": (
        "16-bit",
        "atompunk",
        "cosmic horror",
        "fashion editorial",
        "hard-edge painting",
        "line art",
        "neo-traditional tattoo",
        "pulp magazine cover",
        "southern gothic",
        "urban fantasy",
    ),
    "lighting": (
        "afternoon light",
        "chiaroscuro",
        "divine light",
        "global illumination",
        "kicker light",
        "midday sun",
        "practical lights",
        "sodium vapor lighting",
        "sunlight",
        "volumetric lighting",
    ),
    "mood": (
        "abandoned",
        "bustling",
        "decaying",
        "ethereal",
        "graceful",
        "inspiring",
        "moody",
        "quiet",
        "sophisticated",
        "turbulent",
    ),
}
DISTRACTOR_TAGS: tuple[str, ...] = tuple(tag for tags in DISTRACTORS.values() for tag in tags)
VOCABULARY: dict[str, list[str]] = {**world.VOCABULARY, **{name: list(tags) for name, tags in DISTRACTORS.items()}}


def _tag(category: str, value: str) -> str:
    return f"{value} background" if category == "background" else value


def _joint() -> list[tuple[dict[str, str], float]]:
    """Every (colour, shape, background, size) with its probability."""
    outcomes = []
    for shape, colour, background, size in itertools.product(
        world.SHAPES, world.COLOURS, world.BACKGROUNDS, world.SIZES
    ):
        p = (
            SHAPE_PRIOR[shape]
            * COLOUR_GIVEN_SHAPE[shape][colour]
            * SIZE_GIVEN_SHAPE[shape][size]
            * BACKGROUND_GIVEN_COLOUR[colour][background]
        )
        outcomes.append(({"colour": colour, "shape": shape, "background": background, "size": size}, p))
    return outcomes


JOINT = _joint()


def conditional(named: dict[str, str], excluded: dict[str, set[str]]) -> list[tuple[dict[str, str], float]]:
    """Outcomes that keep every `named` value and avoid the `excluded` values of open categories, with
    their (unnormalised) probabilities. A category whose every value is excluded is left free: a
    negative prompt cannot make the generator draw nothing."""
    open_categories = [c for c in CATEGORIES if c not in named]
    allowed = {c: set(world._CHOICES[c]) - excluded.get(c, set()) for c in open_categories}
    allowed = {c: values or set(world._CHOICES[c]) for c, values in allowed.items()}
    return [
        (values, p)
        for values, p in JOINT
        if all(values[c] == v for c, v in named.items()) and all(values[c] in allowed[c] for c in open_categories)
    ]


def _sample(rng: random.Random, outcomes: list[tuple[dict[str, str], float]], **geometry: object) -> world.Scene:
    values, _ = rng.choices(outcomes, weights=[p for _, p in outcomes])[0]
    return world.random_scene(rng, **values, **geometry)


def random_scene(rng: random.Random) -> world.Scene:
    """A scene drawn from the world's joint distribution."""
    return _sample(rng, JOINT)


def scenes(count: int, seed: int) -> list[world.Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(count)]


def scene_from_prompt(prompt: str, negative_prompt: str, rng: random.Random) -> world.Scene:
    """What the generator draws: the prompt's named attributes (the first if several), every open
    one from the world's distribution given the named ones, avoiding what the negative names."""
    positive, negative = world.parse_tags(prompt), set(world.parse_tags(negative_prompt))
    named: dict[str, str] = {}
    excluded: dict[str, set[str]] = {}
    for category in CATEGORIES:
        mentioned = [value for value in world._CHOICES[category] if _tag(category, value) in positive]
        if mentioned:
            named[category] = min(mentioned, key=lambda value: positive.index(_tag(category, value)))
        excluded[category] = {value for value in world._CHOICES[category] if _tag(category, value) in negative}
    return _sample(rng, conditional(named, excluded))


@dataclass
class CooccurGenerator:
    """The co-occurrence world as a calibration generator (see the module docstring)."""

    pixels: int = 64
    name: str = "shapes-cooccur"

    def generate(self, prompt: str, negative_prompt: str, seed: int) -> Image.Image:
        return world.draw(scene_from_prompt(prompt, negative_prompt, random.Random(seed)), self.pixels)
