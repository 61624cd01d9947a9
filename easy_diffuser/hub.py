"""Is the model hub (or a download server) there: asked once, quickly, before a download that would retry for a
minute without network; HF_HUB_OFFLINE honoured whenever it is set."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request


def server_of(url: str) -> str:
    """https://huggingface.co/org/repo -> https://huggingface.co"""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def require_reachable(url: str, timeout: float = 5.0) -> None:
    """ConnectionError at once when the server of `url` does not answer: one request, no retries.

    urllib honours the same proxy settings (HTTPS_PROXY, ...) as the hub's and open_clip's downloads."""
    server = server_of(url)
    try:
        urllib.request.urlopen(urllib.request.Request(server, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered: the server is there, whatever it thinks of a bare HEAD
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{server} is not reachable: {getattr(error, 'reason', error)}") from None


def hub_offline() -> bool:
    """Honour HF_HUB_OFFLINE when it is set after huggingface_hub was imported (it reads it only then)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
