"""Client for a running webui's HTTP API (`--api`): send prompts to /sdapi/v1/txt2img."""

from __future__ import annotations

import base64
import binascii
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from .files import write_atomically

DEFAULT_URL = "http://127.0.0.1:7860"
_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"RIFF": ".webp"}


class WebuiError(RuntimeError):
    """The webui could not be reached or refused the request; the message says which and why."""


def txt2img(prompt: str, negative_prompt: str, url: str = DEFAULT_URL, timeout: float = 600, **options) -> list[bytes]:
    """Generate with a running webui; returns the encoded images it answers with."""
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, **options}
    answer = _post_json(f"{url.rstrip('/')}/sdapi/v1/txt2img", payload, timeout)
    images = answer.get("images") if isinstance(answer, dict) else None
    if not isinstance(images, list):
        raise WebuiError(f"{url}: answer has no 'images' list; is this a stable-diffusion-webui started with --api?")
    return [decode_image(item) for item in images]


def decode_image(item: str) -> bytes:
    """The API's base64 images, with or without a `data:image/...;base64,` prefix."""
    if not isinstance(item, str):
        raise WebuiError(f"image in the answer is {type(item).__name__}, not a base64 string")
    try:
        return base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item, validate=True)
    except (binascii.Error, ValueError) as error:
        raise WebuiError(f"image in the answer is not valid base64 ({error})") from None


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


def _post_json(url: str, payload: dict, timeout: float) -> object:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        hint = " (start the webui with --api)" if error.code == 404 else ""
        raise WebuiError(f"{url} answered {error.code} {error.reason}{hint}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise WebuiError(f"cannot reach the webui at {url} ({reason}): is it running with --api?") from None
    try:
        return json.loads(body)
    except ValueError:
        raise WebuiError(f"{url} answered with something that is not JSON: {body[:100]!r}") from None
