"""The WD tagger kind: SmilingWolf's WD v3 taggers (and the shipped shapes-booru) in the webui's own process,
through timm: no onnxruntime, no TensorFlow. Everything a WD tagger is here is in this file:

  claims    the WD_MODELS names, fetched on first use into the model folder (only their three files), and local
            folders in the hub's layout: `model.safetensors` (timm's state dict, head included), `config.json`
            (timm's `architecture`, `num_classes`, `model_args`, `pretrained_cfg`) and `selected_tags.csv`
            (`tag_id,name,category,count`; category 9 rating, 0 general, 4 character, 3 copyright); also the
            files such a repository holds that are refused (ONNX, pickles, TensorFlow), so the refusal is its
  loads     the network as timm's own hub loader builds it, from config.json's architecture and model_args, on
            every timm from 0.9.5 (sd-webui-controlnet's pin) to the newest: we pass model_args ourselves (timm
            reads them from a hub config only from 0.9.11), resolve a named act_layer to its class (ViT takes a
            name only from 0.9.10) and give SwinV2 the activation it asked for (before 1.0.3 it ignores act_layer
            and keeps exact GELU). The weights are read from safetensors and loaded strictly: timm's pretrained
            loader would drop a classifier whose size differs from its default config.
  scores    the reference preprocessing (SmilingWolf's demo, kohya, wdv3-timm): alpha onto white (images.py), pad
            to a centred white square, bicubic to the input size, [-1, 1], BGR; the logits through a sigmoid.
            The score is the probability (the presence guard's directly), relevance the log-odds standardised
            over the vocabulary; features: the probabilities
  policy    booru tags (booru.py): over each category's threshold or MCut, in booru order, rating words and
            quality tags of the checkpoint's family preset (families.py), three CLIP chunks of tokens; the
            thresholds, MCut and family are its controls
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
from PIL import Image

from .. import scoring
from ..booru import BooruRule
from ..devices import OnDevice, cpu_matmuls
from ..errors import ModelError, ModelFileError, one_line
from ..families import Preset, choose
from ..files import safe_name
from ..hub import hub_offline, require_reachable
from ..options import BOORU_TOKEN_BUDGET, ExtractOptions
from ..scorers import TagScorer, prompt_token_costs
from ..scoring import Scores
from ..tag_text import prompt_syntax, written
from ..vocabulary import Vocabulary
from ..weights import content_hash
from .base import DATA_DIR, Kind, ModelInfo, folder_defaults
from .timm_network import RESAMPLING, build_network, load_weights, read_capped, read_config

if TYPE_CHECKING:
    from ..checkpoint_family import Detected

TAGGER_FILES = ("model.safetensors", "config.json", "selected_tags.csv")
WEIGHTS, CONFIG, TAGS = TAGGER_FILES
NEEDS = f"a tagger needs {', '.join(TAGGER_FILES)} in its folder"
CSV_HEADER = ["tag_id", "name", "category", "count"]
# selected_tags.csv's categories (Danbooru's numbers) as the vocabulary names them.
CATEGORIES = {9: "rating", 0: "general", 4: "character", 3: "copyright", 1: "artist", 5: "meta"}
# What a hub repository may hold instead of safetensors, and why it is not read.
REFUSED = {
    ".onnx": "ONNX models are run by onnxruntime, which this extension does without",
    ".pt": "pickle files can run code when read",
    ".pth": "pickle files can run code when read",
    ".bin": "pickle files can run code when read",
    ".ckpt": "pickle files can run code when read",
    ".h5": "TensorFlow models are not run",
    ".pb": "TensorFlow models are not run",
    ".keras": "TensorFlow models are not run",
}
MAX_TAGS_BYTES = 64 << 20  # WD's list of 10,861 tags is 300 KB
CPU_CHUNK = 2  # images per forward pass on a CPU (LoadedTagger.probabilities)
# The longest side an image is padded at: a 1 x 1,000,000 strip would otherwise become a 3 TB square.
# Larger images are first shrunk to it (bicubic), then padded and resized as the reference does.
PAD_LIMIT = 4096
_CATEGORY = re.compile(r"[0-9]{1,3}")  # not str.isdigit: "²" is a digit int() can't read


# A tagger's relevance is the standardised log-odds (TaggerScorer); tau 2 starts the negative prompt's subset near
# p = 0.01 on a typical image, until a calibration learns better.
TAGGER_DEFAULTS: dict[str, Any] = {"tau": 2.0}
WD_MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "shapes-booru",
            "the tiny shapes-world WD-style tagger shipped for offline tries and tests (booru tags)",
            TAGGER_DEFAULTS,
            shipped="shapes-booru",
        ),
        *(
            ModelInfo(
                f"SmilingWolf/wd-{name}-tagger-v3", f"anime checkpoints, booru tags: WD v3 {use}", TAGGER_DEFAULTS
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
# Probabilities are kept off 0 and 1: a tag the model rules out is one the vocabulary's log-odds can standardise.
PROBABILITY_FLOOR = 1e-4
LOGIT_LIMIT = 9.25  # the floor's log-odds (9.21) and fp16's rounding of them


@dataclass(frozen=True)
class TagTable:
    """selected_tags.csv: one row per output of the model's head, in order."""

    names: tuple[str, ...]  # as the CSV writes them: "long_hair", "saber_(fate)"
    categories: tuple[str, ...]  # CATEGORIES' names


