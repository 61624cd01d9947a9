"""WD taggers through timm (issue 15 §1, §2, §7, §9): tiny models of the real architectures in the hub layout."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from easy_diffuser.cli import main
from easy_diffuser.engine import Engine
from easy_diffuser.errors import ModelError, ModelFileError
from easy_diffuser.images import load_image
from easy_diffuser.kinds import wd_tagger as tagger
from easy_diffuser.kinds.timm_network import replace_gelu
from easy_diffuser.kinds.wd_tagger import TAGGER_DEFAULTS
from easy_diffuser.models import load_model, unload_models
from easy_diffuser.options import ExtractOptions
from easy_diffuser.pipeline import Preprocessor

from taggers import ARCHITECTURES, TAGS, logits_for, write_tagger


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("taggers")
    return {kind: write_tagger(root / f"wd-{kind}", kind) for kind in ARCHITECTURES}


@pytest.fixture
def transparent_strip(tmp_path):
    """A non-square RGBA image: coloured, half transparent, with a fully transparent band."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (23, 61, 4), dtype=np.uint8)
    pixels[:, :10, 3] = 0
    path = tmp_path / "strip.png"
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def reference_probabilities(path, folder, bgr: bool = True) -> torch.Tensor:
    """SmilingWolf's demo and wdv3-timm, written out: alpha on white, centred white square, bicubic to the input
    size, BGR, [-1, 1]; the network built by timm from config.json and loaded from the safetensors directly."""
    from safetensors.torch import load_file
    from timm.layers import get_act_layer

    config = json.loads((folder / "config.json").read_text())
    size = config["pretrained_cfg"]["input_size"][-1]
    image = Image.open(path).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    square = square.resize((size, size), Image.BICUBIC)
    array = np.asarray(square, dtype=np.float32)
    if bgr:
        array = array[:, :, ::-1]
    array = (array / 255 - 0.5) / 0.5
    args = dict(config["model_args"])
    if "act_layer" in args:
        args["act_layer"] = get_act_layer(args["act_layer"])
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"], **args)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    if config["architecture"].startswith("swinv2"):
        replace_gelu(model, args["act_layer"])  # what timm >= 1.0.3 builds from act_layer itself
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy(array.transpose(2, 0, 1).copy())[None]))[0]


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_probabilities_are_the_reference_computation(kind, folders, transparent_strip, cache_dir):
    engine = Engine(str(folders[kind]), cache_dir=cache_dir)
    ours = engine.encode([load_image(transparent_strip)])[0]
    expected = reference_probabilities(transparent_strip, folders[kind]).clamp(1e-4, 1 - 1e-4)
    assert torch.allclose(ours, expected, atol=2e-6), (ours - expected).abs().max()
    # The comparison can fail: the same image in RGB order gives other probabilities.
    rgb = reference_probabilities(transparent_strip, folders[kind], bgr=False).clamp(1e-4, 1 - 1e-4)
    assert (rgb - expected).abs().max() > 1e-4


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_every_architecture_runs_as_a_model_with_booru_tags(kind, folders, transparent_strip, cache_dir):
    result = Engine(str(folders[kind]), cache_dir=cache_dir).extract(transparent_strip)
    assert result.tags and all(0 < tag.score < 1 for tag in result.tags)
    assert {tag.category for tag in result.tags} <= {"general", "character", "copyright", "rating"}
    assert "_" not in result.prompt.replace("^_^", "")


def test_swinv2_gets_the_activation_its_config_asks_for_on_every_timm(folders):
    loaded = tagger.load_folder(folders["swinv2"])
    activations = {type(module).__name__ for module in loaded.model.modules()}
    assert "GELUTanh" in activations and "GELU" not in activations


def test_the_network_is_built_from_config_json_not_a_table_of_sizes(tmp_path, transparent_strip, cache_dir):
    architecture, args, size = ARCHITECTURES["vit"]
    folder = write_tagger(tmp_path / "wide", "vit")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = {**args, "embed_dim": 48, "depth": 2, "num_heads": 3}
    (folder / "config.json").write_text(json.dumps(config))
    _rewrite_weights(folder, config)
    loaded = tagger.load_folder(folder)
    assert loaded.model.embed_dim == 48 and len(loaded.model.blocks) == 2


