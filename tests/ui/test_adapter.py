"""The webui adapter's rules, against the stand-in `modules`: settings, flags, model choice,
device and memory handling (A1111 and Forge), the queue lock, progress, batch, calibration, install.py."""

from __future__ import annotations

import html
import importlib.metadata
import json
import random
import runpy
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")

import torch  # noqa: E402
from modules import call_queue, devices, lowvram, processing, sd_models, shared  # noqa: E402

from easy_diffuser.calibration import store  # noqa: E402
from easy_diffuser.calibration.shapes_proof import scenes, write_folder  # noqa: E402
from easy_diffuser.engine import calibration_path  # noqa: E402
from easy_diffuser.options import CAPTION_FILE_OPTIONS  # noqa: E402
from easy_diffuser.shapes.world import draw, random_scene  # noqa: E402
from easy_diffuser.webui import handlers, tab  # noqa: E402

import webui_host  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# The tab's controls at their starting values (keyed by controls.CONTROLS), "Caption first" off.
TAB = {
    "max_tags": 24,
    "auto_tau": True,
    "tau": 1.0,
    "negatives": 8,
    "quality_negatives": 6,
    "general_threshold": 0.35,
    "character_threshold": 0.85,
    "general_mcut": False,
    "character_mcut": False,
    "family": "automatic",
    "exclude_tags": "",
    "first_tags": "",
    "weights": False,
    "caption": False,
    "caption_model": "Salesforce/blip-image-captioning-base",
    "prompt_style": "automatic",
}
# The batch section's caption-file controls at the schema's defaults.
FILES = {**{option.name: option.default for option in CAPTION_FILE_OPTIONS}, "replace_tags": ""}
BATCH = {**TAB, "max_tags": 8, "quality_negatives": 0, **FILES}


@pytest.fixture
def webui(models_path, shapes_model, monkeypatch):
    """Start the stand-in webui with a command line; yields the extension's tab handlers (their host: .host)."""
    monkeypatch.setattr(devices, "device_interrogate", devices.cpu)
    monkeypatch.setattr(sd_models.model_data, "sd_model", None)

    def start(*args: str):
        module = webui_host.load_extension(list(args), models_path)
        shared.opts.easy_diffuser_model = shapes_model
        return module.extension.handlers

    return start