@dataclass
class LoadedTagger(OnDevice):
    """A timm tagger with everything needed to use it (the counterpart of clip_loading.LoadedClip)."""

    model_id: str
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> CxHxW tensor, a torchvision Compose ending in ToTensor, Normalize
    tags: TagTable
    image_size: int
    defaults: dict[str, Any]
    cache_key: str  # model_id plus a hash of the weights: new weights, new calibration results
    vocabulary_dir: None = None  # a tagger's vocabulary is its CSV

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [N, 3, H, W] -> the probability of every tag [N, tags], float32 on the CPU."""
        device = self.device
        # A CPU gains nothing from a large batch and loses its caches to it (a ViT-B at 448 px: 0.53 s an image
        # in pairs, 0.87 in sixteens); a GPU takes the batch whole.
        chunks = batch.split(CPU_CHUNK) if device.type == "cpu" else (batch,)
        with cpu_matmuls(device):
            outputs = torch.cat([self.model(chunk.to(device, self.dtype)) for chunk in chunks])
        return self.activated(outputs.float()).cpu()

    def activated(self, outputs: torch.Tensor) -> torch.Tensor:
        """The network's outputs as probabilities: a WD head gives logits (a kind whose head gives more says so)."""
        return torch.sigmoid(outputs)


class TaggerScorer(TagScorer):
    """A tagger's probabilities as scores: the vocabulary is its tag file, written as prompts write tags."""

    def __init__(self, loaded: LoadedTagger, vocabulary_dirs: Sequence[str | Path] = ()) -> None:
        if vocabulary_dirs:
            raise ValueError(
                f"vocabulary folder {vocabulary_dirs[0]}: a tagger's tags are its selected_tags.csv; "
                "extra tag lists are for CLIP models"
            )
        self.loaded = loaded
        names = [written(name) for name in loaded.tags.names]
        self.vocabulary = Vocabulary(tuple(names), loaded.tags.categories)
        self.token_costs = prompt_token_costs(names)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loaded.probabilities(batch).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)

    def scores(self, features: torch.Tensor) -> list[Scores]:
        probabilities = features.float()
        relevance = scoring.standardised(torch.logit(probabilities))
        return [Scores(p, r, p) for p, r in zip(probabilities, relevance)]

    def for_token(self, features: torch.Tensor) -> torch.Tensor:
        """The log-odds: fp16 keeps them to 0.01 where it would round a probability of 0.9995 to 0.9990."""
        return torch.logit(features).half()

    def checked(self, token: torch.Tensor) -> torch.Tensor | None:
        logits = token.float().flatten()
        if logits.numel() != len(self.vocabulary) or not torch.isfinite(logits).all():
            return None
        if logits.abs().max() > LOGIT_LIMIT:
            return None
        return torch.sigmoid(logits).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)[None]

    def fingerprint(self) -> bytes:
        return f"{self.loaded.cache_key} {self.vocabulary.fingerprint}".encode()


