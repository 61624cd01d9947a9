"""PixAI Tagger v0.9 (issue 27): a tiny random replica in the published layout, against PixAI's preprocessing and
forward pass written out here; copyrights from char_ip_map.json; the card's thresholds; bad folders in one line."""

from __future__ import annotations

import json
import os
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
from easy_diffuser.kinds import pixai
from easy_diffuser.kinds.wd_tagger import placed_folder
from easy_diffuser.models import load_model
from easy_diffuser.options import ExtractOptions
from easy_diffuser.pipeline import Preprocessor
from easy_diffuser.registry import kind_for, list_models

from taggers import ARCHITECTURES, PIXAI_CHARACTER_MAP, PIXAI_CHARACTERS, PIXAI_GENERAL, pixai_logits, write_pixai

# A prompt's tags at the card's defaults (general 0.30, character 0.75) that the option defaults (0.35, 0.85) drop.
FIXED = {"1girl": 0.95, "smile": 0.32, "long_hair": 0.6, "saber_(fate)": 0.8, "hatsune_miku": 0.5}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_pixai(tmp_path_factory.mktemp("pixai") / "pixai-tagger-v0.9")


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    return write_pixai(tmp_path_factory.mktemp("pixai") / "fixed", logits=pixai_logits(FIXED))


def reference_probabilities(path, folder, resample=Image.BILINEAR) -> torch.Tensor:
    """PixAI's handler written out: alpha on white, a plain resize to the input size, RGB, [-1, 1]; timm's EVA02
    with its classifier reset, Linear head, sigmoid; then each copyright as its likeliest character."""
    architecture, model_args, size = ARCHITECTURES["eva02"]
    image = Image.open(path).convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    array = np.asarray(canvas.convert("RGB").resize((size, size), resample), dtype=np.float32)
    pixels = torch.from_numpy(((array / 255 - 0.5) / 0.5).transpose(2, 0, 1).copy())[None]
    encoder = timm.create_model(architecture, pretrained=False, **model_args)
    encoder.reset_classifier(0)
    head = torch.nn.Module()
    head.head = torch.nn.Sequential(torch.nn.Linear(encoder.num_features, len(PIXAI_GENERAL + PIXAI_CHARACTERS)))
    model = torch.nn.Sequential(encoder, head)
    model.load_state_dict(torch.load(folder / "model_v0.9.pth", weights_only=True))
    with torch.no_grad():
        tags = torch.sigmoid(model[1].head(model[0].eval()(pixels)))[0]
    names = PIXAI_GENERAL + PIXAI_CHARACTERS
    copyrights = {}
    for character, owners in PIXAI_CHARACTER_MAP.items():
        for owner in owners:
            if character in names:
                copyrights[owner] = max(copyrights.get(owner, 0.0), float(tags[names.index(character)]))
    return torch.cat([tags, torch.tensor(list(copyrights.values()))]).clamp(1e-4, 1 - 1e-4)


def test_probabilities_are_pixais_computation(folder, transparent_strip, cache_dir):
    engine = Engine(str(folder), cache_dir=cache_dir)
    ours = engine.encode([load_image(transparent_strip)])[0]
    expected = reference_probabilities(transparent_strip, folder)
    assert torch.allclose(ours, expected, atol=2e-6), (ours - expected).abs().max()
    assert engine.vocabulary.tags[-3:] == ("fate (series)", "fate/stay night", "vocaloid")
    assert engine.vocabulary.categories[-4:] == ("character", "copyright", "copyright", "copyright")
    # The comparison can fail: WD's bicubic resize of the same image gives other probabilities.
    bicubic = reference_probabilities(transparent_strip, folder, Image.BICUBIC)
    assert (bicubic - expected).abs().max() > 1e-4


def test_the_pipeline_preprocesses_pixai_bit_for_bit(folder, transparent_strip):
    loaded = pixai.load_folder(folder)
    prepare = Preprocessor(loaded)
    image = prepare.load(transparent_strip, str(transparent_strip))
    assert np.array_equal(prepare.pixels(image), loaded.preprocess(image).numpy())


