"""The captioner on tiny BLIP and GIT models built here with random weights.

No weights can be downloaded in CI, so each model is built from a small config, saved with
save_pretrained (safetensors) next to a processor made from a tokenizer over a local vocabulary
file, and loaded back through the real `load_captioner(folder)` path. That shows loading,
generation with the decoding options, device and dtype moves, the offline error and the prompt
composition. It cannot show caption quality: a random model strings random words of the tiny
vocabulary together, so whether BLIP or GIT describes an image well is not tested here.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

from tiny_captioners import SMALL, WORDS, build_blip, build_git  # noqa: E402

from easy_diffuser.captioner import (  # noqa: E402
    CAPTIONERS,
    Captioner,
    CaptionOptions,
    compose,
    load_captioner,
    placed_folder,
)
from easy_diffuser.engine import Engine, ExtractOptions  # noqa: E402
from easy_diffuser.errors import ModelError, ModelFileError  # noqa: E402
from easy_diffuser.options import TOKEN_BUDGET  # noqa: E402
from easy_diffuser.selection import TagScore  # noqa: E402


def as_bin_only(folder: Path) -> Path:
    """The folder as an old Hub repository has it: pytorch_model.bin, no safetensors (transformers 5 writes none)."""
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("captioners")
    return {"blip": build_blip(root / "blip"), "git": build_git(root / "git")}


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (48, 40), (200, 30, 30))


def tag(text: str, role: str = "positive") -> TagScore:
    return TagScore(text, "subject", 0.3, 1.0, role)


@pytest.mark.parametrize("kind, model_class", [("blip", "BlipForConditionalGeneration"), ("git", "GitForCausalLM")])
def test_loads_a_folder_and_captions_within_max_length(tiny, image, kind, model_class):
    captioner = load_captioner(str(tiny[kind]))
    assert type(captioner.model).__name__ == model_class
    assert not captioner.model.training
    tokenizer = captioner.processor.tokenizer
    for max_length in (3, 8):
        text = captioner.caption(
            image, CaptionOptions(beams=2, max_length=max_length)
        )  # 3: below the default min_length 5
        assert isinstance(text, str) and text == text.strip()
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length
        assert set(text.split()) <= set(WORDS)  # special tokens are not part of the caption


def test_is_loaded_once_and_reused(tiny):
    assert load_captioner(str(tiny["blip"])) is load_captioner(str(tiny["blip"]))


def test_caption_is_deterministic(tiny, image):
    captioner = load_captioner(str(tiny["git"]))
    options = CaptionOptions(beams=3, min_length=2, max_length=10)
    assert captioner.caption(image, options) == captioner.caption(image, options)


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_device_and_dtype_moves(tiny, image, kind):
    captioner = load_captioner(str(tiny[kind]), device="cpu")
    assert (captioner.device.type, captioner.dtype) == ("cpu", torch.float32)  # fp32 on the CPU
    captioner.to("cpu", torch.bfloat16)
    assert captioner.dtype == torch.bfloat16
    assert isinstance(captioner.caption(image, CaptionOptions(beams=1, min_length=1, max_length=4)), str)
    captioner.to("cpu")
    assert (captioner.device.type, captioner.dtype) == ("cpu", torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_runs_in_fp16_and_moves_back(tiny, image):
    captioner = load_captioner(str(tiny["blip"]), device="cuda")
    assert (captioner.device.type, captioner.dtype) == ("cuda", torch.float16)
    assert isinstance(captioner.caption(image), str)
    captioner.to("cpu")
    assert captioner.device.type == "cpu" and all(p.device.type == "cpu" for p in captioner.model.parameters())


def test_offline_without_weights_names_the_id_the_folder_and_the_local_option(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "Salesforce/blip-image-captioning-base"
    with pytest.raises(ModelError) as error:
        load_captioner(model_id, cache_dir=tmp_path)
    message = str(error.value)
    assert model_id in message
    assert str(placed_folder(model_id, tmp_path)) in message
    assert "local model folder" in message


def test_an_unreachable_hub_fails_at_once_without_the_hubs_retries(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    asked_the_hub = []
    original = transformers.PretrainedConfig.get_config_dict.__func__

    def spy(cls, source, **hub):
        asked_the_hub.append(not hub.get("local_files_only"))
        return original(cls, source, **hub)

    monkeypatch.setattr(transformers.PretrainedConfig, "get_config_dict", classmethod(spy))
    model_id = "Salesforce/blip-image-captioning-base"
    with pytest.raises(ModelError) as error:
        load_captioner(model_id, cache_dir=tmp_path)
    assert asked_the_hub == [False]  # only the local cache was tried
    message = str(error.value)
    assert "http://127.0.0.1:9 is not reachable" in message and str(placed_folder(model_id, tmp_path)) in message


@pytest.mark.parametrize(
    "model_id, describer",
    [("Salesforce/blip-image-captioning-base", False), ("microsoft/git-base-coco", False)]
    + [("Qwen/Qwen2-VL-2B-Instruct", True)],
)
def test_the_offline_error_lists_the_files_this_captioner_has(tmp_path, monkeypatch, model_id, describer):
    """BLIP and GIT have no chat template and one weights file; Qwen2-VL has both a template and sharded weights."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    with pytest.raises(ModelError) as error:
        load_captioner(model_id, cache_dir=tmp_path)
    message = str(error.value)
    assert "(config.json, the .safetensors weights" in message
    if describer:
        assert "weights and their index, the tokenizer, preprocessor and chat template files)" in message
    else:
        assert "weights, the tokenizer and preprocessor files)" in message and "chat template" not in message


