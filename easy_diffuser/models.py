"""Model registry and loading: one entry point, `load_model(spec)`, over a table of known models.

A model is a CLIP (open_clip) or a WD tagger (timm, tagger.py). Other kinds of model register their loader
here (`register_kind`, as timm's @register_model fills its registry; tagger.py registers itself, and the
package imports it), so every kind loads, caches, moves between devices and unloads the same way.
A CLIP spec is one of:
  * a registry name: "ViT-L-14/openai", "ViT-H-14/laion2b_s32b_b79k", "ViT-bigG-14/laion2b_s39b_b160k",
    "shapes-demo" (the tiny model shipped in the package), or any other open_clip "ARCH/TAG" pair;
  * a local model folder holding open_clip_config.json and open_clip_model.safetensors
    (or open_clip_pytorch_model.bin), as published on model hubs;
  * a local checkpoint file (.safetensors, .bin, .pt) whose architecture is named in its file
    name ("ViT-L-14-openai.safetensors") or given as "ARCH=PATH".
Nothing a weights file holds ever runs: safetensors, torch.load(weights_only=True), or, for
TorchScript archives (OpenAI's .pt), a reader that takes only their tensors (torchscript.py).
open_clip never loads weights for us: it would torch.load or torch.jit.load them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

import torch

from .images import bounded
from .options import OptionError
from .settings_files import SettingsFileError, check_model_config, check_model_defaults, read_json_object
from .torchscript import is_torchscript, read_torchscript_state_dict

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_MODEL = "ViT-L-14/openai"
DEFAULT_CACHE_DIR = Path(os.environ.get("EASY_DIFFUSER_CACHE", Path.home() / ".cache" / "easy_diffuser"))
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # safest first
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Keys OpenAI's checkpoints carry beside the weights (open_clip drops them the same way).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


# A tagger's relevance is the standardised log-odds (scorers.py); tau 2 starts the negative prompt's subset near
# p = 0.01 on a typical image, until a calibration learns better.
TAGGER_DEFAULTS: dict[str, Any] = {"tau": 2.0}

T = TypeVar("T")


class ModelError(RuntimeError):
    """A model that cannot be had; the message names the cause and the fix."""


class ModelFileError(ModelError):
    """A model's own file is unusable (a missing, malformed or mismatched file); the message names it."""


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model beyond open_clip's own tables."""

    name: str
    use: str
    defaults: dict[str, Any] = field(default_factory=dict)
    hf_hub: str = ""  # a hub repository with safetensors, where open_clip's table names only a .pt URL
    tagger: bool = False  # a WD tagger (tagger.py): the name is its hub repository
    shipped: str = ""  # a folder under data/ that ships with the package


REGISTRY: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        # open_clip 3.x names this repository itself; 2.20 only OpenAI's TorchScript .pt.
        ModelInfo(
            "ViT-L-14/openai",
            "SD 1.x and SDXL (the CLIP-L text encoder both use)",
            {"tau": 1.5},
            hf_hub="timm/vit_large_patch14_clip_224.openai/",
        ),
        ModelInfo("ViT-H-14/laion2b_s32b_b79k", "SD 2.x (its OpenCLIP-H text encoder)", {"tau": 1.5}),
        ModelInfo("ViT-bigG-14/laion2b_s39b_b160k", "SDXL (its OpenCLIP-bigG text encoder)", {"tau": 1.5}),
        ModelInfo(
            "shapes-demo", "the tiny shapes-world model shipped for offline tries and tests", shipped="shapes-demo"
        ),
        ModelInfo(
            "shapes-booru",
            "the tiny shapes-world WD-style tagger shipped for offline tries and tests (booru tags)",
            TAGGER_DEFAULTS,
            tagger=True,
            shipped="shapes-booru",
        ),
        *(
            ModelInfo(
                f"SmilingWolf/wd-{name}-tagger-v3",
                f"anime checkpoints, booru tags: WD v3 {use}",
                TAGGER_DEFAULTS,
                tagger=True,
            )
            for name, use in (
                ("vit", "ViT-B tagger (about 380 MB)"),
                ("swinv2", "SwinV2-B tagger (about 390 MB)"),
                ("convnext", "ConvNeXt-B tagger (about 390 MB)"),
                ("vit-large", "ViT-L tagger (about 1.3 GB)"),
                ("eva02-large", "EVA02-L tagger, the most accurate (about 1.3 GB)"),
            )
        ),
    )
}


