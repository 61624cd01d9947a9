"""Every extraction option, defined once: name, default, range and help.

The command line's flags (cli.py), the HTTP request (webui/http_api.py), the tab's controls and
settings (webui/tab.py, webui/settings.py) and the validation of `ExtractOptions` itself are all
derived from `OPTIONS` and `CAPTION_OPTIONS`, so a default, a range or a message changes in one
place and every surface says the same thing about a bad value:

    max_tags: must be a whole number from 1 to 75, not 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
TOKEN_BUDGET = 75  # one CLIP chunk: 77 positions minus the start and end tokens


class OptionError(ValueError):
    """A value an option can't take; the message names the option and what it accepts."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Option:
    """One option: its name (the Python and HTTP field), type, default, range and how surfaces show it."""

    name: str
    kind: type  # int, float or bool
    default: Any
    help: str
    label: str  # the tab's control
    flag: str  # the command line's
    minimum: float | None = None
    maximum: float | None = None
    step: float = 1  # the tab slider's
    automatic: str = ""  # for None: what None means ("calibrated or the model's default"); "" when None is no value

    def check(self, value: Any) -> Any:
        """The value in this option's type, or OptionError: wrong type, not finite, or out of range."""
        if value is None and self.automatic:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise OptionError(self.name, f"must be true or false, not {value!r}")
            return value
        number = self._number(value)
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise OptionError(self.name, f"{self.accepts}, not {value!r}")
        return number

    def parse(self, text: str) -> Any:
        """A value typed on the command line ("12", "-0.5", "nan") -> checked value, or OptionError."""
        try:
            value = self.kind(text)
        except ValueError:
            raise OptionError(self.name, f"{self.accepts}, not {text!r}") from None
        return self.check(value)

    @property
    def accepts(self) -> str:
        """What the option takes, as the messages say it: "must be a whole number from 1 to 75"."""
        kind = "a whole number" if self.kind is int else "a number"
        automatic = f", or none for automatic ({self.automatic})" if self.automatic else ""
        return f"must be {kind} from {self.minimum:g} to {self.maximum:g}{automatic}"

    def _number(self, value: Any) -> int | float:
        # bool is an int in Python, and "3" is no count: both would hide a client's mistake.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(self.name, f"{self.accepts}, not {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():  # sliders send 12.0, which is fine
                raise OptionError(self.name, f"{self.accepts}, not {value!r}")
            return int(value) if math.isfinite(value) else value
        return float(value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "max_tags",
        int,
        24,
        "most tags in the positive prompt (it also stays within one 75-token chunk)",
        "Number of tags",
        "--tags",
        1,
        75,
    ),
    Option(
        "max_per_category",
        int,
        3,
        "most positive tags from one category (subject, medium, style, ...)",
        "Most tags per category",
        "--per-category",
        1,
        75,
    ),
    Option(
        "tau",
        float,
        None,
        "relevance a tag needs to be a negative-prompt candidate",
        "tau: relevance a tag needs to be a negative candidate",
        "--tau",
        -5,
        5,
        0.05,
        automatic="calibrated for the model, else its default",
    ),
    Option(
        "negatives",
        int,
        8,
        "most negative tags from the image's relevant subset",
        "Negative tags",
        "--negatives",
        0,
        75,
    ),
    Option(
        "quality_negatives",
        int,
        6,
        "standard quality faults (blurry, lowres, ...) added to the negative prompt",
        "Quality negatives",
        "--quality-negatives",
        0,
        32,
    ),
    Option(
        "weights",
        bool,
        False,
        "write the positive tags as (tag:weight) by how far each stands above the others",
        "Weights",
        "--weights",
    ),
)
CAPTION_OPTIONS: tuple[Option, ...] = (
    Option("beams", int, 3, "the captioner's beam search width", "Captioner beams", "--caption-beams", 1, 16),
    Option(
        "min_length",
        int,
        5,
        "fewest caption tokens (the captioner's tokens; capped at the maximum)",
        "Caption minimum length (tokens)",
        "--caption-min-length",
        0,
        75,
    ),
    Option(
        "max_length", int, 30, "most caption tokens", "Caption maximum length (tokens)", "--caption-max-length", 1, 75
    ),
)
OPTION = {option.name: option for option in OPTIONS}
CAPTION_OPTION = {option.name: option for option in CAPTION_OPTIONS}

# -- Check and Refine by the round trip (refine.py): generate from a prompt pair, compare with the source --
REFINE_OPTIONS: tuple[Option, ...] = (
    Option(
        "rounds",
        int,
        4,
        "refine rounds after the start; each builds a new prompt pair from the last round's tag diff",
        "Refine rounds",
        "--rounds",
        0,
        16,
    ),
    Option(
        "seeds",
        int,
        2,
        "generations each refine score averages (seeds SEED, SEED+1, ...): one seed can overfit; Check uses one",
        "Seeds per score",
        "--seeds",
        1,
        8,
    ),
    Option("seed", int, 0, "the first generation seed", "Seed", "--seed", 0, 2**31 - 1),
    Option("width", int, 512, "width of each generated image (webui generators)", "Width", "--width", 64, 2048, 64),
    Option("height", int, 512, "height of each generated image (webui generators)", "Height", "--height", 64, 2048, 64),
    Option(
        "steps", int, 12, "sampling steps of each generation (webui generators)", "Sampling steps", "--steps", 1, 150
    ),
)
REFINE_OPTION = {option.name: option for option in REFINE_OPTIONS}