class FakeLoaded:
    """A LoadedModel that records where it is sent."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1)
        self.moves: list[tuple] = []

    def to(self, device, dtype=None):
        self.moves.append((torch.device(device), dtype))
        return self


def test_settings_are_registered_in_their_section(webui):
    webui()
    labels = shared.opts.data_labels
    keys = {"model", "keep_in_vram", "extract_on_drop", "max_tags", "quality_negatives", "weights"}
    assert {f"easy_diffuser_{key}" for key in keys} <= set(labels)
    assert "easy_diffuser_negatives" not in labels  # the count in force is the calibration's or the model's
    ours = [info for key, info in labels.items() if key.startswith("easy_diffuser_")]
    assert {info.section for info in ours} == {("easy_diffuser", "Easy Diffuser")}
    # Filed under a category of webui 1.10's Settings (modules/shared_options.py registers these), not "Uncategorized".
    assert {info.category_id for info in ours} == {"postprocessing"}
    assert shared.opts.easy_diffuser_keep_in_vram is False


def test_the_captioner_setting_says_joycaptions_memory_before_it_is_chosen(webui):
    webui()
    label = shared.opts.data_labels["easy_diffuser_caption_model"].label
    assert "JoyCaption needs about 17 GB of VRAM (bf16)" in label and "--lowvram" in label
    assert shared.opts.data_labels["easy_diffuser_caption_mode"].component_args["choices"][:2] == [
        "descriptive",
        "casual",
    ]


def test_the_settings_page_says_when_the_command_line_forces_the_model(webui):
    webui()
    assert "--easy-diffuser-model" not in shared.opts.data_labels["easy_diffuser_model"].label
    webui("--easy-diffuser-model", "ViT-bigG-14/laion2b_s39b_b160k")
    label = shared.opts.data_labels["easy_diffuser_model"].label
    assert "ViT-bigG-14/laion2b_s39b_b160k is in force" in label and "--easy-diffuser-model" in label


def test_every_setting_survives_the_settings_page_refresh(webui):
    """The webui builds each setting as component(label, value, elem_id, **args) and, at every page load,
    sends gr.update(value, **args) to it (modules/ui_settings.py); under gradio 3 that is Component.update(**args).
    One argument the update rejects breaks the whole Settings page, not just ours."""
    import gradio as gr

    webui()
    for key, info in shared.opts.data_labels.items():
        if not key.startswith("easy_diffuser_"):
            continue
        component_class = info.component or {bool: gr.Checkbox, int: gr.Number, str: gr.Textbox}[type(info.default)]
        args = info.component_args or {}
        with gr.Blocks():
            component_class(label=info.label, value=info.default, elem_id=f"setting_{key}", **args)
        if hasattr(component_class, "update"):  # gradio 3; gradio 4 re-creates the component from the same args
            component_class.update(value=info.default, **args)


def test_the_model_flag_overrides_the_setting_and_the_weights_go_under_models(webui, models_path, tmp_path):
    module = webui()
    assert module.host.weights_folder() == models_path / "easy_diffuser"
    module = webui(
        "--easy-diffuser-model", "ViT-bigG-14/laion2b_s39b_b160k", "--easy-diffuser-model-path", str(tmp_path)
    )
    assert module.host.resolve_model(None) == "ViT-bigG-14/laion2b_s39b_b160k"
    assert module.host.weights_folder() == tmp_path
    assert module.host.resolve_model("shapes-demo") == "shapes-demo"  # an API request names its own


@pytest.mark.parametrize(
    "checkpoint, expected",
    [
        (None, "ViT-L-14/openai"),
        (SimpleNamespace(is_sd1=True, is_sd2=False, is_sdxl=False), "ViT-L-14/openai"),
        (SimpleNamespace(is_sd1=False, is_sd2=True, is_sdxl=False), "ViT-H-14/laion2b_s32b_b79k"),
        (SimpleNamespace(is_sd1=False, is_sd2=False, is_sdxl=True), "ViT-L-14/openai"),
    ],
)
def test_auto_matches_the_loaded_checkpoint(webui, monkeypatch, checkpoint, expected):
    module = webui()
    shared.opts.easy_diffuser_model = "Auto"
    monkeypatch.setattr(sd_models.model_data, "sd_model", checkpoint)
    assert module.host.resolve_model(None) == expected


@pytest.mark.parametrize(
    "args, device, dtype",
    [
        ([], "cuda", torch.float16),
        (["--no-half"], "cuda", torch.float32),
        (["--use-cpu", "interrogate"], "cpu", torch.float32),
        (["--use-cpu", "all"], "cpu", torch.float32),
        (["--use-cpu", "esrgan"], "cuda", torch.float16),
    ],
)
def test_device_and_precision_follow_the_webui_flags(webui, monkeypatch, args, device, dtype):
    module = webui(*args)
    monkeypatch.setattr(devices, "device_interrogate", torch.device("cuda"))
    placement = module.host.placement()
    assert (placement.device.type, placement.dtype) == (device, dtype)


@pytest.mark.parametrize("flag", ["--lowvram", "--medvram"])
def test_low_vram_sends_the_sd_model_to_the_cpu_first_and_ours_back_after(webui, monkeypatch, flag):
    module = webui(flag)
    monkeypatch.setattr(lowvram, "calls", [])
    loaded, placement = FakeLoaded(), module.host.placement()
    placement.acquire(loaded)
    assert lowvram.calls == ["send_everything_to_cpu"] and loaded.moves == [(placement.device, placement.dtype)]
    gc_before = devices.gc_calls
    placement.release(loaded)
    assert loaded.moves[-1][0] == devices.cpu and devices.gc_calls == gc_before + 1


@pytest.mark.parametrize("flags", [("--lowvram",), ("--medvram",), ()])
def test_a_low_vram_webui_refuses_joycaption_in_the_status_before_loading_it(webui, red_circle, monkeypatch, flags):
    from PIL import Image

    import easy_diffuser.engine as engine_module
    from easy_diffuser.captioner import JOYCAPTION
    from easy_diffuser.errors import ModelError

    module = webui(*flags)
    assert module.host.placement().low_vram is bool(flags)
    loads = []

    def load_captioner(spec, *args, **kwargs):
        loads.append(spec)
        raise ModelError("no weights here")

    monkeypatch.setattr(engine_module, "load_captioner", load_captioner)
    *_, status, _, _, _ = module.extract(
        Image.open(red_circle), None, {**TAB, "caption": True, "caption_model": JOYCAPTION}, Progress()
    )
    if flags:
        assert "easy-diffuser-error" in status and "--lowvram or --medvram" in html.unescape(status)
        assert "VLM server" in status and loads == []
    else:
        assert loads == [JOYCAPTION] and "no weights here" in status  # memory allowing, it loads


def test_keep_in_vram_leaves_the_model_where_it_is(webui, monkeypatch):
    module = webui()
    monkeypatch.setattr(lowvram, "calls", [])
    shared.opts.easy_diffuser_keep_in_vram = True
    loaded, placement = FakeLoaded(), module.host.placement()
    placement.acquire(loaded)
    placement.release(loaded)
    assert lowvram.calls == [] and len(loaded.moves) == 1


@pytest.fixture
def forge(monkeypatch):
    """Forge's backend package: a memory manager that records what it is asked to do."""
    manager = ModuleType("backend.memory_management")
    manager.current_loaded_models = []
    manager.calls = []

    class Entry:
        def __init__(self, patcher):
            self.model = patcher

        def model_unload(self):
            manager.calls.append(("unload", self.model))

    def load_models_gpu(patchers):
        manager.calls.append(("load", *patchers))
        for patcher in patchers:
            if all(entry.model is not patcher for entry in manager.current_loaded_models):
                manager.current_loaded_models.insert(0, Entry(patcher))

    manager.load_models_gpu = load_models_gpu
    manager.text_encoder_device = lambda: torch.device("cuda")
    manager.text_encoder_offload_device = lambda: torch.device("cpu")
    manager.soft_empty_cache = lambda force=False: manager.calls.append(("empty_cache",))
    patcher_module = ModuleType("backend.patcher.base")
    patcher_module.ModelPatcher = lambda model, load_device, offload_device: SimpleNamespace(
        model=model, load_device=load_device, offload_device=offload_device
    )
    backend = ModuleType("backend")
    backend.memory_management = manager
    fakes = {"backend": backend, "backend.memory_management": manager, "backend.patcher": ModuleType("backend.patcher")}
    for name, module in {**fakes, "backend.patcher.base": patcher_module}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return manager


