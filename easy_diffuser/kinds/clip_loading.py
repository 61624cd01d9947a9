"""open_clip models built as data and their weights read as data: the loading half of the CLIP kind (kinds/clip.py).

open_clip never loads weights for us: it would torch.load or torch.jit.load them. It builds the architecture;
the weights come from safetensors, torch.load(weights_only=True) or, for OpenAI's TorchScript .pt, a reader
that takes only their tensors (weights.py). Pretrained weights are found in order: a file placed in the cache
folder by hand, the hub's cache, then downloads, safest first (the hub's safetensors, its .bin, OpenAI's URL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..devices import OnDevice
from ..errors import ModelError, first_line, one_line
from ..hub import hub_offline, require_reachable, server_of
from ..images import bounded
from ..settings_files import SettingsFileError, check_model_config, read_json_object
from ..weights import content_hash, read_state_dict
from .base import ModelInfo, folder_defaults

WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # safest first
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Keys OpenAI's checkpoints carry beside the weights (open_clip drops them the same way).
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

# The CLIP models known by name (any other open_clip ARCH/TAG pair loads too), with our defaults.
CLIP_MODELS: dict[str, ModelInfo] = {
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
    )
}


@dataclass
class LoadedClip(OnDevice):
    """An open_clip model with everything needed to use it."""

    model_id: str  # the name users see and calibrations are filed under
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    defaults: dict[str, Any]
    vocabulary_dir: Path | None  # a model folder may carry its own vocabulary
    cache_key: str  # model_id plus a hash of the weights file when there is one: new weights, new caches

    @property
    def image_size(self) -> int:
        """The side of the model's square input (decoding needs no more pixels)."""
        size = getattr(self.model.visual, "image_size", 224)
        return max(size) if isinstance(size, (tuple, list)) else int(size)


def load_pretrained(arch: str, tag: str, cache_dir: Path) -> LoadedClip:
    open_clip = open_clip_module()

    name = f"{arch}/{tag}"
    defaults = CLIP_MODELS[name].defaults if name in CLIP_MODELS else {}
    placed = _placed_file(arch, tag, cache_dir)
    if placed:
        return load_file(placed, arch, model_id=name, defaults=defaults)
    if arch not in open_clip.list_models():
        raise ModelError(
            f"unknown model {name!r}: no registry name (easy-diffuser --help lists them, WD taggers included), no "
            f"folder or file here, and {arch!r} is no open_clip architecture (it knows "
            f"{', '.join(open_clip.list_models()[:6])}, ...). A tagger or model from a hub: download its files "
            "into a folder and pass the folder"
        )
    pretrained_cfg = pretrained_config(arch, tag)
    if not pretrained_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch))
        raise ModelError(f"open_clip has no weights {tag!r} for {arch}: choose one of {tags}")
    try:
        weights = _fetch(weight_sources(pretrained_cfg), cache_dir)
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        raise ModelError(
            f"no network and no cached weights for {name} ({type(error).__name__}: {first_line(error)}). "
            f"{_where_to_get(pretrained_cfg, cache_dir / f'{arch}-{tag}')}, "
            "or pass a local checkpoint path as the model"
        ) from error
    quick_gelu = tag == "openai" or bool(pretrained_cfg.get("quick_gelu"))
    model, preprocess = architecture(
        arch, force_quick_gelu=quick_gelu, image_mean=pretrained_cfg.get("mean"), image_std=pretrained_cfg.get("std")
    )
    _load_weights(model, weights)
    return _finish(model, preprocess, open_clip.get_tokenizer(arch), name, name, None, defaults)


def pretrained_config(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's entry for ARCH/TAG, with our table's hub repository where it has one."""
    pretrained_cfg = dict(open_clip_module().get_pretrained_cfg(arch, tag))
    info = CLIP_MODELS.get(f"{arch}/{tag}")
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

            return server_of(constants.ENDPOINT)
        return server_of(self.url)

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
        return Path(open_clip_module().pretrained.download_pretrained_from_url(self.url, cache_dir=str(cache_dir)))


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


def load_folder(folder: Path, model_id: str | None = None, defaults: dict[str, Any] | None = None) -> LoadedClip:
    open_clip = open_clip_module()
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
    arch = register_config(model_id, config["model_cfg"])
    preprocess_cfg = config.get("preprocess_cfg", {})
    try:
        model, preprocess = architecture(
            arch, image_mean=preprocess_cfg.get("mean"), image_std=preprocess_cfg.get("std")
        )
    except Exception as error:  # sizes in range that still don't fit together (heads that don't divide the width)
        raise ModelError(
            f"{config_path}: open_clip cannot build this model ({type(error).__name__}: {one_line(error)})"
        ) from None
    _load_weights(model, weights)
    defaults = {**(defaults or {}), **folder_defaults(folder / "easy_diffuser.json")}
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


def load_file(path: Path, arch: str, model_id: str | None = None, defaults: dict[str, Any] | None = None) -> LoadedClip:
    open_clip = open_clip_module()

    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    if arch not in open_clip.list_models():
        raise ModelError(f"{path}: unknown architecture {arch!r}; name it as ARCH=PATH, e.g. ViT-L-14={path}")
    model, preprocess = architecture(arch, force_quick_gelu=_is_openai_checkpoint(path))
    _load_weights(model, path)
    cache_key = f"{arch}-{path.stem}-{content_hash(path)}"
    return _finish(model, preprocess, open_clip.get_tokenizer(arch), model_id or cache_key, cache_key, None, defaults)


class _RandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def architecture(arch: str, **kwargs: Any) -> tuple[torch.nn.Module, Callable]:
    """The model without weights (ours are loaded next), and its preprocessing.

    open_clip 3.x warns on the root logger that the model is "initialized randomly", which
    is true only until the next line; users should not see it.
    """
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        model, _, preprocess = open_clip_module().create_model_and_transforms(arch, **kwargs)
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
) -> LoadedClip:
    model.eval()  # open_clip leaves BatchNorm/Dropout in training mode
    model.requires_grad_(False)
    return LoadedClip(model_id, model, preprocess, tokenizer, dict(defaults or {}), folder, cache_key)


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder}: no weights file ({' or '.join(WEIGHT_FILES)})")


def arch_from_file_name(path: Path) -> str:
    open_clip = open_clip_module()

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


def register_config(model_id: str, model_cfg: dict) -> str:
    """open_clip builds models only from registered config files; register this one under a unique name."""
    open_clip = open_clip_module()

    # Named by the config too: a folder whose config was fixed (same weights, same model id) gets its new one.
    arch = f"easy-diffuser-{model_id}-{hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:8]}"
    if arch not in open_clip.list_models():
        # open_clip reads the file once into its table, so the file need not outlive the call.
        with tempfile.TemporaryDirectory(prefix="easy_diffuser_cfg_") as folder:
            path = Path(folder) / f"{arch}.json"
            path.write_text(json.dumps(model_cfg))
            open_clip.add_model_config(path)
    return arch


def open_clip_module():
    """Import open_clip without the FutureWarning its timm import prints on every start."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import open_clip
    return open_clip
