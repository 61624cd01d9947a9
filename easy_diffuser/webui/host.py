"""The webui adapter: the one module of the package that imports the webui (`modules`, and the memory manager
of Forge's `backend` or of the old Forge backend `ldm_patched`).

Only scripts/easy_diffuser_tab.py imports it; everything else in easy_diffuser.webui is handed a
`WebuiHost` and asks it for the host's rules: settings and flags, which model, the device and memory
handling (A1111's lowvram, or the memory manager of Forge, Forge Classic and reForge), the queue lock, the job
state that Interrupt sets, in-process txt2img, and the txt2img/img2img components to send prompts to.
Hosts are told apart by what they have, never by name or version (docs/hosts.md).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
from modules import call_queue, devices, paths, processing, scripts, sd_models, shared, ui_components

try:
    from modules.infotext_utils import paste_fields
except ImportError:  # webui before 1.8
    from modules.generation_parameters_copypaste import paste_fields

from ..calibration.generators import CallableGenerator, webui_generator
from ..checkpoint_family import Detected, detect, read_metadata
from ..devices import Movable, default_dtype
from ..kinds.base import Loaded
from ..prompt_style import TokenCounter, t5_counter
from ..registry import list_models
from .service import AUTO, Placement, auto_model
from .settings import SECTION, Setting

T = TypeVar("T")
CATEGORY = "postprocessing"  # Settings' group of webui 1.7+, where the webui's own CLIP interrogator is
# Where a host keeps its GPU memory manager and model patcher: Forge's backend, then the old Forge backend
# (ComfyUI's, in ldm_patched) that Forge Classic and reForge run on. A1111 has neither.
MEMORY_MANAGERS = (
    ("backend.memory_management", "backend.patcher.base"),
    ("ldm_patched.modules.model_management", "ldm_patched.modules.model_patcher"),
)


class WebuiHost:
    """The webui as the tab, the routes and the model service see it. Made when the script loads (and again
    on Reload UI), which is when it finds out whether the host has a memory manager."""

    def __init__(self) -> None:
        # Under a memory manager, GPU memory is its to give: its own interrogators go through it too.
        self._manager = _memory_manager()

    # -- settings and flags

    @property
    def opts(self) -> Any:
        """The webui's settings (shared.opts), read when used: Settings may change them at any time."""
        return shared.opts

    @property
    def cmd_opts(self) -> Any:
        return shared.cmd_opts

    def add_settings(self, settings: list[Setting]) -> None:
        for setting in settings:
            component = ui_components.DropdownEditable if setting.editable_dropdown else setting.component
            info = shared.OptionInfo(setting.default, setting.label, component, setting.args, section=SECTION)
            info.category_id = CATEGORY  # as options_section() does with a 3-part section; older webuis ignore it
            shared.opts.add_option(f"easy_diffuser_{setting.key}", info)

    # -- which model, and where its weights go

    def configured_model(self) -> str:
        return shared.cmd_opts.easy_diffuser_model or shared.opts.easy_diffuser_model

    def model_choices(self) -> list[str]:
        return list(dict.fromkeys([AUTO, *list_models(), self.configured_model()]))

    def resolve_model(self, requested: Optional[str]) -> str:
        name = requested or self.configured_model()
        return auto_model(self._checkpoint_is_sd2()) if name == AUTO else name

    @staticmethod
    def _checkpoint_is_sd2() -> bool:
        # model_data.sd_model rather than shared.sd_model: in A1111 the latter loads a checkpoint when none is loaded.
        return bool(getattr(sd_models.model_data.sd_model, "is_sd2", False))

    @staticmethod
    def checkpoint() -> tuple[Detected, Optional[TokenCounter]]:
        """The loaded checkpoint's family (from Forge's engine class, the is_sd* flags, its header metadata or its
        name; the name and metadata also pick a tagger's preset), and exact T5 counts where the host holds the T5
        tokenizer (Forge's Flux and SD3 engines)."""
        model = sd_models.model_data.sd_model  # not shared.sd_model, which in A1111 loads one when none is
        if model is None:
            return detect(), None
        info = getattr(model, "sd_checkpoint_info", None)
        file = str(getattr(info, "filename", None) or "")
        name = file or str(getattr(info, "name", None) or getattr(info, "title", None) or "")
        metadata = getattr(info, "metadata", None)  # the webui's copy of the header's, where it keeps one
        if not isinstance(metadata, dict):
            metadata = _header_metadata(file)
        flags = {flag: getattr(model, flag, None) for flag in ("is_sd1", "is_sd2", "is_sdxl", "is_sd3")}
        found = detect(Path(name).name, metadata, type(model).__name__, flags)
        tokenizer = getattr(getattr(model, "text_processing_engine_t5", None), "tokenizer", None)
        return found, t5_counter(tokenizer) if callable(tokenizer) else None

    def weights_folder(self) -> Path:
        return Path(shared.cmd_opts.easy_diffuser_model_path or os.path.join(paths.models_path, "easy_diffuser"))

    # -- device, memory and the queue

    def placement(self) -> Placement:
        device = self._device()
        dtype = torch.float32 if shared.cmd_opts.no_half else default_dtype(device)
        # Forge Classic has neither flag (its memory manager decides alone).
        low = bool(getattr(shared.cmd_opts, "lowvram", False) or getattr(shared.cmd_opts, "medvram", False))
        if self._manager is not None:
            return Placement(device, dtype, partial(self._manager.acquire, device), self._manager.release, low)
        return Placement(device, dtype, partial(_acquire, device, dtype), _release, low)

    def _device(self) -> torch.device:
        # A1111's device_interrogate already honours --use-cpu; the managers ignore the flag, so check it for all.
        if {"interrogate", "all"} & set(shared.cmd_opts.use_cpu):
            return devices.cpu
        if self._manager is not None:  # Forge Classic has no device_interrogate
            return self._manager.text_encoder_device()
        return devices.device_interrogate

    @staticmethod
    def queued(work: Callable[[], T]) -> T:
        return call_queue.wrap_queued_call(work)()  # never beside image generation

    @staticmethod
    def torch_gc() -> None:
        devices.torch_gc()

    # -- generation, for calibration

    @staticmethod
    def no_checkpoint() -> bool:
        """No checkpoint loaded and none to load: calibration could generate nothing (the webui would try to load
        one from an empty list and print its tracebacks). model_data, not shared.sd_model, which would load one."""
        return sd_models.model_data.sd_model is None and not getattr(sd_models, "checkpoints_list", None)

    @staticmethod
    @contextmanager
    def job() -> Iterator[None]:
        """A webui job, as wrap_gradio_gpu_call makes one (the queue is already held: its lock is not re-entrant)."""
        shared.state.begin()  # no job name: begin() took none before webui 1.6
        try:
            yield
        finally:
            shared.state.end()
            shared.state.interrupted = False  # as wrap_gradio_call does after every job

    @staticmethod
    def interrupt() -> None:
        shared.state.interrupt()

    @staticmethod
    def interrupted() -> bool:
        return shared.state.interrupted  # the webui's own Interrupt button sets it

    def txt2img(self, loaded: Loaded, width: int, height: int, steps: int, save: bool = False) -> CallableGenerator:
        """The webui's txt2img, with our CLIP model off the GPU while the checkpoint generates.

        The same rule as between two extractions (Keep in VRAM decides), and under a memory manager the way
        back too: it may evict our model to make room for the checkpoint."""
        # The queue is already held (queue_lock=None).
        generator = webui_generator(processing, shared, scripts, width, height, steps, queue_lock=None, save=save)
        rules = self.placement()

        def generate(prompt: str, negative_prompt: str, seed: int) -> Any:
            rules.release(loaded)
            try:
                return generator.generate(prompt, negative_prompt, seed)
            finally:
                rules.acquire(loaded)

        return CallableGenerator(generate, generator.name)

    # -- the txt2img and img2img tabs

    @staticmethod
    def prompt_fields(tab: str) -> list[Any]:
        """The tab's prompt boxes, as the webui registered them for pasting (only the registry is used)."""
        fields = {label: component for component, label in paste_fields[tab]["fields"]}
        return [fields["Prompt"], fields["Negative prompt"]]

    @staticmethod
    def img2img_image() -> Any:
        return paste_fields["img2img"]["init_img"]


