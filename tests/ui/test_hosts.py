"""The extension in each host the stand-in stands for (webui_host.HOSTS): AUTOMATIC1111, and Forge Classic and
reForge on the old Forge backend, whose memory manager (ldm_patched.modules.model_management) places our models."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import torch  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from modules import script_callbacks, shared  # noqa: E402
from PIL import Image  # noqa: E402
from test_adapter import TAB, Progress  # noqa: E402

from easy_diffuser.webui import tab  # noqa: E402

import webui_host  # noqa: E402

GPU = torch.device("cuda")  # the stand-in GPU: counted by the stand-in manager, never allocated
GIB = 1024**3
OLD_FORGE_BACKEND = ["forge-classic", "reforge"]


@pytest.fixture
def webui(monkeypatch, models_path, shapes_model):
    """Start the stand-in webui as a host of webui_host.HOSTS with a command line; gives the script module and the
    host's memory manager (None for A1111)."""

    def start(host: str, *args: str):
        manager = webui_host.become(host, monkeypatch)
        module = webui_host.load_extension(list(args), models_path)
        shared.opts.easy_diffuser_model = shapes_model
        return module.extension.handlers, manager

    yield start
    webui_host.forget_backend()


class Network(torch.nn.Module):
    """A model of `size` bytes that takes no memory (its weight is on the meta device). With `device_property`, its
    `device` is read-only, as a transformers model's."""

    def __init__(self, size: int, device_property: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(size // 4, device="meta"))
        if device_property:
            self.__class__ = type("PreTrainedLike", (Network,), {"device": property(lambda self: self.weight.device)})


def on_the_gpu(manager) -> list:
    """The models the manager holds on the stand-in GPU, ours unwrapped from its holder."""
    models = [entry.model.model for entry in manager.current_loaded_models if entry.device == GPU]
    return [getattr(model, "model", model) for model in models]


def gpu_holds(manager, *models) -> bool:
    """Whether the manager holds exactly these models (each with a `model`) on the GPU, in any order (reForge
    loads a list in set order)."""
    return sorted(map(id, on_the_gpu(manager))) == sorted(id(model.model) for model in models)


@pytest.mark.parametrize("host", webui_host.HOSTS)
def test_the_extension_loads_extracts_and_sends_in_every_host(webui, host, red_circle):
    """Forge Classic failed here: `ImportError: cannot import name 'lowvram' from 'modules'` when the script loaded."""
    module, manager = webui(host, "--no-half")
    assert "easy_diffuser_keep_in_vram" in shared.opts.data_labels
    prompt, negative, *_ = module.extract(Image.open(red_circle), None, TAB, Progress())
    assert "red" in prompt.split(", ") and negative
    page = webui_host.build_page()
    assert "easy_diffuser_prompt" in {getattr(block, "elem_id", None) for block in page.blocks.values()}
    txt2img = [field.elem_id for field in module.host.prompt_fields("txt2img")]
    assert txt2img == ["txt2img_prompt", "txt2img_neg_prompt"]  # where Send puts the prompts
    assert tab._keep_empty(prompt, negative, None)[:2] == (prompt, negative)
    if manager is not None:  # the model went in through the host's memory manager and back out
        (patcher,) = {call[1] for call in manager.calls if call[0] in ("load", "unload")}
        assert [call[0] for call in manager.calls if call[0] != "soft_empty_cache"] == ["load", "unload"]
        assert patcher.model.model is module.service.engine.loaded.model and manager.current_loaded_models == []


@pytest.mark.parametrize("host", webui_host.HOSTS)
def test_the_http_route_answers_behind_api_auth_in_every_host(webui, host, red_circle):
    webui(host, "--api", "--api-auth", "alice:secret")
    app = FastAPI()
    script_callbacks.app_started_callback(object(), app)
    client = TestClient(app)
    image = base64.b64encode(red_circle.read_bytes()).decode()
    url = "/easy-diffuser/v1/extract"
    assert client.post(url, json={"image": image}).status_code == 401
    assert client.post(url, json={"image": "not base64!"}, auth=("alice", "secret")).status_code == 400
    answer = client.post(url, json={"image": image}, auth=("alice", "secret"))
    assert answer.status_code == 200 and "red" in answer.json()["prompt"]


@pytest.mark.parametrize("host", webui_host.HOSTS)
def test_check_generates_through_the_hosts_own_txt2img(webui, host, red_circle, monkeypatch):
    """reForge's txt2img reads p.scripts.alwayson_scripts where A1111 first asks whether p.scripts is None: Check
    and Refine failed there with an AttributeError, in the real host, until each image got an empty ScriptRunner."""
    from modules import processing, sd_models

    webui(host, "--api")
    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})
    app = FastAPI()
    script_callbacks.app_started_callback(object(), app)
    image = base64.b64encode(red_circle.read_bytes()).decode()
    body = {"image": image, "prompt": "red, circle", "rounds": 0, "width": 64}
    answer = TestClient(app).post("/easy-diffuser/v1/refine", json=body).json()
    assert answer["error"] == "" and len(answer["rounds"]) == 1 and processing.calls[-1].width == 64


