"""Client for a running webui's HTTP API (`--api`): send prompts to /sdapi/v1/txt2img."""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from .files import write_atomically

DEFAULT_URL = "http://127.0.0.1:7860"
_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"RIFF": ".webp"}
# The largest answer read: a batch of 8 images of 2048 x 2048 as PNGs in base64 fits several times over.
MAX_ANSWER_BYTES = 256 << 20
# Beside its images an answer echoes the request and its infotext: the prompts a few times over, and what
# extensions add. Generous, since it only has to stop an answer that would fill the memory.
ANSWER_TEXT_BYTES = 8 << 20


class WebuiError(RuntimeError):
    """The webui could not be reached or refused the request; the message says which and why."""


def txt2img(
    prompt: str,
    negative_prompt: str,
    url: str = DEFAULT_URL,
    timeout: float = 600,
    max_bytes: int = MAX_ANSWER_BYTES,
    **options,
) -> list[bytes]:
    """Generate with a running webui; returns the encoded images it answers with. The whole exchange takes at
    most `timeout` seconds and the answer at most `max_bytes`; any failure is a one-line WebuiError naming the URL."""
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, **options}
    answer = _post_json(f"{url.rstrip('/')}/sdapi/v1/txt2img", payload, timeout, max_bytes)
    images = answer.get("images") if isinstance(answer, dict) else None
    if not isinstance(images, list):
        raise WebuiError(
            f"{_shown(url)}: answer has no 'images' list; is this a stable-diffusion-webui started with --api?"
        )
    try:
        return [decode_image(item) for item in images]
    except WebuiError as error:
        raise WebuiError(f"{_shown(url)}: {error}") from None


def decode_image(item: str) -> bytes:
    """The API's base64 images, with or without a `data:image/...;base64,` prefix."""
    if not isinstance(item, str):
        raise WebuiError(f"image in the answer is {type(item).__name__}, not a base64 string")
    try:
        return base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item, validate=True)
    except (binascii.Error, ValueError) as error:
        raise WebuiError(f"image in the answer is not valid base64 ({error})") from None


def answer_bytes(width: int, height: int) -> int:
    """The most an answer with one width x height image can take: the image as an uncompressed PNG (4 bytes a
    pixel and 1 a row) in base64, and the text beside it."""
    return (4 * width + 1) * height * 4 // 3 + ANSWER_TEXT_BYTES


def save_images(images: list[bytes], out_dir: str | Path, stem: str = "easy_diffuser") -> list[Path]:
    """Save each image under a new name (never overwriting) with the suffix its bytes say."""
    out_dir = Path(out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = []
    for index, data in enumerate(images):
        suffix = next((s for magic, s in _SIGNATURES.items() if data.startswith(magic)), ".png")
        path = _unused(out_dir / f"{stem}-{stamp}-{index}{suffix}")
        write_atomically(path, lambda temp, data=data: temp.write_bytes(data))
        paths.append(path)
    return paths


def _unused(path: Path) -> Path:
    counter = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_stem(f"{path.stem}-{counter}")
        counter += 1
    return candidate


def check_url(url: str) -> str:
    """`url` if it can name a webui (http or https, a host, a port in range, no spaces or control characters);
    else WebuiError saying so in one line."""
    problem = ""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  raises ValueError for a port out of range or not a number
    except ValueError as error:
        problem = str(error)
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "it must start with http:// or https:// and name a host"
    if not problem and any(char.isspace() or not char.isprintable() for char in url):
        problem = "it contains spaces or control characters"
    if problem:
        raise WebuiError(f"{_shown(url)}: not a webui URL such as {DEFAULT_URL} ({problem})")
    return url


def _shown(url: str, limit: int = 200) -> str:
    """The URL as a message quotes it: one line (control characters escaped), at most `limit` characters."""
    text = url.encode("unicode_escape").decode("ascii") if not url.isprintable() else url
    return text if len(text) <= limit else f"{text[:limit]}..."


def _post_json(url: str, payload: dict, timeout: float, max_bytes: int) -> object:
    """POST `payload` and read the JSON answer, at most `max_bytes` of it, all within `timeout` seconds.

    The deadline is for the whole exchange, not each read (a server sending a byte a second would pass every
    per-read timeout): a timer shuts the socket when it expires, which ends any read that is still waiting."""
    parts = urllib.parse.urlsplit(check_url(url))
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()
    timer = threading.Timer(timeout, _expire, (connection, expired))
    timer.daemon = True
    timer.start()
    try:
        try:
            connection.connect()
        except OSError as error:
            reason = error.strerror or error
            raise WebuiError(f"cannot reach the webui at {_shown(url)} ({reason}): is it running with --api?") from None
        if expired.is_set():  # the deadline passed while connecting, before there was a socket to shut
            raise TimeoutError
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        body = _read_answer(url, connection.getresponse(), max_bytes)
        if expired.is_set():  # the socket was shut mid-answer: what was read is cut short
            raise TimeoutError
    except (OSError, http.client.HTTPException, ValueError) as error:  # timeouts and SSL errors are OSErrors
        if expired.is_set() or isinstance(error, TimeoutError):
            raise WebuiError(f"{_shown(url)} did not answer within {timeout:g} s") from None
        raise WebuiError(f"{_shown(url)} did not answer as a webui does ({_answer_problem(error)})") from None
    finally:
        timer.cancel()
        connection.close()
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise WebuiError(f"{_shown(url)} answered with something that is not JSON: {body[:100]!r}") from None


def _read_answer(url: str, response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    if response.status != 200:
        detail = response.read(300).decode(errors="replace")
        hint = " (start the webui with --api)" if response.status == 404 else ""
        reason = _shown(response.reason, 100)
        raise WebuiError(f"{_shown(url)} answered {response.status} {reason}{hint}: {_shown(detail, 300)}")
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:  # refused before a byte of it is read
        raise WebuiError(f"{_shown(url)} answered {int(declared):,} bytes; an answer is at most {max_bytes:,} here")
    body = response.read(max_bytes + 1)  # a server may leave out Content-Length, or lie about it
    if len(body) > max_bytes:
        raise WebuiError(f"{_shown(url)} answered more than {max_bytes:,} bytes; an answer is at most that here")
    if declared.isdigit() and len(body) < int(declared):  # read(amount) returns a short body without a word
        raise http.client.IncompleteRead(body, int(declared) - len(body))
    return body


def _expire(connection: http.client.HTTPConnection, expired: threading.Event) -> None:
    expired.set()
    if connection.sock is not None:
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)


def _answer_problem(error: Exception) -> str:
    """What was wrong with the answer, in a few words: http.client's messages quote whole lines of it."""
    problems = {
        http.client.LineTooLong: "a header line too long",
        http.client.IncompleteRead: "the answer ended before its length",
        http.client.RemoteDisconnected: "it closed the connection without an answer",
        http.client.BadStatusLine: "not an HTTP answer",
    }
    for kind, words in problems.items():
        if isinstance(error, kind):
            return words
    return _shown(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", 120)
