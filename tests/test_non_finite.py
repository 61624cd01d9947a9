"""Non-finite scores (a model with NaN weights, or one image that overflows) are a failed image on every surface:
one line naming the image and the model, no caption, counted as failed, exit 1, never a NaN printed or written.
The HTTP route and the tab: tests/ui/test_non_finite_ui.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from easy_diffuser.calibration.generators import CallableGenerator, ShapesGenerator
from easy_diffuser.cli import main
from easy_diffuser.engine import ExtractOptions
from easy_diffuser.exit_codes import EXIT_IMAGE_FAILED, EXIT_SETUP_FAILED
from easy_diffuser.ray_job import TagExtractor
from easy_diffuser.records import read_records
from easy_diffuser.refine import refine_image
from easy_diffuser.scoring import NON_FINITE, NonFiniteScores, finite_rows
from easy_diffuser.shapes import world

from conftest import write_model_folder
from scenes import draw_scene
from taggers import set_nan, write_tagger

DAMAGED = "gave non-finite scores for this image: its weights may be damaged (NaN/inf); re-download them"


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every JSON parser but Python's does."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the output: not JSON"))


@pytest.fixture(scope="module")
def nan_tagger(tmp_path_factory) -> Path:
    """A tiny WD tagger whose head has one NaN weight: one tag's score is NaN, and with it every relevance."""
    folder = write_tagger(tmp_path_factory.mktemp("wd") / "wd-nan")
    set_nan(folder / "model.safetensors", "head.weight")
    return folder


@pytest.fixture(scope="module")
def nan_clip(tmp_path_factory) -> Path:
    """A tiny CLIP folder with one NaN in its image tower (its text tower, and so its tag embeddings, are fine)."""
    folder = write_model_folder(tmp_path_factory.mktemp("clip") / "clip-nan")
    set_nan(folder / "open_clip_model.safetensors", "visual.attnpool.c_proj.weight")
    return folder