def _rewrite_weights(folder, config):
    from safetensors.torch import save_file
    from timm.layers import get_act_layer

    args = {**config["model_args"], "act_layer": get_act_layer(config["model_args"]["act_layer"])}
    model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"], **args)
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def test_a_tagger_is_a_model_like_any_other(folders, cache_dir):
    loaded = load_model(str(folders["vit"]), cache_dir=cache_dir)
    assert isinstance(loaded, tagger.LoadedTagger) and loaded.image_size == 32
    assert load_model(str(folders["vit"]), cache_dir=cache_dir) is loaded  # loaded once, as CLIP models are
    unload_models(str(folders["vit"]), cache_dir)
    assert load_model(str(folders["vit"]), cache_dir=cache_dir) is not loaded


def test_a_tagger_folders_easy_diffuser_json_sets_its_defaults_as_a_clip_folders_does(
    tmp_path, cache_dir, transparent_strip
):
    import shutil

    from easy_diffuser.engine import automatic_values

    folder = shutil.copytree(write_tagger(tmp_path / "made", "vit"), tmp_path / "calibrated")
    (folder / "easy_diffuser.json").write_text('{"tau": 0.75, "negatives": 3}')
    result = Engine(str(folder), "cpu", cache_dir=cache_dir).extract(transparent_strip)
    assert (result.tau, result.tau_source) == (0.75, "model default")
    # A shipped tagger's values are known before it loads, as shapes-demo's are (the tab shows them).
    assert automatic_values("shapes-booru", cache_dir) == (TAGGER_DEFAULTS["tau"], ExtractOptions().negatives)


# -- the hub names: local files first, only three files, one line without network -----------------------------


def test_hub_names_are_registered_models():
    from easy_diffuser.registry import kind_for, list_models

    names = [f"SmilingWolf/wd-{n}-tagger-v3" for n in ("vit", "swinv2", "convnext", "vit-large", "eva02-large")]
    assert set(names) <= set(list_models()) and all(kind_for(name).name == "wd-tagger" for name in names)


def test_files_placed_by_hand_load_offline_without_asking_the_hub(folders, cache_dir, monkeypatch, transparent_strip):
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    placed = tagger.placed_folder("SmilingWolf/wd-vit-tagger-v3", cache_dir)
    placed.mkdir(parents=True)
    for name in tagger.TAGGER_FILES:
        (placed / name).write_bytes((folders["vit"] / name).read_bytes())
    engine = Engine("SmilingWolf/wd-vit-tagger-v3", cache_dir=cache_dir)
    assert engine.model_id == "SmilingWolf/wd-vit-tagger-v3" and engine.extract(transparent_strip).tags


