"""JoyCaption Beta One on a tiny random replica in the hub repository's layout (tests/tiny_captioners.py).

The prompt it is given is compared with a reference written here from the model card: the system turn, the
user turn holding the image's tokens and then the instruction of the official app, Llama 3's header format,
one <|begin_of_text|>, and as many image tokens as the SigLIP tower has patches. Run on the project's
transformers (4.46.1, Forge's pin, whose own processor writes one image token too many) and, in CI, on 4.48
(.venv-transformers448), whose processor writes the same ids as the reference.
A random model writes gibberish: the tests assert what it was asked and how, never its words.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

from packaging.version import Version  # noqa: E402
from tiny_captioners import IMAGE_TOKEN, JOY_IMAGE_TOKENS, build_joycaption  # noqa: E402

from easy_diffuser.captioner import (  # noqa: E402
    CAPTIONERS,
    JOYCAPTION,
    JoyCaptioner,
    check_size,
    check_supported,
    load_captioner,
    memory_note,
    unload_captioners,
)
from easy_diffuser.cli import build_parser  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.errors import ModelError, ModelFileError  # noqa: E402
from easy_diffuser.joycaption import conversation  # noqa: E402
from easy_diffuser.options import DEFAULT_DESCRIBER, CaptionOptions, ExtractOptions, OptionError, schema_help  # noqa: E402

NEW_PROCESSOR = Version(transformers.__version__) >= Version("4.47")  # num_additional_image_tokens
# Beta One's config.json, its sizes: Llama 3.1 8B and SigLIP so400m at 384 px (the weights are 17 GB in bf16).
BETA_ONE_CONFIG = {
    "model_type": "llava",
    "image_token_index": 128077,
    "vision_feature_select_strategy": "full",
    "vision_feature_layer": -2,
    "text_config": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
    },
}


@pytest.fixture(scope="module")
def joy(tmp_path_factory):
    torch.manual_seed(0)
    return build_joycaption(tmp_path_factory.mktemp("joycaption") / "joycaption")


@pytest.fixture
def image() -> Image.Image:
    """Not square, not one colour: the resize to the tower's square is visible in the pixels."""
    ramp = np.linspace(0, 255, 45 * 70 * 3).reshape(45, 70, 3).astype(np.uint8)
    return Image.fromarray(ramp, "RGB")


def reference_ids(tokenizer, user_text: str) -> list[int]:
    """Beta One's prompt as the model card builds it, written out: Llama 3's headers, the image's tokens first
    in the user turn, one <|begin_of_text|>."""

    def special(token: str) -> list[int]:
        return [tokenizer.convert_tokens_to_ids(token)]

    def text(words: str) -> list[int]:
        return tokenizer.encode(words, add_special_tokens=False)

    def header(role: str) -> list[int]:
        return special("<|start_header_id|>") + text(role) + special("<|end_header_id|>") + text("\n\n")

    return (
        special("<|begin_of_text|>")
        + header("system")
        + text("You are a helpful image captioner.")
        + special("<|eot_id|>")
        + header("user")
        + special(IMAGE_TOKEN) * JOY_IMAGE_TOKENS
        + text(user_text)
        + special("<|eot_id|>")
        + header("assistant")
    )


def reference_pixels(image: Image.Image) -> torch.Tensor:
    """SigLIP's preprocessing: a bicubic resize to the tower's 32 x 32 square, [0, 1], then (x - 0.5) / 0.5."""
    pixels = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255
    return torch.from_numpy((pixels - 0.5) / 0.5).permute(2, 0, 1)[None]


