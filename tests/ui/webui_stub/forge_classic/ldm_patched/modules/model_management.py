"""Stand-in for ldm_patched/modules/model_management.py of Forge Classic (Haoming02/sd-webui-forge-classic,
branch classic, 1f95d71, 2025-02-21): the old Forge backend's memory manager.

The names and signatures are the real ones, and so is the bookkeeping the extension relies on:
current_loaded_models (most recent first), load_models_gpu freeing room from the end of that list before it
loads, free_memory unloading only what is on the device and not kept. The GPU is counted, not allocated: a
model "on" it is one in current_loaded_models on `torch_device`, and its tensors stay where they are.
`calls` records what was loaded and unloaded, for the tests to watch.
"""

from __future__ import annotations

import torch

cpu = torch.device("cpu")
torch_device = cpu  # get_torch_device(): a CPU, as started with --always-cpu; the memory tests set a GPU
total_vram = 8 * 1024**3  # bytes the stand-in GPU holds
current_loaded_models: list[LoadedModel] = []
calls: list[tuple] = []


def get_torch_device() -> torch.device:
    return torch_device


def text_encoder_device() -> torch.device:  # the real one: the GPU, unless low VRAM or --clip-in-cpu
    return torch_device


def text_encoder_offload_device() -> torch.device:  # the real one: the CPU, unless --always-gpu
    return cpu


def module_size(module, exclude_device=None):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values() if t.device != exclude_device)


def minimum_inference_memory():
    return 1024 * 1024 * 1024


def get_free_memory(dev=None, torch_free_too=False):
    dev = dev or get_torch_device()
    used = sum(loaded.model.model_size() for loaded in current_loaded_models if loaded.device == dev)
    free = float("inf") if dev.type == "cpu" else total_vram - used
    return (free, 0) if torch_free_too else free


def soft_empty_cache(force=False):
    calls.append(("soft_empty_cache",))


class LoadedModel:
    def __init__(self, model, memory_required):
        self.model = model
        self.memory_required = memory_required
        self.device = model.load_device

    def model_memory_required(self, device):
        return self.model.model_size()

    def model_load(self, async_kept_memory=-1):
        self.real_model = self.model.patch_model(device_to=self.device)
        calls.append(("load", self.model))
        return self.real_model

    def model_unload(self, avoid_model_moving=False):
        self.model.unpatch_model(None if avoid_model_moving else self.model.offload_device)
        calls.append(("unload", self.model))

    def __eq__(self, other):
        return self.model is other.model


def free_memory(memory_required, device, keep_loaded=[]):
    unloaded_model = False
    for i in range(len(current_loaded_models) - 1, -1, -1):
        if get_free_memory(device) > memory_required:
            break
        shift_model = current_loaded_models[i]
        if shift_model.device == device and shift_model not in keep_loaded:
            current_loaded_models.pop(i).model_unload()
            unloaded_model = True
    if unloaded_model:
        soft_empty_cache()


def load_models_gpu(models, memory_required=0):
    extra_mem = max(minimum_inference_memory(), memory_required)
    models_to_load, models_already_loaded = [], []
    for x in models:
        loaded_model = LoadedModel(x, memory_required=memory_required)
        if loaded_model in current_loaded_models:
            index = current_loaded_models.index(loaded_model)
            current_loaded_models.insert(0, current_loaded_models.pop(index))
            models_already_loaded.append(loaded_model)
        else:
            models_to_load.append(loaded_model)
    for loaded_model in models_to_load:
        if loaded_model.device != cpu:
            required = loaded_model.model_memory_required(loaded_model.device) * 1.3 + extra_mem
            free_memory(required, loaded_model.device, models_already_loaded)
        loaded_model.model_load()
        current_loaded_models.insert(0, loaded_model)
