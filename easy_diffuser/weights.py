"""Reading weight files as data: nothing a file holds ever runs.

safetensors; TorchScript archives (OpenAI's .pt) through a reader that takes only their tensors (torchscript.py);
other torch files with torch.load(weights_only=True), also for libraries that call torch.load themselves
(`weights_only_torch_load`). `content_hash` names weights cheaply, so caches and calibrations follow them.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import ModelError, first_line
from .torchscript import is_torchscript, read_torchscript_state_dict


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights, nothing in the file run: safetensors, TorchScript tensors read as data, or weights-only torch files."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # Before torch.load, which hands TorchScript to torch.jit.load (torch < 2.4 even with weights_only=True).
    if is_torchscript(path):
        try:
            return read_torchscript_state_dict(path)
        except Exception as error:  # the archive is data to us: any fault in it is a refusal
            raise ModelError(
                f"{path}: refused to load this TorchScript archive ({first_line(error)}); use a .safetensors file"
            ) from None
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(
            f"{path}: refused to load ({first_line(error)}); "
            "only plain weight files are read, convert it to .safetensors"
        ) from None
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise ModelError(f"{path}: holds no state dict")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def content_hash(path: Path, chunk: int = 1 << 20) -> str:
    """Hash of size plus first and last MiB: cheap for multi-GB files, different for different weights."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(chunk))
        handle.seek(max(0, path.stat().st_size - chunk))
        digest.update(handle.read(chunk))
    return digest.hexdigest()[:12]


class WeightsOnlyTorchLoad:
    """torch.load with weights_only=True forced for the threads inside the context, and only for them.

    transformers 4.30 (the webui's) reads pytorch_model.bin with a plain torch.load, which on the
    webui's torch 2.1 unpickles. torch.load is one function for the whole process: it is replaced
    once, under a lock, while any thread is inside, and put back when the last one leaves; calls
    from other threads (the webui loading its own checkpoints) pass through unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = threading.local()
        self._users = 0
        self._original: Callable[..., Any] = torch.load

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._original = torch.load
                torch.load = self._load
            self._users += 1
        self._inside.depth = getattr(self._inside, "depth", 0) + 1
        try:
            yield
        finally:
            self._inside.depth -= 1
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    torch.load = self._original

    def _load(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._inside, "depth", 0):
            kwargs["weights_only"] = True
        return self._original(*args, **kwargs)


weights_only_torch_load = WeightsOnlyTorchLoad()
