"""The procedural shapes world: rendering, captions and prompt -> scene parsing."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from easy_diffuser.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SIZES,
    VOCABULARY,
    Scene,
    captions,
    draw,
    parse_tags,
    random_scene,
    scene_from_prompt,
)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def test_vocabulary_covers_the_world() -> None:
    assert VOCABULARY == {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "background": [f"{b} background" for b in BACKGROUNDS],
        "size": ["small", "large"],
    }
    (small_low, small_high), (large_low, large_high) = SIZES["small"], SIZES["large"]
    assert small_low < small_high < large_low < large_high


def test_same_seed_same_scene_and_pixels() -> None:
    first, second = random_scene(random.Random(7)), random_scene(random.Random(7))
    assert first == second
    assert draw(first, 128).tobytes() == draw(second, 128).tobytes()


def test_fixed_attributes_are_pinned_and_shape_stays_in_frame() -> None:
    rng = random.Random(1)
    for _ in range(200):
        scene = random_scene(rng, colour="blue", background="black")
        assert (scene.colour, scene.background) == ("blue", "black")
        low, high = SIZES[scene.size]
        assert low <= scene.scale <= high
        radius = scene.scale / 2
        assert radius <= scene.x <= 1 - radius and radius <= scene.y <= 1 - radius


def test_unknown_value_is_rejected() -> None:
    with pytest.raises(ValueError):
        random_scene(random.Random(0), colour="purple")


@pytest.mark.parametrize("pixels", [64, 224, 1024])
def test_draw_gives_rgb_of_requested_size(pixels: int) -> None:
    image = draw(random_scene(random.Random(0)), pixels)
    assert image.mode == "RGB" and image.size == (pixels, pixels)


def test_small_and_big_renders_show_the_same_scene() -> None:
    rng = random.Random(3)
    scene, other = random_scene(rng, shape="star"), random_scene(rng, shape="circle")
    small = _pixels(draw(scene, 64))
    big = _pixels(draw(scene, 1024).resize((64, 64), Image.Resampling.BOX))
    elsewhere = _pixels(draw(other, 64))
    same = np.abs(small - big).mean()
    assert same < 2.0  # grey levels out of 255: antialiasing alike at both sizes
    assert same < np.abs(small - elsewhere).mean() / 10


def test_scene_colours_are_drawn() -> None:
    scene = random_scene(random.Random(0), colour="red", background="gray", size="large")
    pixels = {tuple(p) for p in _pixels(draw(scene, 256)).reshape(-1, 3).astype(int)}
    assert COLOURS["red"] in pixels and BACKGROUNDS["gray"] in pixels


def test_captions_mix_single_tags_pairs_and_sentences() -> None:
    scene = random_scene(random.Random(0), colour="red", shape="circle", background="gray", size="small")
    seen: set[str] = set()
    rng = random.Random(0)
    for _ in range(50):
        seen.update(captions(scene, rng))
    assert {"red", "circle", "gray background", "small", "red circle"} <= seen
    assert "a small red circle on a gray background" in seen
    assert all("blue" not in text and "square" not in text for text in seen)


def test_parse_tags_strips_weights_and_brackets() -> None:
    assert parse_tags(r"(Red:1.2), \(star\), [small], ((gray background)), , lowres") == [
        "red",
        "star",
        "small",
        "gray background",
        "lowres",
    ]


def test_prompt_names_every_attribute() -> None:
    for seed in range(20):
        scene = scene_from_prompt("(RED:1.3), \\(star\\), small, gray background", "red, star", random.Random(seed))
        assert (scene.colour, scene.shape, scene.size, scene.background) == ("red", "star", "small", "gray")


def test_first_named_value_wins() -> None:
    scene = scene_from_prompt("blue, circle, red, square", "", random.Random(0))
    assert (scene.colour, scene.shape) == ("blue", "circle")


def test_negative_prompt_restricts_open_attributes() -> None:
    scenes = [scene_from_prompt("circle", "red, green, (blue:1.4)", random.Random(s)) for s in range(100)]
    assert {s.colour for s in scenes} == {"yellow"}
    assert {s.shape for s in scenes} == {"circle"}
    # Attributes neither prompt names still vary.
    assert len({s.background for s in scenes}) == 3 and len({s.size for s in scenes}) == 2


def test_negative_naming_everything_allows_anything() -> None:
    scenes = [scene_from_prompt("", "red, green, blue, yellow", random.Random(s)) for s in range(100)]
    assert {s.colour for s in scenes} == set(COLOURS)


def test_true_attribute_in_negative_never_appears_when_left_open() -> None:
    truth = Scene("green", "triangle", "white", "large", 0.7, 0.5, 0.5, 0.0)
    negative = "lowres, green, white background, triangle"
    scenes = [scene_from_prompt("large", negative, random.Random(s)) for s in range(200)]
    assert all(s.colour != truth.colour and s.shape != truth.shape and s.background != truth.background for s in scenes)
    assert {s.size for s in scenes} == {"large"}
    # Without the negative the true values do come up.
    free = [scene_from_prompt("large", "lowres", random.Random(s)) for s in range(200)]
    assert any(s.colour == "green" for s in free) and any(s.background == "white" for s in free)


def test_tags_match_exactly_not_as_substrings() -> None:
    scenes = [scene_from_prompt("reddish, star", "", random.Random(s)) for s in range(60)]
    assert len({s.colour for s in scenes}) > 1


def test_booru_spelling_reads_like_the_plain_tags() -> None:
    """A tagger's prompt (shapes-booru) says gray_background or, written for the webui, gray background."""
    assert parse_tags(r"masterpiece, red, gray_background, twinkle \(shapes\), twinkle_(shapes)") == [
        "masterpiece",
        "red",
        "gray background",
        "twinkle shapes",
        "twinkle shapes",
    ]
    scene = scene_from_prompt("score_9, green, square, black_background, small", "", random.Random(0))
    assert (scene.colour, scene.shape, scene.background, scene.size) == ("green", "square", "black", "small")


def test_the_character_tag_draws_its_look_unless_the_prompt_says_otherwise() -> None:
    for seed in range(20):
        scene = scene_from_prompt(r"twinkle \(shapes\), gray background", "", random.Random(seed))
        assert (scene.colour, scene.shape, scene.size, scene.background) == ("yellow", "star", "large", "gray")
    scene = scene_from_prompt("red, twinkle_(shapes)", "", random.Random(0))
    assert (scene.colour, scene.shape) == ("red", "star")  # a named colour wins over the character's