def _checked(instance: Any, schema: tuple[Option, ...], prefix: str = "") -> None:
    """Check (and normalise: 12.0 -> 12) every schema field of a frozen dataclass instance."""
    for option in schema:
        try:
            value = option.check(getattr(instance, option.name))
        except OptionError as error:
            raise OptionError(prefix + error.name, error.problem) from None
        object.__setattr__(instance, option.name, value)


@dataclass(frozen=True)
class CaptionOptions:
    """A captioner's sentence in front of the tags: which model, and how it decodes."""

    model: str = DEFAULT_CAPTIONER  # a captioner.CAPTIONERS id or a model folder
    beams: int = CAPTION_OPTION["beams"].default
    min_length: int = CAPTION_OPTION["min_length"].default
    max_length: int = CAPTION_OPTION["max_length"].default

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise OptionError("caption.model", f"must name a captioner, not {self.model!r}")
        _checked(self, CAPTION_OPTIONS, "caption.")


@dataclass(frozen=True)
class ExtractOptions:
    """How an image's tags become prompts; every value is checked when the options are made."""

    max_tags: int = OPTION["max_tags"].default
    max_per_category: int = OPTION["max_per_category"].default
    tau: Optional[float] = OPTION["tau"].default  # None: the calibrated tau if there is one, else the model's default
    negatives: int = OPTION["negatives"].default
    quality_negatives: int = OPTION["quality_negatives"].default
    weights: bool = OPTION["weights"].default
    caption: Optional[CaptionOptions] = None  # None: tags only
    token_budget: int = TOKEN_BUDGET  # Python API only: the prompt's tokens
    dedup_threshold: float = 0.95  # Python API only: text-embedding cosine above which two tags count as one

    def __post_init__(self) -> None:
        _checked(self, OPTIONS)
        if self.caption is not None and not isinstance(self.caption, CaptionOptions):
            raise OptionError("caption", f"must be CaptionOptions or None, not {self.caption!r}")
        if not isinstance(self.token_budget, int) or not 1 <= self.token_budget <= TOKEN_BUDGET:
            raise OptionError(
                "token_budget", f"must be a whole number from 1 to {TOKEN_BUDGET}, not {self.token_budget!r}"
            )
        if not isinstance(self.dedup_threshold, (int, float)) or not 0 < self.dedup_threshold <= 1:
            raise OptionError(
                "dedup_threshold", f"must be a number above 0 and at most 1, not {self.dedup_threshold!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: "ExtractOptions | None" = None) -> "ExtractOptions":
        """Options from a JSON object (HTTP) or keyword arguments (Python API); unknown names are refused.

        `caption` is false/None (off), true (the default captioner), a captioner id, or an object
        with `model`, `beams`, `min_length` and `max_length`."""
        known = {option.name for option in OPTIONS} | {"caption"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(unknown[0], f"is not an option; the options are {', '.join(sorted(known))}")
        given = {name: value for name, value in values.items() if name != "caption"}
        if "caption" in values:
            given["caption"] = caption_from(values["caption"])
        return replace(base or cls(), **given)


@dataclass(frozen=True)
class RefineOptions:
    """How Check and Refine generate and score: rounds, seeds per score, and the generation's size and steps."""

    rounds: int = REFINE_OPTION["rounds"].default
    seeds: int = REFINE_OPTION["seeds"].default
    seed: int = REFINE_OPTION["seed"].default
    width: int = REFINE_OPTION["width"].default
    height: int = REFINE_OPTION["height"].default
    steps: int = REFINE_OPTION["steps"].default

    def __post_init__(self) -> None:
        _checked(self, REFINE_OPTIONS)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RefineOptions":
        """From a JSON object (HTTP) or keyword arguments; unknown names are refused."""
        known = sorted(option.name for option in REFINE_OPTIONS)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise OptionError(unknown[0], f"is not a refine option; they are {', '.join(known)}")
        return cls(**values)


def caption_from(value: Any) -> CaptionOptions | None:
    """The `caption` field of a request or a call: false/None, true, a captioner id, or an object."""
    if value is None or value is False:
        return None
    if value is True:
        return CaptionOptions()
    if isinstance(value, str):
        return CaptionOptions(model=value)
    if isinstance(value, CaptionOptions):
        return value
    if isinstance(value, Mapping):
        allowed = {f.name for f in fields(CaptionOptions)}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise OptionError(
                f"caption.{unknown[0]}", f"is not a caption option; they are {', '.join(sorted(allowed))}"
            )
        return CaptionOptions(**value)
    raise OptionError("caption", f"must be true, false, a captioner name or an object, not {value!r}")


def schema_help() -> dict[str, Any]:
    """The options as data (GET /options): what each accepts, for clients and documentation."""

    def describe(option: Option) -> dict[str, Any]:
        entry = {"type": option.kind.__name__, "default": option.default, "help": option.help}
        if option.minimum is not None:
            entry.update(minimum=option.minimum, maximum=option.maximum)
        if option.automatic:
            entry["null"] = option.automatic
        return entry

    return {
        **{option.name: describe(option) for option in OPTIONS},
        "caption": {
            "type": "false | true | captioner | object",
            "default": False,
            "fields": {option.name: describe(option) for option in CAPTION_OPTIONS},
        },
        "refine": {  # POST /refine's fields, not /extract's
            "type": "object",
            "fields": {option.name: describe(option) for option in REFINE_OPTIONS},
        },
    }