def test_forge_goes_through_its_memory_manager(webui, forge):
    module = webui()
    other = SimpleNamespace(model="the SD model")
    forge.current_loaded_models.append(other)
    loaded, placement = FakeLoaded(), module.host.placement()
    assert placement.device.type == "cuda" and placement.dtype == torch.float16
    placement.acquire(loaded)
    ((action, patcher),) = forge.calls
    assert action == "load" and patcher.model.model is loaded.model and patcher.load_device.type == "cuda"
    placement.release(loaded)
    assert forge.calls[1:] == [("unload", patcher), ("empty_cache",)]
    assert forge.current_loaded_models == [other]  # only ours was evicted


def test_forge_places_and_evicts_a_tagger_through_its_memory_manager_too(webui, forge, tmp_path):
    from easy_diffuser.models import load_model

    from taggers import write_tagger

    module = webui()
    loaded, placement = load_model(str(write_tagger(tmp_path / "wd", "vit"))), module.host.placement()
    placement.acquire(loaded)
    ((action, patcher),) = forge.calls
    assert action == "load" and patcher.model.model is loaded.model  # the timm network, as CLIP's
    placement.release(loaded)
    assert forge.calls[1:] == [("unload", patcher), ("empty_cache",)]


def test_forge_places_the_captioner_beside_our_model(webui, forge, red_circle, tmp_path):
    """The captioner moved itself onto Forge's GPU past the manager: now it is loaded together with our model (so
    that room is made for both at once) and unloaded after its caption."""
    from PIL import Image
    from tiny_captioners import build_blip

    module = webui()
    blip = str(build_blip(tmp_path / "blip"))
    prompt, *_ = module.extract(
        Image.open(red_circle), None, {**TAB, "caption": True, "caption_model": blip}, Progress()
    )
    ours = module.service.engine.loaded.model
    (_, clip), (_, beside, captioner), (_, unloaded), _, (_, last), _ = forge.calls
    assert clip.model.model is beside.model.model is ours and unloaded is captioner and last is clip
    assert type(captioner.model.model).__name__ == "BlipForConditionalGeneration" and prompt


def test_forge_keep_in_vram_leaves_it_to_the_manager(webui, forge):
    module = webui()
    shared.opts.easy_diffuser_keep_in_vram = True
    loaded, placement = FakeLoaded(), module.host.placement()
    placement.acquire(loaded)
    placement.release(loaded)
    assert [call[0] for call in forge.calls] == ["load", "empty_cache"]


def test_the_thresholds_shown_are_the_models_own_and_left_there_they_stay_each_models_own(webui, red_circle, tmp_path):
    """PixAI's sliders showed 0.35/0.85 while its card's 0.30/0.75 applied until moved. Now the page shows the
    configured model's own; left there, they mean "the model's own", so a WD tagger chosen in Settings afterwards
    extracts at its 0.35, and a moved slider is what it says."""
    from PIL import Image

    from easy_diffuser.kinds import pixai

    from taggers import logits_for, write_tagger

    module = webui()
    shared.opts.easy_diffuser_model = pixai.REPOSITORY
    sliders = {block.elem_id: block for block in webui_host.build_page().blocks.values() if hasattr(block, "elem_id")}
    shown = {name: sliders[f"easy_diffuser_{name}"].value for name in ("general_threshold", "character_threshold")}
    assert shown == {"general_threshold": 0.3, "character_threshold": 0.75}

    wd = write_tagger(tmp_path / "wd", logits=logits_for({"1girl": 0.9, "smile": 0.32}))
    shared.opts.easy_diffuser_model = str(wd)
    left = {**TAB, **shown}
    prompt, *_ = module.extract(Image.open(red_circle), None, left, Progress())
    assert "1girl" in prompt.split(", ") and "smile" not in prompt.split(", ")  # WD's own 0.35
    prompt, *_ = module.extract(Image.open(red_circle), None, {**left, "general_threshold": 0.31}, Progress())
    assert "smile" in prompt.split(", ")  # moved: what the slider says

    # The webui's ui-config.json may restore another starting value over ours: where the page shows it counts.
    module.threshold_sliders["general_threshold"].value = 0.31
    prompt, *_ = module.extract(Image.open(red_circle), None, {**left, "general_threshold": 0.31}, Progress())
    assert "smile" not in prompt.split(", ")  # left where shown: WD's own 0.35


