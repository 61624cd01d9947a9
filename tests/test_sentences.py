"""The sentences prompt style: a describing captioner (tiny random Qwen2-VL), the checkpoint family that
automatic follows, the T5 budget cut at sentence and word boundaries, and every surface.

A random model writes gibberish: the tests assert structure (which captioner ran, the order of
caption and tags, the budget, the boundaries, the roles), never words.
"""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

from tiny_captioners import build_blip, build_qwen2_vl  # noqa: E402

from easy_diffuser import prompt_style  # noqa: E402
from easy_diffuser.captioner import (  # noqa: E402
    DESCRIBE,
    Captioner,
    Describer,
    compose,
    describing,
    load_captioner,
    placed_folder,
    unload_captioners,
    whole_sentences,
)
from easy_diffuser.checkpoint_family import UNKNOWN, detect, detect_checkpoint, read_metadata  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.errors import ModelError  # noqa: E402
from easy_diffuser.options import DEFAULT_DESCRIBER, CaptionOptions, ExtractOptions, OptionError  # noqa: E402
from easy_diffuser.prompt import escape  # noqa: E402
from easy_diffuser.selection import TagScore  # noqa: E402

DESCRIPTION = "A red circle lies on a grey floor. Soft light falls from the left. The photo is sharp and calm."


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    torch.manual_seed(0)
    return build_qwen2_vl(tmp_path_factory.mktemp("describers") / "qwen2-vl")


@pytest.fixture
def image() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 30, 30))


def tag(text: str, role: str = "positive") -> TagScore:
    return TagScore(text, "subject", 0.3, 1.0, role)


def host_transformers():
    """The transformers module the code imports now: loading a model may put a new one in sys.modules."""
    import importlib

    return importlib.import_module("transformers")


def chars(text: str) -> int:
    """A stand-in token count: one token per character."""
    return len(text)


# The describing captioner


def test_a_qwen2_vl_folder_loads_as_a_describer_and_answers_the_describe_request(qwen, image, monkeypatch):
    describer = load_captioner(str(qwen))
    assert isinstance(describer, Describer) and type(describer.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert not describer.model.training and (describer.device.type, describer.dtype) == ("cpu", torch.float32)
    prompts, generated = [], []
    template, generate = describer.processor.apply_chat_template, describer.model.generate

    def spy_template(messages, **kwargs):
        prompts.append(messages)
        return template(messages, **kwargs)

    def spy_generate(**kwargs):
        out = generate(**kwargs)
        generated.append((out.shape[1] - kwargs["input_ids"].shape[1], kwargs))
        return out

    monkeypatch.setattr(describer.processor, "apply_chat_template", spy_template)
    monkeypatch.setattr(describer.model, "generate", spy_generate)
    text = describer.caption(image, CaptionOptions(str(qwen), min_length=0, max_length=7))
    assert isinstance(text, str) and text == " ".join(text.split())  # one paragraph, no line breaks
    assert prompts[0][0]["content"][1]["text"] == DESCRIBE and prompts[0][0]["content"][0] == {"type": "image"}
    new_tokens, kwargs = generated[0]
    assert new_tokens <= 7 and kwargs["max_new_tokens"] == 7 and kwargs["num_beams"] == 1
    assert kwargs["pixel_values"].dtype == torch.float32 and "image_grid_thw" in kwargs


def test_a_describer_reads_the_blip_defaults_as_its_own():
    assert describing(CaptionOptions()) == (1, 256)  # greedy, a paragraph
    assert describing(CaptionOptions(beams=2, max_length=40)) == (2, 40)  # what the user set


def test_a_description_cut_by_the_token_limit_loses_its_unfinished_sentence():
    assert whole_sentences("A cat sits on a mat. The light comes from") == "A cat sits on a mat."
    assert whole_sentences("A cat sits. It sleeps!") == "A cat sits. It sleeps!"
    assert whole_sentences("a cat on a mat") == "a cat on a mat"  # no sentence finished: kept as it is


def test_a_describer_reads_safetensors_only(qwen, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    folder = shutil.copytree(qwen, tmp_path / "bin-only")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    loads = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args))
    with pytest.raises(ModelError, match="not a usable captioner folder"):
        load_captioner(str(folder))
    assert loads == []  # the .bin was never opened


