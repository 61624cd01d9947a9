"""No tag the image shows may be a negative: the guard, measured on held-out shapes-world scenes.

The same measurement as `python -m easy_diffuser.calibration.negative_guard`, on fewer scenes and
another seed than the one the guard's threshold was chosen on.
"""

from __future__ import annotations

import random

import pytest

from easy_diffuser.calibration.negative_guard import measure_guard
from easy_diffuser.calibration.shapes_proof import scenes
from easy_diffuser.engine import ExtractOptions
from easy_diffuser.shapes.world import draw, random_scene

HELD_OUT_SEED = 3001  # neither the trainer (0), its evaluation (12345), the shapes proof (1, 2, 7) nor the CLI (3000)


@pytest.fixture(scope="module")
def measured(shapes_engine):
    items = scenes(200, HELD_OUT_SEED)
    return {guarded: measure_guard(shapes_engine, items, guarded) for guarded in (False, True)}


def test_true_attributes_stay_out_of_the_negative_prompt_over_the_settings_a_user_can_reach(measured):
    print("\n" + "\n".join(m.describe() for m in measured.values()))
    assert measured[False].true_in_negative > 0.2  # the rule without the guard fails: the measurement can see it
    assert measured[True].true_in_negative <= 0.01


def test_the_guard_leaves_the_positive_prompt_as_it_was(measured):
    before, after = measured[False], measured[True]
    assert (after.colour_in_top, after.shape_in_top) == (before.colour_in_top, before.shape_in_top)
    assert after.colour_in_top >= 0.95 and after.shape_in_top >= 0.95


def test_red_circle_with_one_tag_keeps_red_out_of_the_negative_prompt(shapes_engine):
    # The reported case: Number of tags 1, tau 0.5 gave `circle` and the negative prompt `large, gray background, red`.
    scene = random_scene(random.Random(0), colour="red", shape="circle", background="gray")
    result = shapes_engine.extract(draw(scene, 256), ExtractOptions(max_tags=1, tau=0.5))
    negatives = {tag.tag for tag in result.tags if tag.role == "negative"}
    assert not negatives & set(scene.tags().values()), result.negative_prompt
    assert "red" not in result.negative_prompt.split(", ")