def test_work_runs_under_the_queue_lock(webui):
    module = webui()
    assert module.service.run(lambda engine: call_queue.queue_lock.locked()) is True
    assert not call_queue.queue_lock.locked()


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, value, desc=None, unit=None, **kwargs):
        self.calls.append((value, desc))


def test_first_use_shows_progress_while_the_vocabulary_is_encoded(webui, red_circle, tmp_path):
    from PIL import Image

    module = webui("--easy-diffuser-model-path", str(tmp_path / "fresh"))
    image = Image.open(red_circle)
    first = Progress()
    prompt, negative, bars, status, tau, negatives, state = module.extract(image, None, TAB, first)
    assert "red" in prompt and "easy-diffuser-tag" in bars and state.result.tags
    encoding = [value for value, desc in first.calls if desc == handlers.VOCABULARY_PROGRESS]
    assert encoding and encoding[-1][0] == encoding[-1][1]  # (done, total), finished
    again = Progress()
    module.extract(image, None, TAB, again)
    assert all(desc != handlers.VOCABULARY_PROGRESS for _, desc in again.calls)  # cached now


def test_no_image_and_bad_weights_are_messages(webui, red_circle, tmp_path):
    from PIL import Image

    module = webui()
    kept = object()
    *_, status, _, _, state = module.extract(None, kept, TAB, Progress())
    assert "Drop an image first" in status and state is kept
    shared.opts.easy_diffuser_model = str(tmp_path / "missing.safetensors")
    *_, status, _, _, _ = module.extract(Image.open(red_circle), None, TAB, Progress())
    assert "easy-diffuser-error" in status and "missing.safetensors" in status


@pytest.mark.parametrize(
    "prompt, negative, message",
    [
        ("red, " * 2001, "", "prompt: must be text of at most 10,000 characters"),
        ("red", "(blue:1" + "0" * 400 + ")", "negative_prompt: the weight of (blue:1000"),
    ],
)
def test_check_refuses_what_the_schema_refuses_in_the_status_before_generating(
    webui, red_circle, monkeypatch, prompt, negative, message
):
    from PIL import Image

    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})
    before = len(processing.calls)
    answers = list(webui().check(Image.open(red_circle), prompt, negative, 0, 1, 64, 64, 4, progress=Progress()))
    assert len(answers) == 1 and "easy-diffuser-error" in answers[0][1] and message in answers[0][1]
    assert len(processing.calls) == before


def test_tag_clicks_and_the_weights_switch_rewrite_the_prompts_and_the_status(webui, red_circle):
    from PIL import Image

    module = webui()
    prompt, _, _, status, _, _, state = module.extract(Image.open(red_circle), None, TAB, Progress())
    positives = sum(tag.role == "positive" for tag in state.result.tags)
    negatives = len(state.result.tags) - positives
    assert f"{positives} positive, {negatives} negative tags" in status
    first = state.result.tags[0].tag
    prompt2, negative2, bars2, status2, state2 = module.click_tag(first, state, False)
    assert first not in prompt2.split(", ") and negative2.split(", ")[0] == first  # tags keep their order
    assert f'data-tag="{first}"' in bars2
    assert f"{positives - 1} positive, {negatives + 1} negative tags" in status2  # the line follows the clicks
    weighted, _ = module.toggle_weights(state, True)
    assert weighted != prompt and "(" in weighted
    assert module.toggle_weights(None, True) == (gr.update(), gr.update())  # nothing extracted: keep typed text


def test_every_control_reselects_from_the_stored_embedding_without_model_or_queue(webui, red_circle, monkeypatch):
    from PIL import Image

    from easy_diffuser.engine import Engine

    module = webui()
    *_, tau, negatives, state = module.extract(Image.open(red_circle), None, TAB, Progress())
    assert tau == gr.update(value=-1.0, interactive=False)  # shapes-demo's own tau, locked while automatic
    assert negatives == gr.update(value=8, interactive=False)  # and its count of negatives
    monkeypatch.setattr(Engine, "encode", lambda *args: pytest.fail("re-selection ran the model"))
    with call_queue.queue_lock:  # a generation holds the queue: re-selection still answers
        prompt, negative, *_ = module.reselect(state, {**TAB, "max_tags": 1})
        assert len(prompt.split(", ")) == 1
        seen = []
        original = Engine.extract_embeddings

        def spy(self, embedding, options, **kwargs):
            seen.append(options)
            return original(self, embedding, options, **kwargs)

        monkeypatch.setattr(Engine, "extract_embeddings", spy)
        module.reselect(state, {**TAB, "quality_negatives": 0})  # shapes-demo has no quality tags: see what it asks
        assert seen[-1].quality_negatives == 0
        manual = {**TAB, "auto_tau": False, "tau": -1.0, "negatives": 8}
        *_, status, tau, negatives, same = module.reselect(state, manual)
        assert same.result.tags == state.result.tags and "(option)" in status  # the same tau, now set by hand
        assert tau == gr.update(value=-1.0, interactive=True) and negatives == gr.update(value=8, interactive=True)
        *_, none = module.reselect(state, {**manual, "negatives": 0})
        assert not [tag for tag in none.result.tags if tag.role == "negative" and tag.category != "quality"]


