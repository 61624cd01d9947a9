"""Every extraction option, defined once: name, default, range and help.

The command line's flags (cli.py), the HTTP request (webui/http_api.py), the tab's controls and
settings (webui/tab.py, webui/settings.py) and the validation of `ExtractOptions` itself are all
derived from `OPTIONS` and `CAPTION_OPTIONS`, so a default, a range or a message changes in one
place and every surface says the same thing about a bad value:

    max_tags: must be a whole number from 1 to 75, not 0
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping, NoReturn, Optional
from urllib.parse import urlsplit

from .caption_files import parse_replacements
from .checkpoint_family import TOKEN_BUDGET
from .exit_codes import EXIT_SETUP_FAILED
from .families import AUTOMATIC
from .families import CHOICES as FAMILY_CHOICES
from .images import IMAGE_SUFFIXES
from .joycaption import DEFAULT_LENGTH as JOYCAPTION_DEFAULT_LENGTH
from .joycaption import DEFAULT_MODE as JOYCAPTION_DEFAULT_MODE
from .joycaption import LENGTHS as JOYCAPTION_LENGTHS
from .joycaption import MODES as JOYCAPTION_MODES

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_DESCRIBER = "Qwen/Qwen2-VL-2B-Instruct"  # the captioner of the sentences style: a paragraph, not a line
# A tagger's thresholds decide which tags go in; booru prompts often pass one chunk, and the webui splits
# longer ones into chunks of 75: three chunks hold what a tagger finds at its default thresholds.
BOORU_TOKEN_BUDGET = 3 * TOKEN_BUDGET
MAX_TAG_LIST = 4000  # characters of an exclude or always-first list
# Characters of a prompt Check and Refine take. The largest token budget, 6 chunks of 75 tokens, is about 2,000
# characters of tags: this leaves room for a hand-written pair, and none for a 4 MB one that holds the
# generation queue for as long as the webui takes to read it.
MAX_PROMPT_CHARS = 10_000
_LINE_BREAKS = str.maketrans("", "", "\n\r\t")


class OptionError(ValueError):
    """A value an option can't take; the message names the option and what it accepts."""

    def __init__(self, name: str, problem: str) -> None:
        name = shown_text(name)  # an unknown field's name is the client's input: a 1 MB key is no 1 MB message
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


SHOWN = 60  # characters of a user's value quoted in a message


