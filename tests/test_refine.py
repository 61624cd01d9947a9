"""Check and Refine by the round trip (easy_diffuser/refine.py), on the shapes world with stub generators.

The stubs are the existing CallableGenerator around a function, so that a test can make the
generation get worse, ignore the prompt, stop or fail exactly where it wants.
"""

from __future__ import annotations

import json
import random

import pytest

from easy_diffuser import cli
from easy_diffuser.calibration.generators import CallableGenerator, ShapesGenerator
from easy_diffuser.calibration.metric import Metric
from easy_diffuser.engine import ExtractOptions
from easy_diffuser.options import OptionError
from easy_diffuser.presence import MAY_BE_PRESENT
from easy_diffuser.refine import check_image, refine_image
from easy_diffuser.shapes import world
from easy_diffuser.webui_client import WebuiError


def scene_image(**fixed):
    return world.draw(world.random_scene(random.Random(0), **fixed))


RED_CIRCLE = dict(colour="red", shape="circle", background="gray", size="large")


def fixed_scene(**fixed) -> CallableGenerator:
    """A generator that ignores the prompts: always the same scene."""
    return CallableGenerator(lambda prompt, negative, seed: scene_image(**fixed), "fixed scene")


def source_may_show(engine, image) -> set[str]:
    probabilities = Metric(engine).embed([image]).probabilities[0]
    return {tag for tag, p in zip(engine.vocabulary.tags, probabilities.tolist()) if p >= MAY_BE_PRESENT}


def test_check_scores_one_generation_and_diffs_the_tags(shapes_engine):
    result = check_image(shapes_engine, scene_image(**RED_CIRCLE), ShapesGenerator(), "blue, square", "")
    (only,) = result.rounds
    assert result.generations == 1 and result.best is only
    assert {"red", "circle"} <= set(only.lost)  # the source shows them, the generation lost them
    assert {"blue", "square"} <= set(only.added)  # the generation shows them, the source does not
    faithful = check_image(
        shapes_engine, scene_image(**RED_CIRCLE), ShapesGenerator(), "red, circle, gray background, large"
    )
    assert faithful.rounds[0].lost == [] and faithful.rounds[0].added == []
    assert faithful.rounds[0].loss < only.loss / 5


def test_refine_lowers_the_loss_from_a_weak_start(shapes_engine):
    image = scene_image(**RED_CIRCLE)
    result = refine_image(shapes_engine, image, ShapesGenerator(), options=ExtractOptions(max_tags=1, tau=2.5))
    start, best = result.rounds[0], result.best
    assert best.index > 0 and best.loss < start.loss / 5
    assert {"red", "circle", "gray background", "large"} <= set(world.parse_tags(best.prompt))
    assert all(len(r.images) == 2 for r in result.rounds)  # the default: every score on 2 seeds


def test_the_result_is_never_worse_than_the_start(shapes_engine):
    """A generator that gets every changed pair wrong: the start, round 0, must win."""
    start = ("red, circle", "")
    close = dict(RED_CIRCLE, size="small")  # the start's generation misses the size only

    def worse_when_changed(prompt: str, negative: str, seed: int):
        return scene_image(**close) if (prompt, negative) == start else scene_image(colour="blue", shape="star")

    generator = CallableGenerator(worse_when_changed, "worse when changed")
    result = refine_image(shapes_engine, scene_image(**RED_CIRCLE), generator, *start)
    assert len(result.rounds) > 1 and all(r.loss > result.rounds[0].loss for r in result.rounds[1:])
    assert result.best.index == 0 and (result.best.prompt, result.best.negative_prompt) == start


