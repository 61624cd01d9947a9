"""Whether torchvision was built for the installed torch, asked once when a command or the extension starts.

pip mixes builds when one index is unreachable and it falls back to another (it still exits 0): torchvision then
fails to import with "operator torchvision::nms does not exist", deep inside the first model load. Asked first,
it is one line saying which versions to reinstall, from one index.
"""

from __future__ import annotations

import importlib
import importlib.metadata

PYTORCH_INDEX = "https://download.pytorch.org/whl"


def mismatch() -> str | None:
    """None when torchvision imports (or is not installed: open_clip's own requirement says so); else the line
    that says how to fix it."""
    try:
        importlib.import_module("torchvision")
    except ModuleNotFoundError as error:
        if error.name == "torchvision":
            return None
        return _fix(error)
    except Exception as error:  # RuntimeError (an operator missing), OSError (undefined symbol), ImportError
        return _fix(error)
    return None


def _fix(error: Exception) -> str:
    torch_version = _version("torch")
    release, _, build = torch_version.partition("+")  # "2.5.1+cpu": the release and the build (cpu, cu121)
    vision = _torchvision_for(release)
    pins = f"torch=={release} torchvision{f'=={vision}' if vision else ''}"
    cause = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
    if build or not _cuda_build():
        command = f"pip install --force-reinstall {pins} --index-url {PYTORCH_INDEX}/{build or 'cpu'}"
        fallback = "; if that index cannot be reached, the same command without --index-url (from PyPI)"
    else:  # a CUDA build from PyPI: PyPI again
        command, fallback = f"pip install --force-reinstall {pins}", ""
    return (
        f"torchvision {_version('torchvision')} does not work with torch {torch_version} ({cause}): reinstall both "
        f"from one index: {command}{fallback}"
    )


def _torchvision_for(release: str) -> str | None:
    """The torchvision release made with a torch release: 2.1.2 -> 0.16.2, 2.5.1 -> 0.20.1 (2.0's were off by one)."""
    parts = release.split(".")
    if len(parts) < 3 or parts[0] != "2" or not all(part.isdigit() for part in parts[1:3]) or parts[1] == "0":
        return None
    return f"0.{int(parts[1]) + 15}.{parts[2]}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"


def _cuda_build() -> bool:
    try:
        import torch
    except Exception:  # torch itself broken: the CPU index is the safe suggestion
        return False
    return torch.version.cuda is not None