class OnDevice:
    """Where a wrapper's `model` lives, read off its parameters."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


@dataclass
class LoadedModel(OnDevice):
    """An open_clip model with everything needed to use it."""

    model_id: str  # the name users see and calibrations are filed under
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    defaults: dict[str, Any]
    vocabulary_dir: Path | None  # a model folder may carry its own vocabulary
    cache_key: str  # model_id plus a hash of the weights file when there is one: new weights, new caches

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "LoadedModel":
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def image_size(self) -> int:
        """The side of the model's square input (decoding needs no more pixels)."""
        size = getattr(self.model.visual, "image_size", 224)
        return max(size) if isinstance(size, (tuple, list)) else int(size)


def list_models() -> list[str]:
    return list(REGISTRY)


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


class LoadOnce(Generic[T]):
    """Loads each (spec, cache folder) once per process and hands out the same object afterwards."""

    def __init__(self, load: Callable[[str, Path], T]) -> None:
        self._load = load
        self._loaded: dict[tuple[str, str], T] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: str, cache_dir: Path) -> T:
        key = (spec, str(cache_dir))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._load(spec, cache_dir)
            return self._loaded[key]

    def clear(self, spec: str | None = None, cache_dir: Path | None = None) -> None:
        """Forget one (spec, cache folder), or everything when no spec is given."""
        with self._lock:
            if spec is None:
                self._loaded.clear()
            else:
                self._loaded.pop((spec, str(cache_dir)), None)


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """Load a model once per (spec, cache folder) and reuse it; move it to `device`/`dtype`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(
            f"model: must name a model ({', '.join(REGISTRY)}, an open_clip ARCH/TAG pair, "
            f"a model or tagger folder or a checkpoint file path), not {spec!r}"
        )
    return _loaded(spec, Path(cache_dir or DEFAULT_CACHE_DIR)).to(device, dtype or default_dtype(device))


def unload_models(spec: str | None = None, cache_dir: str | os.PathLike | None = None) -> None:
    """Forget a loaded model (every one when no spec is given) so its memory can be freed."""
    _loaded.clear(spec, Path(cache_dir or DEFAULT_CACHE_DIR))


# Other kinds of model: (claims(spec), load(spec, cache folder)), asked before the CLIP specs.
MODEL_KINDS: list[tuple[Callable[[str], bool], Callable[[str, Path], Any]]] = []


def register_kind(claims: Callable[[str], bool], load: Callable[[str, Path], Any]) -> None:
    """Let `load_model` load another kind of model (tagger.py's WD taggers): same cache, devices and unloading.
    The loaded object has `model`, `model_id`, `cache_key`, `defaults`, `preprocess`, `image_size` and `to()`."""
    MODEL_KINDS.append((claims, load))


def _load(spec: str, cache_dir: Path) -> Any:
    for claims, load in MODEL_KINDS:
        if claims(spec):
            return load(spec, cache_dir)
    info = REGISTRY.get(spec)
    if info is not None and info.shipped:  # a CLIP shipped in the package (a shipped tagger is tagger.py's)
        return _load_folder(DATA_DIR / info.shipped, model_id=spec)
    arch, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    local = Path(path).expanduser()
    if local.is_dir():
        return _load_folder(local)
    if local.is_file() or local.suffix in WEIGHT_SUFFIXES:
        return _load_file(local, arch or _arch_from_file_name(local))
    if "/" in spec:
        return _load_pretrained(*spec.split("/", 1), cache_dir=cache_dir)
    raise ModelError(
        f"unknown model {spec!r}: use one of {', '.join(REGISTRY)}, an open_clip ARCH/TAG pair, "
        "a model folder or a checkpoint file path"
    )


_loaded: LoadOnce[Any] = LoadOnce(_load)


def _load_pretrained(arch: str, tag: str, cache_dir: Path) -> LoadedModel:
    open_clip = _open_clip()

    name = f"{arch}/{tag}"
    placed = _placed_file(arch, tag, cache_dir)
    if placed:
        return _load_file(placed, arch, model_id=name)
    if arch not in open_clip.list_models():
        raise ModelError(
            f"unknown model architecture {arch!r} in {name!r}: "
            f"open_clip knows {', '.join(open_clip.list_models()[:8])}, ..."
        )
    pretrained_cfg = pretrained_config(arch, tag)
    if not pretrained_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch))
        raise ModelError(f"open_clip has no weights {tag!r} for {arch}: choose one of {tags}")
    try:
        weights = _fetch(weight_sources(pretrained_cfg), cache_dir)
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        raise ModelError(
            f"no network and no cached weights for {name} ({type(error).__name__}: {_first_line(error)}). "
            f"{_where_to_get(pretrained_cfg, cache_dir / f'{arch}-{tag}')}, "
            "or pass a local checkpoint path as the model"
        ) from error
    quick_gelu = tag == "openai" or bool(pretrained_cfg.get("quick_gelu"))
    model, preprocess = _architecture(
        arch, force_quick_gelu=quick_gelu, image_mean=pretrained_cfg.get("mean"), image_std=pretrained_cfg.get("std")
    )
    _load_weights(model, weights)
    return _finish(model, preprocess, open_clip.get_tokenizer(arch), name, name, folder=None)


def pretrained_config(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's entry for ARCH/TAG, with our registry's hub repository where it has one."""
    pretrained_cfg = dict(_open_clip().get_pretrained_cfg(arch, tag))
    info = REGISTRY.get(f"{arch}/{tag}")
    if pretrained_cfg and info and info.hf_hub:
        pretrained_cfg["hf_hub"] = info.hf_hub
    return pretrained_cfg


@dataclass(frozen=True)
class WeightSource:
    """One place the weights can come from: a file in a hub repository, or a URL."""

    hub_repo: str = ""
    filename: str = ""
    url: str = ""

    @property
    def server(self) -> str:
        """The server a download asks: the hub's endpoint (HF_ENDPOINT), or the URL's."""
        if self.hub_repo:
            from huggingface_hub import constants

            return _server_of(constants.ENDPOINT)
        return _server_of(self.url)

    def fetch(self, cache_dir: Path, local_only: bool) -> Path | None:
        """The local file, downloaded unless local_only; None when local_only and it is not here."""
        if self.hub_repo:
            from huggingface_hub import hf_hub_download

            try:
                return Path(
                    hf_hub_download(self.hub_repo, self.filename, cache_dir=str(cache_dir), local_files_only=local_only)
                )
            except Exception:
                if local_only:
                    return None
                raise
        if local_only and not (cache_dir / Path(self.url).name).is_file():
            return None
        # open_clip checks OpenAI's checksum and downloads again when it does not match.
        return Path(_open_clip().pretrained.download_pretrained_from_url(self.url, cache_dir=str(cache_dir)))


def weight_sources(pretrained_cfg: dict[str, Any]) -> list[WeightSource]:
    """Where the weights can be had, safest first: the hub's safetensors, its .bin, then a URL (OpenAI's: a .pt)."""
    sources = []
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        # open_clip's convention: "org/name/" means its default file, "org/name/file.bin" that file.
        repo, _, filename = hub.rpartition("/")
        filename = filename or WEIGHT_FILES[1]
        safe = WEIGHT_FILES[0] if filename == WEIGHT_FILES[1] else f"{Path(filename).stem}.safetensors"
        sources += [WeightSource(repo, name) for name in dict.fromkeys((safe, filename))]
    if pretrained_cfg.get("url"):
        sources.append(WeightSource(url=pretrained_cfg["url"]))
    return sources


def _fetch(sources: list[WeightSource], cache_dir: Path) -> Path:
    """A file already here first (nothing downloaded for what is cached), then downloads in order of safety.

    Each server is asked once whether it answers before anything is downloaded from it: without network the
    hub's downloader retries for about a minute before it gives the same error."""
    errors: list[Exception] = []
    for source in sources:
        try:
            path = source.fetch(cache_dir, local_only=True)
        except Exception as error:
            errors.append(error)
            continue
        if path is not None:
            return path
    unreachable: set[str] = set()
    for source in sources:
        if source.hub_repo and hub_offline():
            errors.append(ConnectionError("HF_HUB_OFFLINE is set, so the hub is not asked"))
            continue
        if source.server in unreachable:
            continue
        try:
            require_reachable(source.server)
        except ConnectionError as error:
            unreachable.add(source.server)
            errors.append(error)
            continue
        try:
            return source.fetch(cache_dir, local_only=False)
        except Exception as error:
            errors.append(error)
    raise errors[0] if errors else FileNotFoundError("no download source")


def _server_of(url: str) -> str:
    """https://huggingface.co/org/repo -> https://huggingface.co"""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def require_reachable(url: str, timeout: float = 5.0) -> None:
    """ConnectionError at once when the server of `url` does not answer: one request, no retries.

    urllib honours the same proxy settings (HTTPS_PROXY, ...) as the hub's and open_clip's downloads."""
    server = _server_of(url)
    try:
        urllib.request.urlopen(urllib.request.Request(server, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered: the server is there, whatever it thinks of a bare HEAD
    except (urllib.error.URLError, OSError) as error:
        raise ConnectionError(f"{server} is not reachable: {getattr(error, 'reason', error)}") from None


def hub_offline() -> bool:
    """Honour HF_HUB_OFFLINE when it is set after huggingface_hub was imported (it reads it only then)."""
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n")[0]


def one_line(error: BaseException, limit: int = 300) -> str:
    """A multi-line error (load_state_dict lists every key) as one line a user can read."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else f"{text[:limit]}..."


def _where_to_get(pretrained_cfg: dict, target: Path) -> str:
    """How to fetch the weights by hand and where to put them so the next start finds them."""
    hub = pretrained_cfg.get("hf_hub")
    if hub:
        page = f"https://huggingface.co/{hub.rstrip('/')}"
        return (
            f"Download {WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}) from {page} "
            f"and save it as {target}.safetensors (or .bin)"
        )
    url = pretrained_cfg.get("url", "")
    return f"Download {url} and save it as {target}{Path(url).suffix or '.pt'}"


def _placed_file(arch: str, tag: str, cache_dir: Path) -> Path | None:
    """A checkpoint the user put in the cache folder by hand, for machines without network."""
    for suffix in WEIGHT_SUFFIXES:
        candidate = cache_dir / f"{arch}-{tag}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _load_folder(folder: Path, model_id: str | None = None) -> LoadedModel:
    open_clip = _open_clip()
    weights = _weights_in(folder)
    cache_key = f"{folder.name}-{content_hash(weights)}"
    model_id = model_id or cache_key

    config_path = folder / "open_clip_config.json"
    if not config_path.exists():
        raise ModelError(f"{config_path}: missing; a model folder needs its open_clip config")
    try:
        config = check_model_config(read_json_object(config_path), config_path)
    except SettingsFileError as error:
        raise ModelError(f"{error} (not a usable open_clip config)") from None
    arch = _register_config(model_id, config["model_cfg"])
    preprocess_cfg = config.get("preprocess_cfg", {})
    try:
        model, preprocess = _architecture(
            arch, image_mean=preprocess_cfg.get("mean"), image_std=preprocess_cfg.get("std")
        )
    except Exception as error:  # sizes in range that still don't fit together (heads that don't divide the width)
        raise ModelError(
            f"{config_path}: open_clip cannot build this model ({type(error).__name__}: {one_line(error)})"
        ) from None
    _load_weights(model, weights)
    defaults = folder_defaults(folder / "easy_diffuser.json")
    vocabulary = folder / "vocabulary"
    return _finish(
        model,
        preprocess,
        open_clip.get_tokenizer(arch),
        model_id,
        cache_key,
        vocabulary if vocabulary.is_dir() else None,
        defaults,
    )


def declared_defaults(spec: str) -> tuple[str, dict[str, Any]] | None:
    """(model id, defaults) of a named model without loading it: the registry's, with a shipped model's own file
    over them. None for model folders and checkpoint files, whose id needs their weights hashed."""
    info = REGISTRY.get(spec)
    if info is not None and info.shipped:
        return spec, shipped_defaults(info)
    if "/" in spec and "=" not in spec and not Path(spec).expanduser().exists():
        info = REGISTRY.get(spec)
        return spec, dict(info.defaults) if info else {}
    return None


def shipped_defaults(info: ModelInfo) -> dict[str, Any]:
    """A shipped model's defaults: the registry's, then what its folder's easy_diffuser.json learnt (calibration)."""
    return {**info.defaults, **folder_defaults(DATA_DIR / info.shipped / "easy_diffuser.json")}


def folder_defaults(path: Path) -> dict[str, Any]:
    """A model folder's own defaults (tau, negatives, ...); none when the file is absent."""
    if not path.exists():
        return {}
    try:
        return check_model_defaults(read_json_object(path), path)
    except SettingsFileError as error:
        raise ModelError(f"{error}; fix it or delete it to use the built-in defaults") from None


def _load_file(path: Path, arch: str, model_id: str | None = None) -> LoadedModel:
    open_clip = _open_clip()

    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    if arch not in open_clip.list_models():
        raise ModelError(f"{path}: unknown architecture {arch!r}; name it as ARCH=PATH, e.g. ViT-L-14={path}")
    model, preprocess = _architecture(arch, force_quick_gelu=_is_openai_checkpoint(path))
    _load_weights(model, path)
    cache_key = f"{arch}-{path.stem}-{content_hash(path)}"
    return _finish(model, preprocess, open_clip.get_tokenizer(arch), model_id or cache_key, cache_key, None)


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _architecture(arch: str, **kwargs: Any) -> tuple[torch.nn.Module, Callable]:
    """The model without weights (ours are loaded next), and its preprocessing.

    open_clip 3.x warns on the root logger that the model is "initialized randomly", which
    is true only until the next line; users should not see it.
    """
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        model, _, preprocess = _open_clip().create_model_and_transforms(arch, **kwargs)
    finally:
        logging.getLogger().removeFilter(notice)
    return model, _bounded_first(preprocess)


def _bounded_first(preprocess: Callable) -> Callable:
    """The model's preprocessing with images.bounded in front: every surface, and the pipeline's decode
    workers (which run these same steps), cut a thin strip before the resize would scale it up to gigabytes."""
    from torchvision import transforms

    return transforms.Compose([bounded, *preprocess.transforms])


def _finish(
    model, preprocess, tokenizer, model_id: str, cache_key: str, folder: Path | None, defaults: dict | None = None
) -> LoadedModel:
    model.eval()  # open_clip leaves BatchNorm/Dropout in training mode
    model.requires_grad_(False)
    info = REGISTRY.get(model_id)
    merged = {**(info.defaults if info else {}), **(defaults or {})}
    return LoadedModel(model_id, model, preprocess, tokenizer, merged, folder, cache_key)


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder}: no weights file ({' or '.join(WEIGHT_FILES)})")


def _arch_from_file_name(path: Path) -> str:
    open_clip = _open_clip()

    # Longest first, so "ViT-L-14-336" wins over "ViT-L-14".
    for arch in sorted(open_clip.list_models(), key=len, reverse=True):
        if path.name.lower().startswith(arch.lower()):
            return arch
    raise ModelError(
        f"{path}: cannot tell the architecture from the file name; pass it as ARCH=PATH, e.g. ViT-L-14={path}"
    )


def _is_openai_checkpoint(path: Path) -> bool:
    """OpenAI's own weights use QuickGELU; their names say so ("openai" or "quickgelu")."""
    name = path.name.lower()
    return "openai" in name or "quickgelu" in name


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        state_dict = read_state_dict(path)
        # TorchScript saves non-persistent buffers (open_clip's attn_mask) too; the model computes its own.
        computed = {name for name, _ in model.named_buffers()} - set(model.state_dict())
        for key in (*OPENAI_EXTRA_KEYS, *computed):
            state_dict.pop(key, None)
        model.load_state_dict(state_dict, strict=True)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"{path}: not a usable checkpoint for this architecture ({type(error).__name__}: {one_line(error)})"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights, nothing in the file run: safetensors, TorchScript tensors read as data, or weights-only torch files."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # Before torch.load, which hands TorchScript to torch.jit.load (torch < 2.4 even with weights_only=True).
    if is_torchscript(path):
        try:
            return read_torchscript_state_dict(path)
        except Exception as error:  # the archive is data to us: any fault in it is a refusal
            raise ModelError(
                f"{path}: refused to load this TorchScript archive ({_first_line(error)}); use a .safetensors file"
            ) from None
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(
            f"{path}: refused to load ({_first_line(error)}); "
            "only plain weight files are read, convert it to .safetensors"
        ) from None
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise ModelError(f"{path}: holds no state dict")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def _register_config(model_id: str, model_cfg: dict) -> str:
    """open_clip builds models only from registered config files; register this one under a unique name."""
    open_clip = _open_clip()

    # Named by the config too: a folder whose config was fixed (same weights, same model id) gets its new one.
    arch = f"easy-diffuser-{model_id}-{hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:8]}"
    if arch not in open_clip.list_models():
        # open_clip reads the file once into its table, so the file need not outlive the call.
        with tempfile.TemporaryDirectory(prefix="easy_diffuser_cfg_") as folder:
            path = Path(folder) / f"{arch}.json"
            path.write_text(json.dumps(model_cfg))
            open_clip.add_model_config(path)
    return arch


def content_hash(path: Path, chunk: int = 1 << 20) -> str:
    """Hash of size plus first and last MiB: cheap for multi-GB files, different for different weights."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(chunk))
        handle.seek(max(0, path.stat().st_size - chunk))
        digest.update(handle.read(chunk))
    return digest.hexdigest()[:12]


def _open_clip():
    """Import open_clip without the FutureWarning its timm import prints on every start."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import open_clip
    return open_clip


class _WeightsOnlyTorchLoad:
    """torch.load with weights_only=True forced for the threads inside the context, and only for them.

    transformers 4.30 (the webui's) reads pytorch_model.bin with a plain torch.load, which on the
    webui's torch 2.1 unpickles. torch.load is one function for the whole process: it is replaced
    once, under a lock, while any thread is inside, and put back when the last one leaves; calls
    from other threads (the webui loading its own checkpoints) pass through unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = threading.local()
        self._users = 0
        self._original: Callable[..., Any] = torch.load

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._original = torch.load
                torch.load = self._load
            self._users += 1
        self._inside.depth = getattr(self._inside, "depth", 0) + 1
        try:
            yield
        finally:
            self._inside.depth -= 1
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    torch.load = self._original

    def _load(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self._inside, "depth", 0):
            kwargs["weights_only"] = True
        return self._original(*args, **kwargs)


_weights_only_torch_load = _WeightsOnlyTorchLoad()