def test_reselection_matches_a_fresh_extraction(webui, red_circle):
    from PIL import Image

    module = webui()
    *_, state = module.extract(Image.open(red_circle), None, TAB, Progress())
    for values in ({**TAB, "max_tags": 2}, {**TAB, "auto_tau": False, "tau": 0.5, "negatives": 3}):
        prompt, negative, *_ = module.reselect(state, values)
        assert (prompt, negative) == module.extract(Image.open(red_circle), None, values, Progress())[:2]


def test_reselection_after_a_model_switch_asks_for_extract(webui, red_circle, tmp_path):
    from PIL import Image

    module = webui()
    *_, state = module.extract(Image.open(red_circle), None, TAB, Progress())
    module.service.unload()
    *_, status, _, _, kept = module.reselect(state, {**TAB, "max_tags": 1})
    assert "press Extract" in status and "easy-diffuser-error" in status and kept is state
    blank = module.reselect(None, {**TAB, "auto_tau": False})  # nothing extracted: only the lock follows the box
    assert blank[4] == gr.update(interactive=True) and blank[:4] == (gr.update(),) * 4


def test_the_exclude_and_first_lists_reselect_without_the_model_and_a_bad_list_keeps_the_prompts(
    webui, red_circle, monkeypatch
):
    from PIL import Image

    from easy_diffuser.engine import Engine
    from easy_diffuser.options import MAX_TAG_LIST

    module = webui()
    prompt, negative, *_, state = module.extract(Image.open(red_circle), None, TAB, Progress())
    tags = prompt.split(", ")
    assert "red" in tags and tags[:2] != ["gray background", "large"] and {"gray background", "large"} <= set(tags)
    monkeypatch.setattr(Engine, "encode", lambda *args: pytest.fail("re-selection ran the model"))
    without_red, negative_without_red, *_ = module.reselect(state, {**TAB, "exclude_tags": "Red"})
    assert "red" not in without_red.split(", ") + negative_without_red.split(", ")  # in neither prompt
    reordered, *_ = module.reselect(state, {**TAB, "first_tags": "gray background, large"})
    assert reordered.split(", ")[:2] == ["gray background", "large"] and sorted(reordered.split(", ")) == sorted(tags)
    for bad in ("red, " * MAX_TAG_LIST, "red,\tcircle"):  # over the limit; a tab is not printable
        kept_prompt, kept_negative, _, status, *_, kept = module.reselect(state, {**TAB, "exclude_tags": bad})
        assert (kept_prompt, kept_negative) == (gr.update(), gr.update()) and kept is state
        assert "exclude_tags: must be comma-separated tags, at most 4000 printable characters" in status
        assert "easy-diffuser-error" in status


def test_batch_captions_a_folder_and_stops_on_request(webui, tmp_path, monkeypatch):
    module = webui()
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(10):
        draw(random_scene(random.Random(index), colour="blue", size="large"), 64).save(folder / f"{index}.png")
    (folder / "broken.png").write_bytes(b"not a png")

    stop_after_first_chunk = Progress()
    original = handlers._reporter

    def reporter(progress, desc, unit):
        report = original(progress, desc, unit)
        return (lambda done, total: (report(done, total), module._stop_batch.set())) if desc == "Captioning" else report

    monkeypatch.setattr(handlers, "_reporter", reporter)
    stopped = module.caption(str(folder), False, BATCH, stop_after_first_chunk)
    assert "(stopped)" in stopped and len(list(folder.glob("*.txt"))) == 8
    monkeypatch.setattr(handlers, "_reporter", original)
    done = module.caption(str(folder), False, BATCH, Progress())
    assert "2 captioned, 8 already captioned, 1 failed" in done and "broken.png" in done
    assert "blue" in (folder / "9.txt").read_text()
    assert "Enter the folder" in module.caption("  ", False, BATCH, Progress())
    assert "no such folder" in module.caption(str(tmp_path / "nope"), False, BATCH, Progress())


