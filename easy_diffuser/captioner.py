"""Optional step 0 of the data flow: image -> a caption in words, put in front of the CLIP tags.

CLIP tags name what is in an image; a captioner says who does what ("a woman sitting on a bench
in a park"), and Stable Diffusion prompts read best as such a subject phrase followed by tags.
A *describing* captioner (Qwen2-VL, an instruction-following vision-language model) writes a
paragraph instead: subject, setting, style, lighting and composition, the prompt Flux and SD3 want.
The captioners are Hugging Face `transformers` models (the optional `caption` extra), only of
classes the host's own `transformers` has (`ARCHITECTURES`; no `trust_remote_code`):

  * a registry id ("Salesforce/blip-image-captioning-base", ...) or any Hub id of a model of
    those classes, downloaded on first use into the same cache folder as the CLIP weights;
  * a local model folder as written by `save_pretrained` (config.json, model.safetensors and the
    processor's tokenizer and preprocessor files).

Weights are read from safetensors (describing captioners: safetensors only); an old BLIP or GIT
repository that has only pytorch_model.bin is read with torch.load(weights_only=True). The
original prototype's captioner, a 1.2 GB pickled `checkpoint.pth` with its own model code, is not
loaded: unpickling a file runs whatever code it carries, so a shared checkpoint of that kind is a
way to run someone else's program.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .devices import OnDevice, default_dtype
from .errors import ModelError, ModelFileError, first_line, one_line
from .files import safe_name
from .hub import hub_offline, require_reachable
from .joycaption import conversation, expand_image_tokens, image_token_count, instruction
from .models import DEFAULT_CACHE_DIR, LoadOnce
from .options import CAPTION_OPTION, DEFAULT_CAPTIONER, DEFAULT_DESCRIBER, TOKEN_BUDGET, CaptionOptions
from .selection import TagScore
from .weights import weights_only_torch_load


@dataclass(frozen=True)
class Architecture:
    """A captioning model class of `transformers`, and the first release that has it."""

    model_class: str
    processor_class: str
    since: str
    describes: bool = False  # an instruction-following model, asked for a paragraph (Describer)


# model_type in config.json -> its classes. Only classes transformers has natively: no trust_remote_code.
ARCHITECTURES = {
    "blip": Architecture("BlipForConditionalGeneration", "BlipProcessor", "4.26.0"),
    "git": Architecture("GitForCausalLM", "GitProcessor", "4.26.0"),
    "qwen2_vl": Architecture("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "4.45.0", describes=True),
    # JoyCaption. 4.46 is the first release whose model takes a prompt already expanded to one image token per
    # feature (joycaption.py expands it); older ones expand it again.
    "llava": Architecture("LlavaForConditionalGeneration", "LlavaProcessor", "4.46.0", describes=True),
}
# What a describing captioner is asked (its chat template wraps it with the image).
DESCRIBE = (
    "Describe this image in one detailed paragraph for a text-to-image model: the subject, the setting, "
    "the style or medium, the lighting and colours, and the composition. Write plain sentences, no lists."
)
# The one request a describer is sent: its chat template is rendered with it once at load (see _check_chat_template).
DESCRIBE_MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE}]}]
# Where a model folder keeps its chat template (transformers reads the first it finds).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")
DESCRIBER_DEFAULTS = {"beams": 1, "max_length": 256}  # in place of BLIP's defaults (3 beams, 30 tokens)
# Qwen2-VL-2B, the largest captioner listed, has 2.2e9 parameters (its 7B sibling 8.3e9): a config.json that
# describes more is refused before transformers allocates the model (100,000 layers would fill any memory).
MAX_CAPTIONER_PARAMETERS = 10**10
MAX_CAPTIONER_LAYERS = 256  # Qwen2-VL-72B has 80
DESCRIBER_MAX_PIXELS = 512 * 28 * 28  # Qwen2-VL: at most 512 visual tokens an image (about 0.4 megapixels)
# Words a tag may share with any caption without repeating it ("a", "in the ...").
STOP_WORDS = frozenset("a an the of in on at with and or to for by from its his her their is are".split())
_WORD = re.compile(r"[a-z0-9]+")
_KINDS = "BLIP, GIT, Qwen2-VL or LLaVA (JoyCaption)"
JOYCAPTION = "fancyfeast/llama-joycaption-beta-one-hf-llava"
# A captioner needing more VRAM than this (bf16, GB) is refused on a host run with --lowvram or --medvram.
LOW_VRAM_GB = 6
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class CaptionerInfo:
    name: str
    use: str
    model_type: str  # its ARCHITECTURES key: known before anything is downloaded
    vram_gb: float = 0  # bf16 weights plus activations, when they are more than a low-VRAM host has (LOW_VRAM_GB)

    @property
    def describes(self) -> bool:
        return ARCHITECTURES[self.model_type].describes


CAPTIONERS: dict[str, CaptionerInfo] = {
    info.name: info
    for info in (
        CaptionerInfo(
            "Salesforce/blip-image-captioning-base",
            "BLIP base (about 1 GB): short captions, the quick default",
            "blip",
        ),
        CaptionerInfo(
            "Salesforce/blip-image-captioning-large",
            "BLIP large (about 1.9 GB): more detailed captions, clip-interrogator's choice",
            "blip",
        ),
        CaptionerInfo(
            "microsoft/git-base-coco",
            "GIT base tuned on COCO (about 0.7 GB): plain literal captions, the smallest",
            "git",
        ),
        CaptionerInfo(
            "microsoft/git-large-coco",
            "GIT large tuned on COCO (about 1.6 GB): literal captions, better on busy scenes",
            "git",
        ),
        CaptionerInfo(
            "Qwen/Qwen2-VL-2B-Instruct",
            "Qwen2-VL 2B Instruct (2.2B parameters, 4.4 GB, about 6 GB of VRAM): a detailed paragraph, "
            "the sentences style's default; needs transformers 4.45 or newer (Forge has it)",
            "qwen2_vl",
        ),
        CaptionerInfo(
            JOYCAPTION,
            "JoyCaption Beta One (8.5B parameters, 17 GB in bf16, about 17 GB of VRAM): the Flux LoRA datasets' "
            "captioner; a description, a Stable Diffusion prompt or Danbooru tags (--caption-mode); needs "
            "transformers 4.46 or newer (Forge has it)",
            "llava",
            vram_gb=17,
        ),
    )
}


@dataclass
class Captioner(OnDevice):
    """A captioning model and its processor (image preprocessing plus tokenizer)."""

    model_id: str
    model: Any  # a transformers PreTrainedModel; typed loosely so transformers stays optional
    processor: Any
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one model, many callers

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Captioner":
        with self._lock:
            self.model.to(device=device, dtype=dtype or default_dtype(device))
        return self

    @torch.inference_mode()
    def caption(self, image: Image.Image, options: CaptionOptions = CaptionOptions()) -> str:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with self._lock:
            ids = self.model.generate(
                pixel_values=pixels.to(self.device, self.dtype),
                num_beams=options.beams,
                # new tokens, so that the start token (and GIT's image tokens) do not count
                min_new_tokens=min(options.min_length, options.max_length),  # a lowered max wins over the default min
                max_new_tokens=options.max_length,
            )
        text = self.processor.batch_decode(ids, skip_special_tokens=True)[0]
        return " ".join(text.split())


@dataclass
class Describer(Captioner):
    """An instruction-following vision-language model asked for a paragraph (DESCRIBE) through its chat template."""

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "Describer":
        dtype = dtype or default_dtype(device)
        if dtype == torch.float16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16  # Qwen2's activations overflow fp16; bf16 has fp32's range at the same size
        return super().to(device, dtype)

    @torch.inference_mode()
    def caption(self, image: Image.Image, options: CaptionOptions = CaptionOptions()) -> str:
        beams, max_length = describing(options)
        text = self.processor.apply_chat_template(DESCRIBE_MESSAGES, add_generation_prompt=True)
        inputs = self.processor(images=[image.convert("RGB")], text=[text], return_tensors="pt")
        with self._lock:
            inputs = {
                name: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
                for name, value in inputs.items()
            }
            ids = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=beams,
                min_new_tokens=min(options.min_length, max_length),
                max_new_tokens=max_length,
            )
        new = ids[:, inputs["input_ids"].shape[1] :]  # the answer, without the prompt
        return whole_sentences(" ".join(self.processor.batch_decode(new, skip_special_tokens=True)[0].split()))


def describing(options: CaptionOptions) -> tuple[int, int]:
    """(beams, max new tokens) of a describing captioner: the schema's defaults, made for BLIP's one line,
    mean the describer's own (greedy, 256 tokens); any other value is the user's."""
    beams = DESCRIBER_DEFAULTS["beams"] if options.beams == CAPTION_OPTION["beams"].default else options.beams
    default_length = CAPTION_OPTION["max_length"].default
    return beams, DESCRIBER_DEFAULTS["max_length"] if options.max_length == default_length else options.max_length


@dataclass
class JoyCaptioner(Describer):
    """JoyCaption: asked in its trained instructions (the mode and length options), with the prompt's image
    tokens expanded here to the vision tower's count (joycaption.py), the same on every transformers from 4.46."""

    @torch.inference_mode()
    def caption(self, image: Image.Image, options: CaptionOptions = CaptionOptions()) -> str:
        beams, max_length = describing(options)
        tokenizer = self.processor.tokenizer
        text = self.processor.apply_chat_template(
            conversation(instruction(options.mode, options.length)), tokenize=False, add_generation_prompt=True
        )
        # One <|begin_of_text|>: the tokenizer adds it unless the chat template has written it already.
        starts = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
        ids = tokenizer(text, add_special_tokens=not starts)["input_ids"]
        ids = expand_image_tokens(ids, self.model.config.image_token_index, image_token_count(self.model))
        pixels = self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        with self._lock:
            input_ids = torch.tensor([ids], device=self.device)
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=pixels.to(self.device, self.dtype),
                do_sample=False,
                num_beams=beams,
                min_new_tokens=min(options.min_length, max_length),
                max_new_tokens=max_length,
            )
        answer = tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True)
        return whole_sentences(" ".join(answer.split()))


