"""send2ui against a stand-in webui API on loopback: the real request, decoded images, clear errors."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

import easy_diffuser
from easy_diffuser.webui_client import WebuiError, txt2img


def png_base64(colour: str) -> str:
    data = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(data, "PNG")
    return base64.b64encode(data.getvalue()).decode()


class FakeWebui(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeWebui.requests.append({"path": self.path, "body": body})
        if self.path != "/sdapi/v1/txt2img":
            return self._answer(404, {"detail": "Not Found"})
        if FakeWebui.status != 200:
            return self._answer(FakeWebui.status, {"error": "OutOfMemoryError", "detail": "CUDA out of memory"})
        images = [png_base64("red"), "data:image/png;base64," + png_base64("blue")]
        self._answer(200, {"images": images, "parameters": body, "info": "{}"})

    def _answer(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def webui():
    FakeWebui.requests, FakeWebui.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWebui)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_send2ui_posts_negative_prompt_and_saves_decoded_images(webui, tmp_path, shapes_red_circle):
    ed = easy_diffuser.start(shapes_red_circle, model="shapes-demo", device="cpu")
    paths = ed.send2ui(url=webui, out_dir=tmp_path, steps=4, seed=7)
    body = FakeWebui.requests[0]["body"]
    assert body["prompt"] == ed.prompt and body["negative_prompt"] == ed.negative_prompt
    assert "neg_prompt" not in body and body["steps"] == 4 and body["seed"] == 7
    assert [Image.open(path).getpixel((0, 0)) for path in paths] == [(255, 0, 0), (0, 0, 255)]


def test_server_error_is_a_clear_exception(webui):
    FakeWebui.status = 500
    with pytest.raises(WebuiError, match="answered 500.*CUDA out of memory"):
        txt2img("red", "", url=webui)


def test_missing_api_says_to_start_with_api(webui):
    with pytest.raises(WebuiError, match="--api"):
        txt2img("red", "", url=webui + "/wrong")


def test_server_down_is_a_clear_exception():
    with pytest.raises(WebuiError, match="cannot reach the webui at http://127.0.0.1:9"):
        txt2img("red", "", url="http://127.0.0.1:9", timeout=5)


def test_send2ui_to_a_webui_that_is_down_raises_the_packages_webui_error(shapes_red_circle, tmp_path):
    ed = easy_diffuser.start(shapes_red_circle, model="shapes-demo", device="cpu")
    with pytest.raises(easy_diffuser.WebuiError, match="cannot reach the webui at http://127.0.0.1:9"):
        ed.send2ui(url="http://127.0.0.1:9", out_dir=tmp_path / "outputs", timeout=5)
    assert not (tmp_path / "outputs").exists()  # nothing saved
