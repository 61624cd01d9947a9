"""Devices and dtypes: which device a user may ask for, what runs where, and the CPU's fast matrix products."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol, TypeVar

import torch

from .options import OptionError

T = TypeVar("T", bound="OnDevice")


class OnDevice:
    """Where a wrapper's `model` lives, read off its parameters."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self: T, device: str | torch.device, dtype: torch.dtype | None = None) -> T:
        self.model.to(device=device, dtype=dtype)
        return self


class Movable(Protocol):
    """What a host moves between the CPU and its GPU: a loaded model (kinds.base.Loaded) or a captioner."""

    model: torch.nn.Module

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Any: ...


class HostPlacement(Protocol):
    """A host's rules around each use of a model (webui/service.Placement): before it, make room and put the model
    on the device; after it, take it off unless the user keeps it there."""

    acquire: Callable[[Movable], None]
    release: Callable[[Movable], None]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | torch.device) -> torch.device:
    """The device, if this machine has it; else a one-line OptionError that says what to use."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError("device", f"{device!r} is not a device; use cpu, cuda, cuda:1, mps, ...") from None
    backend = getattr(torch, device.type, None)
    available = device.type == "cpu" or (
        backend is not None and hasattr(backend, "is_available") and backend.is_available()
    )
    if not available:
        raise OptionError("device", f"{device.type} is not available on this machine; use cpu or leave the device out")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(
            "device", f"{device} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def default_dtype(device: str | torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


@contextlib.contextmanager
def cpu_matmuls(device: torch.device) -> Iterator[None]:
    """fp32 matrix products on the CPU through oneDNN's AVX-512 kernels instead of MKL's, which runs AVX2 code on
    AMD CPUs: a ViT-B's linear layers took 2.4x longer on this project's EPYC (bench/bench_tagger.py).

    torch's lever for oneDNN is fpmath "bf16", an allowance oneDNN takes up only with AMX tiles; without them the
    products stay fp32 (ONEDNN_VERBOSE names brg_matmul:avx512_core, f32), so it is used only there. Intel CPUs
    with AMX keep MKL, which is fast on them. An older torch without the setting changes nothing."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    if device.type != "cpu" or not hasattr(matmul, "fp32_precision") or amx():
        yield
        return
    previous = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = previous
