"""Stand-in for ldm_patched/modules/model_patcher.py of reForge (branch main, 2026-03-11): the ModelPatcher a
model is handed to the memory manager in (same signature). As the real one, it writes its bookkeeping onto the
module it is given: `device` (where missing, and at every load and unload), `model_loaded_weight_memory`,
`model_lowvram`. Moves are bookkeeping: the stand-in GPU holds no tensors."""

from ldm_patched.modules import model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device") or self.model.device is None:
            self.model.device = offload_device
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.parent = None
        if not hasattr(self.model, "model_loaded_weight_memory"):
            self.model.model_loaded_weight_memory = 0
        if not hasattr(self.model, "model_lowvram"):
            self.model.model_lowvram = False

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        loaded = self.model_size() if full_load else min(self.model_size(), lowvram_model_memory)
        self.model.model_lowvram = loaded < self.model_size()
        self.model.device = device_to
        self.model.model_loaded_weight_memory = loaded

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        current_used = self.model.model_loaded_weight_memory
        full_load = current_used + extra_memory > self.model_size()
        self.load(device_to, current_used + extra_memory, force_patch_weights, full_load)
        return self.model.model_loaded_weight_memory - current_used

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights and device_to is not None:
            self.model.device = device_to
            self.model.model_loaded_weight_memory = 0

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model