def whole_sentences(text: str) -> str:
    """The text without a last sentence cut short (generation stopped at the token limit), if one was finished."""
    ends = [match.end() for match in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else text


def load_captioner(
    spec: str = DEFAULT_CAPTIONER,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Captioner:
    """Load a captioner once per (spec, cache folder) and reuse it; move it to `device`/`dtype` (device None: where
    it is, the CPU when first loaded, for a host's memory manager to move)."""
    captioner = _loaded(spec, Path(cache_dir or DEFAULT_CACHE_DIR))
    return captioner.to(device or captioner.device, dtype)


def unload_captioners() -> None:
    """Forget every loaded captioner so its memory can be freed."""
    _loaded.clear()


def placed_folder(model_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a user without network puts a captioner's files by hand."""
    return Path(cache_dir or DEFAULT_CACHE_DIR) / "captioners" / safe_name(model_id)


def memory_note() -> str:
    """What the tab says before JoyCaption is chosen and loaded."""
    return (
        f"JoyCaption needs about {CAPTIONERS[JOYCAPTION].vram_gb:g} GB of VRAM (bf16); under --lowvram or "
        "--medvram it is refused: set a VLM server to describe instead"
    )


def check_supported(spec: str, low_vram: bool = False) -> None:
    """Before anything is loaded or downloaded: ModelError when this host can't run the captioner `spec`
    (no transformers, or one too old for its class; with `low_vram`, the host's --lowvram or --medvram, one
    larger than LOW_VRAM_GB). Other Hub ids are checked once their config.json is read."""
    _require_transformers(spec)
    if spec in CAPTIONERS:
        require_architecture(CAPTIONERS[spec].model_type, spec)
    needed = vram_needed(spec) if low_vram else 0
    if needed > LOW_VRAM_GB:
        raise ModelError(
            f"{spec} needs about {needed:.0f} GB of VRAM, and this webui runs with --lowvram or --medvram: serve it "
            "from vLLM or Ollama and set a VLM server URL (Settings, or --caption-url; docs/vlm-server.md), or "
            f"choose a smaller captioner ({DEFAULT_DESCRIBER} needs about 6 GB)"
        )


def vram_needed(spec: str) -> float:
    """About how many GB of VRAM a captioner needs, known before it loads: listed, or for a model folder its
    bf16 weights from config.json (2 bytes a parameter); 0 when unknown until downloaded."""
    if spec in CAPTIONERS:
        return CAPTIONERS[spec].vram_gb
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        return 0
    import transformers

    try:
        config, _ = transformers.PretrainedConfig.get_config_dict(str(folder), local_files_only=True)
    except (OSError, ValueError):  # loading it says what is wrong with it
        return 0
    return 2 * config_size(config)[0] / 1e9


def _load(spec: str, cache_dir: Path) -> Captioner:
    check_supported(spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        return _load_folder(local, model_id=str(local))
    placed = placed_folder(spec, cache_dir)
    if placed.is_dir():
        return _load_folder(placed, model_id=spec)
    if "/" not in spec:
        raise ModelError(
            f"unknown captioner {spec!r}: use one of {', '.join(CAPTIONERS)}, another Hub id of a model of "
            f"those classes ({_KINDS}), or a model folder"
        )
    try:
        return _from_hub(spec, cache_dir)
    except ModelError:
        raise
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        raise ModelError(
            f"cannot get captioner {spec} ({type(error).__name__}: {first_line(error)}). "
            f"Without network: download the files of https://huggingface.co/{spec} (config.json, the .safetensors "
            f"weights{_files_to_place(spec)}) into {placed}, "
            "or pass a local model folder as the captioner"
        ) from error


def _files_to_place(spec: str) -> str:
    """What a captioner's repository holds besides config.json and the weights: a describer (Qwen2-VL) has its
    weights in shards with an index, and a chat template; BLIP and GIT have neither."""
    describes = CAPTIONERS[spec].describes if spec in CAPTIONERS else None
    if describes:
        return " and their index, the tokenizer, preprocessor and chat template files"
    if describes is None:  # an unlisted Hub id: its kind is known only from its config.json
        return ", the tokenizer and preprocessor files, and for a describer the weights' index and chat template"
    return ", the tokenizer and preprocessor files"


_loaded: LoadOnce[Captioner] = LoadOnce(_load)


def _from_hub(model_id: str, cache_dir: Path) -> Captioner:
    """From the hub's cache in `cache_dir`; the hub is asked only for what is missing, and only if it answers."""
    try:
        # What an earlier run downloaded loads without the hub's update check (which, without network,
        # retries for half a minute before it gives up).
        return _from_pretrained(model_id, model_id, cache_dir=str(cache_dir), local_files_only=True)
    except ModelError:
        raise
    except Exception:
        if hub_offline():
            raise
    from huggingface_hub import constants

    require_reachable(constants.ENDPOINT)
    return _from_pretrained(model_id, model_id, cache_dir=str(cache_dir), local_files_only=False)


def _load_folder(folder: Path, model_id: str) -> Captioner:
    try:
        return _from_pretrained(str(folder), model_id, cache_dir=None, local_files_only=True)
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(
            f"{folder}: not a usable captioner folder of {_KINDS} ({type(error).__name__}: {first_line(error)})"
        ) from error


def _from_pretrained(source: str, model_id: str, **hub: Any) -> Captioner:
    import transformers

    model_type = _model_type(source, **hub)  # config.json only: the weights wait for the check below
    if model_type not in ARCHITECTURES:
        listed = ", ".join(CAPTIONERS)
        raise ModelError(f"{model_id}: a {model_type!r} model; captioners are {_KINDS} models ({listed})")
    architecture = require_architecture(model_type, model_id)
    processor = getattr(transformers, architecture.processor_class).from_pretrained(source, **hub)
    model = _load_weights(getattr(transformers, architecture.model_class), source, architecture.describes, **hub)
    model.eval()
    model.requires_grad_(False)
    if model_type == "llava":
        _check_chat_template(processor, source, model_id, conversation(instruction()))
        return JoyCaptioner(model_id, model, processor)
    if architecture.describes:
        _check_chat_template(processor, source, model_id)
        _cap_resolution(processor.image_processor)
        return Describer(model_id, model, processor)
    return Captioner(model_id, model, processor)


def _model_type(source: str, **hub: Any) -> str:
    """config.json's model_type, read as JSON: an old transformers need not know the type to say what it is.
    The model's size is checked here too, before transformers allocates it."""
    import transformers

    config, _ = transformers.PretrainedConfig.get_config_dict(source, **hub)
    check_size(config, Path(source) / "config.json")
    return str(config.get("model_type", ""))


def check_size(config: dict[str, Any], path: Path) -> None:
    """ModelFileError (one line naming config.json) for a model larger than a captioner: more than
    MAX_CAPTIONER_LAYERS layers in a part (each is built module by module, however narrow) or an estimate of
    more than MAX_CAPTIONER_PARAMETERS parameters."""
    parameters, layers = config_size(config)
    if layers > MAX_CAPTIONER_LAYERS:
        raise ModelFileError(
            f"{path}: describes {layers} layers in one part; a captioner has at most {MAX_CAPTIONER_LAYERS}"
        )
    if parameters > MAX_CAPTIONER_PARAMETERS:
        raise ModelFileError(
            f"{path}: describes a model of about {parameters:.2g} parameters; a captioner has at most "
            f"{MAX_CAPTIONER_PARAMETERS:.0e} (Qwen2-VL-2B has 2.2e+09)"
        )


def config_size(config: dict[str, Any], nesting: int = 2) -> tuple[float, int]:
    """(about how many parameters, the most layers of one part) of a config.json's model. Per layer 4 w^2
    (attention) and 3 w i (a gated MLP; a plain one's 2 w i is overestimated alike); the token, position and
    patch tables of width w; a projection to the widest size named (Qwen2-VL's vision merger); and the same for
    each config nested in it (text_config, vision_config). Only whole numbers count: transformers fails fast on
    the rest."""

    def size(*keys: str) -> int:
        values = [config[key] for key in keys if type(config.get(key)) is int and config[key] > 0]
        return min(max(values, default=0), 10**9)  # 10**400 would overflow a float

    widths = [size(key) for key in ("embed_dim", "hidden_size", "d_model", "n_embd")]  # a block's width first
    width, widest = next((w for w in widths if w), 0), max(widths)
    layers = size("num_hidden_layers", "depth", "n_layer")
    ratio = config.get("mlp_ratio")
    ratio = min(ratio, 1e3) if type(ratio) in (int, float) and ratio > 0 else 4  # NaN is not > 0
    inner = size("intermediate_size") or ratio * width
    patches = (size("image_size") // size("patch_size")) ** 2 if size("patch_size") else 0
    tables = size("vocab_size") + size("max_position_embeddings") + patches
    parameters = layers * (4 * width**2 + 3 * width * inner) + tables * width + 4 * width * widest
    for part in [value for value in config.values() if isinstance(value, dict)] if nesting else []:
        part_parameters, part_layers = config_size(part, nesting - 1)
        parameters, layers = parameters + part_parameters, max(layers, part_layers)
    return parameters, layers


def require_architecture(model_type: str, model_id: str) -> Architecture:
    """The architecture, or a one-line ModelError when this host's transformers is too old to have its class."""
    import transformers
    from packaging.version import Version

    architecture = ARCHITECTURES[model_type]
    have = transformers.__version__
    if Version(have) < Version(architecture.since) or getattr(transformers, architecture.model_class, None) is None:
        raise ModelError(
            f"{model_id} needs transformers {architecture.since} or newer ({architecture.model_class}); this "
            f"host has {have}, and its packages are left as they are. BLIP and GIT captioners still work "
            f"({DEFAULT_CAPTIONER}, microsoft/git-base-coco)"
        )
    return architecture


def _load_weights(model_class: Any, source: str, safetensors_only: bool, **hub: Any) -> Any:
    # Repositories from before safetensors hold only pytorch_model.bin; transformers 4.30 reads
    # it with a plain torch.load, which on the webui's torch 2.1 unpickles: force weights_only.
    with weights_only_torch_load():
        try:
            return model_class.from_pretrained(source, use_safetensors=True, **hub)
        except OSError:
            if safetensors_only:
                raise
            return model_class.from_pretrained(source, use_safetensors=False, **hub)


def _check_chat_template(processor: Any, source: str, model_id: str, messages: list = DESCRIBE_MESSAGES) -> None:
    """Render the chat template once with the request every caption sends (`messages`), so that a template that
    cannot be used (one Jinja's sandbox stops, a syntax error, a missing one) is one line naming its file now,
    not a traceback at the first image."""
    try:
        processor.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as error:  # jinja2's SecurityError, TemplateError, and whatever the template itself raises
        folder = Path(source)
        file = next((folder / name for name in CHAT_TEMPLATE_FILES if (folder / name).is_file()), None)
        where = str(file) if file else f"{model_id}'s chat template"
        raise ModelFileError(
            f"{where}: the chat template cannot be used ({type(error).__name__}: {one_line(error, 200)})"
        ) from None


def _cap_resolution(image_processor: Any) -> None:
    """At most DESCRIBER_MAX_PIXELS an image: Qwen2-VL's visual tokens (time, VRAM) grow with the pixels."""
    if getattr(image_processor, "max_pixels", 0) > DESCRIBER_MAX_PIXELS:
        image_processor.max_pixels = DESCRIBER_MAX_PIXELS
        size = getattr(image_processor, "size", None)
        for key in ("max_pixels", "longest_edge"):  # the name the size dict has in this transformers
            if isinstance(size, dict) and key in size:
                size[key] = DESCRIBER_MAX_PIXELS


def _require_transformers(spec: str) -> None:
    """transformers is an optional extra: say how to get it, and which release the captioner `spec` needs."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelError(
            f"captions need the transformers package: pip install 'easy-diffuser[caption]' ({_transformers_for(spec)})"
        ) from None


def _transformers_for(spec: str) -> str:
    """The first transformers that has the captioner's class, as a pip requirement: "transformers>=4.45.0"."""
    if spec in CAPTIONERS:
        return f"{spec} needs transformers>={ARCHITECTURES[CAPTIONERS[spec].model_type].since}"

    def first(describes: bool) -> str:  # without packaging, which may be missing with transformers
        since = [a.since for a in ARCHITECTURES.values() if a.describes == describes]
        return min(since, key=lambda version: tuple(int(part) for part in version.split(".")))

    return f"transformers>={first(False)} for BLIP and GIT, transformers>={first(True)} for Qwen2-VL"


def compose(
    caption: str,
    tags: Sequence[TagScore],
    token_cost: Callable[[str], int],
    budget: int = TOKEN_BUDGET,
    sentences: bool = False,
) -> tuple[str, list[TagScore]]:
    """(caption, positive tags) for the prompt `join(caption, tags)` within `budget` tokens of `token_cost`.

    The caption is cut at a sentence boundary, or at a word boundary inside a first sentence too long.
    Positive tags whose words the caption already says are dropped; the others keep their order,
    and a tag that no longer fits is skipped so a shorter one after it may still fit (as in
    selection). Negative tags are not returned: the negative prompt does not change. With
    `sentences` the caption keeps its full stops (a paragraph); otherwise its end punctuation goes.
    """
    caption = _fit(caption.strip(), token_cost, budget)
    caption = caption if sentences else caption.rstrip(",.;:").strip()
    said = _word_forms(caption)
    kept: list[TagScore] = []
    for tag in tags:
        if tag.role != "positive" or _repeats(tag.tag, said):
            continue
        if token_cost(join(caption, [t.tag for t in [*kept, tag]], sentences)) <= budget:
            kept.append(tag)
    return caption, kept


def join(caption: str, tags: Sequence[str], sentences: bool = False) -> str:
    """The prompt: `caption, tag, tag` (tags style), or `Caption sentences. tag, tag` (sentences style)."""
    listed = ", ".join(tag for tag in tags if tag)
    return (" " if sentences else ", ").join(part for part in (caption, listed) if part)


def _fit(text: str, token_cost: Callable[[str], int], budget: int) -> str:
    """The text within `budget`: whole sentences while they fit, else the first one cut at a word boundary."""
    if token_cost(text) <= budget:
        return text
    sentences = [match.end() for match in _SENTENCE_END.finditer(text)]
    fitting = [end for end in sentences if token_cost(text[:end]) <= budget]
    if fitting:
        return text[: fitting[-1]].strip()
    words = text.split()
    while words and token_cost(" ".join(words)) > budget:
        words.pop()
    return " ".join(words)


def _repeats(tag: str, said: set[str]) -> bool:
    """Whether every content word of the tag is a word of the caption (singular or plural)."""
    words = _WORD.findall(tag.lower())
    content = [word for word in words if word not in STOP_WORDS] or words
    return bool(content) and all(_forms(word) & said for word in content)


def _word_forms(text: str) -> set[str]:
    return set().union(*(_forms(word) for word in _WORD.findall(text.lower())))


def _forms(word: str) -> set[str]:
    """The word and the singulars it may be a plural of: horses -> horse, buses -> bus, ponies -> pony."""
    forms = {word}
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
        if word.endswith("es"):
            forms.add(word[:-2])
        if word.endswith("ies"):
            forms.add(word[:-3] + "y")
    return forms