def test_the_batch_section_writes_caption_files_as_its_options_say_and_refuses_a_bad_one(webui, tmp_path):
    module = webui()
    folder = tmp_path / "images"
    folder.mkdir()
    draw(random_scene(random.Random(0), colour="blue", shape="square", size="large"), 64).save(folder / "a.png")
    (folder / "a.caption").write_text("my words, Blue\n")
    options = {**FILES, "caption_extension": ".caption", "existing": "append", "trigger": "ohwx", "separator": ","}
    options["replace_tags"] = "square,box"
    done = module.caption(str(folder), False, {**BATCH, **options}, Progress())
    assert "1 captioned" in done and not (folder / "a.txt").exists()
    text = (folder / "a.caption").read_text()
    assert text.startswith("ohwx,my words, Blue,") and text.endswith("\n") and "box" in text.split(",")
    assert "square" not in text and text.count("blue") + text.count("Blue") == 1  # Blue was there: not added
    again = module.caption(str(folder), False, {**BATCH, **options}, Progress())
    assert "0 captioned, 1 unchanged" in again and (folder / "a.caption").read_text() == text
    for name, value, message in (
        ("caption_extension", "../a", "caption_extension: must be a file extension such as .txt or .caption"),
        ("caption_extension", ".png", "caption_extension: must be a file extension such as .txt or .caption"),
        ("separator", "", "separator: must be a separator such as ', ' (1 to 16 characters)"),
        ("replace_tags", "square", "replace_tags: must be old,new pairs separated by ;"),
    ):
        refused = module.caption(str(folder), False, {**BATCH, **options, name: value}, Progress())
        assert message in html.unescape(refused) and "easy-diffuser-error" in refused
    assert (folder / "a.caption").read_text() == text and sorted(p.name for p in folder.iterdir()) == [
        "a.caption",
        "a.png",
    ]


# Two taus at two negatives on 10 shapes-world scenes, drawn at the shapes model's own size: a few seconds on a CPU.
CALIBRATE = ("0, 1", "2", 64, 64, 12)  # taus, negatives, width, height, steps


@pytest.fixture
def calibration(webui, tmp_path, monkeypatch):
    """The extension with its own model folder (the calibration lands there), a folder of scenes, and
    the stand-in txt2img recording whether it ran under the queue lock."""
    module = webui("--easy-diffuser-model-path", str(tmp_path / "models"))
    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})  # one to load
    write_folder(tmp_path / "scenes", scenes(10, seed=3))
    module.under_lock = []
    generate = processing.process_images

    def process_images(p):
        module.under_lock.append(call_queue.queue_lock.locked())
        return generate(p)

    monkeypatch.setattr(processing, "process_images", process_images)
    monkeypatch.setattr(processing, "calls", [])
    return module, tmp_path / "scenes", calibration_path(tmp_path / "models", "shapes-demo")


def test_calibrate_writes_the_learned_tau_that_extraction_then_uses(calibration, red_circle):
    from PIL import Image

    module, folder, saved = calibration
    progress = Progress()
    report, plot, grid, status = module.calibrate_folder(str(folder), *CALIBRATE, progress)
    candidate = saved.with_suffix(".candidate.json")
    data = json.loads(candidate.read_text())
    assert "Best on 10 images" in report and str(candidate) in report and "no negative prompt" in report
    assert "Apply" in report and "calibrated" not in status and not saved.exists()  # nothing in force until applied
    assert any(desc and "generations" in desc and " s each" in desc for _, desc in progress.calls)
    status = module.change_calibration(store.apply)
    assert "Calibration applied" in status and f"tau {data['tau']:g}" in status and data["images"] == 10
    assert plot["visible"] and grid["visible"] and grid["value"].size[1] > 128
    # One hold of the queue: the generator did not take the lock again (A1111's would deadlock).
    assert module.under_lock and all(module.under_lock) and not call_queue.queue_lock.locked()
    assert all(p.do_not_save_samples and p.width == 64 and p.steps == 12 for p in processing.calls)
    *_, status, tau, _, _ = module.extract(Image.open(red_circle), None, TAB, Progress())
    assert "(calibrated" in status and tau["value"] == data["tau"]


def test_stop_keeps_what_was_generated_and_calibrate_again_resumes(calibration, monkeypatch):
    module, folder, saved = calibration
    generate = processing.process_images

    def stop_at_the_fifth(p):
        if len(processing.calls) == 4:  # the click arrives while the checkpoint generates (Stop is unqueued)
            module.stop_calibration()
        return generate(p)

    monkeypatch.setattr(processing, "process_images", stop_at_the_fifth)
    report, plot, grid, status = module.calibrate_folder(str(folder), *CALIBRATE, Progress())
    assert "Stopped after 4 of" in report and not plot["visible"] and status == gr.update()
    assert not saved.with_suffix(".candidate.json").exists() and saved.with_suffix(".partial.json").exists()
    assert not shared.state.interrupted  # cleared after the job, as the webui does
    monkeypatch.setattr(processing, "process_images", generate)
    again = Progress()
    report, _, _, status = module.calibrate_folder(str(folder), *CALIBRATE, again)
    first = next(value for value, desc in again.calls if desc and desc.startswith("Calibrating"))
    assert first[0] == 4 and "Best on 10 images" in report  # went on from the 4 kept
    assert saved.with_suffix(".candidate.json").exists() and not saved.with_suffix(".partial.json").exists()


