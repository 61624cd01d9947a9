"""Procedural shapes world: one coloured shape on a plain background.

Pure PIL so it can run anywhere. Every scene is fully described by `Scene`,
so the same scene renders identically (up to resolution) at any pixel size.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, fields

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
# Shape diameter as a fraction of the image side; the ranges do not overlap.
SIZES: dict[str, tuple[float, float]] = {"small": (0.3, 0.45), "large": (0.6, 0.9)}

# The world's one character (a booru "character" tag, category 4): a fixed look, so a tagger's character
# threshold has something to mean. Booru spelling, as a tagger's selected_tags.csv writes it.
CHARACTERS: dict[str, dict[str, str]] = {"twinkle_(shapes)": {"colour": "yellow", "shape": "star", "size": "large"}}

VOCABULARY: dict[str, list[str]] = {
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "background": [f"{name} background" for name in BACKGROUNDS],
    "size": list(SIZES),
}

# Render at least this many pixels per side, then downsample: this antialiases
# the edges the same way at every output size, so 64 px and 1024 px agree.
_MIN_CANVAS = 512
_STAR_INNER = 0.45  # inner/outer radius ratio of the five-pointed star


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str  # a key of BACKGROUNDS, e.g. "gray" (tag text: "gray background")
    size: str
    scale: float  # diameter of the shape's bounding circle / image side
    x: float  # centre, as a fraction of the image width
    y: float  # centre, as a fraction of the image height
    rotation: float  # degrees

    def tags(self) -> dict[str, str]:
        """The vocabulary tag of each category that is true for this scene."""
        return {
            "colour": self.colour,
            "shape": self.shape,
            "background": f"{self.background} background",
            "size": self.size,
        }


_CHOICES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "background": tuple(BACKGROUNDS),
    "size": tuple(SIZES),
}


def random_scene(rng: random.Random, **fixed: object) -> Scene:
    """A random scene; keyword arguments pin any attribute (e.g. colour="red")."""
    known = {f.name for f in fields(Scene)}
    unknown = set(fixed) - known
    if unknown:
        raise TypeError(f"unknown scene attributes: {sorted(unknown)}")
    # Draw every random value even when pinned so the stream stays aligned.
    values: dict[str, object] = {k: rng.choice(v) for k, v in _CHOICES.items()}
    values.update({k: v for k, v in fixed.items() if k in _CHOICES})
    for key, options in _CHOICES.items():
        if values[key] not in options:
            raise ValueError(f"{key}={values[key]!r} is not one of {options}")
    low, high = SIZES[str(values["size"])]
    values["scale"] = rng.uniform(low, high)
    values["rotation"] = rng.uniform(0.0, 360.0)
    values.update({k: v for k, v in fixed.items() if k in ("scale", "rotation")})
    # Keep the whole bounding circle inside the frame.
    radius = float(values["scale"]) / 2  # type: ignore[arg-type]
    values["x"] = rng.uniform(radius, 1 - radius)
    values["y"] = rng.uniform(radius, 1 - radius)
    values.update({k: v for k, v in fixed.items() if k in ("x", "y")})
    return Scene(**values)  # type: ignore[arg-type]


def _outline(scene: Scene, side: int) -> list[tuple[float, float]]:
    """Polygon vertices of the shape on a canvas `side` pixels wide."""
    cx, cy, radius = scene.x * side, scene.y * side, scene.scale * side / 2
    if scene.shape == "circle":
        corners, radii = 128, [radius]
    elif scene.shape == "square":
        corners, radii = 4, [radius]
    elif scene.shape == "triangle":
        corners, radii = 3, [radius]
    elif scene.shape == "star":
        corners, radii = 10, [radius, radius * _STAR_INNER]
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    start = math.radians(scene.rotation) - math.pi / 2  # rotation 0 = point up
    points = []
    for i in range(corners):
        angle = start + 2 * math.pi * i / corners
        r = radii[i % len(radii)]
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw(scene: Scene, pixels: int = 64) -> Image.Image:
    """Render `scene` as an RGB image of `pixels` x `pixels`."""
    if not 1 <= pixels <= 4096:
        raise ValueError(f"pixels must be in 1..4096, got {pixels}")
    factor = max(2, math.ceil(_MIN_CANVAS / pixels))
    side = pixels * factor
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    ImageDraw.Draw(canvas).polygon(_outline(scene, side), fill=COLOURS[scene.colour])
    return canvas.resize((pixels, pixels), Image.Resampling.BOX)


# Caption templates per set of described attributes. `{background}` is the tag
# text ("gray background"), so every template contains the bare tags.
_TEMPLATES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("colour",): ("{colour}", "{colour}", "a photo of something {colour}", "a {colour} shape"),
    ("shape",): ("{shape}", "{shape}", "a photo of a {shape}", "a {shape} shape"),
    ("background",): ("{background}", "{background}", "something on a {background}"),
    ("size",): ("{size}", "{size}", "a {size} shape"),
    ("colour", "shape"): ("{colour} {shape}", "a {colour} {shape}", "a photo of a {colour} {shape}"),
    ("colour", "shape", "background", "size"): (
        "a {size} {colour} {shape} on a {background}",
        "{size}, {colour}, {shape}, {background}",
    ),
}
CAPTION_KINDS: tuple[tuple[str, ...], ...] = tuple(_TEMPLATES)


def caption(scene: Scene, keys: tuple[str, ...], rng: random.Random) -> str:
    """One caption describing exactly the attributes in `keys`."""
    return rng.choice(_TEMPLATES[keys]).format(**scene.tags())


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """One caption of each kind: single tags, colour+shape, full sentence."""
    return [caption(scene, keys, rng) for keys in CAPTION_KINDS]


# --- prompt parsing ---------------------------------------------------------

_WEIGHT = re.compile(r":\s*-?\d+(\.\d+)?\s*$")  # trailing ":1.2" of "(red:1.2)"


def parse_tags(prompt: str) -> list[str]:
    """Comma-separated webui prompt -> lower-case plain tags, in order. Booru spelling reads the same:
    "gray_background" is "gray background", "twinkle \\(shapes\\)" is "twinkle shapes"."""
    tags = []
    for part in prompt.split(","):
        # Escaped brackets are literal text; plain brackets are emphasis.
        text = part.replace("\\(", " ").replace("\\)", " ")
        text = re.sub(r"[()\[\]]", " ", text)
        text = _WEIGHT.sub("", text).replace("_", " ")
        text = " ".join(text.split()).lower()
        if text:
            tags.append(text)
    return tags


def _named(tags: list[str], category: str) -> list[str]:
    """Vocabulary values of `category` named by `tags`, in prompt order."""
    vocab = VOCABULARY[category]
    return [tag for tag in tags if tag in vocab]


def _character_looks(tags: list[str]) -> dict[str, list[str]]:
    """The attributes of the characters the tags name (the first character first), by category."""
    plain = {" ".join(re.sub(r"[()_]", " ", name).split()): looks for name, looks in CHARACTERS.items()}
    looks: dict[str, list[str]] = {}
    for tag in tags:
        for category, value in plain.get(tag, {}).items():
            looks.setdefault(category, []).append(value)
    return looks


def scene_from_prompt(prompt: str, negative_prompt: str, rng: random.Random) -> Scene:
    """The scene a prompt asks for: named attributes are used (the first if
    several), open ones are drawn among the values the negative does not name."""
    positive, negative = parse_tags(prompt), parse_tags(negative_prompt)
    looks = _character_looks(positive)
    fixed: dict[str, str] = {}
    for category, vocab in VOCABULARY.items():
        named = _named(positive, category) or looks.get(category, [])
        if named:
            tag = named[0]
        else:
            allowed = [v for v in vocab if v not in negative] or list(vocab)
            tag = rng.choice(allowed)
        fixed[category] = tag.removesuffix(" background")
    return random_scene(rng, **fixed)
