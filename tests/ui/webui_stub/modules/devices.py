"""Stand-in for modules/devices.py; counts torch_gc() calls."""

import torch

cpu: torch.device = torch.device("cpu")
device_interrogate: torch.device = cpu  # set by shared_init from --use-cpu in the real webui
gc_calls = 0


def torch_gc():
    global gc_calls
    gc_calls += 1