def test_calibrate_errors_are_one_line(calibration, tmp_path):
    module, folder, _ = calibration
    (tmp_path / "empty").mkdir()
    cases = {
        ("0, x", "2"): "'x' is not a number",
        ("0", "2.5"): "'2.5' is not a whole number",
        ("", "2"): "enter at least one number",
    }
    for (taus, negatives), message in cases.items():
        assert message in html.unescape(
            module.calibrate_folder(str(folder), taus, negatives, 64, 64, 12, Progress())[0]
        )
    for where, message in [
        ("  ", "Enter the folder"),
        (tmp_path / "nope", "no such folder"),
        (tmp_path / "empty", "no readable images"),
    ]:
        report, plot, _, status = module.calibrate_folder(str(where), *CALIBRATE, Progress())
        assert message in report and "easy-diffuser-error" in report and "Traceback" not in report
    # Sent past the sliders, through gradio's API: each size checked by the schema, as on the command line.
    for sizes, message in [
        ((float("nan"), 64, 12), "width: must be a whole number from 64 to 2048, not nan"),
        ((64, 100_000, 12), "height: must be a whole number from 64 to 2048, not 100000"),
        ((64, 64, 0), "steps: must be a whole number from 1 to 150, not 0"),
    ]:
        report = module.calibrate_folder(str(folder), "0", "2", *sizes, Progress())[0]
        assert message in html.unescape(report) and report.count("<p") == 1
    shared.opts.easy_diffuser_model = str(tmp_path / "missing.safetensors")
    report = module.calibrate_folder(str(folder), *CALIBRATE, Progress())[0]
    assert "easy-diffuser-error" in report and "missing.safetensors" in report
    assert processing.calls == []


def test_check_and_refine_settings_sent_past_the_sliders_are_one_line_naming_the_field(calibration, red_circle):
    from PIL import Image

    module, _, _ = calibration
    for settings, message in [
        ((1, 1, float("nan"), 64, 1), "width: must be a whole number from 64 to 2048, not nan"),
        ((1, 1, 64, 64, 1.5), "steps: must be a whole number from 1 to 150, not 1.5"),  # was cut to 1
    ]:
        *_, (_, report, *_) = module.refine(Image.open(red_circle), "red", "", *settings, progress=Progress())
        assert message in html.unescape(report) and "Traceback" not in report
    assert processing.calls == []


def test_the_tabs_calibration_sizes_are_the_command_lines(webui):
    """The tab had its own ranges (width to 1024, steps to 50) beside the schema's (2048, 150)."""
    from easy_diffuser.calibration.cli import build_parser
    from easy_diffuser.options import REFINE_OPTION

    webui()
    page = webui_host.build_page()
    sliders = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    command_line = build_parser().parse_args(["folder"])
    for name in ("width", "height", "steps"):
        slider, option = sliders[f"easy_diffuser_calibrate_{name}"], REFINE_OPTION[name]
        assert (slider.minimum, slider.maximum, slider.step) == (option.minimum, option.maximum, option.step)
        assert slider.value == getattr(command_line, name)


def test_calibrate_without_a_checkpoint_says_so_in_one_line_and_does_nothing(calibration, monkeypatch):
    module, folder, saved = calibration
    monkeypatch.setattr(sd_models, "checkpoints_list", {})
    extracted = []
    monkeypatch.setattr(handlers, "calibrate", lambda *args, **kwargs: extracted.append(args))
    report, plot, grid, status = module.calibrate_folder(str(folder), *CALIBRATE, Progress())
    assert report.count("<p") == 1 and "easy-diffuser-error" in report and "models/Stable-diffusion" in report
    assert not plot["visible"] and status == gr.update()
    assert extracted == [] and processing.calls == [] and not saved.exists()
    assert module.service.engine is None  # not even the CLIP model was loaded
    monkeypatch.setattr(sd_models.model_data, "sd_model", SimpleNamespace(is_sd2=False))  # one is loaded: fine
    assert not module.host.no_checkpoint()


def elem_ids(demo: gr.Blocks) -> set:
    return {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}


def test_the_tab_has_its_elem_ids_and_hides_the_folder_batch_when_told(webui):
    webui()
    shown = elem_ids(webui_host.build_page())
    assert {
        "easy_diffuser_prompt",
        "easy_diffuser_neg_prompt",
        "easy_diffuser_image",
        "easy_diffuser_batch_folder",
        "easy_diffuser_exclude_tags",
        "easy_diffuser_first_tags",
    } <= shown
    assert {"easy_diffuser_calibrate_folder", "easy_diffuser_calibrate_run", "easy_diffuser_calibrate_stop"} <= shown
    webui("--hide-ui-dir-config")
    hidden = elem_ids(webui_host.build_page())
    assert "easy_diffuser_batch_folder" not in hidden and "easy_diffuser_calibrate_folder" not in hidden


