"""What a user sees from the shipped shapes-demo model: the tags name what is in the picture."""

from __future__ import annotations

import random

import pytest

import easy_diffuser
from easy_diffuser.engine import ExtractOptions
from easy_diffuser.shapes.world import COLOURS, SHAPES, draw, random_scene

from scenes import draw_scene


def positives(result) -> list[str]:
    return [tag.tag for tag in result.tags if tag.role == "positive"]


def test_red_circle_gives_red_and_circle(shapes_engine, shapes_red_circle):
    result = shapes_engine.extract(shapes_red_circle)
    assert {"red", "circle"} <= set(positives(result)[:3])
    assert "red" not in result.negative_prompt and "circle" not in result.negative_prompt.split(", ")


@pytest.mark.parametrize("colour,shape", [("blue", "star"), ("yellow", "triangle"), ("green", "square")])
def test_other_scenes(shapes_engine, tmp_path, colour, shape):
    result = shapes_engine.extract(draw_scene(tmp_path / "x.png", 300, colour=colour, shape=shape))
    assert {colour, shape} <= set(positives(result)[:3])


@pytest.mark.parametrize("pixels", [64, 224, 512, 1024])
def test_true_colour_and_shape_in_top_3_on_held_out_images(shapes_engine, pixels):
    rng = random.Random(1000 + pixels)  # seeds the training script never used
    scenes = [random_scene(rng) for _ in range(150)]
    results = shapes_engine.extract_many([draw(scene, pixels) for scene in scenes], ExtractOptions(max_tags=3))
    colour_hits = sum(scene.colour in positives(result) for scene, result in zip(scenes, results))
    shape_hits = sum(scene.shape in positives(result) for scene, result in zip(scenes, results))
    assert colour_hits / len(scenes) >= 0.95, f"colour top-3 {colour_hits}/{len(scenes)} at {pixels}px"
    assert shape_hits / len(scenes) >= 0.95, f"shape top-3 {shape_hits}/{len(scenes)} at {pixels}px"


def test_original_python_api(shapes_red_circle, tmp_path, capsys):
    ed = easy_diffuser.start(str(shapes_red_circle), model="shapes-demo", device="cpu")
    ed.run()
    ed.print_caption()
    printed = capsys.readouterr().out
    assert printed.startswith("Prompt: ") and "red" in printed and "\nNegative prompt: " in printed
    ed.input_img(draw_scene(tmp_path / "blue_star.png", colour="blue", shape="star"))
    assert "star" in ed.run().prompt and "blue" in ed.prompt


def test_vocabulary_has_the_whole_world(shapes_engine):
    assert set(COLOURS) | set(SHAPES) <= set(shapes_engine.vocabulary.tags)
