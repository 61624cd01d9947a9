"""What a user sees of a calibration: nothing in force until applied, the previous one kept, one
command to undo, readable summaries, refused non-finite numbers. Few images, the shapes generator."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from easy_diffuser import cli
from easy_diffuser.calibration import calibrate, store
from easy_diffuser.calibration.generators import ShapesGenerator
from easy_diffuser.calibration.report import summary_lines, table_text
from easy_diffuser.calibration.shapes_proof import scenes, write_folder
from easy_diffuser.calibration.sweep import (
    NO_NEGATIVES,
    WHOLE_VOCABULARY,
    WHOLE_VOCABULARY_LABEL,
    Calibration,
    Row,
    Setting,
)
from easy_diffuser.engine import Engine, calibration_path
from easy_diffuser.webui import markup


@pytest.fixture
def folder(tmp_path):
    write_folder(tmp_path / "images", scenes(4, seed=8))
    return tmp_path / "images"


def calibrate_cli(tmp_path, *extra: str) -> int:
    return cli.main(
        ["calibrate", *extra, "--model", "shapes-demo", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    )


def in_force(tmp_path) -> tuple[float, str]:
    return Engine("shapes-demo", cache_dir=tmp_path / "cache").resolve_tau(None)


def test_a_run_changes_nothing_until_applied_and_undo_restores(tmp_path, folder, capsys):
    target = calibration_path(tmp_path / "cache", "shapes-demo")
    shipped = in_force(tmp_path)
    assert calibrate_cli(tmp_path, str(folder), "--taus", "2", "-1", "--negatives", "1") == 0
    output = capsys.readouterr().out
    assert "note: --generator shapes" in output  # the default is said, not silent
    assert "a candidate: not in force" in output and "calibrate --apply --model shapes-demo" in output
    assert in_force(tmp_path) == shipped and not target.exists()
    assert store.candidate_path(target).is_file() and not store.partial_path(target).exists()
    candidate_tau = json.loads(store.candidate_path(target).read_text())["tau"]

    assert calibrate_cli(tmp_path, "--apply") == 0
    output = capsys.readouterr().out
    assert f"tau {shipped[0]:g} -> {candidate_tau:g}" in output and "calibrate --undo --model shapes-demo" in output
    tau, source = in_force(tmp_path)
    assert tau == candidate_tau and source.startswith("calibrated")
    assert json.loads(store.previous_path(target).read_text()) == {}  # nothing was calibrated before

    assert calibrate_cli(tmp_path, "--undo") == 0
    assert f"tau {candidate_tau:g} -> {shipped[0]:g}" in capsys.readouterr().out
    assert in_force(tmp_path) == shipped and not target.exists()
    assert store.candidate_path(target).is_file()  # the undone result can be applied again
    assert calibrate_cli(tmp_path, "--undo") == 1
    assert "nothing to undo" in capsys.readouterr().err


def test_apply_keeps_the_calibration_it_replaces(tmp_path):
    target = calibration_path(tmp_path / "cache", "shapes-demo")
    target.parent.mkdir(parents=True)
    target.write_text('{"tau": 0.25, "negatives": 3}')
    store.write_json(store.candidate_path(target), {"tau": -0.5, "negatives": 6})
    store.apply(target)
    assert json.loads(target.read_text())["tau"] == -0.5 and not store.candidate_path(target).exists()
    assert json.loads(store.previous_path(target).read_text()) == {"tau": 0.25, "negatives": 3}
    store.undo(target)
    assert json.loads(target.read_text()) == {"tau": 0.25, "negatives": 3} and not store.previous_path(target).exists()
    assert json.loads(store.candidate_path(target).read_text())["tau"] == -0.5


def test_non_finite_numbers_are_refused_and_never_written(tmp_path, folder, capsys):
    for flag, value in [("--taus", "nan"), ("--taus", "inf"), ("--negatives", "nan"), ("--taus", "9")]:
        with pytest.raises(SystemExit):
            calibrate_cli(tmp_path, str(folder), flag, value)
        assert f"argument {flag}: must be" in capsys.readouterr().err
    path = tmp_path / "x.json"
    with pytest.raises(ValueError, match=r"table\[1\]\.loss is not a finite number"):
        store.write_json(path, {"tau": 0.5, "table": [{"loss": 1.0}, {"loss": math.nan}]})
    assert not path.exists()
    target = calibration_path(tmp_path / "cache", "shapes-demo")
    store.candidate_path(target).parent.mkdir(parents=True)
    store.candidate_path(target).write_text('{"tau": NaN, "negatives": 2}')  # written by hand or by an old version
    with pytest.raises(store.CalibrationFileError, match=r"NaN is not a number\); nothing was applied"):
        store.apply(target)
    assert not target.exists()


def test_a_real_model_needs_a_generator_and_help_names_defaults(tmp_path, folder, capsys):
    assert cli.main(["calibrate", str(folder), "--model", "ViT-L-14/openai", "--cache-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        "\n" not in error
        and "--generator is required for ViT-L-14/openai" in error
        and "http://127.0.0.1:7860" in error
    )
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--help"])
    usage = capsys.readouterr().out
    assert "default: ViT-L-14/openai" in usage and "default: 1 2 3 4 6 8" in usage and "default: 256" in usage
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "easy-diffuser calibrate FOLDER" in capsys.readouterr().out


def test_the_shipped_tagger_calibrates_offline_on_the_shapes_renderer_by_default(tmp_path, folder, capsys):
    """The round trip works for a tagger as for CLIP; on the shapes world shapes-booru's prompt names every
    attribute, so the renderer has nothing left to choose and every setting ties (docs/booru.md)."""
    args = ["calibrate", str(folder), "--model", "shapes-booru", "--cache-dir", str(tmp_path), "--taus", "0", "2"]
    assert cli.main([*args, "--negatives", "1"]) == 0
    out = capsys.readouterr().out
    assert "--generator shapes (the shapes-world renderer, shapes-booru's default)" in out
    assert (tmp_path / "calibration" / "shapes-booru.candidate.json").exists()


def row(setting: Setting, losses: list[float]) -> Row:
    return Row(setting, sum(losses) / len(losses), 0.9, losses, [("a", "b")] * len(losses))


def test_the_summary_labels_baselines_and_says_when_one_beats_the_choice():
    chosen = row(Setting(-1.0, 1), [0.5, 0.5, 0.5, 0.5])
    baselines = [
        row(Setting(0.0, 0, NO_NEGATIVES), [1.5, 1.5]),
        row(Setting(WHOLE_VOCABULARY, 1, WHOLE_VOCABULARY_LABEL), [2.0, 2.0]),
        row(Setting(WHOLE_VOCABULARY, 8, WHOLE_VOCABULARY_LABEL), [0.1, 0.1, 0.1, 0.1]),
    ]
    images = [Path(f"{index}.png") for index in range(5)]
    result = Calibration(
        "m",
        "shapes",
        [chosen, row(Setting(0.5, 1), [0.9, 0.9])],
        baselines,
        chosen,
        images,
        full_sweep=40,
        generations=9,
    )
    lines = summary_lines(result)
    # Each line says what it compares on which images: the chosen loss differs between them for that reason.
    assert (
        lines[0]
        == "chosen: tau -1, 1 negative, loss 0.5000 on 4 of the 5 images (9 generations, the full sweep needs 40)"
    )
    assert (
        "baseline no negative prompt vs chosen, on the 2 images both were run on: loss 1.5000 vs 0.5000, "
        "the chosen setting is better by 1.0000" in lines
    )
    assert (
        "baseline whole-vocabulary lowest, 8 negatives vs chosen, on 4 of the 5 images: loss 0.1000 vs 0.5000, "
        "BEATS the chosen setting by 0.4000" in lines
    )
    assert lines[-1].startswith("note: whole-vocabulary lowest, 8 negatives did better than every tau tried")
    table = table_text(result.rows + baselines, chosen)
    assert "| **tau -1, 1 negative** (chosen) | 0.5000 | 0.9000 | 4 |" in table
    assert "| whole-vocabulary lowest, 1 negative | 2.0000 | 0.9000 | 2 |" in table and "1 negatives" not in table


def test_without_matplotlib_the_plot_is_not_drawn_and_both_outputs_say_which_extra_draws_it(
    tmp_path, folder, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `pip install -e .` alone gives: no report extra
    assert calibrate_cli(tmp_path, str(folder), "--taus", "2", "--negatives", "1") == 0
    output = capsys.readouterr().out
    extra = "it needs matplotlib, pip install 'easy-diffuser[report]'"
    assert f"plot: not drawn: {extra}" in output and "grid: " in output
    table = store.candidate_path(calibration_path(tmp_path / "cache", "shapes-demo"))
    report = table.parent / "shapes-demo.md"
    assert extra in report.read_text() and not (table.parent / "shapes-demo-loss.png").exists()


def test_progress_line_shows_generations_and_time_left():
    assert markup.calibration_progress(0, 400, None) == "Calibrating: 0 of about 400 generations"
    assert (
        markup.calibration_progress(100, 400, 2.0)
        == "Calibrating: 100 of about 400 generations, 2.0 s each, about 10 min left"
    )


def test_unreadable_images_are_skipped_and_named_on_every_surface(tmp_path, folder, capsys):
    (folder / "broken.png").write_bytes(b"not a picture")
    assert calibrate_cli(tmp_path, str(folder), "--taus", "2", "--negatives", "1") == 0
    err = capsys.readouterr().err
    assert "skipped: " in err and "broken.png" in err  # the command line says which
    engine = Engine("shapes-demo", cache_dir=tmp_path / "cache2")
    result = calibrate(engine, folder, ShapesGenerator(), taus=[2.0], negatives=[1], report=False)
    assert len(result.images) == 4 and len(result.skipped) == 1 and "broken.png" in result.skipped[0]
    assert "broken.png" in markup.calibration_html(result)  # and so does the tab's report


@pytest.mark.parametrize(
    "flag, value",
    [("--width", "99999999"), ("--height", "0"), ("--steps", "0"), ("--steps", "x"), ("--width", "9" * 400)],
)
def test_generation_settings_out_of_range_are_refused_before_anything_runs(tmp_path, folder, capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        calibrate_cli(tmp_path, str(folder), flag, value)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}: must be a whole number from" in error and len(error.splitlines()[-1]) < 200
    assert not (tmp_path / "cache").exists()  # no model was loaded, nothing was written
