"""Checkpoint families: the quality tags, negative template and rating words each family's model card documents.

The checkpoints most webui users run for 2D work were trained on Danbooru tags with their own special tags:

    preset = choose("automatic", detect_checkpoint("ponyDiffusionV6XL_v6.safetensors"))
    preset.status                    # "Pony (from the checkpoint name ponyDiffusionV6XL_v6)"
    preset.positive(["1girl", "rating_safe", "solo"])  # "score_9, score_8_up, ..., 1girl, rating_safe, solo"
    preset.negative(["blurry"])      # the image's own negatives, then the family's template (none for Pony)
    preset.family.ratings["general"] # "rating_safe": the word for WD's rating, which the tag order places

*Automatic* reads the checkpoint's name, then the metadata of its safetensors header, both from the `Detected`
that checkpoint_family.py gathered them into (the project's one detection, which reads the header once); a
setting other than automatic overrides it. Pure: no files, no webui, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

from .checkpoint_family import Detected
from .tag_text import normal

AUTOMATIC, NONE = "automatic", "none"
# Metadata keys that name the model or what it was trained from, in order of trust.
METADATA_KEYS = ("modelspec.title", "ss_sd_model_name", "ss_output_name")


@dataclass(frozen=True)
class Conventions:
    """A fine-tuned checkpoint family's prompt conventions (checkpoint_family.py says which base family it is), as its
    model card documents them."""

    key: str  # the setting's value
    title: str  # what the status line says
    card: str  # the model card the texts come from
    prefix: str = ""  # quality tags before the image's tags
    suffix: str = ""  # quality tags after them (Animagine puts them last)
    negative: str = ""  # the template after the image's own negatives
    ratings: Mapping[str, str] = field(default_factory=dict)  # WD rating -> the family's word
    safe_negative: str = ""  # what the card's negative starts with for a safe picture ("nsfw")
    names: tuple[str, ...] = ()  # lower-case patterns (regular expressions) that name the family
    furry_source: str = ""  # the card's tag for its e621-style (furry) training data: e621 tags lead with it

    def positive(self, tags: Sequence[str]) -> str:
        """The prompt: the quality prefix, the image's tags (their rating word among them), the quality suffix."""
        return ", ".join(part for part in (self.prefix, *tags, self.suffix) if part)

    def negative_prompt(self, negatives: Sequence[str], rating: str | None = None, shown: Collection[str] = ()) -> str:
        """The image's own negatives first, then the family's template (§5 of the booru issue); a picture
        rated general also keeps the card's "nsfw" out. A template term the image shows (`shown`: its positive
        tags, tag_text.normal) stays out too: no tag is in both prompts (NoobAI's "furry" for a furry picture)."""
        template = [self.safe_negative] if rating == "general" else []
        terms = [term.strip() for term in ", ".join(filter(None, (*template, self.negative))).split(",")]
        kept = [term for term in terms if term and normal(term) not in shown]
        return ", ".join(part for part in (*negatives, *kept) if part)


_ANIMAGINE_RATINGS = {"general": "safe", "sensitive": "sensitive", "questionable": "nsfw", "explicit": "explicit"}

