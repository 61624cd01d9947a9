"""Calibration of tau by the round trip extract -> generate -> compare, proven on the shapes world.

The held-out comparison measures losses, so it fails if the calibrated tau stops beating the
alternatives (e.g. a change in selection, scoring or the metric). Everything is seeded.
"""

from __future__ import annotations

import http.server
import io
import json
import random
import threading
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from easy_diffuser import cli
from easy_diffuser.calibration import calibrate, store
from easy_diffuser.calibration.generators import (
    CallableGenerator,
    GenerationStopped,
    ShapesGenerator,
    WebuiHttpGenerator,
    webui_generator,
)
from easy_diffuser.calibration.metric import Metric, TagCalibration, bce, fit_tag_calibration
from easy_diffuser.calibration.shapes_proof import (
    TOO_HIGH_LABEL,
    TOO_HIGH_TAU,
    compare_held_out,
    comparison_table,
    scenes,
    write_folder,
)
from easy_diffuser.calibration.sweep import WHOLE_VOCABULARY_LABEL, PartialResults, Setting, measure
from easy_diffuser.engine import Engine, ExtractOptions, calibration_path
from easy_diffuser.shapes import world

# The same sets as `python -m easy_diffuser.calibration.shapes_proof`: the test measures docs/calibration.md's numbers.
CALIBRATION_IMAGES = 60
HELD_OUT_IMAGES = 400


@pytest.fixture(scope="module")
def calibrated(shapes_engine, tmp_path_factory):
    """shapes-demo calibrated on 60 random scenes; the result goes to its own folder, not the engine's cache."""
    root = tmp_path_factory.mktemp("calibration")
    write_folder(root / "images", scenes(CALIBRATION_IMAGES, seed=1))
    return calibrate(shapes_engine, root / "images", ShapesGenerator(), out_dir=root / "out")


def test_calibrated_tau_beats_the_alternatives_on_held_out_scenes(shapes_engine, calibrated):
    compared = compare_held_out(shapes_engine, calibrated.best.setting, TOO_HIGH_TAU, scenes(HELD_OUT_IMAGES, seed=2))
    print("\n" + comparison_table(compared))
    ours, *others = compared
    assert ours.row.setting.negatives > 0, "calibration chose no negatives: the negative prompt bought nothing"
    for other in others:
        if other.name == WHOLE_VOCABULARY_LABEL:
            # In a 13-tag world the lowest tags of the whole vocabulary are exactly the false values, so that
            # rule can't be beaten here (docs/calibration.md); the world that tests it is test_cooccur_world.py.
            continue
        assert ours.row.loss < other.row.loss, (
            f"calibrated {ours.row.loss:.4f} does not beat {other.name} {other.row.loss:.4f}"
        )
    assert any(other.name == TOO_HIGH_LABEL for other in others)
    assert ours.true_in_negative <= 0.01  # the negative guard: what the image shows is never negated


def test_calibration_writes_result_and_report(calibrated):
    data = json.loads(calibrated.path.read_text())
    assert data["tau"] == calibrated.best.setting.tau and data["negatives"] == calibrated.best.setting.negatives
    assert data["model"] == "shapes-demo" and data["generator"] == "shapes" and data["images"] == CALIBRATION_IMAGES
    assert calibrated.path.name == "shapes-demo.candidate.json"  # not the file extraction reads
    # The lowest among the settings measured on every image (the search drops the others early, on fewer).
    assert min(row["loss"] for row in data["table"] if row["images"] == CALIBRATION_IMAGES) == data["loss"]
    assert 0 < data["generations"] * 4 <= calibrated.full_sweep
    assert {"table", "grid"} <= set(calibrated.report)
    assert all(path.is_file() for path in calibrated.report.values())
    assert Image.open(calibrated.report["grid"]).size[1] > 128


