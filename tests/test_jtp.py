"""JTP PILOT2 (issue 27): a tiny random replica in the published layout, against the reference app's preprocessing
and gated head written out here; one threshold and no character controls; bad folders in one line."""

from __future__ import annotations

import json
import shutil
import urllib.request

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from easy_diffuser.cli import main
from easy_diffuser.engine import Engine
from easy_diffuser.errors import ModelError, ModelFileError
from easy_diffuser.images import load_image
from easy_diffuser.kinds import jtp
from easy_diffuser.kinds.wd_tagger import placed_folder
from easy_diffuser.models import load_model
from easy_diffuser.options import ExtractOptions
from easy_diffuser.pipeline import Preprocessor
from easy_diffuser.registry import kind_for, list_models

from taggers import JTP_ARGS, JTP_TAGS, JTP_WEIGHTS, jtp_logits, write_jtp

# SigLIP came to timm after 0.9.5 (sd-webui-controlnet's pin, which CI also runs): there JTP is one line asking for
# a newer timm (the last test), and the rest is skipped.
needs_siglip = pytest.mark.skipif(
    not timm.is_model("vit_so400m_patch14_siglip_384"), reason=f"timm {timm.__version__} has no SigLIP"
)
FIXED = {"anthro": 0.9, "canid": 0.6, "fur": 0.25, "smile": 0.15, "red_background": 0.21}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_jtp(tmp_path_factory.mktemp("jtp") / "JTP_PILOT2")


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    return write_jtp(tmp_path_factory.mktemp("jtp") / "fixed", logits=jtp_logits(FIXED))


def reference_pixels(path, background: float = 0.5) -> torch.Tensor:
    """The JTP PILOT2 app's transform, written out with torchvision as it does: Fit (the longest side to the
    size, Lanczos), ToTensor, alpha over grey, Normalize, CenterCrop (which pads with 0: grey)."""
    import torchvision.transforms.functional as TF
    from torchvision import transforms

    size = JTP_ARGS["img_size"]
    image = Image.open(path).convert("RGBA")
    scale = min(size / image.height, size / image.width)
    if scale != 1.0:
        shape = (min(round(image.height * scale), size), min(round(image.width * scale), size))
        image = TF.resize(image, shape, transforms.InterpolationMode.LANCZOS)
    tensor = transforms.ToTensor()(image)
    alpha = tensor[3:]
    tensor[:3] *= alpha
    tensor[:3] += (1.0 - alpha) * torch.tensor([background] * 3)[:, None, None]
    tensor = transforms.Normalize([0.5] * 3, [0.5] * 3)(tensor[:3])
    return transforms.CenterCrop((size, size))(tensor)


def reference_probabilities(path, folder, background: float = 0.5) -> torch.Tensor:
    """The app's network: timm's SO400M, its head replaced by the gated one, the safetensors loaded into it."""
    model = timm.create_model("vit_so400m_patch14_siglip_384", pretrained=False, num_classes=len(JTP_TAGS), **JTP_ARGS)

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(model.head.in_features, 2 * len(JTP_TAGS))  # the app: min(shape)

        def forward(self, x):
            x = self.linear(x)
            return torch.sigmoid(x[:, : len(JTP_TAGS)]) * torch.sigmoid(x[:, len(JTP_TAGS) :])

    model.head = Gated()
    model.load_state_dict(load_file(str(folder / JTP_WEIGHTS)))
    with torch.no_grad():
        return model.eval()(reference_pixels(path, background)[None])[0].clamp(1e-4, 1 - 1e-4)


@needs_siglip
def test_probabilities_are_the_reference_apps_computation(folder, transparent_strip, cache_dir):
    engine = Engine(str(folder), cache_dir=cache_dir)
    image = load_image(transparent_strip)
    assert torch.equal(engine.loaded.preprocess(image), reference_pixels(transparent_strip))
    ours = engine.encode([image])[0]
    expected = reference_probabilities(transparent_strip, folder)
    assert torch.allclose(ours, expected, atol=2e-6), (ours - expected).abs().max()
    # The comparison can fail: the same image flattened on white gives other pixels and probabilities.
    on_white = reference_probabilities(transparent_strip, folder, background=1.0)
    assert (on_white - expected).abs().max() > 1e-4


@needs_siglip
def test_an_opaque_photo_is_the_reference_too(folder, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 70, 3), dtype=np.uint8)).save(path)
    loaded = jtp.load_folder(folder)
    assert torch.equal(loaded.preprocess(load_image(path)), reference_pixels(path))