@pytest.mark.parametrize("host", OLD_FORGE_BACKEND)
def test_the_old_forge_backend_makes_room_for_our_model_and_takes_it_back(webui, host, monkeypatch):
    """On a GPU of 8 GiB with a 6 GiB checkpoint loaded, our 1 GiB model does not fit beside it with the manager's
    1 GiB of room for inference: load_models_gpu evicts the checkpoint first. Never both on the GPU together."""
    module, manager = webui(host)
    from ldm_patched.modules.model_patcher import ModelPatcher

    monkeypatch.setattr(manager, "torch_device", GPU)
    monkeypatch.setattr(manager, "total_vram", 8 * GIB)
    checkpoint = ModelPatcher(torch.nn.Linear(1, 1), load_device=GPU, offload_device=torch.device("cpu"), size=6 * GIB)
    manager.load_models_gpu([checkpoint])  # the host generating
    ours, placement = SimpleNamespace(model=Network(GIB)), module.host.placement()
    assert (placement.device, placement.dtype) == (GPU, torch.float16)

    placement.acquire(ours)
    assert on_the_gpu(manager) == [ours.model] and manager.get_free_memory(GPU) == 7 * GIB
    patcher = manager.current_loaded_models[0].model
    assert (patcher.load_device, patcher.offload_device) == (GPU, torch.device("cpu"))
    placement.release(ours)
    assert on_the_gpu(manager) == [] and manager.calls[-2:] == [("unload", patcher), ("soft_empty_cache",)]

    shared.opts.easy_diffuser_keep_in_vram = True
    placement.acquire(ours)
    placement.release(ours)
    assert on_the_gpu(manager) == [ours.model]  # kept, until the manager needs the room
    manager.load_models_gpu([checkpoint])
    assert on_the_gpu(manager) == [checkpoint.model]