def test_learned_tau_is_used_by_default_once_applied(shapes_engine, tmp_path):
    write_folder(tmp_path / "images", scenes(6, seed=3))
    engine = Engine("shapes-demo", cache_dir=tmp_path / "cache")
    before = engine.resolve_tau(None)
    result = calibrate(engine, tmp_path / "images", ShapesGenerator(), taus=[0.25, 0.5], negatives=[2], report=False)
    assert result.path == calibration_path(tmp_path / "cache", "shapes-demo").with_suffix(".candidate.json")
    assert engine.resolve_tau(None) == before  # a candidate changes nothing
    store.apply(calibration_path(tmp_path / "cache", "shapes-demo"))
    tau, source = engine.resolve_tau(None)
    assert tau == result.tau and source.startswith("calibrated")
    assert engine.extract(world.draw(scenes(1, seed=4)[0])).tau == result.tau


def test_learned_number_of_negatives_is_used_unless_the_user_sets_tau(tmp_path):
    engine = Engine("shapes-demo", cache_dir=tmp_path / "cache")
    path = calibration_path(tmp_path / "cache", "shapes-demo")
    path.parent.mkdir(parents=True)
    path.write_text('{"tau": -5, "negatives": 1}')
    image = world.draw(scenes(1, seed=4)[0])

    def negatives(options=ExtractOptions()):
        return [tag for tag in engine.extract(image, options).tags if tag.role == "negative"]

    assert len(negatives()) == 1
    assert len(negatives(ExtractOptions(tau=-5))) > 1  # a tau of the user's own keeps the usual count
    path.write_text('{"tau": ')  # damaged: back to the model's defaults, no error
    assert engine.extract(image).tau_source == "model default"


def test_stop_then_rerun_resumes_from_partial_results(shapes_engine, tmp_path):
    write_folder(tmp_path / "images", scenes(20, seed=5))
    calls = []
    counting = CallableGenerator(lambda p, n, s: calls.append(1) or ShapesGenerator().generate(p, n, s), "shapes")
    sweep = dict(taus=[0.0, 1.0], negatives=[1, 3], out_dir=tmp_path / "out", report=False)
    stopped = calibrate(shapes_engine, tmp_path / "images", counting, should_stop=lambda: len(calls) >= 20, **sweep)
    partial = tmp_path / "out" / "shapes-demo.partial.json"
    assert stopped.stopped and stopped.path is None
    assert (
        not (tmp_path / "out" / "shapes-demo.json").exists()
        and not (tmp_path / "out" / "shapes-demo.candidate.json").exists()
    )
    assert len(PartialResults(partial).entries) == 20  # every generation made is kept
    progress = []
    finished = calibrate(
        shapes_engine, tmp_path / "images", counting, progress=lambda d, t: progress.append((d, t)), **sweep
    )
    assert finished.path and finished.path.is_file() and not partial.exists()  # done: no stale partial file
    assert progress[-1][0] == progress[-1][1] == finished.generations
    assert len(calls) == finished.generations  # the search replayed the 20 kept generations and redid none


def test_measure_shares_generations_between_settings_with_equal_prompts(shapes_engine):
    images = [world.draw(s) for s in scenes(4, seed=6)]
    calls = []
    counting = CallableGenerator(
        lambda p, n, s: calls.append((p, n, s)) or ShapesGenerator().generate(p, n, s), "shapes"
    )
    settings = [Setting(tau, 2) for tau in (2.5, 3.0, 3.5)]  # nothing is that relevant: empty negatives for all
    rows, stopped = measure(shapes_engine, images, counting, settings, ExtractOptions(max_tags=2))
    assert not stopped and len(calls) == len(set(calls)) <= 4
    assert rows[0].loss == rows[1].loss == rows[2].loss


def test_bce_is_lowest_when_the_generated_tags_match():
    target = torch.tensor([[0.9, 0.1, 0.8, 0.05]])
    assert bce(target, target) < bce(target, torch.tensor([[0.1, 0.9, 0.8, 0.05]]))
    assert bce(target, target) < bce(target, torch.tensor([[0.5, 0.5, 0.5, 0.5]]))


def test_fit_tag_calibration_recovers_center_and_temperature():
    generator = torch.Generator().manual_seed(0)
    relevance = torch.randn(4000, generator=generator) * 2
    present = torch.bernoulli(TagCalibration(1.2, 0.3).probabilities(relevance), generator=generator)
    fitted = fit_tag_calibration(relevance, present)
    assert fitted.center == pytest.approx(1.2, abs=0.1) and fitted.temperature == pytest.approx(0.3, abs=0.1)


