"""The co-occurrence world: attributes go together, the generator follows the prompt and the
negative prompt, and on it the relevant-subset rule beats the whole-vocabulary rule."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from easy_diffuser.shapes import cooccur, world


def share(scenes, attribute: str, value: str) -> float:
    return sum(getattr(s, attribute) == value for s in scenes) / len(scenes)


def generated(prompt: str, negative: str = "", count: int = 1000) -> list[world.Scene]:
    rng = random.Random(0)
    return [cooccur.scene_from_prompt(prompt, negative, rng) for _ in range(count)]


def test_attributes_co_occur_in_sampled_scenes():
    scenes = cooccur.scenes(6000, seed=0)
    stars = [s for s in scenes if s.shape == "star"]
    circles = [s for s in scenes if s.shape == "circle"]
    yellow = [s for s in scenes if s.colour == "yellow"]
    assert share(stars, "colour", "yellow") == pytest.approx(0.7, abs=0.05)
    assert share(circles, "colour", "yellow") == pytest.approx(0.1, abs=0.04)
    assert share(stars, "size", "small") == pytest.approx(0.8, abs=0.05)
    assert share(circles, "size", "small") == pytest.approx(0.25, abs=0.05)
    assert share(yellow, "background", "black") == pytest.approx(0.7, abs=0.05)
    assert share(scenes, "shape", "star") == pytest.approx(0.2, abs=0.03)


def test_generator_draws_what_the_prompt_names_and_the_likely_rest():
    stars = generated("star")
    assert all(s.shape == "star" for s in stars)
    assert share(stars, "colour", "yellow") == pytest.approx(0.7, abs=0.05)  # unasked, follows the shape
    red_stars = generated("(red:1.2), star")
    assert all(s.colour == "red" and s.shape == "star" for s in red_stars)
    assert share(red_stars, "size", "small") == pytest.approx(0.8, abs=0.05)
    assert share(red_stars, "background", "white") == pytest.approx(0.7, abs=0.05)  # follows the colour
    assert Counter(s.shape for s in generated("red")).most_common(1)[0][0] == "circle"


def test_negative_prompt_removes_what_it_names_and_nothing_else():
    red_stars = generated("red, star", "small, white background")
    assert all(s.size == "large" and s.background != "white" for s in red_stars)
    assert all(s.colour == "red" for s in generated("red, star", "red"))  # the prompt wins over the negative
    everything = ", ".join(f"{b} background" for b in world.BACKGROUNDS)
    assert {s.background for s in generated("star", everything)} == set(world.BACKGROUNDS)  # never nothing


def test_distractor_negatives_change_nothing():
    generator = cooccur.CooccurGenerator()
    for seed in range(5):
        plain = generator.generate("red, star", "", seed)
        distracted = generator.generate("red, star", "aardvark, bus, chiaroscuro, taxi", seed)
        assert plain.tobytes() == distracted.tobytes()
    assert set(cooccur.DISTRACTOR_TAGS).isdisjoint(tag for tags in world.VOCABULARY.values() for tag in tags)


# The rule comparison on the shipped shapes-cooccur model, with the tau and number of negatives its
# calibration chose (easy_diffuser.json; `python -m easy_diffuser.calibration.cooccur_proof` made them).
HELD_OUT_IMAGES = 100


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from easy_diffuser.calibration.cooccur_proof import DEFAULT_MODEL, HELD_OUT_SEED, compare_held_out, comparison_table
    from easy_diffuser.calibration.sweep import Setting
    from easy_diffuser.engine import Engine

    engine = Engine(str(DEFAULT_MODEL), "cpu", cache_dir=tmp_path_factory.mktemp("cooccur-cache"))
    chosen = Setting(float(engine.loaded.defaults["tau"]), int(engine.loaded.defaults["negatives"]))
    result = compare_held_out(engine, chosen, chosen.negatives, cooccur.scenes(HELD_OUT_IMAGES, HELD_OUT_SEED))
    print("\n" + comparison_table(result))
    return {item.name: item for item in result}


def test_subset_rule_beats_the_whole_vocabulary_rule_and_no_negatives(compared):
    subset = compared["calibrated subset rule"]
    whole = compared["whole-vocabulary lowest"]
    none = compared["no negative prompt"]
    assert subset.row.loss < 0.95 * whole.row.loss, (subset.row.loss, whole.row.loss)
    assert whole.row.loss == pytest.approx(none.row.loss)  # negatives the world never draws change nothing


def test_whole_vocabulary_negatives_are_tags_the_world_never_draws(compared):
    assert compared["whole-vocabulary lowest"].distractor_share > 0.9
    # The subset rule's negatives are mostly world tags, related but absent: the ones that change the picture.
    assert compared["calibrated subset rule"].distractor_share < 0.5
