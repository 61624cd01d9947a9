"""A stand-in OpenAI-compatible VLM server on 127.0.0.1 for the tests and the bench: it checks each request's
shape as vLLM and Ollama would read it, records it, and answers as its `mode` says.

    with StandInServer(mode="ok", delay=0.0) as server:
        server.url   # http://127.0.0.1:PORT/v1
        server.requests  # every chat completions request body (JSON), in order
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

PARAGRAPH = "A red circle lies on a grey floor. Soft light falls from the left."
MODES = ("ok", "slow", "garbage", "huge", "busy", "busy-once", "error", "no-choices", "echo-key", "unauthorized")


class StandInServer:
    """`mode`: ok (PARAGRAPH), slow (answers after `delay`), garbage (not JSON), huge (4 MB), busy (always 429),
    busy-once (429 with Retry-After: 1, then ok), error (an OpenAI error object, 400), no-choices, echo-key (a 500
    whose body repeats the request's Authorization header), unauthorized (401 unless the key is `key`)."""

    def __init__(
        self, mode: str = "ok", delay: float = 0.0, key: str = "", paragraph: str = PARAGRAPH, refuse_width: int = 0
    ) -> None:
        assert mode in MODES, mode
        self.mode, self.delay, self.key, self.paragraph = mode, delay, key, paragraph
        self.refuse_width = refuse_width  # an image this wide gets an error object: one image's failure
        self.in_flight = self.most_in_flight = 0  # chat requests being answered at once
        self.requests: list[dict] = []
        self.problems: list[str] = []  # requests whose shape was wrong
        self.authorizations: list[str] = []
        self.times: list[float] = []  # when each chat request arrived
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "StandInServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: the tests read stderr
                pass

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                if server.mode == "unauthorized" and not server._authorized(self):
                    return self._send(401, b'{"error": {"message": "invalid api key"}}')
                self._send(200, json.dumps({"object": "list", "data": [{"id": "stand-in-vlm"}]}).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                authorization = self.headers.get("Authorization", "")
                with server._lock:
                    server.times.append(time.monotonic())
                    server.authorizations.append(authorization)
                    count = len(server.requests)
                try:
                    request = json.loads(body)
                    server._check_shape(self.path, request)
                except (ValueError, AssertionError, KeyError, TypeError) as error:
                    with server._lock:
                        server.problems.append(f"{type(error).__name__}: {error}")
                    return self._send(400, json.dumps({"error": {"message": f"bad request: {error}"}}).encode())
                with server._lock:
                    server.requests.append(request)
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                try:
                    server._answer(self, count, authorization, request)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        return handler.headers.get("Authorization", "") == f"Bearer {self.key}"

    def _check_shape(self, path: str, request: dict) -> None:
        """What an OpenAI-compatible server needs: the model, one user message with an image_url data URI of a
        decodable image and a text part, max_tokens, temperature 0."""
        assert path == "/v1/chat/completions", f"path {path}"
        assert isinstance(request["model"], str) and request["model"], "model"
        (message,) = request["messages"]
        assert message["role"] == "user"
        kinds = {part["type"]: part for part in message["content"]}
        assert set(kinds) == {"image_url", "text"}, f"content parts {sorted(kinds)}"
        uri = kinds["image_url"]["image_url"]["url"]
        assert uri.startswith("data:image/"), "image_url is not a data URI"
        assert uri.split(",", 1)[0].endswith(";base64")
        image_of(request).verify()
        assert isinstance(kinds["text"]["text"], str) and kinds["text"]["text"].strip()
        assert isinstance(request["max_tokens"], int) and request["max_tokens"] > 0
        assert request["temperature"] == 0

    def _answer(self, handler: Any, count: int, authorization: str, request: dict) -> None:
        mode = self.mode
        if self.refuse_width and image_of(request).width == self.refuse_width:
            return handler._send(500, b'{"error": {"message": "CUDA out of memory"}}')
        if mode == "unauthorized" and not self._authorized(handler):
            return handler._send(401, b'{"error": {"message": "invalid api key"}}')
        if mode == "busy" or (mode == "busy-once" and count == 0):
            return handler._send(429, b'{"error": {"message": "too many requests"}}', {"Retry-After": "1"})
        if mode == "slow" or self.delay:
            time.sleep(self.delay)
        if mode == "garbage":
            return handler._send(200, b"<html><body>Bad gateway, have a nice day</body></html>")
        if mode == "huge":
            return handler._send(200, b'{"choices": [{"message": {"content": "' + b"A" * (4 << 20) + b'"}}]}')
        if mode == "error":
            return handler._send(400, b'{"error": {"message": "model qwen-x not found", "type": "invalid_request"}}')
        if mode == "no-choices":
            return handler._send(200, b'{"id": "x", "object": "chat.completion"}')
        if mode == "echo-key":
            return handler._send(500, json.dumps({"error": {"message": f"rejected {authorization}"}}).encode())
        answer = {
            "id": f"chatcmpl-{count}",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.paragraph}}],
        }
        handler._send(200, json.dumps(answer).encode())


def image_of(request: dict) -> Image.Image:
    """The image a chat completions request carries."""
    (message,) = request["messages"]
    (part,) = [part for part in message["content"] if part["type"] == "image_url"]
    data = part["image_url"]["url"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data, validate=True)))


def instruction_of(request: dict) -> str:
    (message,) = request["messages"]
    return next(part["text"] for part in message["content"] if part["type"] == "text")
