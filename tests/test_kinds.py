"""Model kinds: one module each, asked in order, and plugins from the `easy_diffuser.kinds` entry-point group.

The plugin is docs/kinds.md's own example, installed by pip into a folder of the test, so the page a plugin author
reads is the code that runs here."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

from easy_diffuser.calibration.generators import CallableGenerator
from easy_diffuser.calibration.sweep import Setting, measure
from easy_diffuser.engine import Engine
from easy_diffuser.errors import ModelError
from easy_diffuser.images import load_image
from easy_diffuser.options import ExtractOptions
from easy_diffuser.refine import check_image
from easy_diffuser.registry import BUILTIN_KINDS, kind_for

import taggers

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "docs" / "sample.png"  # a red circle on gray
DOC = (ROOT / "docs" / "kinds.md").read_text()


def test_a_spec_goes_to_the_kind_that_claims_it(tmp_path):
    assert kind_for("shapes-booru").name == "wd-tagger" and kind_for("SmilingWolf/wd-vit-tagger-v3").name == "wd-tagger"
    assert kind_for("shapes-demo").name == "clip" and kind_for("ViT-B-32/openai").name == "clip"
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    assert kind_for(str(tmp_path)).name == "wd-tagger"  # a tagger folder, complete or not: it names what is missing
    assert kind_for(str(tmp_path / "model.onnx")).name == "wd-tagger"  # refused by the tagger, by name
    with pytest.raises(ModelError, match="unknown model 'no-such-model': use one of .*shapes-booru"):
        kind_for("no-such-model")
    assert BUILTIN_KINDS[-1].name == "clip"  # asked last: it takes the ARCH/TAG pairs and files others leave


def install(project: Path, target: Path) -> None:
    """`pip install` a project folder into `target`, offline (the test's PYTHONPATH then finds it)."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--target", str(target), str(project)], check=True, capture_output=True, timeout=300)


def project(folder: Path, name: str, module: str, code: str, entry_points: str) -> Path:
    folder.mkdir()
    (folder / f"{module}.py").write_text(code)
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "1.0"\n\n[project.entry-points."easy_diffuser.kinds"]\n{entry_points}\n'
    )
    return folder


def run(target: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """docs/kinds.md's plugin, as the page gives it, installed into a folder."""
    code = re.search(r"```python\n(import torch.*?)```", DOC, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", DOC, re.S).group(1)
    assert len(code.splitlines()) < 60  # the page promises a plugin under 60 lines
    folder = tmp_path_factory.mktemp("palette")
    (folder / "easy_diffuser_palette.py").write_text(code)
    (folder / "pyproject.toml").write_text(toml)
    target = tmp_path_factory.mktemp("site")
    install(folder, target)
    return target


def test_the_documented_plugin_runs_from_the_cli(plugin):
    listed = run(plugin, "-m", "easy_diffuser", "--help")
    assert "palette" in listed.stdout.replace("\n", " ")  # --model's help lists it
    process = run(plugin, "-m", "easy_diffuser", str(SAMPLE), "--model", "palette", "--json")
    assert process.returncode == 0, process.stderr
    assert '"prompt": "red, gray"' in process.stdout  # the circle and its background; no blue, green or white
    assert "palette" in process.stdout and process.stderr == ""


def test_the_documented_plugin_runs_from_the_python_api(plugin):
    script = (
        "from easy_diffuser import Engine, list_models\n"
        "assert 'palette' in list_models()\n"
        f"print(Engine('palette').extract({str(SAMPLE)!r}).prompt)\n"
    )
    process = run(plugin, "-c", script)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "red, gray"


def test_a_broken_plugin_is_one_warning_and_everything_else_works(tmp_path):
    target = tmp_path / "site"
    broken = {
        "fails-on-import": ("raise ImportError('no module named torchvision.v3')", "fails = 'broken_import:Kind'"),
        "not-a-kind": ("class Kind:\n    name = 'impostor'", "impostor = 'not_a_kind:Kind'"),
        "takes-clip": (
            "from easy_diffuser.kinds.clip import ClipKind\nclass Kind(ClipKind):\n    pass",
            "clash = 'takes_clip:Kind'",
        ),
    }
    for name, (code, entry_point) in broken.items():
        module = entry_point.split("'")[1].split(":")[0]
        install(project(tmp_path / name, name, module, code, entry_point), target)
    process = run(target, "-m", "easy_diffuser", str(SAMPLE), "--model", "shapes-demo")
    assert process.returncode == 0, process.stderr
    assert "circle" in process.stdout and "red" in process.stdout  # the built-in kinds work as before
    warnings = process.stderr.strip().splitlines()
    assert len(warnings) == 3 and "Traceback" not in process.stderr
    for plugin_name, words in (("fails", "ImportError"), ("impostor", "not a subclass"), ("clash", "already taken")):
        assert any(f"kind plugin {plugin_name!r}" in line and words in line for line in warnings), warnings


NEWER_TAGGERS = [
    "pixai",
    pytest.param(
        "jtp", marks=pytest.mark.skipif(not timm.is_model("vit_so400m_patch14_siglip_384"), reason="no SigLIP")
    ),
]


def newer_tagger(kind: str, tmp_path: Path) -> Engine:
    """A tiny PixAI or JTP replica in its published layout, loaded."""
    folder = (taggers.write_pixai if kind == "pixai" else taggers.write_jtp)(tmp_path / kind)
    engine = Engine(str(folder), cache_dir=tmp_path / "cache")
    assert engine.kind.name == f"{kind}-tagger"
    return engine


@pytest.mark.parametrize("kind", NEWER_TAGGERS)
def test_the_newer_tagger_kinds_go_through_check_and_refine_unchanged(kind, tmp_path, transparent_strip):
    """A kind module is all a model needs: calibration's metric and the round trip take PixAI and JTP as they
    take WD (the generation here is the source itself, so the pair loses and adds no tag)."""
    engine = newer_tagger(kind, tmp_path)
    image = Image.open(transparent_strip).convert("RGB")  # a generation is RGB
    result = check_image(engine, image, CallableGenerator(lambda prompt, negative, seed: image, "the source"))
    (only,) = result.rounds
    assert math.isfinite(only.loss) and only.lost == [] and only.added == []


@pytest.mark.parametrize("kind", NEWER_TAGGERS)
def test_calibration_measures_the_newer_tagger_kinds_by_their_own_probabilities(kind, tmp_path, transparent_strip):
    """The calibration sweep runs unchanged on them: an image's own tags are the closest to it."""
    engine = newer_tagger(kind, tmp_path)
    source = load_image(transparent_strip)
    other = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8))

    def loss(image):
        generator = CallableGenerator(lambda prompt, negative, seed: image, "fixed")
        rows, stopped = measure(engine, [source], generator, [Setting(-1.0, 2), Setting(1.0, 2)], ExtractOptions())
        assert not stopped and all(math.isfinite(row.loss) for row in rows)
        return rows[0].loss

    assert loss(source) < loss(other)