def shown(value: Any) -> str:
    """repr(value) as a message quotes it: cut to SHOWN characters, and a huge whole number by its size (Python
    refuses to print one of over 4,300 digits, and a message that echoes a megabyte of input helps nobody)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * SHOWN:
        return f"a whole number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return shown_text(repr(value))


def shown_text(text: str) -> str:
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}..."


@dataclass(frozen=True)
class Option:
    """One option: its name (the Python and HTTP field), type, default, range and how surfaces show it."""

    name: str
    kind: type  # int, float, bool, or str (one of `choices`, or else a comma-separated list of tags)
    default: Any
    help: str
    label: str  # the tab's control
    flag: str  # the command line's
    minimum: float | None = None
    maximum: float | None = None
    step: float = 1  # the tab slider's
    automatic: str = ""  # for None: what None means ("calibrated or the model's default"); "" when None is no value
    choices: tuple[str, ...] = ()  # for kind str: the values it takes (compared in lower case)
    text: str = "comma-separated tags"  # for kind str without choices: what the text is, as messages say it
    metavar: str = "TAGS"  # for kind str without choices: the command line's placeholder
    free_text: bool = False  # for kind str: text of at most `maximum` characters (a prompt), lines allowed
    rule: Callable[[str], str] | None = None  # for kind str without choices: its own check, "" or why not

    def check(self, value: Any) -> Any:
        """The value in this option's type, or OptionError: wrong type, not finite, or out of range."""
        if value is None and self.automatic:
            return None
        if self.choices:
            if not isinstance(value, str) or value.strip().lower() not in self.choices:
                raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
            return value.strip().lower()
        if self.free_text:
            if (
                not isinstance(value, str)
                or len(value) > self.maximum
                or not value.translate(_LINE_BREAKS).isprintable()
            ):
                raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
            return value
        if self.kind is str:
            if not isinstance(value, str) or len(value) > MAX_TAG_LIST or not value.isprintable():
                raise OptionError(self.name, f"{self.accepts}, not {str(value)[:80]!r}")
            problem = self.rule(value) if self.rule else ""
            if problem:
                raise OptionError(self.name, f"{problem}, not {shown(value)}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise OptionError(self.name, f"must be true or false, not {shown(value)}")
            return value
        number = self._number(value)
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
        return number

    def parse(self, text: str) -> Any:
        """A value typed on the command line ("12", "-0.5", "nan") -> checked value, or OptionError."""
        try:
            value = self.kind(text)
        except ValueError:
            raise OptionError(self.name, f"{self.accepts}, not {shown(text)}") from None
        return self.check(value)

    def argument_type(self) -> Callable[[str], Any]:
        """`parse` as an argparse `type=`: a bad value is CommandLineParser's one-line error, which names the flag."""

        def parse(text: str) -> Any:
            try:
                return self.parse(text)
            except OptionError as error:
                raise argparse.ArgumentTypeError(error.problem) from None

        parse.__name__ = self.kind.__name__  # argparse's fallback message says "invalid int value"
        return parse

    @property
    def accepts(self) -> str:
        """What the option takes, as the messages say it: "must be a whole number from 1 to 75"."""
        if self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if self.free_text:
            return f"must be text of at most {self.maximum:,.0f} characters (no control characters but line breaks)"
        if self.kind is str:
            return f"must be {self.text}, at most {MAX_TAG_LIST} printable characters"
        kind = "a whole number" if self.kind is int else "a number"
        automatic = f", or none for automatic ({self.automatic})" if self.automatic else ""
        return f"must be {kind} from {self.minimum:g} to {self.maximum:g}{automatic}"

    def _number(self, value: Any) -> int | float:
        # bool is an int in Python, and "3" is no count: both would hide a client's mistake.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
        if isinstance(value, int) and not self.minimum <= value <= self.maximum:
            # Checked before any float(): a whole number of 310 digits or more has none (OverflowError).
            raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():  # sliders send 12.0, which is fine
                raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
            return int(value) if math.isfinite(value) else value
        return float(value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "max_tags",
        int,
        24,
        "most tags in a CLIP model's positive prompt (also within the token budget); a tagger's thresholds decide",
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
    Option(
        "token_budget",
        int,
        None,
        "most tokens of the positive prompt (the webui splits a longer prompt into chunks of 75)",
        "Token budget",
        "--token-budget",
        1,
        6 * TOKEN_BUDGET,
        automatic=f"{TOKEN_BUDGET}, one chunk, for CLIP; {BOORU_TOKEN_BUDGET} for taggers",
    ),
    Option(
        "general_threshold",
        float,
        0.35,
        "probability a general tag needs to be in the prompt (taggers)",
        "General tags threshold",
        "--general-threshold",
        0,
        1,
        0.01,
    ),
    Option(
        "character_threshold",
        float,
        0.85,
        "probability a character or series tag needs to be in the prompt (taggers)",
        "Character tags threshold",
        "--character-threshold",
        0,
        1,
        0.01,
    ),
    Option(
        "general_mcut",
        bool,
        False,
        "general tags threshold by MCut, the largest gap in this image's probabilities (taggers)",
        "MCut for general tags",
        "--general-mcut",
    ),
    Option(
        "character_mcut",
        bool,
        False,
        "character tags threshold by MCut, at least 0.15 (taggers)",
        "MCut for character tags",
        "--character-mcut",
    ),
    Option(
        "exclude_tags",
        str,
        "",
        "tags never written, in either prompt (comma-separated)",
        "Exclude tags",
        "--exclude-tags",
    ),
    Option(
        "first_tags",
        str,
        "",
        "tags written first, in this order, when the image has them (comma-separated)",
        "Always-first tags",
        "--first-tags",
    ),
    Option(
        "replace_tags",
        str,
        "",
        "tags renamed before selection, as old,new;old2,new2 (kohya's --tag_replacement; \\, and \\; for a comma "
        "or semicolon in a tag): a renamed tag is counted and budgeted as its new name; an empty new removes it",
        "Replace tags",
        "--replace-tags",
        text="old,new pairs separated by ;",
        metavar="OLD,NEW;...",
        rule=lambda text: _problem(parse_replacements, text),
    ),
    # The prompt style (prompt_style.py). booru is the booru tagger models' prompt (the WD tagger backend).
    Option(
        "prompt_style",
        str,
        "automatic",
        "tags: a list of tags; sentences: a describing captioner's paragraph, then the tags it does not say "
        "(for Flux, SD3, Qwen-Image); booru: a booru tagger's tags; automatic: the style of the checkpoint's family",
        "Prompt style",
        "--prompt-style",
        choices=("automatic", "tags", "sentences", "booru"),
    ),
    Option(
        "family",
        str,
        AUTOMATIC,
        "checkpoint family whose quality tags, negative template and rating words a tagger's prompt takes "
        "(automatic: from the checkpoint's name and metadata)",
        "Checkpoint family preset",
        "--family",
        choices=FAMILY_CHOICES,
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
        512,
    ),
    Option(
        "max_length",
        int,
        30,
        "most caption tokens (a describing captioner reads the defaults, 3 beams and 30 tokens, as its own: 1 and 256)",
        "Caption maximum length (tokens)",
        "--caption-max-length",
        1,
        512,
    ),
    # JoyCaption's instructions (joycaption.py); other captioners have none and ignore them.
    Option(
        "mode",
        str,
        JOYCAPTION_DEFAULT_MODE,
        "what JoyCaption writes: descriptive (a detailed description), casual, stable-diffusion (a prompt), "
        "midjourney, danbooru (Danbooru tags) or booru-like (looser tags); other captioners ignore it",
        "JoyCaption mode",
        "--caption-mode",
        choices=tuple(JOYCAPTION_MODES),
    ),
    Option(
        "length",
        str,
        JOYCAPTION_DEFAULT_LENGTH,
        "how long JoyCaption writes: a word (very short to very long), at most N words (20 to 260 in tens), "
        "or any (its own choice); other captioners ignore it",
        "JoyCaption length",
        "--caption-length",
        choices=JOYCAPTION_LENGTHS,
    ),
)
OPTION = {option.name: option for option in OPTIONS}
CAPTION_OPTION = {option.name: option for option in CAPTION_OPTIONS}

# -- A VLM server that describes the images (describe_server.py): the host's setting, not a request's --
TAGS_PLACEHOLDER = "{tags}"  # in the instruction: the image's own positive tags, so the description is grounded
DEFAULT_INSTRUCTION = (
    "Describe this image in one detailed paragraph to be used as a prompt for Stable Diffusion or Flux: the "
    "subject, the setting, the style or medium, the lighting and colours, and the composition. Write plain "
    "sentences, no lists and no preamble. A tagger saw these tags; use those that are right: {tags}"
)
SERVER_OPTIONS: tuple[Option, ...] = (
    Option(
        "url",
        str,
        "",
        "an OpenAI-compatible server (vLLM, Ollama, LM Studio, llama.cpp) that describes the images, which are "
        "SENT TO IT: its API base, e.g. http://127.0.0.1:11434/v1; empty: no server, nothing is sent anywhere",
        "VLM server URL (images are sent to it; empty: none)",
        "--caption-url",
        text="an http:// or https:// URL",
        metavar="URL",
    ),
    Option(
        "server_model",
        str,
        "",
        "the model the server describes with, as the server names it (e.g. qwen2.5vl:7b)",
        "VLM server model",
        "--caption-server-model",
        text="a model name",
        metavar="NAME",
    ),
    Option(
        "instruction",
        str,
        DEFAULT_INSTRUCTION,
        f"what the server is asked about each image; {TAGS_PLACEHOLDER} is replaced by the image's tags",
        "VLM server instruction ({tags}: the image's tags)",
        "--caption-instruction",
        text="one line of text",
        metavar="TEXT",
    ),
    Option(
        "concurrency",
        int,
        4,
        "descriptions asked of the server at once (a folder runs at the server's speed)",
        "VLM server requests at once",
        "--caption-concurrency",
        1,
        64,
    ),
    Option(
        "timeout",
        float,
        120,
        "seconds the server may take to answer one image (connecting may take 3)",
        "VLM server timeout (seconds)",
        "--caption-timeout",
        1,
        3600,
    ),
)
SERVER_OPTION = {option.name: option for option in SERVER_OPTIONS}

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
# Calibration generates many images: smaller ones by default, over refine's ranges (the CLI's and the tab's).
CALIBRATION_GENERATION = {"width": 256, "height": 256, "steps": 12}
# The pair Check and Refine start from: the CLI's --prompt (default: extracted), HTTP's fields, the tab's boxes.
PROMPT_OPTIONS: tuple[Option, ...] = (
    Option(
        "prompt",
        str,
        "",
        "the prompt to start from",
        "Prompt",
        "--prompt",
        0,
        MAX_PROMPT_CHARS,
        free_text=True,
        metavar="TEXT",
    ),
    Option(
        "negative_prompt",
        str,
        "",
        "the negative prompt to start from",
        "Negative prompt",
        "--negative-prompt",
        0,
        MAX_PROMPT_CHARS,
        free_text=True,
        metavar="TEXT",
    ),
)
PROMPT_OPTION = {option.name: option for option in PROMPT_OPTIONS}


# -- A dataset's caption files (dataset/): which files are captions, and the report's list of rare tags --
CAPTION_EXTENSION_PATTERN = re.compile(r"\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
MAX_EXTENSION = 32  # characters of a caption extension


@dataclass(frozen=True)
class ExtensionOption(Option):
    """A caption file's extension (.txt, .caption, any .name): never a path, never an image's extension."""

    def check(self, value: Any) -> str:
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str) and text and not text.startswith("."):
            text = f".{text}"  # kohya's "txt" and ".txt" alike
        if (
            not isinstance(text, str)
            or len(text) > MAX_EXTENSION
            or not CAPTION_EXTENSION_PATTERN.fullmatch(text)
            or f".{text.rsplit('.', 1)[-1].lower()}" in IMAGE_SUFFIXES  # a caption there would be (or replace) an image
        ):
            raise OptionError(self.name, f"{self.accepts}, not {shown(value)}")
        return text

    @property
    def accepts(self) -> str:
        return (
            f"must be a file extension such as .txt or .caption (letters, digits, - and _ after a dot, "
            f"at most {MAX_EXTENSION} characters, not an image's)"
        )


DATASET_OPTIONS: tuple[Option, ...] = (
    ExtensionOption(
        "caption_extension",
        str,
        ".txt",
        "the extension of the caption files, beside each image with its name (.txt, .caption, ...)",
        "Caption file extension",
        "--caption-extension",
        text="a file extension such as .txt or .caption",
        metavar="EXT",
    ),
    Option(
        "min_share",
        float,
        0.0,
        "list the tags on fewer than this share of the images (rare tags a trainer may prune); 0: none",
        "List tags below this share of images",
        "--min-share",
        0,
        1,
        0.005,
    ),
)
DATASET_OPTION = {option.name: option for option in DATASET_OPTIONS}

# -- Caption files beside a folder's images (batch.py, ray_job.py; caption_files.py writes them) --
CAPTION_FILE_OPTIONS: tuple[Option, ...] = (
    DATASET_OPTION["caption_extension"],  # one definition: the dataset tool reads the files this writes
    Option(
        "existing",
        str,
        "skip",
        "a caption file already there: skip the image, overwrite the file, or append or prepend the tags it "
        "lacks (the rest of its text kept as it is)",
        "Existing caption files",
        "--existing",
        choices=("skip", "overwrite", "append", "prepend"),
    ),
    Option(
        "trigger",
        str,
        "",
        "words written first in every caption file, whatever the image shows (a LoRA's trigger; comma-separated)",
        "Trigger words",
        "--trigger",
        text="words",
        metavar="WORDS",
    ),
    Option(
        "underscores",
        str,
        "spaces",
        "tags in caption files as booru writes them (keep: long_hair) or with spaces (long hair); kaomoji such as "
        "^_^ and tags of three characters keep theirs",
        "Underscores",
        "--underscores",
        choices=("keep", "spaces"),
    ),
    Option(
        "escape_parentheses",
        bool,
        True,
        "escape parentheses in caption files, saber \\(fate\\), as prompts need them (off: saber (fate))",
        "Escape parentheses",
        "--escape-parentheses",
    ),
    Option(
        "character_first",
        bool,
        False,
        "character tags first in caption files (taggers)",
        "Character tags first",
        "--character-first",
    ),
    Option(
        "character_expand",
        bool,
        False,
        "a character tag and its series as two tags in caption files: saber_(fate) -> saber, fate (taggers)",
        "Expand character tags",
        "--character-expand",
    ),
    Option(
        "separator",
        str,
        ", ",
        "what separates the items of a caption file",
        "Separator",
        "--separator",
        text="a separator such as ', ' (1 to 16 characters)",
        metavar="TEXT",
        rule=lambda text: "" if 1 <= len(text) <= 16 else "must be a separator such as ', ' (1 to 16 characters)",
    ),
)
CAPTION_FILE_OPTION = {option.name: option for option in CAPTION_FILE_OPTIONS}


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
    mode: str = CAPTION_OPTION["mode"].default  # JoyCaption's instruction (joycaption.MODES)
    length: str = CAPTION_OPTION["length"].default  # and its length (joycaption.LENGTHS)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise OptionError("caption.model", f"must name a captioner, not {shown(self.model)}")
        _checked(self, CAPTION_OPTIONS, "caption.")


@dataclass(frozen=True)
class ServerOptions:
    """A VLM server that describes images in place of an in-process captioner; `url` empty: none."""

    url: str = SERVER_OPTION["url"].default
    server_model: str = SERVER_OPTION["server_model"].default
    instruction: str = SERVER_OPTION["instruction"].default
    concurrency: int = SERVER_OPTION["concurrency"].default
    timeout: float = SERVER_OPTION["timeout"].default

    def __post_init__(self) -> None:
        _checked(self, SERVER_OPTIONS, "caption_")
        object.__setattr__(self, "url", self.url.strip().rstrip("/"))
        if not self.url:
            return
        parts = urlsplit(self.url)
        if not _is_http_url(self.url):
            raise OptionError("caption_url", f"must be an http:// or https:// URL, not {shown(self.url)}")
        if parts.username or parts.password:
            raise OptionError("caption_url", "must not hold a user or password: put the key in EASY_DIFFUSER_API_KEY")
        if not self.server_model.strip():
            raise OptionError("caption_server_model", "must name the server's model (e.g. qwen2.5vl:7b) with a URL")


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class ExtractOptions:
    """How an image's tags become prompts; every value is checked when the options are made."""

    max_tags: int = OPTION["max_tags"].default
    max_per_category: int = OPTION["max_per_category"].default
    tau: Optional[float] = OPTION["tau"].default  # None: the calibrated tau if there is one, else the model's default
    negatives: int = OPTION["negatives"].default
    quality_negatives: int = OPTION["quality_negatives"].default
    weights: bool = OPTION["weights"].default
    token_budget: Optional[int] = OPTION["token_budget"].default  # None: the model's (75 CLIP, 225 taggers)
    general_threshold: float = OPTION["general_threshold"].default
    character_threshold: float = OPTION["character_threshold"].default
    general_mcut: bool = OPTION["general_mcut"].default
    character_mcut: bool = OPTION["character_mcut"].default
    exclude_tags: str = OPTION["exclude_tags"].default
    first_tags: str = OPTION["first_tags"].default
    prompt_style: str = OPTION["prompt_style"].default
    family: str = OPTION["family"].default  # families.CHOICES; the preset applies to a tagger's prompts
    replace_tags: str = OPTION["replace_tags"].default  # caption_files.parse_replacements; applied before selection
    caption: Optional[CaptionOptions] = None  # None: tags only
    dedup_threshold: float = 0.95  # Python API only: text-embedding cosine above which two tags count as one

    def __post_init__(self) -> None:
        _checked(self, OPTIONS)
        if self.caption is not None and not isinstance(self.caption, CaptionOptions):
            raise OptionError("caption", f"must be CaptionOptions or None, not {shown(self.caption)}")
        if not isinstance(self.dedup_threshold, (int, float)) or not 0 < self.dedup_threshold <= 1:
            raise OptionError(
                "dedup_threshold", f"must be a number above 0 and at most 1, not {shown(self.dedup_threshold)}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: "ExtractOptions | None" = None) -> "ExtractOptions":
        """Options from a JSON object (HTTP) or keyword arguments (Python API); unknown names are refused.

        `caption` is false/None (off), true (the default captioner), a captioner id, or an object
        with `model`, `beams`, `min_length`, `max_length`, `mode` and `length`."""
        known = {option.name for option in OPTIONS} | {"caption"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(unknown[0], f"is not an option; the options are {', '.join(sorted(known))}")
        given = {name: value for name, value in values.items() if name != "caption"}
        if "caption" in values:
            given["caption"] = caption_from(values["caption"])
        return replace(base or cls(), **given)


@dataclass(frozen=True)
class CaptionFileOptions:
    """How a folder's caption files are named and written (caption_files.py); prompts are not affected."""

    caption_extension: str = CAPTION_FILE_OPTION["caption_extension"].default
    existing: str = CAPTION_FILE_OPTION["existing"].default
    trigger: str = CAPTION_FILE_OPTION["trigger"].default
    underscores: str = CAPTION_FILE_OPTION["underscores"].default
    escape_parentheses: bool = CAPTION_FILE_OPTION["escape_parentheses"].default
    character_first: bool = CAPTION_FILE_OPTION["character_first"].default
    character_expand: bool = CAPTION_FILE_OPTION["character_expand"].default
    separator: str = CAPTION_FILE_OPTION["separator"].default

    def __post_init__(self) -> None:
        _checked(self, CAPTION_FILE_OPTIONS)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "CaptionFileOptions":
        """From a JSON object or keyword arguments; unknown names are refused."""
        known = sorted(option.name for option in CAPTION_FILE_OPTIONS)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise OptionError(unknown[0], f"is not a caption file option; they are {', '.join(known)}")
        return cls(**values)


def _problem(parse: Callable[[str], Any], text: str) -> str:
    """ "" when `parse` takes the text, else its ValueError's message."""
    try:
        parse(text)
    except ValueError as error:
        return str(error)
    return ""


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


def checked_prompts(prompt: Any, negative_prompt: Any) -> tuple[str, str]:
    """The pair to check or refine, by the schema; OptionError naming the field otherwise."""
    return PROMPT_OPTION["prompt"].check(prompt), PROMPT_OPTION["negative_prompt"].check(negative_prompt)


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
    raise OptionError("caption", f"must be true, false, a captioner name or an object, not {shown(value)}")


def schema_help() -> dict[str, Any]:
    """The options as data (GET /options): what each accepts, for clients and documentation."""

    def describe(option: Option) -> dict[str, Any]:
        kind = (
            "choice"
            if option.choices
            else "text"
            if option.free_text
            else option.text
            if option.kind is str
            else option.kind.__name__
        )
        entry = {"type": kind, "default": option.default, "help": option.help}
        if option.minimum is not None:
            entry.update(minimum=option.minimum, maximum=option.maximum)
        if option.choices:
            entry["choices"] = list(option.choices)
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
        "caption_files": {  # folder captioning's (the CLI, the tab's batch section, Ray), not /extract's
            "type": "object",
            "fields": {option.name: describe(option) for option in CAPTION_FILE_OPTIONS},
        },
        "refine": {  # POST /refine's fields, not /extract's
            "type": "object",
            "fields": {option.name: describe(option) for option in (*PROMPT_OPTIONS, *REFINE_OPTIONS)},
        },
    }


class CommandLineParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag costs one line naming it, not argparse's whole usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_SETUP_FAILED, f"{self.prog}: error: {message} (all options: {self.prog} --help)\n")


def add_argument(group: argparse._ArgumentGroup, option: Option, dest: str) -> None:
    """The option as a command-line flag: its range and default in the help, its check as the argument's type."""
    if option.kind is bool:  # on by default: --no-NAME turns it off
        action = argparse.BooleanOptionalAction if option.default else "store_true"
        group.add_argument(option.flag, dest=dest, action=action, default=option.default, help=option.help)
        return
    if option.kind is str and not option.choices:
        parse = option.argument_type()
        group.add_argument(
            option.flag, dest=dest, type=parse, default=option.default, metavar=option.metavar, help=option.help
        )
        return
    default = option.automatic or option.default
    accepts = f"one of {', '.join(option.choices)}" if option.choices else f"{option.minimum:g} to {option.maximum:g}"
    group.add_argument(
        option.flag,
        dest=dest,
        type=option.argument_type(),
        default=option.default,
        metavar=option.name.upper() if option.choices else option.kind.__name__.upper(),
        help=f"{option.help}; {accepts} (default: {default})",
    )