@pytest.mark.parametrize("old", ["version", "class"])
def test_an_old_transformers_is_one_line_before_any_download(tmp_path, monkeypatch, old):
    """A1111 1.10 pins transformers 4.30.2, which has no Qwen2-VL: simulated by its version or a missing class."""
    import huggingface_hub

    if old == "version":
        monkeypatch.setattr(host_transformers(), "__version__", "4.30.2")
    else:
        monkeypatch.setattr(host_transformers(), "Qwen2VLForConditionalGeneration", None)
    asked = []
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, lambda *args, **kwargs: asked.append(args))
    monkeypatch.setattr(
        host_transformers().PretrainedConfig, "get_config_dict", lambda *args, **kwargs: asked.append(args)
    )
    with pytest.raises(ModelError) as error:
        load_captioner(DEFAULT_DESCRIBER, cache_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and asked == []
    assert message.startswith("Qwen/Qwen2-VL-2B-Instruct needs transformers 4.45.0 or newer")
    assert "BLIP and GIT captioners still work" in message
    assert not list(tmp_path.iterdir())  # nothing was written to the cache


def test_on_an_old_transformers_a_describer_folder_is_refused_and_blip_still_works(qwen, tmp_path, monkeypatch, image):
    blip = build_blip(tmp_path / "blip")
    unload_captioners()  # loaded by an earlier test: loading again checks again
    monkeypatch.setattr(host_transformers(), "__version__", "4.30.2")
    with pytest.raises(ModelError, match=r"needs transformers 4\.45\.0 or newer \(Qwen2VLForConditionalGeneration\)"):
        load_captioner(str(qwen))
    assert isinstance(load_captioner(str(blip)).caption(image, CaptionOptions(beams=1, max_length=3)), str)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_a_describer_runs_in_bf16_and_leaves_before_clip(tiny_model_dir, qwen, image, tmp_path):
    engine = Engine(str(tiny_model_dir), "cuda", cache_dir=tmp_path)
    options = ExtractOptions(prompt_style="sentences", caption=CaptionOptions(str(qwen), max_length=6))
    result = engine.extract(image, options)
    describer = load_captioner(str(qwen), cache_dir=tmp_path)  # the same object: loaded once
    assert describer.device.type == "cpu" and engine.loaded.device.type == "cuda"
    assert result.prompt_style == "sentences"
    describer.to("cuda")
    assert describer.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert isinstance(describer.caption(image, CaptionOptions(str(qwen), max_length=4)), str)
    describer.to("cpu")


# Which family a checkpoint is


@pytest.mark.parametrize(
    "name, family",
    [
        ("flux1-dev-bnb-nf4-v2.safetensors", "flux"),
        ("flux1-schnell-fp8.safetensors", "flux"),
        ("chroma-unlocked-v37.safetensors", "chroma"),
        ("sd3.5_large_turbo.safetensors", "sd3"),
        ("sd3_medium_incl_clips_t5xxlfp8.safetensors", "sd3"),
        ("qwen_image_fp8_e4m3fn.safetensors", "qwen-image"),
        ("sd_xl_base_1.0.safetensors", "sdxl"),
        ("v1-5-pruned-emaonly.safetensors", "sd1"),
        ("v2-1_768-ema-pruned.safetensors", "sd2"),
        ("realisticVisionV60.safetensors", ""),
    ],
)
def test_the_family_from_the_checkpoint_name(name, family):
    assert detect(name).family.name == family


def test_the_host_and_the_header_outweigh_the_name():
    misleading = "flux_style_sdxl_merge.safetensors"
    assert detect(misleading).family.name == "flux"
    assert detect(misleading, model_class="StableDiffusionXL").family.name == "sdxl"  # Forge's engine class
    assert detect(misleading, flags={"is_sdxl": True, "is_sd3": False}).family.name == "sdxl"  # A1111's flags
    found = detect(misleading, {"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    assert found.family.name == "sdxl" and "modelspec.architecture" in found.reason
    assert detect("model.safetensors", {"ss_base_model_version": "sd_v1"}).family.name == "sd1"
    assert detect("").family is UNKNOWN and detect("").reason == "no checkpoint is known"


def test_a_checkpoint_file_is_known_by_its_header_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "my-finetune.safetensors"
    save_file({"x": torch.zeros(1)}, path, metadata={"modelspec.architecture": "Flux.1-dev"})
    assert read_metadata(path) == {"modelspec.architecture": "Flux.1-dev"}
    found = detect_checkpoint(path)
    assert found.family.name == "flux" and "modelspec.architecture" in found.reason
    assert (found.name, found.metadata) == ("my-finetune", {"modelspec.architecture": "Flux.1-dev"})  # for presets
    alone = detect_checkpoint("not-there/flux1-dev.safetensors")  # a name alone
    assert (alone.family.name, alone.name, alone.metadata) == ("flux", "flux1-dev", {})
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=r"damaged\.safetensors: not a safetensors file"):
        detect_checkpoint(damaged)


# The style in force


def test_automatic_follows_the_family_and_says_why():
    automatic = ExtractOptions()
    flux = prompt_style.resolve(automatic, detect("flux1-dev.safetensors"))
    assert (flux.name, flux.caption) == ("sentences", CaptionOptions(DEFAULT_DESCRIBER))
    assert flux.uses_t5 and "automatic: sentences for Flux" in flux.reason and "flux1-dev" in flux.reason
    assert "ignore the negative prompt" in prompt_style.status(flux)
    sdxl = prompt_style.resolve(automatic, detect("sd_xl_base_1.0.safetensors"))
    assert (sdxl.name, sdxl.caption) == ("tags", None) and "negative" not in prompt_style.status(sdxl)
    assert prompt_style.resolve(automatic).name == "tags"  # no checkpoint known: today's prompt
    assert prompt_style.resolve(ExtractOptions(prompt_style="sentences"), detect("sd_xl_base_1.0")).uses_t5 is False


def test_sentences_uses_the_captioner_named_and_booru_is_not_a_clip_models_prompt():
    blip = CaptionOptions("Salesforce/blip-image-captioning-large")
    assert prompt_style.resolve(ExtractOptions(prompt_style="sentences", caption=blip)).caption == blip
    with pytest.raises(OptionError, match="prompt_style: booru is the prompt of a booru tagger model"):
        prompt_style.resolve(ExtractOptions(prompt_style="booru"))
    with pytest.raises(
        OptionError, match="prompt_style: must be one of automatic, tags, sentences, booru, not 'prose'"
    ):
        ExtractOptions(prompt_style="prose")


def test_a_tagger_model_writes_booru_which_automatic_picks_for_it():
    automatic = prompt_style.resolve(ExtractOptions(), detect("flux1-dev.safetensors"), writes="booru")
    assert (automatic.name, automatic.caption) == ("booru", None) and "booru tagger" in automatic.reason
    assert prompt_style.resolve(ExtractOptions(prompt_style="booru"), writes="booru").name == "booru"
    assert prompt_style.resolve(ExtractOptions(prompt_style="sentences"), writes="booru").name == "sentences"


def test_the_t5_bound_counts_every_character_after_normalisation():
    assert prompt_style.t5_token_bound("") == 2  # the leading "▁" and the end token
    assert prompt_style.t5_token_bound("a  red\n circle") == len("a red circle") + 2
    assert prompt_style.t5_token_bound("\ufb01ne") == len("fine") + 2  # NFKC turns the ligature into two letters


def test_the_t5_counter_counts_with_a_real_tokenizer(qwen):
    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen)  # any transformers tokenizer shows the wiring
    assert prompt_style.t5_counter(tokenizer)("abc") == len(tokenizer("abc").input_ids)


# The prompt: description first, then the tags it does not say, within the budget


def test_sentences_keep_the_description_whole_then_add_the_unsaid_tags():
    tags = [tag("circle"), tag("grey floor"), tag("oil painting"), tag("blurry", "negative"), tag("bokeh")]
    caption, kept = compose(DESCRIPTION, tags, chars, 512, sentences=True)
    assert caption == DESCRIPTION  # its full stops stay
    assert [t.tag for t in kept] == ["oil painting", "bokeh"]
    from easy_diffuser.captioner import join

    assert join(caption, ["oil painting", "bokeh"], sentences=True) == DESCRIPTION + " oil painting, bokeh"


@pytest.mark.parametrize("budget", [40, 70, 95])
def test_a_long_description_is_cut_at_a_sentence_boundary(budget):
    caption, kept = compose(DESCRIPTION, [tag("bokeh")], chars, budget, sentences=True)
    assert caption.endswith(".") and DESCRIPTION.startswith(caption) and len(caption) <= budget
    assert DESCRIPTION[len(caption) : len(caption) + 1] in (" ", "")  # a whole sentence, not a part of one


def test_a_first_sentence_longer_than_the_budget_is_cut_at_a_word_boundary():
    caption, kept = compose(DESCRIPTION, [tag("bokeh")], chars, 20, sentences=True)
    assert caption == "A red circle lies on" and kept == []
    assert DESCRIPTION.startswith(caption + " ")


def test_tags_fill_what_the_description_leaves_in_order_and_skip_what_does_not_fit():
    tags = [tag("oil painting"), tag("a very long tag that will not fit"), tag("bokeh")]
    first = "A red circle lies on a grey floor."
    caption, kept = compose(first, tags, chars, len(first) + len(" oil painting, bokeh"), sentences=True)
    assert [t.tag for t in kept] == ["oil painting", "bokeh"]


# The engine and the surfaces, on the tiny CLIP of conftest.py and the tiny Qwen2-VL


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return Engine(str(tiny_model_dir), "cpu", cache_dir=tmp_path_factory.mktemp("sentences-cache"))


def with_description(monkeypatch, text: str) -> None:
    monkeypatch.setattr(Describer, "caption", lambda self, image, options=CaptionOptions(): text)


def test_the_engine_leads_with_the_description_in_the_t5_budget(engine, qwen, image, monkeypatch):
    plain = engine.extract(image)
    with_description(monkeypatch, " ".join([DESCRIPTION] * 20))  # about 1,900 characters
    result = engine.extract(image, ExtractOptions(prompt_style="sentences", caption=CaptionOptions(str(qwen))))
    assert result.prompt_style == "sentences" and result.to_dict()["prompt_style"] == "sentences"
    assert result.prompt.startswith(result.caption) and result.caption.endswith(".")
    read = result.prompt.replace("\\", "")  # what T5 reads: the webui's prompt parser takes the escapes out
    assert prompt_style.t5_token_bound(read) <= 512 < prompt_style.t5_token_bound(" ".join([DESCRIPTION] * 20))
    assert result.negative_prompt == plain.negative_prompt  # the project's own negative prompt
    listed = result.prompt.removeprefix(result.caption).strip()
    assert [escape(t.tag) for t in result.tags if t.role == "positive"] == [t for t in listed.split(", ") if t]


def test_the_engine_counts_with_the_hosts_t5_tokenizer_when_it_has_one(engine, qwen, image, monkeypatch):
    with_description(monkeypatch, DESCRIPTION)
    monkeypatch.setattr(engine, "t5_tokens", lambda text: 30 * len(text.split()))  # 30 tokens a word: 19 are too many
    result = engine.extract(image, ExtractOptions(prompt_style="sentences", caption=CaptionOptions(str(qwen))))
    assert result.caption == "A red circle lies on a grey floor. Soft light falls from the left."  # 13 words
    assert engine.t5_tokens(result.prompt) <= 512


def test_automatic_under_flux_runs_the_default_describer_from_its_placed_folder(engine, qwen, image, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(qwen, placed_folder(DEFAULT_DESCRIBER, engine.cache_dir), dirs_exist_ok=True)
    monkeypatch.setattr(engine, "target", detect("flux1-dev.safetensors"))
    unload_captioners()
    result = engine.extract(image, ExtractOptions(caption=None))
    assert result.prompt_style == "sentences"
    assert load_captioner(DEFAULT_DESCRIBER, cache_dir=engine.cache_dir).model_id == DEFAULT_DESCRIBER
    monkeypatch.setattr(engine, "target", detect("sd_xl_base_1.0.safetensors"))
    assert engine.extract(image).prompt_style == "tags"


def test_tags_style_with_a_describer_stays_in_one_clip_chunk(engine, qwen, image, monkeypatch):
    from easy_diffuser.embedding import token_count

    with_description(monkeypatch, " ".join([DESCRIPTION] * 5))
    result = engine.extract(image, ExtractOptions(prompt_style="tags", caption=CaptionOptions(str(qwen))))
    assert result.prompt_style == "tags" and token_count(engine.loaded, result.prompt) <= 75


def run_cli(args, capsys):
    from easy_diffuser.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prompt_style_sentences_with_a_named_captioner_and_records(tiny_model_dir, qwen, tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (40, 40), "blue").save(folder / "a.png")
    common = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--json"]
    style = ["--prompt-style", "sentences", f"--caption={qwen}", "--caption-max-length", "6"]
    code, out, err = run_cli([str(folder / "a.png"), *common, *style], capsys)
    result = json.loads(out)
    assert code == 0 and result["prompt_style"] == "sentences" and result["prompt"].startswith(result["caption"])
    code, out, err = run_cli([str(folder), *common, *style, "--output", str(tmp_path / "records.jsonl")], capsys)
    printed = json.loads(out)
    (line,) = (tmp_path / "records.jsonl").read_text().splitlines()
    assert code == 0 and printed["prompt_style"] == "sentences" and printed["prompt"].startswith(printed["caption"])
    assert json.loads(line)["prompt"] == printed["prompt"] == (folder / "a.txt").read_text().strip()


@pytest.mark.parametrize(
    "template, problem",
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError: access to attribute '__class__'"),
        ("{% for message in messages %}{{ message.role }", "TemplateSyntaxError"),
    ],
)
def test_cli_a_chat_template_that_cannot_be_used_is_one_line_naming_its_file(
    tiny_model_dir, qwen, tmp_path, capsys, template, problem
):
    folder = tmp_path / "qwen2-vl"
    shutil.copytree(qwen, folder)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 40), "blue").save(image)
    common = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--device", "cpu"]
    code, out, err = run_cli([str(image), *common, "--prompt-style", "sentences", f"--caption={folder}"], capsys)
    lines = [line for line in err.splitlines() if line.strip() and "Embedding " not in line]  # the vocabulary's bar
    assert code == 2 and out == "" and "Traceback" not in err and len(lines) == 1
    assert lines[0].startswith(f"error: {folder / 'chat_template.json'}: the chat template cannot be used")
    assert problem in lines[0]