def good_and_blank(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = draw_scene(folder / "good.png", colour="red", shape="circle", background="gray")
    blank = folder / "blank.png"
    Image.new("RGB", (64, 64), "white").save(blank)
    return good, blank


def names_image_and_model(lines: list[str], image: Path, folder_name: str, reason: str) -> bool:
    """One line: the image, then the model (a folder's id is its name and a hash), then the reason."""
    (line,) = lines
    return line.startswith(f"error: {image}: the model {folder_name}-") and line.endswith(f" {reason}")


def red_circle() -> Image.Image:
    return world.draw(world.random_scene(random.Random(0), colour="red", shape="circle", background="gray"))


def error_lines(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return [line for line in lines if line.startswith("error:")]


def test_finite_rows_names_each_image():
    features = torch.tensor([[0.5, 1.0], [float("nan"), 1.0], [float("inf"), 0.0], [0.0, 0.0]])
    assert finite_rows(features).tolist() == [True, False, False, True]
    assert NON_FINITE == DAMAGED  # the wording every surface shows


def test_a_nan_tagger_fails_the_image_in_one_line_and_prints_no_nan(nan_tagger, tmp_path, cache_dir, capsys):
    image = draw_scene(tmp_path / "a.png", colour="red", shape="circle", background="gray")
    records = tmp_path / "records.jsonl"
    common = ["--model", str(nan_tagger), "--cache-dir", str(cache_dir), "--device", "cpu"]
    assert main([str(image), *common, "--json", "--output", str(records)]) == EXIT_IMAGE_FAILED
    out, err = capsys.readouterr()
    assert out == ""  # no half an answer with "score": NaN in it
    (line,) = error_lines(err)
    assert line.startswith(f"error: {image}: the model ") and line.endswith(DAMAGED)
    (entry,) = [strict_json(text) for text in records.read_text().splitlines()]
    assert entry["prompt"] is None and entry["tags"] == [] and entry["error"] == line.removeprefix("error: ")


def test_a_nan_tagger_writes_no_caption_and_the_summary_counts_the_failure(nan_tagger, tmp_path, cache_dir, capsys):
    """The issue's case: a caption was written and the summary said 0 failed, exit 0."""
    folder = tmp_path / "photos"
    good_and_blank(folder)
    records = tmp_path / "records.jsonl"
    common = ["--model", str(nan_tagger), "--cache-dir", str(cache_dir), "--device", "cpu", "--output", str(records)]
    assert main([str(folder), *common]) == EXIT_IMAGE_FAILED
    err = capsys.readouterr().err
    assert sorted(line.split(": ")[1] for line in error_lines(err)) == [
        str(folder / "blank.png"),
        str(folder / "good.png"),
    ]
    assert f"{folder}: 0 captioned, 2 records written, 0 already captioned, 2 failed" in err
    assert list(folder.glob("*.txt")) == []
    assert [item["error"].endswith(DAMAGED) for item in read_records(records, strict=True)] == [True, True]


def test_in_a_batch_only_the_image_with_non_finite_scores_fails(blank_images_give_nan, tmp_path, cache_dir, capsys):
    folder = tmp_path / "photos"
    good, blank = good_and_blank(folder)
    records = tmp_path / "records.jsonl"
    common = ["--model", "shapes-demo", "--cache-dir", str(cache_dir), "--output", str(records), "--json"]
    assert main([str(folder), *common]) == EXIT_IMAGE_FAILED  # one forward pass for both: --batch-size 8
    out, err = capsys.readouterr()
    (printed,) = [strict_json(line) for line in out.splitlines()]
    assert printed["source"] == str(good) and "red" in printed["prompt"]
    (line,) = error_lines(err)
    assert line == f"error: {blank}: the model shapes-demo {DAMAGED}"
    assert f"{folder}: 1 captioned, 2 records written, 0 already captioned, 1 failed" in err
    assert good.with_suffix(".txt").read_text().strip() == printed["prompt"] and not blank.with_suffix(".txt").exists()
    by_name = {Path(item["path"]).name: item for item in read_records(records, strict=True)}
    assert by_name["good.png"]["error"] is None and by_name["good.png"]["prompt"] == printed["prompt"]
    assert by_name["blank.png"]["error"] == line.removeprefix("error: ") and by_name["blank.png"]["tags"] == []


def test_single_images_fail_alone_too(blank_images_give_nan, tmp_path, cache_dir, capsys):
    good, blank = good_and_blank(tmp_path)
    assert main([str(blank), str(good), "--model", "shapes-demo", "--cache-dir", str(cache_dir), "--json"]) == 1
    out, err = capsys.readouterr()
    assert [strict_json(line)["source"] for line in out.splitlines()] == [str(good)]
    assert error_lines(err) == [f"error: {blank}: the model shapes-demo {DAMAGED}"]


def test_a_clip_with_a_nan_image_tower_fails_each_image(nan_clip, tmp_path, cache_dir, capsys):
    good, blank = good_and_blank(tmp_path / "photos")
    assert main([str(good), "--model", str(nan_clip), "--cache-dir", str(cache_dir), "--json"]) == EXIT_IMAGE_FAILED
    out, err = capsys.readouterr()
    assert out == "" and names_image_and_model(error_lines(err), good, nan_clip.name, DAMAGED)
    assert main([str(tmp_path / "photos"), "--model", str(nan_clip), "--cache-dir", str(cache_dir)]) == 1
    assert "0 captioned, 0 already captioned, 2 failed" in capsys.readouterr().err
    assert not good.with_suffix(".txt").exists() and not blank.with_suffix(".txt").exists()


def test_a_clip_with_a_nan_text_tower_is_refused_at_load_and_caches_nothing(tmp_path, cache_dir, capsys):
    """Its tag embeddings are NaN, so every image's scores would be: a setup error (exit 2), not one per image."""
    folder = write_model_folder(tmp_path / "clip-nan-text")
    set_nan(folder / "open_clip_model.safetensors", "text_projection")
    image = draw_scene(tmp_path / "a.png", colour="red", shape="circle", background="gray")
    assert main([str(image), "--model", str(folder), "--cache-dir", str(cache_dir)]) == EXIT_SETUP_FAILED
    tags = "gave non-finite tag embeddings: its weights may be damaged (NaN/inf); re-download them"
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: the model {folder.name}-") and line.endswith(tags)
    assert not list(cache_dir.glob("text_embeddings/*.safetensors"))


def test_ray_batches_give_the_same_error_record_and_keep_the_good_image(blank_images_give_nan, tmp_path, shapes_engine):
    """TagExtractor as a Ray actor runs it, on one batch (its __init__ only loads the engine from Ray's store)."""
    from easy_diffuser.caption_files import CaptionWriter
    from easy_diffuser.options import CaptionFileOptions
    from easy_diffuser.pipeline import Preprocessor

    good, blank = good_and_blank(tmp_path)
    preprocessor = Preprocessor(shapes_engine.loaded)
    paths = [str(blank), str(good)]
    batch = {
        "path": paths,
        "source": [path.encode() for path in paths],
        "caption_owner": paths,
        "pixels": torch.stack([preprocessor(path, path) for path in paths]).numpy(),
        "error": ["", ""],
    }
    extractor = TagExtractor.__new__(TagExtractor)
    writer = CaptionWriter.of(CaptionFileOptions(), ExtractOptions(), tagger=False)  # .txt beside the image
    extractor.engine, extractor.options, extractor.captions = shapes_engine, ExtractOptions(), writer
    rows = extractor(batch).to_pylist()
    assert rows[0]["error"] == f"{blank}: the model shapes-demo {DAMAGED}" and rows[0]["tags"] == []
    assert rows[1]["error"] is None and "red" in rows[1]["prompt"]
    assert good.with_suffix(".txt").is_file() and not blank.with_suffix(".txt").exists()


def test_the_engine_refuses_a_batch_with_a_non_finite_image_and_says_which(blank_images_give_nan, shapes_engine):
    good = red_circle()
    blank = Image.new("RGB", (64, 64), "white")
    with pytest.raises(NonFiniteScores) as raised:
        shapes_engine.extract_many([good, blank])
    assert raised.value.finite.tolist() == [True, False] and str(raised.value) == f"the model shapes-demo {DAMAGED}"
    assert "red" in shapes_engine.extract_many([good])[0].prompt  # the engine itself is fine for the next call


@pytest.mark.parametrize("command", ["check", "refine"])
def test_check_and_refine_json_never_print_a_nan_loss(command, nan_tagger, tmp_path, cache_dir, capsys):
    image = draw_scene(tmp_path / "a.png", colour="red", shape="circle", background="gray")
    common = ["--model", str(nan_tagger), "--cache-dir", str(cache_dir), "--device", "cpu", "--generator", "shapes"]
    for start in ([], ["--prompt", "red, circle"]):  # extracted from the image, or given: the source fails either way
        assert main([command, str(image), *common, *start, "--json"]) == EXIT_IMAGE_FAILED
        out, err = capsys.readouterr()
        assert out == ""
        assert names_image_and_model(error_lines(err), image, nan_tagger.name, DAMAGED)


def test_a_generation_the_model_cannot_score_ends_refine_and_keeps_the_finished_rounds(
    blank_images_give_nan, shapes_engine
):
    """Round 1's generation is blank, so the model gives NaN for it: round 0 stays, as after a generator error."""
    calls = []

    def blank_from_round_1(prompt: str, negative: str, seed: int) -> Image.Image:
        calls.append(prompt)
        return ShapesGenerator().generate(prompt, negative, seed) if len(calls) == 1 else Image.new("RGB", (64, 64))

    generator = CallableGenerator(blank_from_round_1, "stub")
    result = refine_image(shapes_engine, red_circle(), generator, "blue", rounds=3, seeds=1)
    assert [r.index for r in result.rounds] == [0] and len(calls) == 2
    assert result.error == f"round 1: a generated image: the model shapes-demo {DAMAGED}"
    assert strict_json(json.dumps(result.to_dict()))["best"]["round"] == 0


def test_calibrate_with_a_nan_model_is_one_line_and_writes_no_calibration(nan_tagger, tmp_path, cache_dir, capsys):
    folder = tmp_path / "photos"
    good_and_blank(folder)
    common = ["--model", str(nan_tagger), "--cache-dir", str(cache_dir), "--device", "cpu"]
    assert main(["calibrate", str(folder), *common, "--generator", "shapes"]) == EXIT_IMAGE_FAILED
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: the model {nan_tagger.name}-") and line.endswith(DAMAGED)
    assert not list(cache_dir.glob("calibration/*"))  # no candidate, no partial results with a NaN loss
