"""Descriptions from a VLM server: an OpenAI-compatible chat completions API describes each image in place of
an in-process captioner (captioner.py). vLLM, Ollama, LM Studio and llama.cpp's server all speak it, so any
host, A1111's old transformers included, gets the sentences style with no second model in its own VRAM.

    POST {url}/chat/completions
    {"model": M, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url":
     "data:image/jpeg;base64,..."}}, {"type": "text", "text": INSTRUCTION}]}], "max_tokens": N, "temperature": 0}

Nothing is sent unless a URL is set (ServerOptions). The API key comes from EASY_DIFFUSER_API_KEY (or the
webui's settings) and goes only into the Authorization header: no message, record or repr holds it, and any
text of the server's that is quoted in a message has it blanked out first.

Every failure is one line naming the server, and bounded in time: connecting takes at most CONNECT_TIMEOUT
seconds, an answer at most the timeout option, a reply at most MAX_REPLY_BYTES; a busy server (429, 503) is
asked once more, after its Retry-After (at most MAX_RETRY_WAIT seconds), and never again.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit

from PIL import Image

from .captioner import describing, whole_sentences
from .models import ModelError
from .options import TAGS_PLACEHOLDER, CaptionOptions, ServerOptions, shown_text

API_KEY_VARIABLE = "EASY_DIFFUSER_API_KEY"
CONNECT_TIMEOUT = 3.0  # seconds: a server that is down is one line well within 10 s
MAX_REPLY_BYTES = 1 << 20  # a paragraph is a few kB; more is a broken or hostile server
MAX_RETRY_WAIT = 10.0  # seconds of Retry-After honoured before the one retry
DEFAULT_RETRY_WAIT = 1.0  # when a busy server does not say how long
MAX_IMAGE_SIDE = 1024  # pixels: VLMs see far less (Qwen2.5-VL caps its own tokens), and the upload stays small
BUSY = (429, 503)
NO_TAGS = "(none)"


class ServerError(ModelError):
    """The server could not describe: one line naming it (HTTP 503, CLI exit 2 at setup, one image's failure)."""


@dataclass(frozen=True)
class ServerDescriber:
    """A Captioner-like describer (`caption(image, options)`) that asks a VLM server; holds no model."""

    server: ServerOptions
    api_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.server.url:
            raise ValueError("a ServerDescriber needs ServerOptions with a URL")

    @property
    def grounded(self) -> bool:
        """Whether the instruction asks for the image's tags, which must then be selected first."""
        return TAGS_PLACEHOLDER in self.server.instruction

    @property
    def status(self) -> str:
        """For the status line: which model described, where."""
        return f"described by {self.server.server_model} at {self.server.url}"

    def check(self) -> None:
        """ServerError unless the server answers (GET {url}/models): a server that is down, or refuses the key,
        is one line before any image is read. Any other answer counts as up: not every server lists models."""
        status, _, _ = self._request("GET", "/models", None, min(self.server.timeout, 10))
        if status in (401, 403):
            raise self._error(self._refused_key(status))

    def caption(self, image: Image.Image, options: CaptionOptions = CaptionOptions(), tags: str = "") -> str:
        """The server's paragraph for one image; `tags` fills the instruction's {tags}. ServerError on failure."""
        body = self._body(image, options, tags)
        status, headers, reply = self._request("POST", "/chat/completions", body, self.server.timeout)
        if status in BUSY:  # asked once more, after the wait it asks for; never a third time
            wait = _retry_wait(headers.get("retry-after"))
            time.sleep(wait)
            status, headers, reply = self._request("POST", "/chat/completions", body, self.server.timeout)
            if status in BUSY:
                raise self._error(f"busy (HTTP {status}), also when asked again {wait:g} s later; try later")
        return self._paragraph(status, reply)

    def caption_each(
        self, images: Sequence[Image.Image], options: CaptionOptions = CaptionOptions(), tags: Sequence[str] = ()
    ) -> list[str | ServerError]:
        """Each image's paragraph, or its ServerError; at most `concurrency` requests at once."""
        tags = list(tags) or [""] * len(images)
        if len(images) <= 1:
            return [self.describe(image, options, text) for image, text in zip(images, tags)]
        with ThreadPoolExecutor(min(self.server.concurrency, len(images)), thread_name_prefix="describe") as pool:
            return list(pool.map(self.describe, images, [options] * len(images), tags))

    def describe(self, image: Image.Image, options: CaptionOptions, tags: str = "") -> str | ServerError:
        """caption(), its ServerError returned rather than raised (a folder's failure is that image's)."""
        try:
            return self.caption(image, options, tags)
        except ServerError as error:
            return error

    def caption_all(
        self, images: Sequence[Image.Image], options: CaptionOptions = CaptionOptions(), tags: Sequence[str] = ()
    ) -> list[str]:
        """caption_each, raising the first failure (one image, the tab, HTTP)."""
        texts = self.caption_each(images, options, tags)
        for text in texts:
            if isinstance(text, ServerError):
                raise text
        return texts  # type: ignore[return-value]  (no ServerError left)

    # -- the request

    def _body(self, image: Image.Image, options: CaptionOptions, tags: str) -> bytes:
        instruction = self.server.instruction.replace(TAGS_PLACEHOLDER, tags or NO_TAGS)
        content = [
            {"type": "image_url", "image_url": {"url": image_data_uri(image)}},
            {"type": "text", "text": instruction},
        ]
        request = {
            "model": self.server.server_model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": describing(options)[1],  # the schema's caption length, read as a describer's
            "temperature": 0,
            "stream": False,
        }
        return json.dumps(request).encode("utf-8")

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, dict, bytes]:
        """(status, lower-cased headers, body) of one request, or ServerError: cannot connect, too slow, too big."""
        parts = urlsplit(self.server.url)
        kind = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + timeout
        try:
            try:
                connection.connect()
            except (OSError, http.client.HTTPException) as error:
                raise self._error(f"cannot connect ({_reason(error)}); is it running? Start it or fix the URL")
            sock = connection.sock  # the response reads from it; a closing answer takes it from the connection
            try:
                sock.settimeout(timeout)
                connection.request(method, parts.path + path, body, headers)
                response = connection.getresponse()
                reply = _read_capped(response, sock, deadline)
            except TimeoutError:
                raise self._error(f"no answer within {timeout:g} s (the caption timeout)") from None
            except _TooLarge:
                raise self._error(f"answered more than {MAX_REPLY_BYTES // 1024} kB; that is no description")
            except (OSError, http.client.HTTPException) as error:
                raise self._error(f"the connection failed ({_reason(error)})")
            return response.status, {name.lower(): value for name, value in response.getheaders()}, reply
        finally:
            connection.close()

    def _paragraph(self, status: int, reply: bytes) -> str:
        """The answer's text as one paragraph of whole sentences, or a ServerError saying what was wrong."""
        try:
            answer = json.loads(reply)
        except (ValueError, RecursionError):
            raise self._error(
                f"answered HTTP {status} with something that is not JSON: {self._quoted(reply)}"
            ) from None
        if status in (401, 403):
            raise self._error(self._refused_key(status))
        problem = answer.get("error") if isinstance(answer, dict) else None
        if problem:
            message = problem.get("message", problem) if isinstance(problem, dict) else problem
            raise self._error(f"answered with an error (HTTP {status}): {self._quoted(str(message))}")
        if status != 200:
            raise self._error(f"answered HTTP {status}: {self._quoted(reply)}")
        text = _content(answer)
        if text is None:
            raise self._error(f"answered without choices[0].message.content: {self._quoted(reply)}")
        paragraph = whole_sentences(" ".join(text.split()))
        if not paragraph:
            raise self._error("answered with an empty description")
        return paragraph

    def _refused_key(self, status: int) -> str:
        have = "refused the API key" if self.api_key else "wants an API key"
        return f"{have} (HTTP {status}); set {API_KEY_VARIABLE} (or the webui's setting) to the server's key"

    def _error(self, problem: str) -> ServerError:
        """One line naming the server."""
        return ServerError(" ".join(f"VLM server {self.server.url}: {problem}".split()))

    def _quoted(self, text: bytes | str) -> str:
        """The server's own text, short, as a message quotes it: the key blanked out first (a server may echo
        the request's headers), so that no cut leaves a part of it."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if self.api_key:
            text = text.replace(self.api_key, "***")
        return repr(shown_text(" ".join(text.split())))


class _TooLarge(Exception):
    pass


def _read_capped(response: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bytes:
    """The body, at most MAX_REPLY_BYTES (_TooLarge), by the deadline (TimeoutError) even if it trickles."""
    received = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = response.read1(64 * 1024)
        if not chunk:
            return bytes(received)
        received += chunk
        if len(received) > MAX_REPLY_BYTES:
            raise _TooLarge


def _content(answer: Any) -> str | None:
    """choices[0].message.content: a string, or a list of text parts (some servers send that)."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else None


def _retry_wait(header: str | None) -> float:
    """Retry-After in seconds, at most MAX_RETRY_WAIT (none, or an HTTP date: DEFAULT_RETRY_WAIT)."""
    try:
        seconds = float(header)  # type: ignore[arg-type]  (None is a TypeError)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_WAIT
    return min(max(seconds, 0.0), MAX_RETRY_WAIT) if math.isfinite(seconds) else DEFAULT_RETRY_WAIT


def _reason(error: BaseException) -> str:
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def image_data_uri(image: Image.Image) -> str:
    """The image as a JPEG data URI, at most MAX_IMAGE_SIDE pixels on its longer side."""
    image = image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def api_key_from_environment() -> str:
    return os.environ.get(API_KEY_VARIABLE, "").strip()


def server_describer(server: ServerOptions, api_key: str | None = None) -> ServerDescriber | None:
    """The describer the options ask for (None: no URL, nothing is ever sent); the key from the environment
    unless given."""
    if not server.url:
        return None
    return ServerDescriber(server, api_key_from_environment() if api_key is None else api_key)
