"""Non-finite scores in the webui: the HTTP routes answer a JSON 422 with one line (not a 500), the tab's status
line says it, Batch counts the image as failed and writes no caption. The CLI and the core: tests/test_non_finite.py.
"""

from __future__ import annotations

import base64
import io

import pytest

gr = pytest.importorskip("gradio")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from modules import devices, processing, script_callbacks, sd_models, shared  # noqa: E402
from PIL import Image  # noqa: E402
from test_adapter import TAB, Progress  # noqa: E402  the tab's starting values, gr.Progress's stand-in

from easy_diffuser.options import CAPTION_FILE_OPTIONS  # noqa: E402

import webui_host  # noqa: E402
from taggers import set_nan, write_tagger  # noqa: E402

EXTRACT = "/easy-diffuser/v1/extract"
REFINE = "/easy-diffuser/v1/refine"
DAMAGED = "gave non-finite scores for this image: its weights may be damaged (NaN/inf); re-download them"


@pytest.fixture(scope="module")
def nan_tagger(tmp_path_factory):
    folder = write_tagger(tmp_path_factory.mktemp("wd") / "wd-nan")
    set_nan(folder / "model.safetensors", "head.weight")
    return folder


@pytest.fixture
def webui(models_path, monkeypatch):
    """The stand-in webui with `model` selected and a checkpoint loaded -> (HTTP client, the tab's handlers)."""
    monkeypatch.setattr(devices, "device_interrogate", devices.cpu)
    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})

    def start(model: str) -> tuple[TestClient, object]:
        module = webui_host.load_extension(["--api"], models_path)
        shared.opts.easy_diffuser_model = model
        app = FastAPI()
        script_callbacks.app_started_callback(object(), app)
        return TestClient(app), module.extension.handlers

    return start


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def one_line_422(response, model: str) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"image: the model {model}") and detail.endswith(DAMAGED) and "\n" not in detail
    return detail


def test_http_extract_and_refine_answer_a_json_422_for_a_nan_tagger(webui, nan_tagger, red_circle):
    client, _ = webui(str(nan_tagger))
    image = base64.b64encode(red_circle.read_bytes()).decode()
    one_line_422(client.post(EXTRACT, json={"image": image}), nan_tagger.name)
    before = len(processing.calls)
    one_line_422(client.post(REFINE, json={"image": image, "prompt": "red", "rounds": 1}), nan_tagger.name)
    assert len(processing.calls) == before  # the source is scored first: nothing is generated for nothing


def test_http_fails_only_the_image_the_model_cannot_score(webui, shapes_model, red_circle, blank_images_give_nan):
    client, _ = webui(shapes_model)
    one_line_422(client.post(EXTRACT, json={"image": b64(Image.new("RGB", (64, 64), "white"))}), shapes_model)
    good = client.post(EXTRACT, json={"image": base64.b64encode(red_circle.read_bytes()).decode()})
    assert good.status_code == 200 and "red" in good.json()["prompt"]


def test_the_tab_says_it_in_the_status_line_and_batch_counts_it(webui, nan_tagger, red_circle, tmp_path):
    _, tab = webui(str(nan_tagger))
    kept = object()  # the last good extraction stays
    prompt, negative, bars, status, _, _, state = tab.extract(Image.open(red_circle), kept, TAB, Progress())
    assert "easy-diffuser-error" in status and DAMAGED in status and state is kept
    *_, last = tab.refine(Image.open(red_circle), "red", "", 1, 1, 64, 64, 1, progress=Progress())
    assert "easy-diffuser-error" in last[1] and DAMAGED in last[1]
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(red_circle.read_bytes())
    batch = {**TAB, **{option.name: option.default for option in CAPTION_FILE_OPTIONS}, "replace_tags": ""}
    summary = tab.caption(str(folder), False, batch, Progress())
    assert "0 captioned, 0 already captioned, 1 failed" in summary and DAMAGED in summary
    assert list(folder.glob("*.txt")) == []