def generated_with(captioner, monkeypatch) -> list[dict]:
    """Records the arguments of each generate() call, which still runs."""
    calls, generate = [], captioner.model.generate

    def recording(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(captioner.model, "generate", recording)
    return calls


# The prompt it is given


def test_a_joycaption_folder_is_asked_in_the_reference_prompt_and_answers(joy, image, monkeypatch):
    captioner = load_captioner(str(joy))
    assert isinstance(captioner, JoyCaptioner) and type(captioner.model).__name__ == "LlavaForConditionalGeneration"
    calls = generated_with(captioner, monkeypatch)
    caption = captioner.caption(image, CaptionOptions(str(joy), max_length=6, min_length=6))
    (call,) = calls
    expected = reference_ids(captioner.processor.tokenizer, "Write a long detailed description for this image.")
    assert call["input_ids"].tolist() == [expected]
    assert call["attention_mask"].tolist() == [[1] * len(expected)]
    torch.testing.assert_close(call["pixel_values"], reference_pixels(image), atol=1e-5, rtol=0)
    assert (call["do_sample"], call["num_beams"], call["max_new_tokens"]) == (False, 1, 6)
    assert isinstance(caption, str) and caption  # the model ran on it: 6 new tokens, no count mismatch


@pytest.mark.parametrize(
    "mode, length, instruction",
    [
        ("danbooru", "40", "Use precise Danbooru syntax. No extra text. 40 words or less."),
        ("stable-diffusion", "any", "Output a stable diffusion prompt that is indistinguishable from a real "
         "stable diffusion prompt."),
        ("casual", "Very Short", "Write a very short descriptive caption for this image in a casual tone."),
    ],
)  # fmt: skip
def test_the_mode_and_length_options_choose_the_instruction(joy, image, monkeypatch, mode, length, instruction):
    captioner = load_captioner(str(joy))
    calls = generated_with(captioner, monkeypatch)
    captioner.caption(image, CaptionOptions(str(joy), max_length=2, mode=mode, length=length))
    tokenizer = captioner.processor.tokenizer
    prompt = tokenizer.decode(calls[0]["input_ids"][0])
    assert prompt.endswith(f"{instruction}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    if mode == "danbooru":
        assert prompt.count("Generate only comma-separated Danbooru tags (lowercase_underscores).") == 1


def test_a_chat_template_that_writes_the_start_token_itself_still_gives_one(joy, image, monkeypatch, tmp_path):
    folder = shutil.copytree(joy, tmp_path / "bos-in-template")
    template = folder / "chat_template.json"
    written = json.loads(template.read_text())
    written["chat_template"] = "{{ bos_token }}" + written["chat_template"]
    template.write_text(json.dumps(written))
    captioner = load_captioner(str(folder))
    calls = generated_with(captioner, monkeypatch)
    captioner.caption(image, CaptionOptions(str(folder), max_length=2))
    expected = reference_ids(captioner.processor.tokenizer, "Write a long detailed description for this image.")
    assert calls[0]["input_ids"].tolist() == [expected]


def test_a_chat_template_that_cannot_be_used_is_one_line_naming_its_file_at_load(joy, tmp_path):
    folder = shutil.copytree(joy, tmp_path / "bad-template")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "{% for message in messages %}"}))
    with pytest.raises(ModelFileError) as error:
        load_captioner(str(folder))
    message = str(error.value)
    assert message.startswith(f"{folder / 'chat_template.json'}: the chat template cannot be used (")
    assert "\n" not in message


