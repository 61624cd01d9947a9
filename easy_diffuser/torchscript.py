"""The weights inside a TorchScript archive, read as data: nothing in the archive runs.

torch.jit.load executes an archive while loading it: a scripted module's __setstate__ runs and can
do whatever TorchScript can (create and overwrite files through torch.from_file(..., shared=True),
for one). OpenAI's CLIP .pt files are TorchScript archives, so we read them another way: data.pkl
is unpickled by an unpickler that can only rebuild tensors from the archive's own storages;
TorchScript classes become plain containers and every other global is refused. Which attributes
are parameters or buffers (the state dict) is read, as text, from the `__parameters__` and
`__buffers__` lines of the archive's code.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


# torch stores an archive's members uncompressed, so what it holds is about its size on disk. A zip bomb
# declares far more (1 MB inflating to 2.6 GB); zipfile never inflates past a member's declared size.
MAX_INFLATION = 2  # times the archive's size on disk, plus a little for tiny archives
MAX_INFLATED = 8 * 2**30  # OpenAI's largest TorchScript CLIP (RN50x64) holds 1.3 GB


class TorchScriptError(ValueError):
    """An archive that is not plain TorchScript weights; the message says what was found."""


def is_torchscript(path: Path) -> bool:
    """A zip holding constants.pkl: what torch.load would hand to torch.jit.load."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in archive.namelist())


def read_torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict torch.jit.load(path).state_dict() would give, without loading (running) the archive."""
    with zipfile.ZipFile(path) as archive:
        _check_inflation(archive, Path(path).stat().st_size)
        data_name = next(
            (name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1), None
        )
        if data_name is None:
            raise TorchScriptError("no data.pkl in the archive")
        prefix = data_name[: -len("data.pkl")]
        if _read_text(archive, f"{prefix}byteorder", "little").strip() != "little":
            raise TorchScriptError("big-endian archives are not supported")
        root = _ArchiveUnpickler(archive, prefix).load()
        return _state_dict(root, _module_state_names(archive, prefix))


def _check_inflation(archive: zipfile.ZipFile, archive_size: int) -> None:
    """Refuse an archive whose members would inflate to far more than it holds, before any is read."""
    inflated = sum(member.file_size for member in archive.infolist())
    limit = min(MAX_INFLATION * archive_size + 2**20, MAX_INFLATED)
    if inflated > limit:
        raise TorchScriptError(
            f"its members would inflate to {inflated / 2**20:,.0f} MB from {archive_size / 2**20:,.1f} MB "
            f"(at most {limit / 2**20:,.0f} MB is read; a zip bomb?)"
        )


class _ScriptObject:
    """An instance of a TorchScript class, as plain data: its class's name and its pickled state."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: store the state, run nothing
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 for our storages; requires_grad and hooks do not matter for weights."""
    if not isinstance(storage, torch.Tensor) or not all(isinstance(n, int) for n in (offset, *size, *stride)):
        raise TorchScriptError("malformed tensor record")
    return storage.as_strided(size, stride, offset)  # raises if the view reaches past the storage


def _identity(value: Any, *_: Any) -> Any:
    return value


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    # TorchScript's typed lists and type tags: the value itself is the data.
    **{
        ("torch.jit._pickle", name): _identity
        for name in ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
    },
    ("torch.jit._pickle", "restore_type_tag"): _identity,
}


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self._classes[qualified]
        raise TorchScriptError(f"refused to rebuild {module}.{name}: only tensors are read from TorchScript archives")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise TorchScriptError(f"unknown record {pid!r:.80}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(key, str):
            raise TorchScriptError("malformed storage record")
        if key not in self._storages:
            data = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            if len(data) % storage_type.dtype.itemsize:
                raise TorchScriptError(f"storage {key} is not a whole number of {storage_type.dtype} values")
            self._storages[key] = (
                torch.frombuffer(data, dtype=storage_type.dtype) if data else torch.empty(0, dtype=storage_type.dtype)
            )
        storage = self._storages[key]
        if storage.dtype != storage_type.dtype:
            raise TorchScriptError(f"storage {key} is used with two dtypes")
        return storage


def _module_state_names(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """Qualified class name -> its parameters and buffers, from the archive's code (read as text, never run)."""
    code = f"{prefix}code/"
    names: dict[str, set[str]] = {}
    for member in archive.namelist():
        if not (member.startswith(code) and member.endswith(".py")):
            continue
        module = member[len(code) : -len(".py")].replace("/", ".")
        text = _read_text(archive, member, "")
        for match in re.finditer(r"^class (\w+)\(Module\):\n((?:[ \t].*\n?|\n)*)", text, re.MULTILINE):
            body = match.group(2)
            names[f"{module}.{match.group(1)}"] = _listed(body, "__parameters__") | _listed(body, "__buffers__")
    return names


def _listed(body: str, attribute: str) -> set[str]:
    line = re.search(rf"^\s+{attribute} = \[(.*)\]\s*$", body, re.MULTILINE)
    return set(re.findall(r'"([^"]+)"', line.group(1))) if line else set()


def _state_dict(root: Any, state_names: dict[str, set[str]]) -> dict[str, torch.Tensor]:
    """Walk modules from the root: each module's parameters and buffers under its dotted path."""
    if not isinstance(root, _ScriptObject):
        raise TorchScriptError("the archive does not hold a module")
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    pending: list[tuple[str, _ScriptObject]] = [("", root)]
    while pending:  # a loop, not recursion: a deeply nested archive must not exhaust the stack
        path, module = pending.pop()
        if id(module) in seen or not isinstance(getattr(module, "state", None), dict):
            continue
        seen.add(id(module))
        listed = state_names.get(module.qualified_name)  # None: the code did not say; take every tensor
        for name, value in module.state.items():
            if not isinstance(name, str):
                raise TorchScriptError("malformed module attributes")
            if isinstance(value, torch.Tensor) and (listed is None or name in listed):
                state[f"{path}{name}"] = value
            elif isinstance(value, _ScriptObject):
                pending.append((f"{path}{name}.", value))
    return state


def _read_text(archive: zipfile.ZipFile, name: str, default: str) -> str:
    try:
        return archive.read(name).decode("utf-8", errors="replace")
    except KeyError:
        return default