CONVENTIONS: dict[str, Conventions] = {
    family.key: family
    for family in (
        # https://huggingface.co/Laxhar/noobai-XL-1.1 (Recommended Settings > Prompts). Illustrious's own card
        # (https://huggingface.co/OnomaAIResearch/Illustrious-xl-early-release-v0) documents no template;
        # NoobAI, trained from it, does, and the same Danbooru quality and year tags serve both.
        Conventions(
            "illustrious",
            "Illustrious/NoobAI",
            "https://huggingface.co/Laxhar/noobai-XL-1.1",
            prefix="masterpiece, best quality, newest, absurdres, highres",
            negative="worst quality, old, early, low quality, lowres, signature, username, logo, bad hands, "
            "mutated hands, mammal, anthro, furry, ambiguous form, feral, semi-anthro",
            ratings=_ANIMAGINE_RATINGS,
            safe_negative="nsfw",
            names=(r"noob", r"illustrious", r"\bil[-_ ]?xl"),
        ),
        # https://civitai.com/models/257749 (Pony Diffusion V6 XL): "score_9, score_8_up, score_7_up, score_6_up,
        # score_5_up, score_4_up, just describe what you want"; "designed to not need negative prompts";
        # ratings rating_safe, rating_questionable, rating_explicit.
        Conventions(
            "pony",
            "Pony",
            "https://civitai.com/models/257749",
            prefix="score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up",
            ratings={
                "general": "rating_safe",
                "sensitive": "rating_questionable",
                "questionable": "rating_questionable",
                "explicit": "rating_explicit",
            },
            names=(r"pony", r"pdxl", r"score_9"),
            # The same card: "Other special data selection tags include, 'source_pony', 'source_furry', ...".
            furry_source="source_furry",
        ),
        # https://huggingface.co/cagliostrolab/animagine-xl-3.1 (Usage Guidelines): quality tags last,
        # "masterpiece, best quality, very aesthetic, absurdres"; its recommended negative prompt; ratings
        # safe, sensitive, nsfw, explicit.
        Conventions(
            "animagine",
            "Animagine XL 3.1",
            "https://huggingface.co/cagliostrolab/animagine-xl-3.1",
            suffix="masterpiece, best quality, very aesthetic, absurdres",
            negative="lowres, (bad), text, error, fewer, extra, missing, worst quality, jpeg artifacts, "
            "low quality, watermark, unfinished, displeasing, oldest, early, chromatic aberration, signature, "
            "extra digits, artistic error, username, scan, [abstract]",
            ratings=_ANIMAGINE_RATINGS,
            safe_negative="nsfw",
            names=(r"animagine",),
        ),
        # https://huggingface.co/cagliostrolab/animagine-xl-4.0 (Usage Guidelines): the prompt ends with
        # "masterpiece, high score, great score, absurdres"; its recommended negative prompt.
        Conventions(
            "animagine4",
            "Animagine XL 4.0",
            "https://huggingface.co/cagliostrolab/animagine-xl-4.0",
            suffix="masterpiece, high score, great score, absurdres",
            negative="lowres, bad anatomy, bad hands, text, error, missing finger, extra digits, fewer digits, "
            "cropped, worst quality, low quality, low score, bad score, average score, signature, watermark, "
            "username, blurry",
            ratings=_ANIMAGINE_RATINGS,
            names=(r"animagine[-_ ]?(xl)?[-_ ]?v?4", r"anim4gine"),
        ),
    )
}
ALIASES = {"noobai": "illustrious"}  # one preset, two names users look for
CHOICES = (AUTOMATIC, NONE, *CONVENTIONS, *ALIASES)
# Most specific first: "animagine-xl-4.0" is Animagine 4, not 3.1; "ponyIllustrious" merges say pony last.
_DETECTION_ORDER = ("animagine4", "animagine", "illustrious", "pony")


@dataclass(frozen=True)
class Preset:
    """The family in force (None: no preset) and why, as the status line says it."""

    family: Conventions | None
    reason: str

    @property
    def status(self) -> str:
        return f"{self.family.title if self.family else 'No preset'} ({self.reason})"

    def positive(self, tags: Sequence[str]) -> str:
        return self.family.positive(tags) if self.family else ", ".join(tags)

    def negative(self, negatives: Sequence[str], rating: str | None = None, shown: Collection[str] = ()) -> str:
        return self.family.negative_prompt(negatives, rating, shown) if self.family else ", ".join(negatives)


def choose(setting: str, target: Detected | None = None) -> Preset:
    """The preset in force: the setting's family (one of CHOICES, as ExtractOptions.family checks it), or for
    automatic the one that the name or header metadata of the checkpoint `target` names (None: none loaded)."""
    if setting not in CHOICES:
        raise ValueError(f"family: must be one of {', '.join(CHOICES)}, not {setting!r}")
    if setting == NONE:
        return Preset(None, "family set to none")
    if setting != AUTOMATIC:
        return Preset(CONVENTIONS[ALIASES.get(setting, setting)], "chosen in the settings")
    return detect(target)


def detect(target: Detected | None) -> Preset:
    """The family named by the checkpoint's name, else by its safetensors metadata; no preset when neither does."""
    if target is None or not target.name:
        return Preset(None, "no checkpoint loaded")
    family = _named_family(target.name)
    if family:
        return Preset(family, f"from the checkpoint name {_shortened(target.name)}")
    for key in METADATA_KEYS:
        family = _named_family(target.metadata.get(key, ""))
        if family:
            return Preset(family, f"from the checkpoint's metadata {key}: {_shortened(target.metadata[key])}")
    return Preset(None, f"no family recognised in the checkpoint name {_shortened(target.name)} or its metadata")


def _named_family(text: str) -> Conventions | None:
    lowered = text.lower()
    for key in _DETECTION_ORDER:
        if any(re.search(pattern, lowered) for pattern in CONVENTIONS[key].names):
            return CONVENTIONS[key]
    return None


def _shortened(text: str, limit: int = 60) -> str:
    """A name or metadata text as the status line shows it: one line, at most `limit` characters."""
    text = " ".join(text.split())
    if not text.isprintable():  # a control character left (ESC starts a terminal's escape sequence): escaped
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else f"{text[:limit]}..."