def test_files_placed_in_the_cache_folder_load_by_id_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_id = "microsoft/git-base-coco"
    shutil.copytree(tiny["git"], placed_folder(model_id, tmp_path))
    captioner = load_captioner(model_id, cache_dir=tmp_path)
    assert captioner.model_id == model_id and type(captioner.model).__name__ == "GitForCausalLM"


def test_a_bin_only_folder_loads_without_unpickling_code(tmp_path, monkeypatch):
    folder = as_bin_only(build_blip(tmp_path / "blip-bin"))
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert isinstance(load_captioner(str(folder)), Captioner)
    assert calls and all(calls)


def test_other_models_and_names_are_refused(tmp_path):
    transformers.BertConfig(**SMALL).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match=r"captioners are BLIP, GIT, Qwen2-VL or LLaVA \(JoyCaption\) models"):
        load_captioner(str(tmp_path / "bert"))
    with pytest.raises(ModelError, match="unknown captioner"):
        load_captioner("blip", cache_dir=tmp_path)


@pytest.mark.parametrize(
    "model_id, needs",
    [
        ("Salesforce/blip-image-captioning-base", "needs transformers>=4.26.0"),
        ("Qwen/Qwen2-VL-2B-Instruct", "needs transformers>=4.45.0"),  # what the sentences style's docs say
        ("SomeOrg/some-captioner", "transformers>=4.26.0 for BLIP and GIT, transformers>=4.45.0 for Qwen2-VL"),
    ],
)
def test_without_transformers_the_error_says_what_to_install(monkeypatch, tmp_path, model_id, needs):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ModelError) as error:
        load_captioner(model_id, cache_dir=tmp_path)
    assert str(error.value).startswith("captions need the transformers package: pip install 'easy-diffuser[caption]'")
    assert needs in str(error.value)


def test_registry_and_options():
    assert set(CAPTIONERS) == {
        "Salesforce/blip-image-captioning-base",
        "Salesforce/blip-image-captioning-large",
        "microsoft/git-base-coco",
        "microsoft/git-large-coco",
        "Qwen/Qwen2-VL-2B-Instruct",
        "fancyfeast/llama-joycaption-beta-one-hf-llava",
    }
    assert all(info.use for info in CAPTIONERS.values())
    assert CaptionOptions() == CaptionOptions(beams=3, min_length=5, max_length=30)
    for bad in (dict(beams=0), dict(min_length=-1), dict(max_length=0)):
        with pytest.raises(ValueError):
            CaptionOptions(**bad)


def words(text: str) -> int:
    """A stand-in for CLIP's token count: one token per word or comma."""
    return len(text.replace(",", " ,").split())


def test_compose_drops_tags_that_repeat_the_caption():
    tags = [
        tag("woman"),
        tag("park bench"),
        tag("dogs"),
        tag("the park"),
        tag("oil painting"),
        tag("horse"),
        tag("ponies"),
    ]
    caption, kept = compose("a woman sitting on a bench in a park with a dog, horses and a pony.", tags, words)
    assert caption == "a woman sitting on a bench in a park with a dog, horses and a pony"  # end punctuation off
    assert [t.tag for t in kept] == ["oil painting"]


