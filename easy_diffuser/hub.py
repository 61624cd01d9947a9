"""The Hugging Face hub, asked only when it answers: captioners and WD taggers are fetched from it on first use."""

from __future__ import annotations

import os
import urllib.error
import urllib.request


def require_reachable(timeout: float = 5.0) -> None:
    """Raise ConnectionError at once when the hub does not answer (urllib honours the same proxy settings).

    Without network, the hub's own client retries for half a minute before it gives up."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered: the hub is there, whatever it thinks of a bare HEAD
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{constants.ENDPOINT} is not reachable: {getattr(error, 'reason', error)}") from None


def offline() -> bool:
    """Honour HF_HUB_OFFLINE when it is set after transformers was imported (it reads it only then)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
