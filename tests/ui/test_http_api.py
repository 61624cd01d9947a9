"""The HTTP routes as the webui serves them: registered by on_app_started, behind --api and --api-auth."""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("gradio")  # the adapter that registers the routes is built on it
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from modules import call_queue, script_callbacks, shared  # noqa: E402
from PIL import Image  # noqa: E402

from easy_diffuser import models  # noqa: E402
from easy_diffuser.webui import service  # noqa: E402

import webui_host  # noqa: E402

EXTRACT = "/easy-diffuser/v1/extract"
MODELS = "/easy-diffuser/v1/models"


def start_webui(args: list[str], models_path, model: str, webui: bool = True) -> FastAPI:
    """A webui started with `args`; webui=False is --nowebui, where demo is None."""
    webui_host.load_extension(args, models_path)
    shared.opts.easy_diffuser_model = model
    app = FastAPI()
    script_callbacks.app_started_callback(object() if webui else None, app)
    return app


@pytest.fixture(scope="module")
def image_b64(red_circle) -> str:
    return base64.b64encode(red_circle.read_bytes()).decode()


@pytest.fixture(scope="module")
def client(models_path, shapes_model) -> TestClient:
    return TestClient(start_webui(["--api"], models_path, shapes_model))


def test_extract_answers_prompts_and_scored_tags(client, image_b64):
    response = client.post(EXTRACT, json={"image": image_b64, "max_tags": 8, "weights": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "red" in body["prompt"] and "circle" in body["prompt"]
    assert {"tag", "score", "category", "role"} <= set(body["tags"][0])
    negatives = [tag["tag"] for tag in body["tags"] if tag["role"] == "negative"]
    assert body["negative_prompt"] == ", ".join(negatives)
    assert body["tau_source"] and body["preset"] is None  # a CLIP model takes no family preset


def test_a_data_url_works_too(client, image_b64):
    response = client.post(EXTRACT, json={"image": f"data:image/png;base64,{image_b64}"})
    assert response.status_code == 200, response.text
    assert "red" in response.json()["prompt"]


def test_models_lists_the_choices_and_what_auto_means(client, shapes_model):
    body = client.get(MODELS).json()
    names = [entry["name"] for entry in body["models"]]
    assert names[0] == "Auto" and "ViT-L-14/openai" in names and shapes_model in names
    assert body["selected"] == shapes_model and body["resolved"] == shapes_model


@pytest.mark.parametrize(
    "payload, status, detail",
    [
        ({"image": "not base64 at all!"}, 400, "not valid base64"),
        ({"image": base64.b64encode(b"just some text").decode()}, 400, "not an image"),
        ({"image": "data:image/png,rawbytes"}, 400, "base64"),
        ({"image": 42}, 422, None),
        ({}, 422, None),
        ({"image": "aGk=", "max_tags": "many"}, 422, None),
        ({"image": "aGk=", "max_tags": 0}, 422, None),
        ({"image": "aGk=", "weights": "yes"}, 422, None),
        ({"image": "aGk=", "tau": "high"}, 422, None),
        ({"image": "aGk=", "caption": {"beams": 0}}, 422, "caption.beams"),
        ({"image": "aGk=", "caption": 3}, 422, None),
    ],
)
def test_bad_input_gets_a_4xx_json_answer(client, payload, status, detail):
    response = client.post(EXTRACT, json=payload)
    assert response.status_code == status
    assert "detail" in response.json()
    if detail:
        assert detail in response.json()["detail"]


def test_a_body_that_is_not_json_is_refused(client):
    response = client.post(EXTRACT, content=b"\x89PNG...", headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422) and response.json()  # fastapi 0.94 says 400, 0.104 says 422


def test_only_listed_captioners_can_be_asked_for(client, image_b64):
    response = client.post(EXTRACT, json={"image": image_b64, "caption": "someone/any-hub-model"})
    assert response.status_code == 400 and "is not one of true, false, Salesforce/blip" in response.json()["detail"]
    assert client.post(EXTRACT, json={"image": image_b64, "caption": False}).json()["caption"] == ""


def test_an_unknown_model_is_refused_before_any_loading(client, image_b64):
    response = client.post(EXTRACT, json={"image": image_b64, "model": "/etc/passwd"})
    assert response.status_code == 400
    assert "is not one of" in response.json()["detail"]


def test_weights_that_cannot_be_had_are_a_503_with_the_fix(models_path, image_b64, tmp_path):
    client = TestClient(start_webui(["--api"], models_path, str(tmp_path / "ViT-L-14-openai.safetensors")))
    response = client.post(EXTRACT, json={"image": image_b64})
    assert response.status_code == 503
    assert "no such checkpoint file" in response.json()["detail"]


def test_no_routes_without_api_but_with_nowebui(models_path, shapes_model):
    assert TestClient(start_webui([], models_path, shapes_model)).get(MODELS).status_code == 404
    assert TestClient(start_webui([], models_path, shapes_model, webui=False)).get(MODELS).status_code == 200


def test_api_auth_is_checked_as_the_webui_checks_it(models_path, shapes_model, image_b64):
    client = TestClient(start_webui(["--api", "--api-auth", "alice:secret,bob:pa:ss"], models_path, shapes_model))
    for path, call in (
        (MODELS, client.get),
        (EXTRACT, lambda path, **kw: client.post(path, json={"image": image_b64}, **kw)),
    ):
        missing = call(path)
        assert missing.status_code == 401 and missing.json()
        assert call(path, auth=("alice", "wrong")).status_code == 401
        denied = call(path, auth=("mallory", "secret"))
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Basic"
        assert call(path, auth=("alice", "secret")).status_code == 200
        assert call(path, auth=("bob", "pa:ss")).status_code == 200


@pytest.fixture
def server(models_path, shapes_model):
    """The routes on a real uvicorn server, so requests really run side by side."""
    app = start_webui(["--api"], models_path, shapes_model)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_50_concurrent_requests_load_the_model_once(server, image_b64, monkeypatch):
    models.unload_models()
    loads, engines = [], []
    real_engine = service.Engine
    monkeypatch.setattr(models, "_loaded", models.LoadOnce(lambda *args: loads.append(args) or models._load(*args)))
    monkeypatch.setattr(service, "Engine", lambda *args, **kwargs: engines.append(args) or real_engine(*args, **kwargs))

    def post(index: int) -> httpx.Response:
        return httpx.post(server + EXTRACT, json={"image": image_b64, "max_tags": 4 + index % 8}, timeout=120)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses if r.status_code != 200][:3]
    assert all("red" in r.json()["prompt"] for r in responses)
    assert len(loads) == 1 and len(engines) == 1


def test_a_request_waiting_for_the_queue_lock_does_not_block_the_server(server, image_b64):
    with call_queue.queue_lock:  # the webui is generating an image
        waiting = ThreadPoolExecutor(1).submit(httpx.post, server + EXTRACT, json={"image": image_b64}, timeout=60)
        time.sleep(0.5)
        started = time.monotonic()
        assert httpx.get(server + MODELS, timeout=10).status_code == 200
        assert time.monotonic() - started < 2
        assert not waiting.done()
    assert waiting.result().status_code == 200


def test_big_images_are_fine(client):
    buffer = io.BytesIO()
    Image.new("RGB", (2048, 1536), "red").save(buffer, format="JPEG")
    response = client.post(EXTRACT, json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body, status, detail",
    [
        (b'{"image": "aGk=", "tau": NaN}', 400, "NaN is not a JSON number"),
        (b'{"image": "aGk=", "max_tags": Infinity}', 400, "Infinity is not a JSON number"),
        (b'{"image": "aGk=", "tau": -Infinity}', 400, "-Infinity is not a JSON number"),
        (b'{"image": "aGk=", "tau": 1e999}', 422, "tau: must be a number from -5 to 5"),  # json reads 1e999 as inf
        (b'{"image": "aGk=", "max_tags": 2.5}', 422, "max_tags: must be a whole number from 1 to 75, not 2.5"),
        (b'{"image": "aGk=", "max_tags": true}', 422, "max_tags: must be a whole number from 1 to 75, not True"),
        (b'{"image": "aGk=", "colour": "red"}', 422, "colour: is not an option"),
        (b'{"image": "aGk=", "caption": {"model": "microsoft/git-base-coco", "beams": 99}}', 422, "caption.beams"),
        (b'{"image": "aGk=", "caption": {"model": "evil/model"}}', 400, "caption: 'evil/model' is not one of"),
        (b'["image"]', 422, "body: must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "body: not valid JSON"),
        (b'{"image": "\xff\xfe"}', 400, "body: not valid JSON"),
        (b'{"image": null}', 422, "image: required"),
        (b'{"image": "aGk=", "max_tags": 1' + b"0" * 400 + b"}", 422, "max_tags: must be a whole number from 1 to"),
        (b'{"image": "aGk=", "tau": -1' + b"0" * 400 + b"}", 422, "tau: must be a number from -5 to 5"),
    ],
)
def test_every_field_is_checked_by_the_options_schema(client, body, status, detail):
    response = client.post(EXTRACT, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


@pytest.mark.parametrize("body", [{"x" * 2**20: 1}, {"image": "aGk=", "tau": "x" * 2**20}])
def test_a_refusal_quotes_only_a_short_piece_of_huge_input(client, body):
    response = client.post(EXTRACT, json=body)
    assert response.status_code == 422 and len(response.json()["detail"]) < 300


def test_the_answer_is_always_json_even_for_a_nan(client):
    response = client.post(EXTRACT, content=b'{"image": NaN}', headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["detail"]


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read_whole(models_path, shapes_model, image_b64):
    app = start_webui(["--api"], models_path, shapes_model)
    shared.opts.easy_diffuser_max_request_mb = 1
    client = TestClient(app)
    big = {"image": "A" * (2 * 1024 * 1024)}
    response = client.post(EXTRACT, json=big)
    assert response.status_code == 413 and "larger than 1 MB" in response.json()["detail"]

    def chunks():  # no Content-Length: the cap counts what arrives
        for _ in range(40):
            yield b"A" * 65536

    response = client.post(EXTRACT, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.post(EXTRACT, json={"image": image_b64}).status_code == 200  # a normal request still works
    shared.opts.easy_diffuser_max_request_mb = 50


@pytest.mark.parametrize("setting", [float("nan"), float("inf"), "50", 0, -1, None])
def test_a_limit_setting_the_page_cannot_produce_means_the_default(models_path, shapes_model, image_b64, setting):
    client = TestClient(start_webui(["--api"], models_path, shapes_model), raise_server_exceptions=False)
    shared.opts.easy_diffuser_max_request_mb = setting  # a hand-edited config.json
    try:
        assert client.post(EXTRACT, json={"image": image_b64}).status_code == 200
        response = client.post(EXTRACT, json={"image": "A" * (51 * 1024 * 1024)})
        assert response.status_code == 413 and "larger than 50 MB" in response.json()["detail"]
    finally:
        shared.opts.easy_diffuser_max_request_mb = 50


def test_missing_weights_do_not_unload_the_working_model(models_path, shapes_model, image_b64, tmp_path, monkeypatch):
    models.unload_models()
    loads = []
    monkeypatch.setattr(models, "_loaded", models.LoadOnce(lambda *args: loads.append(args) or models._load(*args)))
    client = TestClient(start_webui(["--api"], models_path, shapes_model))
    missing = str(tmp_path / "ViT-L-14-openai.safetensors")
    try:
        for _ in range(3):
            shared.opts.easy_diffuser_model = shapes_model
            assert client.post(EXTRACT, json={"image": image_b64}).status_code == 200
            shared.opts.easy_diffuser_model = missing
            assert client.post(EXTRACT, json={"image": image_b64}).status_code == 503
    finally:  # the setting is global: the tests after this one (and the module's client) use shapes-demo
        shared.opts.easy_diffuser_model = shapes_model
    assert [spec for spec, _ in loads].count(shapes_model) == 1  # loaded once, kept through three 503s


def test_options_describes_every_option(client):
    body = client.get("/easy-diffuser/v1/options").json()
    assert body["max_tags"] == {
        "type": "int",
        "default": 24,
        "help": body["max_tags"]["help"],
        "minimum": 1,
        "maximum": 75,
    }
    assert body["tau"]["null"] and body["caption"]["fields"]["beams"]["maximum"] == 16


def test_tag_replacements_apply_before_selection_and_a_bad_list_is_one_line(client, image_b64):
    plain = client.post(EXTRACT, json={"image": image_b64}).json()["prompt"].split(", ")
    assert "red" in plain
    renamed = client.post(EXTRACT, json={"image": image_b64, "replace_tags": "red,crimson"})
    assert renamed.json()["prompt"].split(", ") == ["crimson" if tag == "red" else tag for tag in plain]
    token = renamed.json()["reselect"]
    again = client.post(EXTRACT, json={"reselect": token, "replace_tags": "red,"}).json()["prompt"].split(", ")
    assert "red" not in again and "crimson" not in again
    refused = client.post(EXTRACT, json={"image": image_b64, "replace_tags": "red"})
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "replace_tags: must be old,new pairs separated by ; (\\, for a comma in a tag; 'red' is not one), not 'red'"
    )
    described = client.get("/easy-diffuser/v1/options").json()
    assert described["replace_tags"]["type"] == "old,new pairs separated by ;"
    assert described["caption_files"]["fields"]["existing"]["choices"] == ["skip", "overwrite", "append", "prepend"]


def test_reselect_answers_other_options_without_the_image_or_the_queue(client, image_b64):
    first = client.post(EXTRACT, json={"image": image_b64, "max_tags": 1})
    assert first.status_code == 200
    token = first.json()["reselect"]
    fresh = client.post(EXTRACT, json={"image": image_b64, "max_tags": 3, "negatives": 2}).json()
    with call_queue.queue_lock:  # a generation holds the queue: a re-selection still answers
        again = client.post(EXTRACT, json={"reselect": token, "max_tags": 3, "negatives": 2})
    assert again.status_code == 200, again.text
    assert (again.json()["prompt"], again.json()["negative_prompt"]) == (fresh["prompt"], fresh["negative_prompt"])
    assert len(again.json()["prompt"].split(", ")) == 3 and len(token) < 4096  # a token, not the image


@pytest.mark.parametrize(
    "payload, status, detail",
    [
        ({"reselect": "bm90IGEgdG9rZW4="}, 400, "reselect: not a token this server gave"),
        ({"reselect": "!!!"}, 400, "reselect: not a token this server gave"),
        (
            {"reselect": base64.urlsafe_b64encode(b"ViT-L-14/openai\0" + b"\0" * 128).decode()},
            409,
            "send the image again",
        ),
        ({"reselect": 5}, 422, "reselect: a token string"),
        ({"reselect": "x", "image": "aGk="}, 422, "reselect: a token string"),
        ({"reselect": "x", "caption": True}, 422, "caption: a caption needs the image"),
    ],
)
def test_a_bad_reselect_token_is_refused_in_one_line(client, image_b64, payload, status, detail):
    client.post(EXTRACT, json={"image": image_b64})  # the model is loaded
    response = client.post(EXTRACT, json=payload)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


def test_a_token_without_model_reselects_on_the_loaded_model_and_never_loads_the_configured_one(
    models_path, image_b64, monkeypatch
):
    """The settings name a model this server can't have; the image was extracted with `model`. Sending the token
    back alone loaded the settings' model first (here 503; online a 1.7 GB download) before comparing it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # loading ViT-L-14 would fail at once, not reach a network
    client = TestClient(start_webui(["--api"], models_path, "ViT-L-14/openai"))
    first = client.post(EXTRACT, json={"image": image_b64, "model": "shapes-demo", "max_tags": 1})
    assert first.status_code == 200, first.text
    again = client.post(EXTRACT, json={"reselect": first.json()["reselect"], "max_tags": 3})
    assert again.status_code == 200, again.text
    assert len(again.json()["prompt"].split(", ")) == 3


def test_a_token_without_model_when_nothing_is_loaded_is_409_without_loading(models_path, image_b64, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    token = TestClient(start_webui(["--api"], models_path, "shapes-demo")).post(EXTRACT, json={"image": image_b64})
    fresh = TestClient(start_webui(["--api"], models_path, "ViT-L-14/openai"))  # a restarted server: none loaded
    response = fresh.post(EXTRACT, json={"reselect": token.json()["reselect"]})
    assert response.status_code == 409 and "send the image again" in response.json()["detail"], response.text


@pytest.fixture(scope="module")
def tagger_folder(tmp_path_factory):
    from taggers import logits_for, write_tagger

    logits = logits_for({"general": 0.9, "1girl": 0.95, "smile": 0.5, "saber_(fate)": 0.9})
    return write_tagger(tmp_path_factory.mktemp("wd") / "wd-tiny", "vit", logits=logits)


def test_a_tagger_answers_booru_tags_and_reselects_by_threshold_from_its_token(models_path, tagger_folder, image_b64):
    client = TestClient(start_webui(["--api"], models_path, str(tagger_folder)))
    first = client.post(EXTRACT, json={"image": image_b64})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["prompt"] == r"1girl, saber \(fate\), general, smile"
    assert body["preset"] == "No preset (no checkpoint loaded)"  # the tab's status line says it too
    categories = {tag["tag"]: tag["category"] for tag in body["tags"]}
    assert (categories["1girl"], categories["saber (fate)"], categories["general"]) == (
        "general",
        "character",
        "rating",
    )
    with call_queue.queue_lock:  # no model pass: it answers while the queue is held
        again = client.post(EXTRACT, json={"reselect": body["reselect"], "general_threshold": 0.6})
    assert again.status_code == 200, again.text
    assert again.json()["prompt"] == r"1girl, saber \(fate\), general"
    pony = client.post(EXTRACT, json={"reselect": body["reselect"], "family": "pony"})
    assert pony.json()["preset"] == "Pony (chosen in the settings)" and pony.json()["prompt"].startswith("score_9")


def test_a_broken_tagger_folder_is_a_4xx_naming_the_file(models_path, tagger_folder, tmp_path, image_b64):
    broken = tmp_path / "wd-broken"
    broken.mkdir()
    for name in ("model.safetensors", "config.json"):
        (broken / name).write_bytes((tagger_folder / name).read_bytes())
    client = TestClient(start_webui(["--api"], models_path, str(broken)))
    response = client.post(EXTRACT, json={"image": image_b64})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(str(broken / "selected_tags.csv")) and "\n" not in detail


def _set(section: str, **values):
    def change(config: dict) -> None:
        (config[section] if section else config).update(values)

    return change


# Each crashed as a plain-text 500 (issue 24 §6); a broken folder was 422 on /extract but 503 on /refine.
BAD_TAGGER_VALUES = {
    "interpolation a list": ("config.json", _set("pretrained_cfg", interpolation=["bicubic"])),
    "input_size smaller than a patch": ("config.json", _set("pretrained_cfg", input_size=[3, 64, 1])),
    "a denormal std": ("config.json", _set("pretrained_cfg", std=[1e-320, 0.5, 0.5])),
    "checkpoint_path": ("config.json", _set("model_args", checkpoint_path="/tmp/evil.pth")),
    "a category int() can't read": ("selected_tags.csv", "²"),
    "a tag that is extra-network syntax": ("selected_tags.csv", "<lora:x:1>"),
}


@pytest.mark.parametrize("case", list(BAD_TAGGER_VALUES))
def test_a_bad_tagger_value_is_the_same_json_422_on_extract_and_refine(
    models_path, tagger_folder, tmp_path, image_b64, case
):
    import json

    name, change = BAD_TAGGER_VALUES[case]
    broken = tmp_path / "wd-broken"
    shutil.copytree(tagger_folder, broken)
    if name == "config.json":
        config = json.loads((broken / name).read_text())
        change(config)
        (broken / name).write_text(json.dumps(config))
    else:
        lines = (broken / name).read_text().splitlines()
        lines[2] = f"1,{change},0,5" if change.startswith("<") else f"1,sensitive,{change},5"
        (broken / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    client = TestClient(start_webui(["--api"], models_path, str(broken)))
    for route, body in ((EXTRACT, {"image": image_b64}), (REFINE, {"image": image_b64, "prompt": "red"})):
        response = client.post(route, json=body)
        assert response.status_code == 422 and response.headers["content-type"] == "application/json", response.text
        detail = response.json()["detail"]
        assert detail.startswith(str(broken / name)) and "\n" not in detail, detail


def resident_mb() -> int:
    pages = int(open("/proc/self/statm").read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident size from /proc")
@pytest.mark.parametrize("field, rounds", [("reselect", 13), ("image", 6)])
def test_memory_stays_bounded_under_repeated_large_bad_requests(server, image_b64, field, rounds):
    """Refused requests kept their body alive (exception -> traceback -> frames), twice over, until the garbage
    collector ran, and in the idle worker thread: 16 bodies of 49 MB took the server from 1.1 to 3.0 GB, and
    more rounds kept climbing. 52 refused 33 MB tokens (sibling: 24 images that aren't), 4 at a time, now leave
    the resident size where the first rounds took it. (33 MB: above glibc's largest mmap threshold, so a freed
    body goes back to the system at once and the resident size shows what is still held.)"""
    assert httpx.post(server + EXTRACT, json={"image": image_b64}, timeout=60).status_code == 200
    body = f'{{"{field}": "{"A" * (33 * 2**20)}"}}'.encode()  # a token too long; base64 of no image

    def post(_: int) -> int:
        response = httpx.post(server + EXTRACT, content=body, headers={"Content-Type": "application/json"}, timeout=120)
        return response.status_code

    sizes = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(rounds):
            assert set(pool.map(post, range(4))) == {400}
            sizes.append(resident_mb())
    print(f"resident MB after each round of 4 refused {field} requests: {sizes}")
    assert max(sizes[2:]) - max(sizes[:2]) < 150, sizes


REFINE = "/easy-diffuser/v1/refine"


def test_refine_generates_in_process_and_answers_the_rounds_and_the_best_pair(client, image_b64, monkeypatch):
    from modules import processing, sd_models

    monkeypatch.setattr(sd_models, "checkpoints_list", {"stand-in.safetensors": object()})
    before = len(processing.calls)
    body = {"image": image_b64, "prompt": "red", "negative_prompt": "", "rounds": 2, "seeds": 1, "width": 64}
    response = client.post(REFINE, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["rounds"][0]["prompt"] == "red" and {"circle", "large"} & set(result["rounds"][0]["lost"])
    assert result["best"]["loss"] == min(r["loss"] for r in result["rounds"]) < result["rounds"][0]["loss"]
    assert "circle" in result["best"]["prompt"] and not result["stopped"] and result["error"] == ""
    calls = processing.calls[before:]
    assert len(calls) == len(result["rounds"]) and all(c.do_not_save_samples and c.width == 64 for c in calls)
    check = client.post(REFINE, json={"image": image_b64, "prompt": "red, circle", "rounds": 0}).json()
    assert len(check["rounds"]) == 1 and check["best"]["round"] == 0


@pytest.mark.parametrize(
    "payload, status, detail",
    [
        ({"prompt": "red", "rounds": 17}, 422, "rounds: must be a whole number from 0 to 16, not 17"),
        ({"prompt": "red", "width": 4096}, 422, "width: must be a whole number from 64 to 2048, not 4096"),
        ({"prompt": "red", "steps": 0}, 422, "steps: must be a whole number from 1 to 150, not 0"),
        ({"prompt": "red", "tau": 1}, 422, "tau: is not a refine option"),
        ({}, 422, "prompt"),
        ({"prompt": "red, " * 2001}, 422, "prompt: must be text of at most 10,000 characters"),
        ({"prompt": "red", "negative_prompt": "b" * 10_001}, 422, "negative_prompt: must be text of at most 10,000"),
        ({"prompt": "(red:1" + "0" * 400 + ")"}, 422, "prompt: the weight of (red:1000"),
    ],
)
def test_refine_refuses_bad_fields_with_the_schema_message(client, image_b64, payload, status, detail):
    response = client.post(REFINE, json={"image": image_b64, **payload})
    assert response.status_code == status and detail in response.json()["detail"]


def test_refine_without_a_checkpoint_is_a_503_that_says_so(client, image_b64, monkeypatch):
    from modules import processing, sd_models

    monkeypatch.setattr(sd_models, "checkpoints_list", {})
    before = len(processing.calls)
    response = client.post(REFINE, json={"image": image_b64, "prompt": "red"})
    assert response.status_code == 503
    assert "the webui has none" in response.json()["detail"] and len(processing.calls) == before
