"""Stand-in for ldm_patched/modules/model_management.py of reForge (Panchovix/stable-diffusion-webui-reForge,
branch main, 3b56b26, 2026-03-11): the old Forge backend's memory manager, brought up to ComfyUI's newer one.

The names and signatures are the real ones, and so is the bookkeeping the extension relies on (see the Forge
Classic stand-in), plus what this version adds: LoadedModel holds its patcher by a weak reference, and unless
asked for a full load, a model that does not fit is loaded only in part (`lowvram_model_memory` bytes of it).
The GPU is counted, not allocated. `calls` records what was loaded (whole or not) and unloaded.
"""

from __future__ import annotations

import weakref

import torch

cpu = torch.device("cpu")
torch_device = cpu  # get_torch_device(): a CPU, as started with --always-cpu; the memory tests set a GPU
total_vram = 8 * 1024**3  # bytes the stand-in GPU holds
current_loaded_models: list[LoadedModel] = []
calls: list[tuple] = []


def get_torch_device() -> torch.device:
    return torch_device


def text_encoder_device() -> torch.device:  # the real one: the GPU in normal and high VRAM, unless --always-cpu
    return torch_device


def text_encoder_offload_device() -> torch.device:  # the real one: the CPU, unless --always-gpu
    return cpu


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def minimum_inference_memory():
    return 1024 * 1024 * 1024


def get_free_memory(dev=None, torch_free_too=False):
    dev = dev or get_torch_device()
    used = sum(loaded.model_loaded_memory() for loaded in current_loaded_models if loaded.device == dev)
    free = float("inf") if dev.type == "cpu" else total_vram - used
    return (free, 0) if torch_free_too else free


def soft_empty_cache(force=False):
    calls.append(("soft_empty_cache",))


class LoadedModel:
    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device

    @property
    def model(self):
        return self._model()

    def model_memory(self):
        return self.model.model_size()

    def model_loaded_memory(self):
        return self.model.loaded_size()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        use_more_vram = lowvram_model_memory or 1e32
        self.model.partially_load(self.device, use_more_vram, force_patch_weights=force_patch_weights)
        calls.append(("load", self.model, self.model.loaded_size() == self.model.model_size()))
        return self.model.model

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.detach(unpatch_weights)
        calls.append(("unload", self.model))
        return True

    def __eq__(self, other):
        return self.model is other.model


def free_memory(memory_required, device, keep_loaded=[]):
    unloaded_models = []
    for i in range(len(current_loaded_models) - 1, -1, -1):
        if get_free_memory(device) > memory_required:
            break
        shift_model = current_loaded_models[i]
        if shift_model.device == device and shift_model not in keep_loaded and shift_model.model_unload():
            unloaded_models.append(current_loaded_models.pop(i))
    if unloaded_models:
        soft_empty_cache(force=True)
    return unloaded_models


def load_models_gpu(
    models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False
):
    extra_mem = max(minimum_inference_memory(), memory_required)
    minimum_memory_required = extra_mem if minimum_memory_required is None else minimum_memory_required
    models_to_load = []
    for x in set(models):
        loaded_model = LoadedModel(x)
        if loaded_model in current_loaded_models:
            models_to_load.append(current_loaded_models[current_loaded_models.index(loaded_model)])
        else:
            models_to_load.append(loaded_model)
    for loaded_model in models_to_load:
        if loaded_model.device != cpu:
            required = (loaded_model.model_memory() - loaded_model.model_loaded_memory()) * 1.3 + extra_mem
            free_memory(required, loaded_model.device)
    for loaded_model in models_to_load:
        lowvram_model_memory = 0
        if loaded_model.device != cpu and not force_full_load:
            current_free_mem = get_free_memory(loaded_model.device) + loaded_model.model_loaded_memory()
            lowvram_model_memory = max(128 * 1024 * 1024, current_free_mem - minimum_memory_required)
        loaded_model.model_load(lowvram_model_memory, force_patch_weights=force_patch_weights)
        if loaded_model in current_loaded_models:
            current_loaded_models.remove(loaded_model)
        current_loaded_models.insert(0, loaded_model)
