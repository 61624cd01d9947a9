"""Stand-in for ldm_patched/modules/model_patcher.py of Forge Classic (branch classic, 2025-02-21): the
ModelPatcher a model is handed to the memory manager in (same signature). Moves are bookkeeping
(`current_device`): the stand-in GPU holds no tensors."""

from ldm_patched.modules import model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, weight_inplace_update=False):
        self.size = size
        self.model = model
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.current_device = self.offload_device if current_device is None else current_device
        self.weight_inplace_update = weight_inplace_update

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = model_management.module_size(self.model)
        return self.size

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def patch_model(self, device_to=None, patch_weights=True):
        if device_to is not None:
            self.current_device = device_to
        return self.model

    def unpatch_model(self, device_to=None):
        if device_to is not None:
            self.current_device = device_to