def test_metric_prefers_the_same_scene(shapes_engine):
    metric = Metric(shapes_engine)
    red = world.random_scene(random.Random(0), colour="red", shape="circle", background="white", size="large")
    other = world.random_scene(random.Random(1), colour="blue", shape="square", background="black", size="small")
    source = metric.embed([world.draw(red)] * 2)
    loss, cosine = metric.compare(source, metric.embed([world.draw(red), world.draw(other)]))
    assert loss[0] < loss[1] and cosine[0] > cosine[1]


def test_shapes_generator_obeys_prompt_and_negative_prompt():
    generator = ShapesGenerator()
    negative = "white background, black background, small"
    for seed in range(8):
        scene = world.scene_from_prompt("red, circle", negative, random.Random(seed))
        assert (scene.colour, scene.shape, scene.background, scene.size) == ("red", "circle", "gray", "large")
    first = generator.generate("red, circle", negative, 3)
    assert first.tobytes() == generator.generate("red, circle", negative, 3).tobytes()


def test_webui_http_generator_sends_seed_and_size():
    received = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.update(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
            import base64

            body = json.dumps({"images": [base64.b64encode(buffer.getvalue()).decode()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        generator = WebuiHttpGenerator(f"http://127.0.0.1:{server.server_port}", width=128, height=96, steps=5)
        image = generator.generate("red, circle", "blue", 42)
    finally:
        server.shutdown()
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert (received["prompt"], received["negative_prompt"], received["seed"]) == ("red, circle", "blue", 42)
    assert (received["width"], received["height"], received["steps"], received["save_images"]) == (128, 96, 5, False)


def test_cli_calibrate(tmp_path, capsys):
    write_folder(tmp_path / "images", scenes(5, seed=8))
    argv = [
        "calibrate",
        str(tmp_path / "images"),
        "--model",
        "shapes-demo",
        "--generator",
        "shapes",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--taus",
        "0",
        "0.5",
        "--negatives",
        "2",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    output = capsys.readouterr().out
    assert "chosen: tau" in output and "candidate" in output and "--apply" in output
    assert not calibration_path(tmp_path / "cache", "shapes-demo").exists()
    assert cli.main([*argv[:2], "--apply", *argv[2:]]) == 0 and "applied for shapes-demo" in capsys.readouterr().out
    assert calibration_path(tmp_path / "cache", "shapes-demo").is_file()


def test_webui_generator_uses_processing_without_saving_and_stops_on_interrupt():
    made = {}

    class Processing:  # stands in for the webui's modules.processing
        class StableDiffusionProcessingTxt2Img:
            def __init__(self, **fields):
                made.update(fields)

            def close(self):
                made["closed"] = True

        @staticmethod
        def process_images(p):
            assert lock.locked()  # generation runs under the queue lock
            assert p.scripts.alwayson_scripts == []  # reForge reads it without asking whether there are scripts
            return SimpleNamespace(images=[Image.new("RGB", (8, 8), "blue")])

    lock = threading.Lock()
    shared = SimpleNamespace(state=SimpleNamespace(interrupted=False), sd_model=object())
    scripts = SimpleNamespace(ScriptRunner=lambda: SimpleNamespace(alwayson_scripts=[]))  # modules.scripts
    generator = webui_generator(Processing, shared, scripts, width=64, height=48, steps=4, queue_lock=lock)
    image = generator.generate("red, circle", "blue", 7)
    assert image.getpixel((0, 0)) == (0, 0, 255) and not lock.locked()
    assert (made["seed"], made["width"], made["height"], made["steps"]) == (7, 64, 48, 4)
    assert made["do_not_save_samples"] and made["do_not_save_grid"] and made["closed"]
    shared.state.interrupted = True
    with pytest.raises(GenerationStopped):
        generator.generate("red, circle", "blue", 7)


def test_the_shapes_folder_writer_takes_a_plain_string_path(tmp_path):
    from easy_diffuser.calibration.shapes_proof import scenes, write_folder

    write_folder(str(tmp_path / "scenes"), scenes(2, seed=1))  # as a user types it
    assert sorted(path.name for path in (tmp_path / "scenes").iterdir()) == ["scene-0000.png", "scene-0001.png"]