class WdTaggerKind(Kind):
    name = "wd-tagger"
    models: ClassVar[Sequence[ModelInfo]] = tuple(WD_MODELS.values())
    writes = "booru"
    token_budget = BOORU_TOKEN_BUDGET
    controls = frozenset({"general_threshold", "character_threshold", "general_mcut", "character_mcut", "family"})

    def claims(self, spec: str) -> bool:
        """A tagger folder, or a file a tagger repository ships (refused by name when it is no safetensors)."""
        path = Path(spec).expanduser()
        if path.suffix.lower() in (".onnx", ".h5", ".pb", ".keras"):
            return True
        folder = path if path.is_dir() else path.parent if path.is_file() else None
        return folder is not None and _is_tagger_folder(folder)

    def load(self, spec: str, cache_dir: Path) -> LoadedTagger:
        """The tagger a spec names, on the CPU (models.load_model moves it); ModelError in one line otherwise."""
        info = WD_MODELS.get(spec)
        if info is not None:
            folder = DATA_DIR / info.shipped if info.shipped else fetch(spec, cache_dir)
            return load_folder(folder, model_id=spec, defaults=info.defaults)
        path = Path(spec).expanduser()
        if path.is_dir():
            return load_folder(path)
        refused = _refusal(path)
        if refused:
            raise ModelFileError(refused)
        raise ModelFileError(
            f"{path}: a tagger is loaded from its folder ({', '.join(TAGGER_FILES)}); pass {path.parent}"
        )

    def scorer(
        self, loaded: LoadedTagger, cache_dir: Path, vocabulary_dirs: Sequence[str | Path] = (), progress: Any = None
    ) -> "TaggerScorer":
        return TaggerScorer(loaded, vocabulary_dirs)

    def rule(self, options: ExtractOptions, preset: Preset | None) -> BooruRule:
        family = preset.family if preset else None
        return BooruRule(
            options.general_threshold,
            options.character_threshold,
            options.general_mcut,
            options.character_mcut,
            rating_words=BooruRule.words(family.ratings) if family else (),
        )

    def preset(self, options: ExtractOptions, target: "Detected | None") -> Preset:
        return choose(options.family, target)


def _is_tagger_folder(folder: Path) -> bool:
    """A folder in the hub's tagger layout, complete or not (so that what is missing gets named)."""
    if (folder / "open_clip_config.json").exists():
        return False
    return any((folder / name).exists() for name in (TAGS, CONFIG, "model.onnx", "saved_model.pb"))


def placed_folder(repo: str, cache_dir: Path) -> Path:
    """Where a user without network puts a tagger's three files by hand."""
    return Path(cache_dir) / "taggers" / safe_name(repo)


def fetch(repo: str, cache_dir: Path, files: Sequence[str] = TAGGER_FILES, gated: bool = False) -> Path:
    """The folder holding the repository's `files` (paths in it): placed by hand, cached by the hub, or downloaded.
    Only those files are ever fetched (the WD repositories also hold a model.onnx). A `gated` repository
    gives its files only to a logged-in user who accepted its terms: the error says how."""
    placed = placed_folder(repo, cache_dir)
    if all((placed / name).is_file() for name in files):
        return (placed / files[0]).parent  # the files may lie in a folder of the repository (JTP_PILOT2/)
    try:
        return _hub_folder(repo, files, cache_dir, local_only=True)
    except Exception:
        pass
    try:
        if hub_offline():
            raise ConnectionError("HF_HUB_OFFLINE is set")
        from huggingface_hub import constants

        require_reachable(constants.ENDPOINT)
        return _hub_folder(repo, files, cache_dir, local_only=False)
    except Exception as error:  # network, hub and file errors all mean the same thing to the user
        how = (
            f"The repository is gated: log in (huggingface-cli login), accept its terms on "
            f"https://huggingface.co/{repo}, then run huggingface-cli download {repo} {' '.join(files)} "
            f"--local-dir {placed}"
            if gated
            else f"Without network: download {', '.join(files)} from https://huggingface.co/{repo} into {placed}"
        )
        raise ModelError(
            f"cannot get tagger {repo} ({type(error).__name__}: {one_line(error, 200)}). {how}, or pass a tagger folder"
        ) from None