def test_compose_leaves_negative_tags_out():
    tags = [tag("blurry", "negative"), tag("sunset"), tag("lowres", "negative")]
    assert [t.tag for t in compose("a beach", tags, words)[1]] == ["sunset"]


def test_compose_keeps_caption_and_tags_within_the_budget():
    tags = [tag("one"), tag("two words"), tag("three more words"), tag("four")]
    caption, kept = compose("a b c", tags, words, budget=9)  # 3 + (1+1) + (1+2) = 8; "three more words" costs 4
    assert [t.tag for t in kept] == ["one", "two words"]
    caption, kept = compose("a b c", tags, words, budget=10)  # the long tag is skipped, "four" still fits
    assert [t.tag for t in kept] == ["one", "two words", "four"]
    assert words(", ".join([caption, *(t.tag for t in kept)])) <= 10


def test_compose_cuts_a_long_caption_at_a_word_boundary():
    caption, kept = compose("a very long caption that goes on and on", [tag("red")], words, budget=5)
    assert caption == "a very long caption that" and kept == []


def test_compose_without_caption_gives_the_first_tag_no_comma():
    caption, kept = compose("", [tag("red"), tag("blue")], words, budget=3)
    assert caption == "" and [t.tag for t in kept] == ["red", "blue"]


# The entry points, on the tiny random CLIP folder of conftest.py: wiring, not tag quality.


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine(str(tiny_model_dir), "cpu", cache_dir=tmp_path_factory.mktemp("caption-cache"))


def with_fixed_caption(monkeypatch, text: str) -> None:
    monkeypatch.setattr(Captioner, "caption", lambda self, image, options=CaptionOptions(): text)


def test_engine_puts_the_caption_first_and_leaves_the_negative_prompt(engine, tiny, image):
    from easy_diffuser.embedding import token_count

    plain = engine.extract(image)
    result = engine.extract(image, ExtractOptions(caption=CaptionOptions(str(tiny["blip"]), beams=1, max_length=6)))
    assert result.caption and result.prompt.startswith(result.caption)
    assert result.to_dict()["caption"] == result.caption and plain.to_dict()["caption"] == ""
    assert result.negative_prompt == plain.negative_prompt
    assert token_count(engine.loaded, result.prompt) <= TOKEN_BUDGET  # a CLIP model's budget: one chunk


def test_engine_turns_tags_the_caption_repeats_off(engine, tiny, image, monkeypatch):
    from easy_diffuser.prompt import escape

    with_fixed_caption(monkeypatch, "a red circle and a blue square.")
    result = engine.extract(image, ExtractOptions(caption=CaptionOptions(str(tiny["git"]))))
    tags_part = result.prompt.removeprefix("a red circle and a blue square").removeprefix(", ").split(", ")
    assert result.caption == "a red circle and a blue square"
    assert not {"red", "circle", "blue", "square"} & set(tags_part)
    assert [escape(t.tag) for t in result.tags if t.role == "positive"] == [t for t in tags_part if t]
    assert {t.tag for t in result.tags if t.role == "off"} <= {"red", "circle", "blue", "square"}