def test_unloading_the_script_frees_the_model(webui):
    module = webui()
    module.service.run(lambda engine: None)
    assert module.service._engine is not None
    gc_before = devices.gc_calls
    from modules import script_callbacks

    script_callbacks.script_unloaded_callback()
    assert module.service._engine is None and devices.gc_calls > gc_before


@pytest.fixture
def launch(monkeypatch):
    fake = ModuleType("launch")
    fake.installed = True
    fake.pip_calls = []

    def run_pip(command, desc=None):
        constraints = command.split('-c "')[1].rstrip('"')
        fake.pip_calls.append((command, Path(constraints).read_text()))

    fake.is_installed = lambda package: fake.installed
    fake.run_pip = run_pip
    monkeypatch.setitem(sys.modules, "launch", fake)
    return fake


def test_install_does_nothing_when_open_clip_is_there(launch):
    runpy.run_path(str(ROOT / "install.py"))
    assert launch.pip_calls == []


def test_install_adds_only_open_clip_and_pins_what_the_webui_pinned(launch):
    launch.installed = False
    runpy.run_path(str(ROOT / "install.py"))
    ((command, constraints),) = launch.pip_calls
    assert command.startswith('install "open-clip-torch==2.20.0" -c ')
    pins = constraints.split()
    assert f"torch=={importlib.metadata.version('torch')}" in pins and f"gradio=={gr.__version__}" in pins
    assert not Path(command.split('-c "')[1].rstrip('"')).exists()  # the temporary file is gone


def test_sending_without_an_image_keeps_the_image_img2img_has(webui):
    webui()
    assert tab._keep_empty("red, circle", "blue", None) == ("red, circle", "blue", gr.update())


def test_the_locked_sliders_show_the_models_values_before_the_first_extraction(webui, models_path):
    from easy_diffuser.engine import automatic_values

    webui()  # shapes-demo is configured: its own tau -1 and 8 negatives, read without loading the model
    assert automatic_values("shapes-demo", models_path / "easy_diffuser") == (-1.0, 8)
    assert automatic_values("ViT-L-14/openai", models_path / "easy_diffuser") == (1.5, 8)
    assert automatic_values(str(models_path), models_path / "easy_diffuser") is None  # a folder: known once loaded


def test_a_broken_kind_plugin_leaves_the_webui_working(webui, red_circle, monkeypatch, caplog):
    """A plugin that fails to import, or declares something that is no kind, is one warning line naming it:
    the extension loads, the tab builds and Extract works with the built-in kinds."""
    from importlib.metadata import EntryPoint

    from PIL import Image

    from easy_diffuser import registry

    broken = [
        EntryPoint("gone", "no_such_plugin_module:Kind", registry.ENTRY_POINT_GROUP),
        EntryPoint("impostor", "json:JSONDecoder", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: broken if group == registry.ENTRY_POINT_GROUP else [])
    registry.kinds.cache_clear()
    try:
        module = webui()
        assert "easy_diffuser_extract" in elem_ids(webui_host.build_page())  # the tab is on the page
        prompt, *_ = module.extract(Image.open(red_circle), None, TAB, Progress())
        assert "red" in prompt and "circle" in prompt
        warnings = [record.getMessage() for record in caplog.records if "kind plugin" in record.getMessage()]
        assert len(warnings) == 2 and "'gone'" in warnings[0] and "ModuleNotFoundError" in warnings[0]
        assert "'impostor'" in warnings[1] and "not a subclass" in warnings[1]
    finally:
        registry.kinds.cache_clear()


def test_a_mismatched_torchvision_is_one_line_when_the_webui_loads_the_extension(tmp_path):
    """As tests/test_torch_versions.py does for the commands: a stand-in torchvision that fails to import as one
    built for another torch does, first on the path of a webui process that loads the extension."""
    from test_torch_versions import NMS, expected_line, run

    stand_in = tmp_path / "stand-in" / "torchvision"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(f"raise RuntimeError({NMS!r})\n")
    load = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests/ui'); import webui_host; "
        f"module = webui_host.load_extension([], Path({str(tmp_path)!r})); print(type(module.extension).__name__)"
    )
    done = run(sys.executable, ["-c", load], stand_in.parent)
    assert done.returncode == 0 and done.stdout.strip().endswith("Extension"), done.stderr[-2000:]  # still loads
    lines = [line for line in done.stderr.splitlines() if "torchvision" in line]
    assert len(lines) == 1 and lines[0].startswith(f"Easy Diffuser: {expected_line()}")
