"""Loading a model of any kind: one entry point, `load_model(spec)`, that loads each (spec, cache folder) once per
process, moves it between devices and unloads it, whatever its kind (registry.py says which kind a spec is; the
kind's module loads it). What a spec can be is each kind's (kinds/clip.py, kinds/wd_tagger.py, plugins).

Nothing a weights file holds ever runs: safetensors, torch.load(weights_only=True), or, for TorchScript
archives (OpenAI's .pt), a reader that takes only their tensors (weights.py).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import torch

from .devices import default_dtype
from .errors import ModelError, one_line
from .kinds.base import Loaded, shipped_defaults
from .registry import is_plugin, kind_for, list_models, model_info

DEFAULT_MODEL = "ViT-L-14/openai"
DEFAULT_CACHE_DIR = Path(os.environ.get("EASY_DIFFUSER_CACHE", Path.home() / ".cache" / "easy_diffuser"))

T = TypeVar("T")


class LoadOnce(Generic[T]):
    """Loads each (spec, cache folder) once per process and hands out the same object afterwards."""

    def __init__(self, load: Callable[[str, Path], T]) -> None:
        self._load = load
        self._loaded: dict[tuple[str, str], T] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: str, cache_dir: Path) -> T:
        key = (spec, str(cache_dir))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._load(spec, cache_dir)
            return self._loaded[key]

    def clear(self, spec: str | None = None, cache_dir: Path | None = None) -> None:
        """Forget one (spec, cache folder), or everything when no spec is given."""
        with self._lock:
            if spec is None:
                self._loaded.clear()
            else:
                self._loaded.pop((spec, str(cache_dir)), None)


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Loaded:
    """Load a model once per (spec, cache folder) and reuse it; move it to `device`/`dtype`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(
            f"model: must name a model ({', '.join(list_models())}, an open_clip ARCH/TAG pair, "
            f"a model or tagger folder or a checkpoint file path), not {spec!r}"
        )
    return _loaded(spec, Path(cache_dir or DEFAULT_CACHE_DIR)).to(device, dtype or default_dtype(device))


def unload_models(spec: str | None = None, cache_dir: str | os.PathLike | None = None) -> None:
    """Forget a loaded model (every one when no spec is given) so its memory can be freed."""
    _loaded.clear(spec, Path(cache_dir or DEFAULT_CACHE_DIR))


def _load(spec: str, cache_dir: Path) -> Loaded:
    kind = kind_for(spec)
    try:
        return kind.load(spec, cache_dir)
    except ModelError:
        raise
    except Exception as error:
        if not is_plugin(kind):
            raise
        # A plugin's fault is the model's: one line naming the plugin, the rest of the program unharmed.
        raise ModelError(
            f"{spec}: the {kind.name!r} kind (a plugin) failed to load it ({type(error).__name__}: {one_line(error)})"
        ) from None


_loaded: LoadOnce[Loaded] = LoadOnce(_load)


def declared_defaults(spec: str) -> tuple[str, dict[str, Any]] | None:
    """(model id, defaults) of a named model without loading it: the registry's, with a shipped model's own file
    over them. None for model folders and checkpoint files, whose id needs their weights hashed."""
    info = model_info(spec)
    if info is not None and info.shipped:
        return spec, shipped_defaults(info)
    if "/" in spec and "=" not in spec and not Path(spec).expanduser().exists():
        return spec, dict(info.defaults) if info else {}
    return None