def test_a_tag_the_source_shows_never_goes_into_the_negative_prompt(shapes_engine):
    """Hand edits name the source's own colour and shape in the negative prompt, and every generation shows them
    and more: refining takes them out and negates only what the source does not show."""
    image = scene_image(**RED_CIRCLE)
    shown = source_may_show(shapes_engine, image)
    assert {"red", "circle"} <= shown
    generator = fixed_scene(colour="red", shape="circle", background="white", size="small")
    result = refine_image(shapes_engine, image, generator, "red", "circle, red, white background", rounds=4)
    assert len(result.rounds) > 1
    for refined in result.rounds[1:]:
        assert not shown & set(world.parse_tags(refined.negative_prompt)), refined.negative_prompt
    assert "white background" in world.parse_tags(result.rounds[1].negative_prompt)  # the generation added it


def test_a_lost_tag_is_added_then_weighted_up_and_rounds_end_when_nothing_is_new(shapes_engine):
    image = scene_image(**RED_CIRCLE)
    result = refine_image(shapes_engine, image, fixed_scene(colour="blue", shape="square"), "red", "", rounds=16)
    prompts = [r.prompt for r in result.rounds]
    assert prompts[0] == "red"
    assert prompts[1].startswith("(red:1.2), ") and "circle" in prompts[1]
    assert prompts[2].startswith("(red:1.4), ") and "(circle:1.2)" in prompts[2]
    assert "(red:1.6)" not in " ".join(prompts)  # MAX_WEIGHT
    assert len(result.rounds) < 17  # the weights top out, the pair repeats: no more generations


def test_stop_keeps_the_best_finished_round(shapes_engine):
    image = scene_image(**RED_CIRCLE)
    calls = []

    def counted(prompt, negative, seed):
        calls.append(prompt)
        return ShapesGenerator().generate(prompt, negative, seed)

    stop_after = 3  # generations: round 0 (2 seeds) and half of round 1
    result = refine_image(
        shapes_engine,
        image,
        CallableGenerator(counted, "counted"),
        "red",
        "",
        should_stop=lambda: len(calls) >= stop_after,
    )
    assert result.stopped and [r.index for r in result.rounds] == [0] and result.best is result.rounds[0]
    rounds_seen = []
    result = refine_image(
        shapes_engine,
        image,
        ShapesGenerator(),
        "blue",
        "",
        rounds=4,
        on_round=rounds_seen.append,
        should_stop=lambda: len(rounds_seen) >= 2,
    )
    assert result.stopped and len(result.rounds) == 2 and rounds_seen == result.rounds
    assert result.best is min(result.rounds, key=lambda r: r.loss)


def test_a_generator_failing_mid_way_keeps_the_finished_rounds(shapes_engine):
    calls = []

    def fails_in_round_1(prompt, negative, seed):
        calls.append(seed)
        if len(calls) > 2:
            raise WebuiError("http://127.0.0.1:7860: connection refused")
        return ShapesGenerator().generate(prompt, negative, seed)

    result = refine_image(
        shapes_engine, scene_image(**RED_CIRCLE), CallableGenerator(fails_in_round_1, "flaky"), "red", ""
    )
    assert [r.index for r in result.rounds] == [0] and result.best.prompt == "red"
    assert result.error.startswith("round 1: ") and "connection refused" in result.error


def test_out_of_range_values_get_the_schema_message(shapes_engine):
    with pytest.raises(OptionError, match=r"^rounds: must be a whole number from 0 to 16, not 17$"):
        refine_image(shapes_engine, scene_image(**RED_CIRCLE), ShapesGenerator(), "red", "", rounds=17)
    with pytest.raises(OptionError, match=r"^seeds: must be a whole number from 1 to 8, not 0$"):
        refine_image(shapes_engine, scene_image(**RED_CIRCLE), ShapesGenerator(), "red", "", seeds=0)


def test_a_prompt_at_the_token_budget_gets_no_more_tags(shapes_engine):
    long = ", ".join(["a very long hand written description"] * 12)  # free text, kept as written
    result = refine_image(shapes_engine, scene_image(**RED_CIRCLE), fixed_scene(colour="blue"), long, "", rounds=1)
    assert result.rounds[1:] == [] or result.rounds[1].prompt.startswith(long)
    assert all("circle" not in r.prompt for r in result.rounds)  # 12 x 6 tokens + commas: no room left