def test_cli_checkpoint_makes_automatic_sentences_with_the_default_describer(
    tiny_model_dir, qwen, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(qwen, placed_folder(DEFAULT_DESCRIBER, tmp_path))
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "blue").save(picture)
    args = [str(picture), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--device", "cpu", "--json"]
    code, out, err = run_cli([*args, "--checkpoint", "flux1-dev.safetensors", "--caption-max-length", "5"], capsys)
    assert code == 0 and json.loads(out)["prompt_style"] == "sentences"
    code, out, err = run_cli(args, capsys)
    assert code == 0 and json.loads(out)["prompt_style"] == "tags"  # no checkpoint: today's prompt


def test_cli_refuses_on_an_old_transformers_in_one_line_before_loading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(host_transformers(), "__version__", "4.30.2")
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "blue").save(picture)
    # A model that does not exist: had CLIP been loaded first, its error would be the one printed.
    args = [str(picture), "--model", str(tmp_path / "no-such-model"), "--cache-dir", str(tmp_path)]
    code, out, err = run_cli([*args, "--prompt-style", "sentences"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: Qwen/Qwen2-VL-2B-Instruct needs transformers 4.45.0 or newer")


def test_cli_booru_on_a_clip_model_is_a_setup_error(tiny_model_dir, tmp_path, capsys):
    picture = tmp_path / "picture.png"
    Image.new("RGB", (40, 40), "blue").save(picture)
    args = [str(picture), "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--device", "cpu"]
    code, out, err = run_cli([*args, "--prompt-style", "booru"], capsys)
    assert code == 2 and "booru is the prompt of a booru tagger model" in err and out == ""


def test_cli_bad_checkpoint_file_and_ray_are_setup_errors(tmp_path, capsys):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x01")
    code, out, err = run_cli(["x.png", "--checkpoint", str(damaged)], capsys)
    assert code == 2 and "damaged.safetensors: not a safetensors file" in err
    deep = tmp_path / "deep.safetensors"
    deep.write_bytes(struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000)
    code, out, err = run_cli(["x.png", "--checkpoint", str(deep)], capsys)
    assert code == 2 and err.startswith(f"error: {deep}: not a safetensors file") and len(err.splitlines()) == 1
    pytest.importorskip("ray")
    code, out, err = run_cli(
        ["x.png", "--engine", "ray", "--output", str(tmp_path / "out"), "--prompt-style=sentences"], capsys
    )
    assert (
        code == 2
        and "runs a captioner (--caption, --prompt-style sentences) only as a VLM server (--caption-url)" in err
    )


def test_ray_says_when_the_checkpoint_made_automatic_run_a_captioner_and_a_tagger_needs_none(
    tmp_path, capsys, monkeypatch
):
    ray = pytest.importorskip("ray")
    import easy_diffuser.ray_job as ray_job

    flux = ["x.png", "--engine", "ray", "--output", str(tmp_path / "out"), "--checkpoint", "flux1-dev.safetensors"]
    code, out, err = run_cli(flux, capsys)
    assert code == 2 and "prompt style automatic: sentences for Flux" in err and "--prompt-style tags" in err
    # A tagger's automatic style is booru whatever the checkpoint: no captioner, so the job starts.
    started = []
    summary = ray_job.JobSummary(images=0, errors=0, skipped=0, seconds=0.0)
    monkeypatch.setattr(ray_job, "run_job", lambda *args, **kwargs: started.append(kwargs["target"]) or summary)
    monkeypatch.setattr(ray_job, "list_inputs", lambda inputs, recursive=False: [])
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no cluster: only whether the job starts
    code, out, err = run_cli([*flux, "--model", "shapes-booru"], capsys)
    assert code == 0 and "captioner" not in err and started[0].family.name == "flux"


def test_python_api_prompt_style(tiny_model_dir, qwen, image, tmp_path, monkeypatch):
    import easy_diffuser

    monkeypatch.setattr("easy_diffuser.engine.DEFAULT_CACHE_DIR", tmp_path)
    with_description(monkeypatch, DESCRIPTION)
    ed = easy_diffuser.start(
        image, model=str(tiny_model_dir), device="cpu", prompt_style="sentences", caption=str(qwen)
    )
    assert ed.options.prompt_style == "sentences"
    assert ed.run().prompt_style == "sentences" and ed.prompt.startswith(DESCRIPTION)
    assert isinstance(load_captioner(str(qwen)), Captioner)


def test_calibration_under_a_flux_checkpoint_runs_no_describer(engine, tmp_path, monkeypatch):
    from easy_diffuser.calibration import calibrate
    from easy_diffuser.calibration.generators import ShapesGenerator

    monkeypatch.setattr(engine, "target", detect("flux1-dev.safetensors"))
    monkeypatch.setattr(Engine, "caption", lambda *args: pytest.fail("calibration ran a captioner"))
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 40), "red").save(folder / "a.png")
    result = calibrate(engine, folder, ShapesGenerator(), (0.0,), (1,), out_dir=tmp_path / "out", report=False)
    assert result.rows  # measured, with the tags style
