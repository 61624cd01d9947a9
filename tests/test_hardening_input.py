"""Hardening, round 2, the input side: thin images, huge numbers, the calibration store, model folders and
TorchScript archives. Each bad input gives a result or one line naming the file or field, in bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easy_diffuser import cli
from easy_diffuser.images import MAX_ASPECT, bounded, load_image
from easy_diffuser.options import ExtractOptions, OptionError
from easy_diffuser.pipeline import Preprocessor

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str) -> str:
    """`code` in a fresh interpreter (its peak memory is its own), with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def strip(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (width, height), "red").save(path)
    return path


# --- thin images ---------------------------------------------------------------------------------------------

PEAK_MEMORY = """
import resource, sys
from easy_diffuser.engine import Engine
engine = Engine("shapes-demo", "cpu", cache_dir=sys.argv[1])
engine.extract(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[3:]:
    result = engine.extract(path)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before // 1024, after // 1024, result.prompt)
"""


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1)], ids=["tall", "wide"])
def test_a_thin_strip_extracts_in_the_memory_of_a_normal_image(tmp_path, shapes_red_circle, size):
    """A 1x100000 PNG (a few hundred bytes) peaked at 2.7 GB with shapes-demo: the resize scaled its short side
    up to 64 before the crop. Now the peak grows by less than 100 MB over a normal image's."""
    thin = strip(tmp_path / "thin.png", *size)
    assert thin.stat().st_size < 2000
    before, after, prompt = run_python(PEAK_MEMORY, str(tmp_path / "cache"), str(shapes_red_circle), str(thin)).split(
        maxsplit=2
    )
    print(f"peak RSS {before} MB after a normal image, {after} MB after {size[0]}x{size[1]}")
    assert int(after) - int(before) < 100
    assert "red" in prompt


def test_a_million_pixel_strip_is_a_result_on_the_cli_and_the_next_image_is_still_done(
    tmp_path, cache_dir, shapes_red_circle, capsys
):
    """A 2 KB 1x1,000,000 PNG was a MemoryError traceback that stopped the remaining inputs."""
    thin = strip(tmp_path / "thin.png", 1, 1_000_000)
    code = cli.main([str(thin), str(shapes_red_circle), "--model", "shapes-demo", "--cache-dir", str(cache_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.count("Prompt:") == 2 and "red" in out


def test_the_pipelines_workers_cut_thin_strips_bit_identically_to_the_models_own_preprocess(shapes_engine, tmp_path):
    preprocessor = Preprocessor(shapes_engine.loaded)
    for size in [(1, 100_000), (3000, 7), (640, 480)]:
        image = load_image(strip(tmp_path / "image.png", *size))
        expected = shapes_engine.loaded.preprocess(image).numpy()
        assert np.array_equal(preprocessor.pixels(image), expected)


def test_the_cut_shows_a_crop_model_the_same_centre_and_leaves_ordinary_shapes_alone(shapes_engine):
    """Sibling: a 12:1 strip with a picture in its middle. Cut to 8:1 the model sees the centre it saw before."""
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (50, 600, 3), dtype=np.uint8))
    assert bounded(picture).size == (8 * 50, 50)
    steps = shapes_engine.loaded.preprocess.transforms
    assert steps[0] is bounded
    uncut, cut = (np.asarray(steps[2](steps[1](image)), dtype=float) for image in (picture, bounded(picture)))
    assert np.abs(uncut - cut).mean() < 1.0  # out of 255: the same centre square, resampled alike
    for size in [(MAX_ASPECT * 10, 10), (10, MAX_ASPECT * 10), (4000, 3000), (1, 1)]:
        image = Image.new("RGB", size)
        assert bounded(image) is image


# --- numbers too large for a float, and echoes of huge input ----------------------------------------------------

HUGE = 10**400  # no float holds it: float(HUGE) and math.isfinite(HUGE) raise OverflowError


@pytest.mark.parametrize(
    "given, field",
    [
        ({"max_tags": HUGE}, "max_tags"),
        ({"tau": HUGE}, "tau"),
        ({"negatives": -HUGE}, "negatives"),
        ({"quality_negatives": 10**5000}, "quality_negatives"),  # sibling: Python won't even print it (4,300 digits)
        ({"caption": {"beams": HUGE}}, "caption.beams"),
    ],
)
def test_a_number_no_float_can_hold_is_an_option_error_naming_the_field(given, field):
    with pytest.raises(OptionError) as raised:
        ExtractOptions.from_mapping(given)
    message = str(raised.value)
    assert message.startswith(f"{field}: must be") and "digits" in message and len(message) < 200


@pytest.mark.parametrize(
    "argv",
    [
        ["docs/sample.png", "--tags", "1" + "0" * 400],
        ["docs/sample.png", "--negatives", "-" + "9" * 400],
        ["calibrate", "docs", "--negatives", "1" + "0" * 400],
        ["calibrate", "docs", "--negatives", "4", "1" + "0" * 400],
    ],
    ids=["tags", "negatives", "calibrate-negatives", "calibrate-second-negatives"],
)
def test_a_400_digit_number_on_the_command_line_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([str(ROOT / arg) if arg.startswith("docs") else arg for arg in argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert "must be a whole number from" in err.splitlines()[-1] and len(err.splitlines()[-1]) < 200


@pytest.mark.parametrize("given", [{"x" * 1_000_000: 1}, {"tau": "x" * 1_000_000}, {"caption": ["x"] * 100_000}])
def test_a_message_quotes_at_most_a_short_piece_of_huge_input(given):
    with pytest.raises(OptionError) as raised:
        ExtractOptions.from_mapping(given)
    assert len(str(raised.value)) < 300