def _header_metadata(file: str) -> dict[str, str]:
    """The checkpoint file's header metadata, read here for hosts that keep no copy of it; a file that is not
    there or whose header is damaged has none (detection then rests on the name and the host's flags)."""
    if not file.lower().endswith(".safetensors"):
        return {}
    try:
        return read_metadata(Path(file))
    except (OSError, ValueError) as error:  # ValueError names the file: a damaged or hostile header
        _warn_once(f"Easy Diffuser: {error}; its family is told without its metadata")
        return {}


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    """In the console, once: the checkpoint's header is read again at every extraction."""
    print(message, file=sys.stderr)


def _acquire(device: torch.device, dtype: torch.dtype, loaded: Movable) -> None:
    if shared.cmd_opts.lowvram or shared.cmd_opts.medvram:  # as modules/interrogate.py: the SD model leaves first
        from modules import lowvram  # A1111's low-VRAM mode, only where these flags exist

        lowvram.send_everything_to_cpu()
        devices.torch_gc()
    loaded.to(device, dtype)


def _release(loaded: Movable) -> None:
    if not shared.opts.easy_diffuser_keep_in_vram:
        loaded.to(devices.cpu)
    devices.torch_gc()


def _memory_manager() -> Optional[_ManagedMemory]:
    """The host's memory manager, the first of MEMORY_MANAGERS it has; None in A1111."""
    for manager, patcher in MEMORY_MANAGERS:
        try:
            return _ManagedMemory(importlib.import_module(manager), importlib.import_module(patcher).ModelPatcher)
        except ImportError:
            continue
    return None