@needs_siglip
def test_the_pipeline_preprocesses_jtp_bit_for_bit(folder, transparent_strip):
    loaded = jtp.load_folder(folder)
    prepare = Preprocessor(loaded)
    image = prepare.load(transparent_strip, str(transparent_strip))
    assert np.array_equal(np.asarray(prepare.pixels(image)), loaded.preprocess(image).numpy())
    # Ray pickles the preprocessor to its decode tasks, and may pickle the image: its alpha travels with it.
    import pickle

    again = pickle.loads(pickle.dumps(prepare))
    assert torch.equal(again.pixels(pickle.loads(pickle.dumps(image))), loaded.preprocess(image))


@needs_siglip
def test_one_threshold_of_0_2_and_e621_tags_as_prompts_write_them(fixed, transparent_strip, cache_dir):
    engine = Engine(str(fixed), cache_dir=cache_dir)
    result = engine.extract(transparent_strip)
    assert result.prompt == "anthro, canid, fur, red background"
    assert {tag.tag: tag.score for tag in result.tags if tag.role == "positive"} == pytest.approx(
        {"anthro": 0.9, "canid": 0.6, "fur": 0.25, "red background": 0.21}, abs=1e-6
    )
    assert engine.extract(transparent_strip, ExtractOptions(general_threshold=0.5)).prompt == "anthro, canid"
    assert engine.extract(transparent_strip, ExtractOptions(general_mcut=True)).prompt == "anthro, canid"


@needs_siglip
def test_under_pony_e621_tags_lead_with_its_cards_source_furry(fixed, transparent_strip, cache_dir):
    """Pony's card names source_furry as the tag of its e621-style data: JTP's tags take it after the quality
    tags; a Danbooru tagger's do not, and neither do JTP's under a family whose card names none."""
    from easy_diffuser.checkpoint_family import detect

    engine = Engine(str(fixed), cache_dir=cache_dir)
    engine.target = detect("ponyDiffusionV6XL.safetensors")
    prompt = engine.extract(transparent_strip).prompt
    assert prompt.startswith("score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up, source_furry, ")
    assert prompt.endswith("anthro, canid, fur, red background")
    engine.target = detect("noobaiXLNAIXL_vPred10.safetensors")
    noobai = engine.extract(transparent_strip)
    assert "source_furry" not in noobai.prompt
    # NoobAI's template keeps furry content out; a term the picture shows is not also a negative.
    negatives = noobai.negative_prompt.split(", ")
    assert "anthro" not in negatives and {"worst quality", "furry", "feral"} <= set(negatives)
    booru = Engine("shapes-booru", cache_dir=cache_dir)
    booru.target = detect("ponyDiffusionV6XL.safetensors")
    assert "source_furry" not in booru.extract(transparent_strip).prompt


@needs_siglip
def test_the_tab_shows_no_character_threshold_for_it():
    from easy_diffuser.webui.controls import shown_for

    shown = shown_for("jtp-tagger")
    assert shown["general_threshold"] and shown["general_mcut"] and shown["family"]
    assert not shown["character_threshold"] and not shown["character_mcut"]
    assert shown_for("wd-tagger")["character_threshold"]  # the WD tagger keeps its


@needs_siglip
def test_a_folder_and_its_records_through_the_cli(fixed, tmp_path):
    images = tmp_path / "dataset"
    images.mkdir()
    rng = np.random.default_rng(3)
    for index, size in enumerate([(40, 20), (20, 50), (33, 33)]):
        pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").save(images / f"{index}.png")
    records = tmp_path / "records.jsonl"
    argv = [str(images), "--model", str(fixed), "--cache-dir", str(tmp_path / "c"), "--output", str(records)]
    assert main(argv) == 0
    expected = "anthro, canid, fur, red background"
    assert all((images / f"{index}.txt").read_text() == expected + "\n" for index in range(3))
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == 3 and all(row["prompt"] == expected for row in rows)


@needs_siglip
def test_a_jtp_file_or_folder_is_the_jtp_kind_before_the_wd_one(folder, capsys):
    assert kind_for(str(folder)).name == kind_for(str(folder / JTP_WEIGHTS)).name == "jtp-tagger"
    assert kind_for(jtp.REPOSITORY).name == "jtp-tagger" and jtp.REPOSITORY in list_models()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert jtp.REPOSITORY in " ".join(capsys.readouterr().out.split())