def test_engine_cuts_a_caption_longer_than_the_budget(engine, tiny, image, monkeypatch):
    with_fixed_caption(monkeypatch, " ".join(["word"] * 100))
    result = engine.extract(image, ExtractOptions(caption=CaptionOptions(str(tiny["git"])), token_budget=20))
    assert result.prompt == result.caption == " ".join(["word"] * 20)
    assert not [t for t in result.tags if t.role == "positive"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("keep", [False, True])
def test_engine_moves_the_captioner_off_the_gpu_unless_kept(tiny_model_dir, tiny, image, tmp_path, keep):
    gpu_engine = Engine(str(tiny_model_dir), "cuda", cache_dir=tmp_path, keep_in_vram=keep)
    gpu_engine.extract(image, ExtractOptions(caption=CaptionOptions(str(tiny["blip"]))))
    captioner = load_captioner(str(tiny["blip"]), cache_dir=tmp_path)  # the same object: loaded once
    assert captioner.device.type == ("cuda" if keep else "cpu")
    assert gpu_engine.loaded.device.type == "cuda"


def test_extract_options_refuse_bad_decoding_options():
    with pytest.raises(ValueError, match="caption.beams: must be a whole number from 1 to 16, not 0"):
        ExtractOptions(caption=CaptionOptions("x", beams=0))
    with pytest.raises(ValueError, match="caption: must be CaptionOptions or None"):
        ExtractOptions(caption="x")


def test_cli_caption_option(tiny_model_dir, tiny, tmp_path, capsys):
    import json

    from easy_diffuser.cli import main

    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "blue").save(picture)
    args = [str(picture), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--json", "--device", "cpu"]
    assert main([*args, "--caption", str(tiny["blip"]), "--caption-beams", "1", "--caption-max-length", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["caption"] and result["prompt"].startswith(result["caption"])
    with pytest.raises(SystemExit) as exited:
        main([*args, "--caption-beams", "0", "--caption"])
    assert exited.value.code == 2
    assert "argument --caption-beams: must be a whole number from 1 to 16, not 0" in capsys.readouterr().err


def test_cli_missing_captioner_is_a_setup_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from easy_diffuser.cli import build_parser, main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert build_parser().parse_args(["x.png", "--caption"]).caption == "Salesforce/blip-image-captioning-base"
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "blue").save(picture)
    code = main(
        [
            str(picture),
            "--model",
            str(tiny_model_dir),
            "--cache-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--caption=microsoft/git-base-coco",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "microsoft/git-base-coco" in err and "Traceback" not in err


def test_python_api_caption_keyword(tiny_model_dir, tiny, image, tmp_path, monkeypatch):
    import easy_diffuser

    monkeypatch.setattr("easy_diffuser.engine.DEFAULT_CACHE_DIR", tmp_path)  # start() has no cache_dir

    ed = easy_diffuser.start(
        image, model=str(tiny_model_dir), device="cpu", caption={"model": str(tiny["git"]), "max_length": 4}
    )
    assert ed.options.caption == CaptionOptions(str(tiny["git"]), max_length=4)
    assert ed.run().caption and ed.prompt.startswith(ed.result.caption)
    assert (
        easy_diffuser.start(model=str(tiny_model_dir), device="cpu", caption=True).options.caption.model
        == "Salesforce/blip-image-captioning-base"
    )
    assert easy_diffuser.start(model=str(tiny_model_dir), device="cpu").options.caption is None


# -- a config.json's size is known before the model is built (issue 24 §5) ------------------------------------------


@pytest.mark.parametrize(
    "part, change, expected",
    [
        ("text_config", {"num_hidden_layers": 100000}, "describes 100000 layers in one part; a captioner has at most"),
        ("vision_config", {"hidden_size": 10**6}, "describes a model of about 8e+12 parameters"),
        ("text_config", {"vocab_size": 10**400}, "describes a model of about 3.2e+10 parameters"),
    ],
)
def test_a_config_larger_than_a_captioner_is_refused_before_the_model_is_built(
    tiny, tmp_path, monkeypatch, part, change, expected
):
    folder = tmp_path / "huge"
    shutil.copytree(tiny["blip"], folder)
    config = json.loads((folder / "config.json").read_text())
    config[part].update(change)
    (folder / "config.json").write_text(json.dumps(config))

    def built(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(transformers.BlipForConditionalGeneration, "from_pretrained", built)
    with pytest.raises(ModelFileError) as error:
        load_captioner(str(folder))
    message = str(error.value)
    assert message.startswith(str(folder / "config.json")) and expected in message and "\n" not in message


@pytest.mark.parametrize(
    "name, config, parameters",
    [
        ("Qwen/Qwen2-VL-2B-Instruct", dict(model_type="qwen2_vl", hidden_size=1536, intermediate_size=8960,
         num_hidden_layers=28, vocab_size=151936, max_position_embeddings=32768,
         vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4)), 2.2e9),
        ("Qwen/Qwen2-VL-7B-Instruct", dict(model_type="qwen2_vl", hidden_size=3584, intermediate_size=18944,
         num_hidden_layers=28, vocab_size=152064, max_position_embeddings=32768,
         vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4)), 8.3e9),
        ("Salesforce/blip-image-captioning-large", dict(model_type="blip",
         text_config=dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, vocab_size=30524),
         vision_config=dict(hidden_size=1024, num_hidden_layers=24, intermediate_size=4096, image_size=384,
                            patch_size=16)), 4.7e8),
    ],
)  # fmt: skip
def test_real_captioners_are_within_the_bound_and_estimated_within_a_fifth(name, config, parameters):
    """Their config.json sizes (as on the hub) against their published parameter counts."""
    from easy_diffuser.captioner import check_size, config_size

    check_size(config, Path("config.json"))
    estimate, layers = config_size(config)
    assert 0.8 * parameters <= estimate <= 1.25 * parameters and layers <= 32
