"""The errors a model that cannot be had raises, and how an error becomes the one line a user reads."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model that cannot be had; the message names the cause and the fix."""


class ModelFileError(ModelError):
    """A model's own file is unusable (a missing, malformed or mismatched file); the message names it."""


def first_line(error: BaseException) -> str:
    return str(error).strip().split("\n")[0]


def one_line(error: BaseException, limit: int = 300) -> str:
    """A multi-line error (load_state_dict lists every key) as one line a user can read."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else f"{text[:limit]}..."
