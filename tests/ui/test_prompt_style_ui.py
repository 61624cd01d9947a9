"""The prompt style in the webui: the loaded checkpoint's family as the host tells it, the tab's re-selection
between styles, and the HTTP route; with shapes-demo and a tiny random Qwen2-VL placed as the default describer."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("gradio")
pytest.importorskip("transformers")

from fastapi.testclient import TestClient  # noqa: E402
from modules import call_queue, devices, sd_models  # noqa: E402
from PIL import Image  # noqa: E402
from test_http_api import EXTRACT, start_webui  # noqa: E402

from easy_diffuser.captioner import Describer  # noqa: E402
from easy_diffuser.embedding import token_count  # noqa: E402
from easy_diffuser.engine import Engine  # noqa: E402
from easy_diffuser.options import DEFAULT_DESCRIBER, ExtractOptions  # noqa: E402
from easy_diffuser.prompt_style import t5_token_bound  # noqa: E402
from easy_diffuser.webui import controls  # noqa: E402

import webui_host  # noqa: E402


class Flux:  # named as Forge's backend.diffusion_engine.flux.Flux
    def __init__(self, tokenizer=None) -> None:
        self.sd_checkpoint_info = SimpleNamespace(filename="/models/Stable-diffusion/my-finetune.safetensors")
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False
        if tokenizer is not None:
            self.text_processing_engine_t5 = SimpleNamespace(tokenizer=tokenizer)


@pytest.fixture
def host(models_path, monkeypatch):
    monkeypatch.setattr(devices, "device_interrogate", devices.cpu)
    monkeypatch.setattr(sd_models.model_data, "sd_model", None)
    return webui_host.load_extension([], models_path).extension.host


def test_the_host_tells_the_checkpoint_family_from_forges_class_flags_metadata_or_name(host, monkeypatch):
    assert host.checkpoint()[0].reason == "no checkpoint is known"
    monkeypatch.setattr(sd_models.model_data, "sd_model", Flux())
    family, counter = host.checkpoint()
    assert family.family.name == "flux" and family.reason == "the loaded model is a Flux" and counter is None
    a1111 = SimpleNamespace(is_sd1=False, is_sd2=False, is_sdxl=False, is_sd3=True, sd_checkpoint_info=None)
    monkeypatch.setattr(sd_models.model_data, "sd_model", a1111)
    assert host.checkpoint()[0].family.name == "sd3"
    info = SimpleNamespace(filename="/m/anything.safetensors", metadata={"modelspec.architecture": "Flux.1-dev"})
    monkeypatch.setattr(sd_models.model_data, "sd_model", SimpleNamespace(sd_checkpoint_info=info))
    assert host.checkpoint()[0].family.name == "flux"
    info = SimpleNamespace(filename="/m/sd_xl_base_1.0.safetensors", metadata={})
    monkeypatch.setattr(sd_models.model_data, "sd_model", SimpleNamespace(sd_checkpoint_info=info))
    assert host.checkpoint()[0].family.name == "sdxl"


def test_the_hosts_detection_also_picks_a_taggers_preset_reading_the_header_where_the_webui_kept_none(
    host, monkeypatch, tmp_path
):
    from safetensors.numpy import save_file

    from easy_diffuser import families

    def preset(info) -> str:
        monkeypatch.setattr(sd_models.model_data, "sd_model", SimpleNamespace(sd_checkpoint_info=info))
        return families.choose("automatic", host.checkpoint()[0]).status

    path = tmp_path / "myFavouriteMix.safetensors"
    save_file({"x": np.zeros(1, np.float32)}, str(path), metadata={"ss_output_name": "ponyXL"})
    expected = "Pony (from the checkpoint's metadata ss_output_name: ponyXL)"
    assert preset(SimpleNamespace(filename=str(path), metadata={"ss_output_name": "ponyXL"})) == expected
    assert preset(SimpleNamespace(filename=str(path))) == expected  # a host without the webui's copy: read here
    title = SimpleNamespace(title="ponyDiffusionV6XL_v6.safetensors [67ab2fd8ec]")  # no file: its title
    assert preset(title) == "Pony (from the checkpoint name ponyDiffusionV6XL_v6)"
    damaged = tmp_path / "animagineXL40.safetensors"
    damaged.write_bytes(b"\xff" * 64)  # a damaged header is no error here: the name still tells
    assert preset(SimpleNamespace(filename=str(damaged))) == "Animagine XL 4.0 (from the checkpoint name animagineXL40)"


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than Python's stack: a RecursionError
        b'{"__metadata__": ' + b"9" * 5_000 + b"}",  # a number past int()'s 4,300 digits
    ],
)
def test_a_hostile_header_leaves_the_checkpoint_to_its_name_with_one_warning(
    host, monkeypatch, tmp_path, capsys, header
):
    import struct

    path = tmp_path / "sd_xl_base_1.0.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    monkeypatch.setattr(
        sd_models.model_data, "sd_model", SimpleNamespace(sd_checkpoint_info=SimpleNamespace(filename=str(path)))
    )
    assert host.checkpoint()[0].family.name == host.checkpoint()[0].family.name == "sdxl"  # read twice, warned once
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and f"{path}: not a safetensors file" in warning[0] and "family" in warning[0]


def test_under_forges_flux_the_t5_budget_is_counted_with_its_tokenizer(host, monkeypatch):
    words = lambda text: SimpleNamespace(input_ids=text.split() + ["</s>"])  # noqa: E731
    monkeypatch.setattr(sd_models.model_data, "sd_model", Flux(words))
    family, counter = host.checkpoint()
    assert counter("a red circle") == 4


@pytest.fixture(scope="module")
def engine(shapes_model, models_path):
    return Engine(shapes_model, "cpu", cache_dir=models_path / "easy_diffuser")


def test_switching_styles_reselects_without_a_model_pass_once_the_image_has_a_description(
    engine, describer_placed, red_circle, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = Image.open(red_circle)
    tags_only = controls.extract(engine, image, ExtractOptions(prompt_style="tags"))
    with pytest.raises(ValueError, match="needs a description of this image: press Extract"):
        controls.reselect(engine, tags_only, ExtractOptions(prompt_style="sentences"))
    described = controls.extract(engine, image, ExtractOptions(prompt_style="sentences"))
    caption = described.result.caption
    assert described.caption.model == DEFAULT_DESCRIBER and caption
    prompt, _ = controls.tab_prompts(described, weights=False)
    assert prompt.startswith(caption) and t5_token_bound(prompt) <= 512
    passes = []
    monkeypatch.setattr(Engine, "encode", lambda *args: passes.append("clip"))
    monkeypatch.setattr(Describer, "caption", lambda *args: passes.append("describer"))
    as_tags = controls.reselect(engine, described, ExtractOptions(prompt_style="tags"))
    assert as_tags.result.prompt_style == "tags" and caption.startswith(as_tags.result.caption)  # cut to fit
    prompt, _ = controls.tab_prompts(as_tags, weights=False)
    assert prompt.startswith(as_tags.result.caption) and token_count(engine.loaded, prompt) <= 75
    back = controls.reselect(engine, as_tags, ExtractOptions(prompt_style="sentences"))
    assert back.result.prompt_style == "sentences" and passes == []


@pytest.fixture(scope="module")
def client(models_path, shapes_model, describer_placed):
    return TestClient(start_webui(["--api"], models_path, shapes_model))


def test_http_sentences_and_automatic_under_flux(client, red_circle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = base64.b64encode(red_circle.read_bytes()).decode()
    answer = client.post(EXTRACT, json={"image": image, "prompt_style": "sentences"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["prompt_style"] == "sentences" and body["caption"] and body["prompt"].startswith(body["caption"])
    assert "prompt style sentences (chosen)" in body["prompt_style_note"]
    with call_queue.queue_lock:  # a re-selection that needs the describer is refused at once, not queued
        again = client.post(EXTRACT, json={"reselect": body["reselect"], "prompt_style": "sentences"})
    assert again.status_code == 422 and "needs the image" in again.json()["detail"]
    monkeypatch.setattr(sd_models.model_data, "sd_model", Flux())
    body = client.post(EXTRACT, json={"image": image}).json()
    assert body["prompt_style"] == "sentences" and "automatic: sentences for Flux" in body["prompt_style_note"]
    assert "ignore the negative prompt" in body["prompt_style_note"]
    refused = client.post(EXTRACT, json={"image": image, "prompt_style": "booru"})
    assert refused.status_code == 422 and "booru is the prompt of a booru tagger model" in refused.json()["detail"]
    refused = client.post(EXTRACT, json={"image": image, "prompt_style": "prose"})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("prompt_style: must be one of")
