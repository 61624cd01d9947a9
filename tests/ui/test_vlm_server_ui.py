"""A VLM server in the webui: the Settings section names it, the tab shows its description (in a real browser,
under whichever gradio the venv has) and the HTTP route answers with it; a server that is down is the status
line or a 503, and the tab keeps working. The server is tests/vlm_server.py's stand-in on 127.0.0.1, and the
host's transformers is made A1111's 4.30.2, which has no in-process describer."""

from __future__ import annotations

import base64
import importlib
import re
import socket
from types import SimpleNamespace

import pytest

gr = pytest.importorskip("gradio")
pytest.importorskip("transformers")

from fastapi.testclient import TestClient  # noqa: E402
from modules import shared  # noqa: E402
from test_http_api import EXTRACT, start_webui  # noqa: E402
from vlm_server import PARAGRAPH, StandInServer  # noqa: E402

from easy_diffuser.models import ModelError  # noqa: E402
from easy_diffuser.options import DEFAULT_INSTRUCTION, SERVER_OPTION  # noqa: E402
from easy_diffuser.webui import settings  # noqa: E402

KEY = "sk-webui-setting-key-0123456789"


@pytest.fixture(autouse=True)
def a1111_transformers(monkeypatch):
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", "4.30.2")


def use_server(url: str, key: str = "") -> None:
    shared.opts.easy_diffuser_caption_url = url
    shared.opts.easy_diffuser_caption_server_model = "stand-in-vlm"
    shared.opts.easy_diffuser_caption_api_key = key


def down_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1"


def test_the_settings_section_has_the_server_from_the_schema_and_hides_the_key():
    defined = {setting.key: setting for setting in settings.definitions(None)}
    assert defined["caption_url"].default == "" and defined["caption_url"].label == SERVER_OPTION["url"].label
    assert defined["caption_server_model"].default == ""
    assert defined["caption_instruction"].default == DEFAULT_INSTRUCTION
    assert defined["caption_concurrency"].args == {"minimum": 1, "maximum": 64, "step": 1}
    assert defined["caption_api_key"].args == {"type": "password"} and defined["caption_api_key"].default == ""


def test_the_settings_key_wins_over_the_environment_and_a_bad_url_is_one_line(monkeypatch):
    monkeypatch.setenv("EASY_DIFFUSER_API_KEY", "from-the-environment")
    defaults = {f"easy_diffuser_{setting.key}": setting.default for setting in settings.definitions(None)}

    def opts(url: str, key: str = "") -> SimpleNamespace:
        given = {"caption_url": url, "caption_server_model": "m", "caption_api_key": key}
        return SimpleNamespace(**{**defaults, **{f"easy_diffuser_{name}": value for name, value in given.items()}})

    assert settings.describer(opts("http://127.0.0.1:9/v1", KEY)).api_key == KEY
    assert settings.describer(opts("http://127.0.0.1:9/v1")).api_key == "from-the-environment"
    assert settings.describer(opts("")) is None  # no URL: nothing is sent
    with pytest.raises(ModelError, match=r"^Settings > Easy Diffuser: caption_url: must be an http:// or https://"):
        settings.describer(opts("ftp://127.0.0.1/v1"))


@pytest.fixture(scope="module")
def client(models_path, shapes_model):
    return TestClient(start_webui(["--api"], models_path, shapes_model))


def test_http_sentences_from_the_server_and_503_when_it_is_down(client, red_circle):
    image = base64.b64encode(red_circle.read_bytes()).decode()
    with StandInServer(key=KEY, mode="unauthorized") as server:
        use_server(server.url, KEY)
        answer = client.post(EXTRACT, json={"image": image, "prompt_style": "sentences"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["caption"] == PARAGRAPH and body["prompt"].startswith(PARAGRAPH)
    assert f"described by stand-in-vlm at {server.url}" in body["prompt_style_note"]
    assert server.authorizations == [f"Bearer {KEY}"] and KEY not in answer.text
    url = down_url()
    use_server(url)
    refused = client.post(EXTRACT, json={"image": image, "prompt_style": "sentences"})
    assert refused.status_code == 503 and refused.json()["detail"].startswith(f"VLM server {url}: cannot connect")
    assert client.post(EXTRACT, json={"image": image, "prompt_style": "tags"}).status_code == 200  # nothing asked
    use_server("")


# The tab in a real browser

sync_api = pytest.importorskip("playwright.sync_api")
from test_browser import browser, page, page_url, textarea, upload  # noqa: E402, F401  (the browser's fixtures)

expect = sync_api.expect


def test_the_tab_shows_the_servers_description_and_a_down_server_in_the_status(page, red_circle):  # noqa: F811
    status = page.locator("#easy_diffuser_status .easy-diffuser-status")
    style = page.locator("#easy_diffuser_prompt_style")
    upload(page, red_circle)
    style.get_by_text("sentences", exact=True).click()
    with StandInServer() as server:
        use_server(server.url)
        page.click("#easy_diffuser_extract")
        expect(status).to_contain_text(f"described by stand-in-vlm at {server.url}")
    prompt = textarea(page, "easy_diffuser_prompt").input_value()
    assert prompt.startswith(PARAGRAPH + " ") and "prompt style sentences (chosen)" in status.inner_text()
    assert len(server.requests) == 1 and server.problems == []
    url = down_url()
    use_server(url)
    page.click("#easy_diffuser_extract")
    expect(status).to_contain_text(re.compile(rf"VLM server {re.escape(url)}: cannot connect .*is it running\?"))
    assert textarea(page, "easy_diffuser_prompt").input_value() == prompt  # what the user had is kept
    style.get_by_text("tags", exact=True).click()  # the tab keeps working: the tags style asks no server
    page.click("#easy_diffuser_extract")
    expect(status).to_contain_text("prompt style tags (chosen)")
    use_server("")