def test_only_the_three_files_are_downloaded(folders, cache_dir, monkeypatch):
    asked = []

    def download(repo, filename, cache_dir, local_files_only):
        asked.append((repo, filename, local_files_only))
        if local_files_only:
            raise FileNotFoundError(filename)
        return str(folders["convnext"] / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    monkeypatch.setattr(tagger, "require_reachable", lambda url: None)
    loaded = tagger.WdTaggerKind().load("SmilingWolf/wd-convnext-tagger-v3", cache_dir)
    assert loaded.model_id == "SmilingWolf/wd-convnext-tagger-v3"
    downloaded = [name for repo, name, local in asked if not local]
    assert sorted(downloaded) == sorted(tagger.TAGGER_FILES)  # never model.onnx


def test_without_network_a_hub_name_is_one_line_naming_the_files_and_the_folder(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        tagger.WdTaggerKind().load("SmilingWolf/wd-eva02-large-tagger-v3", cache_dir)
    message = str(error.value)
    assert "\n" not in message and "selected_tags.csv" in message and "model.safetensors" in message
    assert str(tagger.placed_folder("SmilingWolf/wd-eva02-large-tagger-v3", cache_dir)) in message
    assert not isinstance(error.value, ModelFileError)  # the server lacks network: HTTP says 503, not 4xx


# -- refused files and bad input: one line naming the file ----------------------------------------------------


@pytest.mark.parametrize("name", ["model.onnx", "pytorch_model.bin", "model.ckpt", "saved_model.pb", "model.h5"])
def test_other_formats_are_refused_naming_the_file_needed(tmp_path, folders, name, cache_dir):
    folder = tmp_path / "wd"
    folder.mkdir()
    for kept in ("config.json", "selected_tags.csv"):
        (folder / kept).write_bytes((folders["vit"] / kept).read_bytes())
    (folder / name).write_bytes(b"\x80\x04not read")
    message = _one_line_error(str(folder), cache_dir)
    assert name in message and "model.safetensors" in message and "not read" in message
    assert _one_line_error(str(folder / name), cache_dir).startswith(str(folder / name))


def _one_line_error(spec, cache_dir) -> str:
    with pytest.raises(ModelFileError) as error:
        load_model(spec, cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _broken(tmp_path, folders, change) -> str:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in tagger.TAGGER_FILES:
        (folder / name).write_bytes((folders["vit"] / name).read_bytes())
    change(folder)
    return str(folder)


def _set_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


BAD_FOLDERS = {
    "no selected_tags.csv": (lambda f: (f / "selected_tags.csv").unlink(), "selected_tags.csv: missing"),
    "wrong header": (
        lambda f: (f / "selected_tags.csv").write_text("id,tag,kind\n0,general,9\n"),
        "selected_tags.csv: the header must be tag_id,name,category,count",
    ),
    "rows differ from the head": (
        lambda f: (f / "selected_tags.csv").write_text("tag_id,name,category,count\n0,general,9,5\n"),
        f"selected_tags.csv: 1 tags, but config.json's head gives {len(TAGS)} outputs",
    ),
    "unknown architecture": (
        lambda f: _set_config(f, architecture="vit_imaginary_patch99"),
        "config.json: unknown architecture 'vit_imaginary_patch99'",
    ),
    "weights that don't fit": (
        lambda f: _set_config(f, model_args={**ARCHITECTURES["vit"][1], "embed_dim": 64}),
        "model.safetensors: the weights don't fit vit_base_patch16_224",
    ),
    "config not JSON": (lambda f: (f / "config.json").write_text("{nope"), "config.json: not valid JSON"),
    "NaN in config": (lambda f: (f / "config.json").write_text('{"num_classes": NaN}'), "config.json: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_tagger_folders_are_one_line_naming_the_file(case, tmp_path, folders, cache_dir):
    change, expected = BAD_FOLDERS[case]
    folder = _broken(tmp_path, folders, change)
    message = _one_line_error(folder, cache_dir)
    assert message.startswith(folder) and expected in message


@pytest.mark.parametrize("case", ["no selected_tags.csv", "wrong header", "rows differ from the head"])
def test_bad_tagger_folders_exit_2_on_the_command_line(case, tmp_path, folders, transparent_strip, capsys):
    change, expected = BAD_FOLDERS[case]
    folder = _broken(tmp_path, folders, change)
    assert main([str(transparent_strip), "--model", folder, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_a_huge_tag_list_is_refused_unread(tmp_path, folders, cache_dir, monkeypatch):
    monkeypatch.setattr(tagger, "MAX_TAGS_BYTES", 100)
    folder = _broken(tmp_path, folders, lambda f: None)
    assert "selected_tags.csv: larger than 100 bytes" in _one_line_error(folder, cache_dir)


# -- preprocessing in the folder pipeline, and long thin images --------------------------------------------------


def test_the_pipeline_preprocesses_a_tagger_bit_for_bit(folders, transparent_strip, tmp_path):
    loaded = tagger.load_folder(folders["swinv2"])
    prepare = Preprocessor(loaded)
    for path in (transparent_strip, _photo(tmp_path)):
        image = prepare.load(path, str(path))
        assert np.array_equal(prepare.pixels(image), loaded.preprocess(image).numpy())


def _photo(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_a_long_thin_image_is_padded_within_bounded_memory():
    strip = Image.new("RGB", (1, 1_000_000), (200, 10, 10))  # padded as it is: a 3 TB square
    square = tagger.SquareOnWhite((32, 32))(strip)
    assert square.size == (32, 32)
    column = np.asarray(square)[:, 16]
    assert column[:, 0].min() > 200 and np.asarray(square)[:, 0].min() == 255  # the strip in the middle, white around


def test_images_within_the_pad_limit_are_the_reference_exactly(folders, transparent_strip):
    loaded = tagger.load_folder(folders["vit"])
    image = load_image(transparent_strip)
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    expected = np.asarray(square.resize((32, 32), Image.BICUBIC))[:, :, ::-1]
    pixels = loaded.preprocess(image).numpy().transpose(1, 2, 0)
    assert np.array_equal(np.round((pixels * 0.5 + 0.5) * 255).astype(np.uint8), expected)


def test_json_tags_carry_probability_and_category(tmp_path, capsys, transparent_strip):
    logits = logits_for({"general": 0.9, "1girl": 0.95, "smile": 0.5, "saber_(fate)": 0.9})
    folder = write_tagger(tmp_path / "fixed", "vit", logits=logits)
    assert main([str(transparent_strip), "--model", str(folder), "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt"] == r"1girl, saber \(fate\), general, smile"
    scores = {tag["tag"]: (tag["score"], tag["category"]) for tag in result["tags"] if tag["role"] == "positive"}
    assert scores == {
        "1girl": (0.95, "general"),
        "saber (fate)": (0.9, "character"),
        "general": (0.9, "rating"),
        "smile": (0.5, "general"),
    }


def test_the_thresholds_are_options_on_every_surface(tmp_path, capsys, transparent_strip):
    logits = logits_for({"general": 0.9, "1girl": 0.95, "smile": 0.5, "saber_(fate)": 0.8})
    folder = write_tagger(tmp_path / "fixed", "vit", logits=logits)
    argv = [str(transparent_strip), "--model", str(folder), "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--general-threshold", "0.6", "--character-threshold", "0.7"]) == 0
    assert "Prompt: 1girl, saber \\(fate\\), general\n" in capsys.readouterr().out
    engine = Engine(str(folder), cache_dir=tmp_path / "c")
    options = ExtractOptions.from_mapping({"general_threshold": 0.6, "exclude_tags": "saber_(fate)"})
    assert engine.extract(transparent_strip, options).prompt == "1girl, general"


def test_a_folder_is_captioned_through_the_pipeline_as_image_by_image(folders, tmp_path, cache_dir):
    from easy_diffuser.batch import caption_folder

    images = tmp_path / "dataset"
    images.mkdir()
    rng = np.random.default_rng(3)
    for index, size in enumerate([(40, 20), (20, 50), (33, 33), (64, 8), (9, 70)]):
        pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").save(images / f"{index}.png")
    engine = Engine(str(folders["swinv2"]), cache_dir=cache_dir)
    summary = caption_folder(engine, images, batch_size=2, workers=2)
    assert len(summary.written) == 5 and not summary.failed
    for path in sorted(images.glob("*.png")):
        assert path.with_suffix(".txt").read_text() == engine.extract(path).prompt + "\n"


def test_the_host_places_releases_and_unloads_a_tagger_as_it_does_clip(folders, cache_dir, transparent_strip):
    from easy_diffuser.webui.service import Placement, Service

    calls = []
    placement = Placement(
        torch.device("cpu"),
        torch.float32,
        acquire=lambda loaded: calls.append(("acquire", type(loaded).__name__)),
        release=lambda loaded: calls.append(("release", type(loaded).__name__)),
    )
    spec = str(folders["eva02"])
    service = Service(lambda requested: spec, lambda: cache_dir, lambda: placement, lambda work: work())
    assert service.run(lambda engine: engine.extract(transparent_strip)).tags
    assert calls == [("acquire", "LoadedTagger"), ("release", "LoadedTagger")]
    loaded = service.engine.loaded
    service.unload()  # Reload UI, or the script unloaded: the tagger's memory can go
    assert service.engine is None and load_model(spec, cache_dir=cache_dir) is not loaded


def test_the_calibration_round_trip_measures_a_tagger_by_its_own_probabilities(folders, cache_dir, transparent_strip):
    import math

    from easy_diffuser.calibration.generators import CallableGenerator
    from easy_diffuser.calibration.sweep import Setting, measure

    engine = Engine(str(folders["vit"]), cache_dir=cache_dir)
    source = load_image(transparent_strip)
    other = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    settings = [Setting(-1.0, 2), Setting(1.0, 2)]

    def loss(image):
        generator = CallableGenerator(lambda prompt, negative, seed: image, "fixed")
        rows, stopped = measure(engine, [source], generator, settings, ExtractOptions())
        assert not stopped and all(math.isfinite(row.loss) for row in rows)
        return rows[0].loss

    assert loss(source) < loss(other)  # the source's own probabilities are the closest