@pytest.mark.skipif(NEW_PROCESSOR, reason="transformers 4.47+ counts SigLIP's image tokens right")
def test_on_transformers_4_46_the_processors_own_count_is_one_too_many_and_the_model_refuses_it(joy, image):
    """Why the prompt is expanded by the captioner: the processor of 4.46 assumes a CLIP tower's class token."""
    captioner = load_captioner(str(joy))
    processor = captioner.processor
    text = processor.apply_chat_template(
        conversation("Write a detailed description for this image."), tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt", return_token_type_ids=False)
    assert (inputs["input_ids"] == captioner.model.config.image_token_index).sum() == JOY_IMAGE_TOKENS + 1
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        captioner.model.generate(**inputs, max_new_tokens=1)


@pytest.mark.skipif(not NEW_PROCESSOR, reason="transformers 4.46's processor counts one image token too many")
def test_from_transformers_4_47_the_processor_writes_the_same_ids(joy, image, monkeypatch):
    captioner = load_captioner(str(joy))
    calls = generated_with(captioner, monkeypatch)
    captioner.caption(image, CaptionOptions(str(joy), max_length=2))
    processor = captioner.processor
    text = processor.apply_chat_template(
        conversation("Write a long detailed description for this image."), tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert calls[0]["input_ids"].tolist() == inputs["input_ids"].tolist()
    torch.testing.assert_close(calls[0]["pixel_values"], inputs["pixel_values"])


def test_through_the_engine_the_caption_leads_the_prompt(tiny_model_dir, joy, image, tmp_path):
    engine = Engine(str(tiny_model_dir), cache_dir=tmp_path)
    caption = CaptionOptions(str(joy), max_length=4, min_length=4, mode="stable-diffusion", length="short")
    result = engine.extract(image, ExtractOptions(prompt_style="sentences", caption=caption))
    assert result.caption and result.prompt.startswith(result.caption)


# Versions, memory and the options' refusals


def test_the_real_beta_one_config_is_within_a_captioners_size():
    check_size(BETA_ONE_CONFIG, Path("config.json"))  # raises for a model over MAX_CAPTIONER_PARAMETERS


def test_on_transformers_before_4_46_joycaption_is_one_line(monkeypatch):
    # The module the code imports now: loading a model may have put a new one in sys.modules.
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", "4.45.2")
    with pytest.raises(ModelError) as error:
        check_supported(JOYCAPTION)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{JOYCAPTION} needs transformers 4.46.0 or newer (LlavaForConditionalGeneration); ")
    assert "this host has 4.45.2" in message


def test_a_low_vram_host_refuses_joycaption_in_one_line_and_keeps_the_small_describer():
    check_supported(JOYCAPTION)  # this host runs it where memory allows
    with pytest.raises(ModelError) as error:
        check_supported(JOYCAPTION, low_vram=True)
    message = str(error.value)
    assert "\n" not in message and "about 17 GB of VRAM" in message and "--lowvram or --medvram" in message
    assert "VLM server" in message and "--caption-url" in message and "docs/vlm-server.md" in message
    check_supported(DEFAULT_DESCRIBER, low_vram=True)  # 6 GB: allowed


def test_a_low_vram_host_refuses_a_joycaption_folder_by_its_config(joy, tmp_path):
    check_supported(str(joy), low_vram=True)  # the tiny replica is tiny
    big = tmp_path / "beta-one"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(BETA_ONE_CONFIG))
    with pytest.raises(ModelError, match=r"needs about 19 GB of VRAM, and this webui runs with --lowvram"):
        check_supported(str(big), low_vram=True)


def test_the_engine_of_a_low_vram_host_refuses_before_loading(tiny_model_dir, image, tmp_path, monkeypatch):
    import easy_diffuser.engine as engine_module

    engine = Engine(str(tiny_model_dir), cache_dir=tmp_path)
    engine.low_vram = True
    loads = []
    monkeypatch.setattr(engine_module, "load_captioner", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(ModelError, match="--lowvram or --medvram"):
        engine.extract(image, ExtractOptions(caption=CaptionOptions(JOYCAPTION)))
    assert loads == []


def test_the_captioner_list_and_the_tab_say_the_memory_before_loading():
    assert "17 GB" in CAPTIONERS[JOYCAPTION].use and "transformers 4.46" in CAPTIONERS[JOYCAPTION].use
    assert memory_note().startswith("JoyCaption needs about 17 GB of VRAM (bf16)")


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("mode", "poem", "caption.mode: must be one of descriptive, casual, stable-diffusion, midjourney, danbooru, "),
        ("length", "15", "caption.length: must be one of any, very short, short, medium-length, long, very long, 20,"),
        ("length", 40, "caption.length: must be one of any,"),
    ],
)
def test_a_bad_mode_or_length_is_one_line_naming_the_field(field, value, problem):
    with pytest.raises(OptionError) as error:
        ExtractOptions.from_mapping({"caption": {"model": JOYCAPTION, field: value}})
    assert str(error.value).startswith(problem) and "\n" not in str(error.value)


def test_mode_and_length_are_in_every_surface(capsys):
    fields = schema_help()["caption"]["fields"]
    assert fields["mode"]["default"] == "descriptive" and "danbooru" in fields["mode"]["choices"]
    assert fields["length"]["default"] == "long" and "260" in fields["length"]["choices"]
    parser = build_parser()
    args = parser.parse_args(["x.png", "--caption-mode", "Danbooru", "--caption-length", "60"])
    assert (args.caption_mode, args.caption_length) == ("danbooru", "60")
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["x.png", "--caption-mode", "haiku"])
    assert exit.value.code == 2 and "--caption-mode" in capsys.readouterr().err


def teardown_module():
    unload_captioners()