def test_the_cards_thresholds_and_copyrights_from_the_characters(fixed, transparent_strip, cache_dir):
    engine = Engine(str(fixed), cache_dir=cache_dir)
    result = engine.extract(transparent_strip)
    # booru order: count, character, its copyrights (as likely as it), then general tags by probability
    assert result.prompt == r"1girl, saber \(fate\), fate \(series\), fate/stay night, long hair, smile"
    # Options the user sets win over the card's; vocaloid follows hatsune_miku in and out.
    strict = engine.extract(transparent_strip, ExtractOptions(general_threshold=0.5, character_threshold=0.9))
    assert strict.prompt == "1girl, long hair"
    loose = engine.extract(transparent_strip, ExtractOptions(character_threshold=0.4))
    assert loose.prompt.startswith(r"1girl, saber \(fate\), hatsune miku, fate \(series\), fate/stay night, vocaloid")
    assert {tag.tag: tag.score for tag in loose.tags if tag.category == "copyright"} == pytest.approx(
        {"fate (series)": 0.8, "fate/stay night": 0.8, "vocaloid": 0.5}
    )


def test_character_mcut_passes_copyrights_with_their_characters(fixed, transparent_strip, cache_dir):
    options = ExtractOptions(character_mcut=True)
    result = Engine(str(fixed), cache_dir=cache_dir).extract(transparent_strip, options)
    assert result.prompt.startswith(r"1girl, saber \(fate\), hatsune miku, fate \(series\)")


def test_a_folder_and_its_records_through_the_cli(fixed, tmp_path, capsys):
    images = tmp_path / "dataset"
    images.mkdir()
    rng = np.random.default_rng(3)
    for index, size in enumerate([(40, 20), (20, 50), (33, 33)]):
        pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").save(images / f"{index}.png")
    records = tmp_path / "records.jsonl"
    argv = [str(images), "--model", str(fixed), "--cache-dir", str(tmp_path / "c"), "--output", str(records)]
    assert main(argv) == 0
    expected = r"1girl, saber \(fate\), fate \(series\), fate/stay night, long hair, smile"
    assert all((images / f"{index}.txt").read_text() == expected + "\n" for index in range(3))
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == 3 and all(row["prompt"] == expected for row in rows)


def test_a_pixai_file_or_folder_is_the_pixai_kind_before_the_wd_one(folder):
    assert kind_for(str(folder)).name == kind_for(str(folder / "model_v0.9.pth")).name == "pixai-tagger"
    assert kind_for(pixai.REPOSITORY).name == "pixai-tagger" and pixai.REPOSITORY in list_models()