def test_cli_refine_json_has_the_documented_shape(tmp_path, capsys):
    path = tmp_path / "scene.png"
    scene_image(**RED_CIRCLE).save(path)
    argv = ["refine", str(path), "--generator", "shapes", "--model", "shapes-demo", "--cache-dir", str(tmp_path / "c")]
    assert cli.main([*argv, "--tags", "1", "--tau", "2.5", "--rounds", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"rounds", "best"}
    assert all(set(r) == {"prompt", "negative_prompt", "loss", "lost", "added"} for r in result["rounds"])
    assert set(result["best"]) == {"prompt", "negative_prompt", "loss", "round"}
    assert 2 <= len(result["rounds"]) <= 4 and result["rounds"][0]["prompt"] == "circle"  # round 0: the start
    best = result["rounds"][result["best"]["round"]]
    assert best["loss"] == result["best"]["loss"] == min(r["loss"] for r in result["rounds"])


def test_cli_check_prints_the_score_and_the_diff(tmp_path, capsys):
    path = tmp_path / "scene.png"
    scene_image(**RED_CIRCLE).save(path)
    argv = ["check", str(path), "--generator", "shapes", "--model", "shapes-demo", "--cache-dir", str(tmp_path / "c")]
    assert cli.main([*argv, "--prompt", "blue, square"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("round-trip loss: ") and "round 0 (start): loss " in out
    assert "lost: " in out and "red" in out.split("lost: ")[1].splitlines()[0]
    assert "Prompt: blue, square" in out and "best:" not in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rounds", "17"], "argument --rounds: must be a whole number from 0 to 16, not 17"),
        (["--width", "32"], "argument --width: must be a whole number from 64 to 2048, not 32"),
        (["--steps", "0"], "argument --steps: must be a whole number from 1 to 150, not 0"),
    ],
)
def test_cli_refuses_out_of_range_values_with_the_schema_message(extra, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["refine", str(tmp_path / "x.png"), "--generator", "shapes", *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cli_an_unreadable_image_is_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "broken.png").write_text("not an image")
    argv = ["check", str(tmp_path / "broken.png"), "--generator", "shapes", "--model", "shapes-demo"]
    assert cli.main([*argv, "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "broken.png" in err[0]


INFINITE = "(red:1" + "0" * 400 + ")"  # 1 followed by 400 zeros: float() reads it as inf


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--prompt", "red, " * 2001, "prompt: must be text of at most 10,000 characters"),
        ("--negative-prompt", "blue, " * 2000, "negative_prompt: must be text of at most 10,000 characters"),
        ("--prompt", INFINITE, "prompt: the weight of (red:100000"),
        ("--negative-prompt", "blue, (square:250)", "negative_prompt: the weight of (square:250) must be"),
    ],
)
def test_cli_refuses_an_overlong_prompt_or_an_infinite_weight_in_one_line_before_any_work(
    flag, value, message, tmp_path, capsys
):
    argv = ["check", str(tmp_path / "never-read.png"), "--generator", "shapes", "--model", "shapes-demo"]
    assert cli.main([*argv, "--prompt", "red", flag, value]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}") and len(err[0]) < 300


def test_refine_never_writes_infinity_and_a_long_multi_line_pair_within_the_limit_still_runs(shapes_engine):
    image = scene_image(**RED_CIRCLE)
    with pytest.raises(OptionError, match="prompt: the weight of"):
        refine_image(shapes_engine, image, fixed_scene(colour="blue"), INFINITE, "", rounds=1)
    result = refine_image(
        shapes_engine, image, fixed_scene(colour="blue"), "(red:1.2),\ncircle", "x" * 10_000, rounds=1
    )
    assert result.rounds and all("inf" not in r.prompt for r in result.rounds)
    assert result.rounds[0].prompt == "(red:1.2),\ncircle"