def _hub_folder(repo: str, files: Sequence[str], cache_dir: Path, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    paths = [Path(hf_hub_download(repo, name, cache_dir=str(cache_dir), local_files_only=local_only)) for name in files]
    return paths[0].parent  # the hub puts a revision's files in one snapshot folder


def load_folder(folder: Path, model_id: str | None = None, defaults: dict[str, Any] | None = None) -> LoadedTagger:
    """A tagger folder in the hub's layout; every fault is one ModelError naming the file and what is wrong.
    An easy_diffuser.json beside the files (what a calibration learnt, as in a CLIP model's folder) overrides
    `defaults`."""
    weights = _weights_file(folder)
    config = read_config(folder / CONFIG, NEEDS)
    tags = read_tags(folder / TAGS)
    num_classes = config["num_classes"]
    if len(tags.names) != num_classes:
        raise ModelFileError(
            f"{folder / TAGS}: {len(tags.names)} tags, but {CONFIG}'s head gives {num_classes} outputs; "
            "the files are from different models: take all three from one repository"
        )
    model = build_network(config, folder / CONFIG)
    load_weights(model, weights, config["architecture"])
    cache_key = f"{folder.name}-{content_hash(weights)}"
    image_size = int(config["pretrained_cfg"]["input_size"][-1])
    return LoadedTagger(
        model_id or cache_key,
        model,
        reference_transform(config["pretrained_cfg"]),
        tags,
        image_size,
        {**(defaults or {}), **folder_defaults(folder / "easy_diffuser.json")},
        cache_key,
    )


def _weights_file(folder: Path) -> Path:
    weights = folder / WEIGHTS
    if weights.is_file():
        return weights
    others = sorted(p.name for p in folder.iterdir() if _refusal(p)) if folder.is_dir() else []
    found = f"; {others[0]} is not read ({_refusal(folder / others[0], reason_only=True)})" if others else ""
    raise ModelFileError(f"{folder}: no {WEIGHTS}{found}; a tagger needs {', '.join(TAGGER_FILES)}")


def _refusal(path: Path, reason_only: bool = False) -> str:
    """Why a file that isn't safetensors is not read ("" for one that may be)."""
    suffix = ".pb" if path.name == "saved_model.pb" else path.suffix.lower()
    reason = REFUSED.get(suffix, "")
    if not reason or reason_only:
        return reason
    return f"{path}: not read ({reason}); a tagger needs {WEIGHTS} beside {CONFIG} and {TAGS}, as the hub has them"


def read_tags(path: Path) -> TagTable:
    """selected_tags.csv: the header `tag_id,name,category,count`, then one row per tag."""
    data = read_capped(path, MAX_TAGS_BYTES, NEEDS)
    try:
        reader = csv.reader(io.StringIO(data.decode("utf-8-sig")))
        rows = [(reader.line_num, row) for row in reader]  # the line each row ends on (a quoted name may span two)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ModelFileError(f"{path}: not a readable CSV file ({one_line(error, 120)})") from None
    if not rows or [cell.strip() for cell in rows[0][1]] != CSV_HEADER:
        header = ",".join(rows[0][1])[:80] if rows else "nothing"
        raise ModelFileError(f"{path}: the header must be {','.join(CSV_HEADER)}, not {header!r}")
    names, categories = [], []
    for line, row in rows[1:]:
        if len(row) != len(CSV_HEADER) or not row[1].strip() or not _CATEGORY.fullmatch(row[2].strip()):
            raise ModelFileError(f"{path}: line {line} is not tag_id,name,category,count with a category from 0 to 999")
        refused = prompt_syntax(row[1].strip())
        if refused:
            raise ModelFileError(f"{path}: line {line}: {refused}; a tag's name must be plain text in a prompt")
        names.append(row[1].strip())
        categories.append(CATEGORIES.get(int(row[2]), "general"))
    if not names:
        raise ModelFileError(f"{path}: holds no tags")
    return TagTable(tuple(names), tuple(categories))


def reference_transform(pretrained_cfg: dict[str, Any]) -> Callable:
    """The reference preprocessing as a torchvision Compose (pipeline.py runs its PIL steps in decode workers):
    pad to a white square, resize, BGR, then ToTensor and Normalize (mean and std 0.5: [-1, 1])."""
    from torchvision import transforms as T

    _, height, width = pretrained_cfg["input_size"]
    return T.Compose(
        [
            SquareOnWhite((width, height), pretrained_cfg["interpolation"]),
            to_bgr,
            T.ToTensor(),
            T.Normalize(pretrained_cfg["mean"], pretrained_cfg["std"]),
        ]
    )


class SquareOnWhite:
    """Pad to a centred white square, then resize to the model's input size (as SmilingWolf's demo does).
    An image longer than PAD_LIMIT is first shrunk to it, so the square stays within 4096 x 4096."""

    def __init__(self, size: tuple[int, int], interpolation: str = "bicubic") -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        resample = RESAMPLING[self.interpolation]
        longest = max(image.size)
        if longest > PAD_LIMIT:
            scale = PAD_LIMIT / longest
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
            longest = max(image.size)
        square = Image.new("RGB", (longest, longest), (255, 255, 255))
        square.paste(image.convert("RGB"), ((longest - image.width) // 2, (longest - image.height) // 2))
        return square if square.size == self.size else square.resize(self.size, resample)

    def __repr__(self) -> str:
        return f"SquareOnWhite(size={self.size}, interpolation={self.interpolation})"


def to_bgr(image: Image.Image) -> Image.Image:
    """The channels in BGR order, as the WD models were trained (a module-level function: Ray pickles it)."""
    return Image.merge("RGB", image.split()[::-1])