def test_the_model_help_lists_it(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert pixai.REPOSITORY in " ".join(capsys.readouterr().out.split())


def test_without_the_encoder_config_wd_eva02_larges_is_used(monkeypatch, tmp_path):
    """PixAI's repository has no config.json: the encoder is WD EVA02-L's, as this module ships it."""
    built = []
    monkeypatch.setattr(pixai, "build_network", lambda config, path: built.append(config) or _Stop())
    with pytest.raises(_Stopped):
        pixai.load_folder(write_pixai(tmp_path / "no-config", config=False))
    assert built[0]["architecture"] == "eva02_large_patch14_448" and built[0]["num_classes"] == 0
    assert built[0]["model_args"] == {"img_size": 448}


class _Stopped(Exception):
    pass


class _Stop:
    num_features = 1024

    def __init__(self):
        raise _Stopped


# -- the gated hub name --------------------------------------------------------------------------------------


def test_without_the_files_the_error_says_how_to_get_them_and_where(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as error:
        load_model(pixai.REPOSITORY, cache_dir=cache_dir)
    message = str(error.value)
    placed = placed_folder(pixai.REPOSITORY, cache_dir)
    assert "\n" not in message and "gated" in message and "huggingface-cli login" in message
    assert f"huggingface-cli download {pixai.REPOSITORY} " in message and f"--local-dir {placed}" in message


def test_files_placed_by_hand_load_offline_with_the_cards_defaults(folder, cache_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", refuse)
    placed = placed_folder(pixai.REPOSITORY, cache_dir)
    placed.mkdir(parents=True)
    for name in pixai.PIXAI_FILES:
        (placed / name).write_bytes((folder / name).read_bytes())
    (placed / "config.json").write_bytes((folder / "config.json").read_bytes())  # the tiny encoder's
    engine = Engine(pixai.REPOSITORY, cache_dir=cache_dir)
    assert engine.model_id == pixai.REPOSITORY
    assert (engine.loaded.defaults["general_threshold"], engine.loaded.defaults["character_threshold"]) == (0.3, 0.75)


# -- bad folders: one line naming the file --------------------------------------------------------------------


class RunsCode:
    """A pickle that would run a command when read (torch.load without weights_only would run it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _wrong_head(folder):
    state = torch.load(folder / "model_v0.9.pth", weights_only=True)
    state["1.head.0.weight"], state["1.head.0.bias"] = torch.zeros(5, 32), torch.zeros(5)
    torch.save(state, folder / "model_v0.9.pth")


BAD_FOLDERS = {
    "no tag file": (lambda f: (f / "tags_v0.9_13k.json").unlink(), "tags_v0.9_13k.json: missing"),
    "no character map": (lambda f: (f / "char_ip_map.json").unlink(), "char_ip_map.json: missing"),
    "no weights": (lambda f: (f / "model_v0.9.pth").unlink(), "model_v0.9.pth: missing"),
    "tag file not JSON": (lambda f: (f / "tags_v0.9_13k.json").write_text("{nope"), "tags_v0.9_13k.json: not valid"),
    "tag file of another format": (
        lambda f: (f / "tags_v0.9_13k.json").write_text('{"1girl": 0}'),
        "tags_v0.9_13k.json: must hold tag_map",
    ),
    "split that doesn't add up": (
        lambda f: _edit_json(f / "tags_v0.9_13k.json", lambda d: d["tag_split"].update(gen_tag_count=2)),
        "tags_v0.9_13k.json: tag_split counts 2 + 3 tags, but tag_map holds 9",
    ),
    "tag file of another model": (
        lambda f: _edit_json(f / "tags_v0.9_13k.json", lambda d: d.update(tag_map={"a": 0, "b": 1}, tag_split={
            "gen_tag_count": 1, "character_tag_count": 1})),
        "model_v0.9.pth: its head gives 9 outputs, but tags_v0.9_13k.json has 2 tags",
    ),
    "head of the wrong size": (_wrong_head, "model_v0.9.pth: its head gives 5 outputs, but tags_v0.9_13k.json has 9"),
    "indices repeated": (
        lambda f: _edit_json(f / "tags_v0.9_13k.json", lambda d: d["tag_map"].update(solo=0)),
        "tags_v0.9_13k.json: tag_map's indices must be 0 to 8, each once",
    ),
    "tag with prompt syntax": (
        lambda f: _edit_json(f / "char_ip_map.json", lambda d: d.update({"hatsune_miku": ["<lora:x:1>"]})),
        'char_ip_map.json: the tag "<lora:x:1>" holds extra-network syntax',
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_pixai_folders_are_one_line_naming_the_file(case, folder, tmp_path, cache_dir):
    import shutil

    change, expected = BAD_FOLDERS[case]
    broken = shutil.copytree(folder, tmp_path / "broken")
    change(broken)
    with pytest.raises(ModelFileError) as error:
        load_model(str(broken), cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(broken)) and expected in message, message


def test_a_pickle_that_would_run_code_is_refused_unrun(folder, tmp_path, capsys):
    import shutil

    broken = shutil.copytree(folder, tmp_path / "pickled")
    marker = tmp_path / "ran"
    torch.save({"0.pos_embed": RunsCode(marker)}, broken / "model_v0.9.pth")
    argv = [str(tmp_path / "none.png"), "--model", str(broken), "--cache-dir", str(tmp_path / "c")]
    Image.new("RGB", (8, 8)).save(tmp_path / "none.png")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken / 'model_v0.9.pth'}: refused to load") and err.count("\n") == 1
    assert not marker.exists()


def test_any_tagger_folder_may_set_its_default_thresholds(tmp_path, transparent_strip, cache_dir):
    """The model defaults are general: a WD folder's easy_diffuser.json sets them as PixAI's card does, and a bad
    one is refused naming the file."""
    from taggers import logits_for, write_tagger

    folder = write_tagger(tmp_path / "wd", "vit", logits=logits_for({"1girl": 0.95, "smile": 0.5}))
    assert Engine(str(folder), cache_dir=cache_dir).extract(transparent_strip).prompt == "1girl, general, smile"
    (folder / "easy_diffuser.json").write_text('{"general_threshold": 0.6}')
    assert Engine(str(folder), cache_dir=tmp_path / "other").extract(transparent_strip).prompt == "1girl, general"
    (folder / "easy_diffuser.json").write_text('{"general_threshold": 1.5}')
    with pytest.raises(ModelError, match="easy_diffuser.json: 'general_threshold' must be a number from 0 to 1"):
        Engine(str(folder), cache_dir=tmp_path / "third")