def test_reforge_loads_our_model_whole_and_writes_nothing_onto_it(webui, monkeypatch):
    """reForge's manager loads the part of a model that fits and leaves the rest on the CPU (its own models' layers
    cast their weights; ours would fail), and its patcher sets `device` on the module it holds, which a transformers
    model refuses: our model goes in whole, inside a holder."""
    module, manager = webui("reforge")
    monkeypatch.setattr(manager, "torch_device", GPU)
    monkeypatch.setattr(manager, "total_vram", 8 * GIB)
    ours, placement = SimpleNamespace(model=Network(7 * GIB + GIB // 2, device_property=True)), module.host.placement()
    placement.acquire(ours)
    (load,) = [call for call in manager.calls if call[0] == "load"]
    assert load[2] is True  # whole: a partial load would have kept 1 GiB of it on the CPU
    assert not hasattr(ours.model, "model_loaded_weight_memory") and ours.model.device.type == "meta"


def test_forge_classic_has_no_low_vram_flags_and_needs_none(webui):
    module, manager = webui("forge-classic")
    assert not hasattr(shared.cmd_opts, "lowvram")  # the host's command line has no such flag
    with pytest.raises(SystemExit):
        shared.make_parser().parse_args(["--lowvram"])
    placement = module.host.placement()
    assert placement.device == manager.text_encoder_device()  # no devices.device_interrogate to ask


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """A tiny random BLIP captioner in its real file layout, for the tab's caption checkbox."""
    from tiny_captioners import build_blip

    torch.manual_seed(0)
    return str(build_blip(tmp_path_factory.mktemp("captioner") / "blip"))


@pytest.mark.parametrize("host", OLD_FORGE_BACKEND)
def test_the_captioner_goes_through_the_old_forge_backend_too(webui, host, red_circle, blip):
    """The captioner moved itself onto the manager's device, past the manager, beside whatever the checkpoint
    held there: now the manager loads it beside our model, and takes it back first."""
    module, manager = webui(host, "--no-half")
    prompt, *_ = module.extract(
        Image.open(red_circle), None, {**TAB, "caption": True, "caption_model": blip}, Progress()
    )
    ours = module.service.engine.loaded.model
    moves = [(call[0], call[1].model.model) for call in manager.calls if call[0] in ("load", "unload")]
    captioner = next(model for _, model in moves if model is not ours)
    assert type(captioner).__name__ == "BlipForConditionalGeneration" and prompt
    assert moves[0] == ("load", ours) and ("load", captioner) in moves  # reForge loads ours again beside it
    assert moves[-2:] == [("unload", captioner), ("unload", ours)] and manager.current_loaded_models == []


@pytest.mark.parametrize("host", OLD_FORGE_BACKEND)
def test_the_captioner_and_our_model_never_overcommit_the_gpu_with_the_checkpoint(webui, host, monkeypatch):
    """8 GiB GPU, a 5 GiB checkpoint: our 1 GiB model fits beside it; the 2 GiB captioner does not, and the
    manager evicts the checkpoint for it, never our model that is in use. Kept in VRAM, both stay for the next use
    and are handed over as the same patchers."""
    module, manager = webui(host)
    from ldm_patched.modules.model_patcher import ModelPatcher

    monkeypatch.setattr(manager, "torch_device", GPU)
    monkeypatch.setattr(manager, "total_vram", 8 * GIB)
    checkpoint = ModelPatcher(torch.nn.Linear(1, 1), load_device=GPU, offload_device=torch.device("cpu"), size=5 * GIB)
    manager.load_models_gpu([checkpoint])
    placement = module.host.placement()
    ours, captioner = SimpleNamespace(model=Network(GIB)), SimpleNamespace(model=Network(2 * GIB, True))

    placement.acquire(ours)
    assert gpu_holds(manager, ours, checkpoint)
    placement.acquire(captioner)
    assert gpu_holds(manager, ours, captioner) and manager.get_free_memory(GPU) == 5 * GIB
    placement.release(captioner)
    assert gpu_holds(manager, ours)
    placement.release(ours)
    assert gpu_holds(manager)

    shared.opts.easy_diffuser_keep_in_vram = True
    for use in (placement.acquire, placement.release):
        use(ours), use(captioner)
    kept = [entry.model for entry in manager.current_loaded_models]
    assert gpu_holds(manager, ours, captioner)  # until the manager needs the room
    placement.acquire(ours), placement.acquire(captioner)
    assert {id(entry.model) for entry in manager.current_loaded_models} == {id(patcher) for patcher in kept}
    assert len(manager.current_loaded_models) == 2  # the same patchers again: nothing counted twice


def test_releasing_a_model_never_handed_over_leaves_reforges_list_alone(webui, monkeypatch):
    """reForge's list keeps entries whose patcher is gone (their model reads None) until it cleans up; a release
    after a failed acquire has no patcher either, and must not take those entries for its own."""
    module, manager = webui("reforge")
    from ldm_patched.modules.model_patcher import ModelPatcher

    gone = ModelPatcher(torch.nn.Linear(1, 1), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    manager.load_models_gpu([gone])
    del gone
    manager.calls.clear()  # the stand-in's record of it: the last reference
    (dead,) = manager.current_loaded_models
    assert dead.model is None
    module.host.placement().release(SimpleNamespace(model=Network(GIB)))
    assert manager.current_loaded_models == [dead]