class EasyDiffuserModel(torch.nn.Module):
    """Our model as the manager's patcher holds it (and as the host's log names it). reForge's patcher writes its
    bookkeeping onto the module it is given (`device` among it, which a transformers model cannot take): this one
    takes it in our model's place."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


class _ManagedMemory:
    """A memory manager moves models only through itself, freeing room for them: Forge's
    backend.memory_management, and ldm_patched.modules.model_management of the old Forge backend (Forge Classic,
    reForge), which share these names: load_models_gpu, current_loaded_models, soft_empty_cache, and a
    ModelPatcher(model, load_device, offload_device)."""

    def __init__(self, memory_management: Any, model_patcher: type) -> None:
        self.manager = memory_management
        self.model_patcher = model_patcher
        self.in_use: list[Any] = []  # the patchers of our models in use now: CLIP or a tagger, and a captioner
        # Those in use or kept in VRAM: reForge's manager holds its models' patchers by weak reference only.
        self.held: list[Any] = []
        # reForge (ComfyUI's newer manager) loads only the part of a model that fits and leaves the rest on the CPU,
        # which works for the layers of its own models alone: ours is asked for whole.
        whole = "force_full_load" in inspect.signature(memory_management.load_models_gpu).parameters
        self.load_options = {"force_full_load": True} if whole else {}

    def text_encoder_device(self) -> torch.device:
        return self.manager.text_encoder_device()

    def acquire(self, device: torch.device, loaded: Movable) -> None:
        self.held = [patcher for patcher in self.held if self._on_device(patcher)]  # the manager evicted the rest
        offload = self.manager.text_encoder_offload_device()
        patcher = self._patcher(loaded) or self.model_patcher(
            EasyDiffuserModel(loaded.model), load_device=device, offload_device=offload
        )
        # Together with the others in use: making room for a captioner must not evict the tagger it runs beside.
        in_use = [*_without(self.in_use, patcher), patcher]
        self.manager.load_models_gpu(in_use, **self.load_options)
        self.in_use, self.held = in_use, [*_without(self.held, patcher), patcher]

    def release(self, loaded: Movable) -> None:
        patcher = self._patcher(loaded)
        self.in_use = _without(self.in_use, patcher)
        # None: never handed over (a failed acquire); the entries of models gone from reForge's list read None too.
        if patcher is not None and not shared.opts.easy_diffuser_keep_in_vram:
            self.held = _without(self.held, patcher)
            # What free_memory() does to the models it evicts, for ours alone.
            for entry in [e for e in self.manager.current_loaded_models if e.model is patcher]:
                self.manager.current_loaded_models.remove(entry)
                entry.model_unload()
        self.manager.soft_empty_cache()

    def _patcher(self, loaded: Movable) -> Any:
        """The patcher that holds `loaded`, if one does: the manager must be handed the same one again while it
        holds the model (a second would count it twice)."""
        return next((patcher for patcher in self.held if patcher.model.model is loaded.model), None)

    def _on_device(self, patcher: Any) -> bool:
        return any(patcher is held for held in self.in_use) or any(
            entry.model is patcher for entry in self.manager.current_loaded_models
        )


def _without(patchers: list[Any], patcher: Any) -> list[Any]:
    return [held for held in patchers if held is not patcher]
