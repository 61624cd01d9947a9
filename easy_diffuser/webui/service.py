"""The one engine that the webui tab and the HTTP routes share, free of webui and gradio imports.

The webui adapter (webui/host.py) gives `Service` the host's rules: which model,
where it runs, how to make room on the GPU, and the queue lock that keeps it from running beside
image generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

import torch

from ..captioner import unload_captioners
from ..checkpoint_family import Detected
from ..describe_server import ServerDescriber
from ..devices import Movable
from ..embedding import ProgressFn
from ..engine import Engine
from ..models import load_model, unload_models
from ..prompt_style import TokenCounter, t5_token_bound

T = TypeVar("T")

AUTO = "Auto"  # the model setting that follows the loaded checkpoint
SD2_MODEL = "ViT-H-14/laion2b_s32b_b79k"  # SD 2.x conditions on OpenCLIP ViT-H/14
SD1_MODEL = "ViT-L-14/openai"  # SD 1.x, and SDXL's first text encoder, use OpenAI's ViT-L/14


def auto_model(is_sd2: bool) -> str:
    return SD2_MODEL if is_sd2 else SD1_MODEL


@dataclass(frozen=True)
class Placement:
    """Where the host wants the model, and its hooks around every use."""

    device: torch.device
    dtype: torch.dtype
    acquire: Callable[[Movable], None]  # before a use: make room, put the model (or captioner) on `device`
    release: Callable[[Movable], None]  # after a use: move it off unless the user keeps it
    low_vram: bool = False  # the host runs with --lowvram or --medvram: large captioners are refused


class Service:
    """One engine, loaded on first use, every use run through `exclusive` (the webui's queue lock)."""

    def __init__(
        self,
        resolve_model: Callable[[Optional[str]], str],
        cache_dir: Callable[[], Path],
        placement: Callable[[], Placement],
        exclusive: Callable[[Callable[[], T]], T],
        checkpoint: Callable[[], tuple[Optional[Detected], Optional[TokenCounter]]] = lambda: (None, None),
        describer: Callable[[], Optional[ServerDescriber]] = lambda: None,
    ) -> None:
        self._resolve_model = resolve_model  # requested name (None: the configured one) -> model spec
        # The host's loaded checkpoint: what detection found (its family, name and metadata, which also pick a
        # tagger's preset), and its T5 tokenizer if it has one.
        self._checkpoint = checkpoint
        self._describer = describer  # the VLM server the settings name now (None: none; ModelError: a bad setting)
        self._cache_dir = cache_dir
        self._placement = placement
        self._exclusive = exclusive
        self._spec: str | None = None
        self._engine: Engine | None = None

    def run(self, work: Callable[[Engine], T], model: str | None = None, progress: ProgressFn | None = None) -> T:
        """`work(engine)` with the engine on the host's device; raises ModelError if the weights can't be had."""
        return self._exclusive(lambda: self._run(work, self.resolve(model), progress))

    def resolve(self, model: str | None) -> str:
        """The model spec a requested name means now (None: the configured one)."""
        return self._resolve_model(model)

    @property
    def engine(self) -> Engine | None:
        """The loaded engine, outside the queue: only for work without a model forward pass (re-selection)."""
        return self._aimed(self._engine)

    def loaded_engine(self, model: str | None) -> Engine | None:
        """The engine, outside the queue, if the model a request names (None: the configured one) is the loaded one."""
        engine, spec = self._engine, self._spec
        return self._aimed(engine) if engine is not None and spec == self.resolve(model) else None

    def unload(self) -> None:
        """Free the CLIP model and every captioner (Reload UI, script unload)."""
        self._exclusive(self._forget_all)

    def _run(self, work: Callable[[Engine], T], spec: str, progress: ProgressFn | None) -> T:
        placement = self._placement()
        if self._engine and spec == self._spec:
            loaded = self._engine.loaded
        else:
            # Loaded before the old engine is let go: weights that can't be had (ModelError) leave it working.
            loaded = load_model(spec, "cpu", placement.dtype, self._cache_dir())
            self._forget()  # one model in memory at a time: the webui's own models need the room
        placement.acquire(loaded)
        try:
            if self._engine is None:
                # The model is already on its device, so the first-use vocabulary encoding runs there.
                self._engine = Engine(spec, loaded.device, loaded.dtype, self._cache_dir(), progress=progress)
                self._spec = spec
            self._engine.placement = placement  # the captioner goes on and off the device by the same rules
            self._engine.describer = self._describer()
            self._engine.low_vram = placement.low_vram
            return work(self._aimed(self._engine))
        finally:
            placement.release(loaded)

    def _aimed(self, engine: Engine | None) -> Engine | None:
        """The engine writing for the checkpoint loaded now (the user may switch checkpoints at any time)."""
        if engine is not None:
            engine.target, counter = self._checkpoint()
            engine.t5_tokens = counter or t5_token_bound
        return engine

    def _forget(self) -> None:
        """Let go of the current engine: its CLIP model and the captioners it loaded."""
        if self._spec is not None:
            unload_models(self._spec, self._cache_dir())
        self._engine = self._spec = None
        unload_captioners()

    def _forget_all(self) -> None:
        self._forget()
        unload_models()