@needs_siglip
def test_the_hub_name_fetches_only_its_two_files_from_their_folder(folder, cache_dir, monkeypatch):
    asked = []

    def download(repo, filename, cache_dir, local_files_only):
        asked.append((filename, local_files_only))
        if local_files_only:
            raise FileNotFoundError(filename)
        snapshot = folder.parent / "snapshot" / "JTP_PILOT2"
        snapshot.mkdir(parents=True, exist_ok=True)
        name = filename.split("/")[-1]
        if not (snapshot / name).exists():
            shutil.copy(folder / name, snapshot / name)
            shutil.copy(folder / "config.json", snapshot / "config.json")  # the tiny network's
        return str(snapshot / name)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    monkeypatch.setattr("easy_diffuser.kinds.wd_tagger.require_reachable", lambda url: None)
    loaded = jtp.JtpKind().load(jtp.REPOSITORY, cache_dir)
    assert loaded.model_id == jtp.REPOSITORY and loaded.defaults["general_threshold"] == 0.2
    assert [name for name, local in asked if not local] == [f"JTP_PILOT2/{JTP_WEIGHTS}", "JTP_PILOT2/tags.json"]


@needs_siglip
def test_without_network_the_error_names_the_files_and_where_they_go(cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("the network was asked"))
    with pytest.raises(ModelError) as error:
        load_model(jtp.REPOSITORY, cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and f"JTP_PILOT2/{JTP_WEIGHTS}, JTP_PILOT2/tags.json" in message
    assert str(placed_folder(jtp.REPOSITORY, cache_dir)) in message


# -- bad folders: one line naming the file --------------------------------------------------------------------


def _wrong_head(folder):
    state = load_file(str(folder / JTP_WEIGHTS))
    state["head.linear.weight"], state["head.linear.bias"] = torch.zeros(10, 32), torch.zeros(10)
    save_file(state, str(folder / JTP_WEIGHTS))


BAD_FOLDERS = {
    "no tags.json": (lambda f: (f / "tags.json").unlink(), "tags.json: missing"),
    "tags.json a list": (lambda f: (f / "tags.json").write_text('["anthro"]'), "tags.json: must be a JSON object"),
    "tags.json of another model": (
        lambda f: (f / "tags.json").write_text('{"anthro": 0, "canid": 1}'),
        f"{JTP_WEIGHTS}: its gated head gives 16 outputs, but tags.json has 2 tags",
    ),
    "head of the wrong size": (_wrong_head, f"{JTP_WEIGHTS}: its gated head gives 10 outputs, but tags.json has 8"),
    "indices repeated": (
        lambda f: (f / "tags.json").write_text(json.dumps({name: 0 for name in JTP_TAGS})),
        "tags.json: the indices must be 0 to 7, each once",
    ),
    "weights not safetensors": (
        lambda f: (f / JTP_WEIGHTS).write_bytes(b"\x80\x04not safetensors"),
        f"{JTP_WEIGHTS}: not a readable safetensors file",
    ),
    "weights of another network": (
        lambda f: (f / "config.json").write_text(
            (f / "config.json").read_text().replace('"embed_dim": 32', '"embed_dim": 64')
        ),
        f"{JTP_WEIGHTS}: the weights don't fit JTP's network",
    ),
}


@needs_siglip
@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_jtp_folders_are_one_line_naming_the_file(case, folder, tmp_path, cache_dir):
    change, expected = BAD_FOLDERS[case]
    broken = shutil.copytree(folder, tmp_path / "broken")
    change(broken)
    with pytest.raises(ModelFileError) as error:
        load_model(str(broken), cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(broken)) and expected in message, message


@needs_siglip
def test_the_size_estimate_knows_so400m_and_its_attention_pool():
    """JTP's network passes the model_args check at its real size, and the estimate is near timm's count."""
    from pathlib import Path

    from easy_diffuser.kinds.model_args import Sizes, check_model_args, network_of

    architecture = "vit_so400m_patch14_siglip_384"
    check_model_args(architecture, {"global_pool": "map"}, 9083, 384, Path("config.json"))
    estimate = network_of(architecture).parameters(Sizes({}, "so400m", architecture, 384, 2 * 9083, Path("c")))
    real = sum(p.numel() for p in timm.create_model(architecture, num_classes=2 * 9083, device="meta").parameters())
    assert real <= estimate <= 1.1 * real


@pytest.mark.skipif(timm.is_model("vit_so400m_patch14_siglip_384"), reason="this timm has SigLIP")
def test_on_a_timm_without_siglip_it_is_one_line_asking_for_a_newer_one(cache_dir, tmp_path, monkeypatch):
    placed = placed_folder(jtp.REPOSITORY, cache_dir) / "JTP_PILOT2"
    placed.mkdir(parents=True)
    (placed / "tags.json").write_text(json.dumps({name: index for index, name in enumerate(JTP_TAGS)}))
    (placed / JTP_WEIGHTS).write_bytes(b"never read")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("the network was asked"))
    with pytest.raises(ModelError) as error:
        load_model(jtp.REPOSITORY, cache_dir=cache_dir)
    message = str(error.value)
    assert "\n" not in message and f"is not in timm {timm.__version__}" in message and "pip install -U timm" in message
