"""The caption file beside each image, the way LoRA trainers (kohya sd-scripts, OneTrainer, musubi) read it:
its name, its text, and merging ours into one the user already wrote.

    name:    image stem + extension (`.txt`, `.caption`, any `.name` that is not an image's)
    text:    trigger words, then the prompt's items (a family's quality tags, a captioner's sentence, the tags),
             joined by the separator; tags with underscores or spaces, parentheses escaped or not, character
             tags first and/or expanded (`saber_(fate)` -> `saber, fate`)
    merging: append or prepend the tags the file lacks to its first line (the caption kohya reads), the
             user's text kept byte for byte; a second run finds every tag there and changes nothing

The text functions are pure, for every tool that reads or writes captions (the dataset tool too); the file
functions at the end (read_caption, write_caption, CaptionWriter) read and write one caption file.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from .files import read_regular_file, remove_leftover_temp_files, write_atomically
from .prompt import escape, tag_weights, weighted
from .tag_text import KAOMOJI, normal, tag_list

if TYPE_CHECKING:  # options.py checks its values with this module, and engine.py imports options.py
    from .engine import Extraction
    from .options import CaptionFileOptions, ExtractOptions
    from .selection import TagScore

CAPTION_FILE_LIMIT = 2**20  # a caption of a megabyte is no caption: refused, never rewritten
_ESCAPE = "\x00"  # stands for an escaped `,` or `;` while a replacement list is split


# -- names ------------------------------------------------------------------------------------------------


def caption_path(image: Path, extension: str = ".txt") -> Path:
    """The caption file of `image`: beside it, its stem and the extension (options.ExtensionOption checked it)."""
    return image.with_name(image.stem + extension)


# -- tags as text -----------------------------------------------------------------------------------------


def tag_key(tag: str) -> str:
    """What makes two written tags the same tag: case, underscores, escapes and spaces don't matter."""
    return normal(tag)


def split_tags(text: str, separator: str = ", ") -> list[str]:
    """The items of a caption line: split on the separator's mark (`,` of ", "), stripped, empty ones dropped."""
    mark = separator.strip() or separator
    return [item.strip() for item in text.split(mark) if item.strip()]


def with_underscores(name: str, underscores: str, tagger: bool = False) -> str:
    """A tag with "keep" (as the model has it: a booru tagger's `long_hair`) or "spaces" (`long hair`).
    Kaomoji keep their underscore (`^_^`), as does every tag of three characters or fewer (kohya's rule:
    `o_o`, `-_-`). `tagger`: the name is a booru tagger's as prompts write it (tag_text.written), spaces for
    its underscores."""
    booru = name.replace(" ", "_") if tagger else name
    if underscores == "keep" or booru in KAOMOJI or len(booru) <= 3:
        return booru
    return booru.replace("_", " ")


def expanded_character(tag: str) -> list[str]:
    """kohya's --character_tag_expand: `saber_(fate)` -> [`saber`, `fate`], `a_(b)_(series)` -> [`a_(b)`,
    `series`]; a tag without a trailing `(series)` stays whole."""
    if tag in KAOMOJI:
        return [tag]
    name, parenthesis, series = tag.rstrip().removesuffix(")").rpartition("(")
    name = name.rstrip(" _")
    if not tag.rstrip().endswith(")") or not parenthesis or not name or not series.strip():
        return [tag]
    return [name, series.strip()]


def parse_replacements(text: str) -> tuple[tuple[str, str], ...]:
    """kohya's --tag_replacement: "old,new;old2,new2", `\\,` and `\\;` for a comma or semicolon in a tag.
    ((old, new), ...); an empty new removes the tag. ValueError names the pair that isn't `old,new`."""
    pairs = []
    hidden = text.replace("\\,", _ESCAPE + "c").replace("\\;", _ESCAPE + "s")
    for part in hidden.split(";"):
        if not part.strip():
            continue
        fields = part.split(",")
        shown = part.replace(_ESCAPE + "c", "\\,").replace(_ESCAPE + "s", "\\;").strip()
        if len(fields) != 2 or not fields[0].strip():
            problem = f"{shown[:40]!r} is not one"
            raise ValueError(f"must be old,new pairs separated by ; (\\, for a comma in a tag; {problem})")
        old, new = (field.replace(_ESCAPE + "c", ",").replace(_ESCAPE + "s", ";").strip() for field in fields)
        pairs.append((old, new))
    return tuple(pairs)


# -- the caption of an extraction -------------------------------------------------------------------------


def triggers(trigger: str) -> list[str]:
    """The trigger words: comma-separated items, written as typed."""
    return _unique(split_tags(trigger, ","))


def caption_items(
    result: "Extraction", options: "CaptionFileOptions", tagger: bool, weights: bool = False, first: Sequence[str] = ()
) -> list[str]:
    """The caption's items in order: the trigger words, the family's quality tags, the captioner's sentence,
    the positive tags, the family's closing tags. Written as the prompt writes them (escaped, `(tag:w)` with
    `weights`) with the options' changes; an item already there (the trigger, an expanded series) is not
    repeated. `tagger`: the tags are a booru tagger's. A family's quality and rating words stay as it spells
    them (`score_9`, `rating_safe`). `first`: the always-first tags (tag_text.normal), which lead even the
    character tags (kohya's order too)."""
    tags = [tag for tag in result.tags if tag.role == "positive"]
    if options.character_first:  # a stable sort: within each group, the order selection gave

        def group(tag: "TagScore") -> int:
            return 0 if tag_key(tag.tag) in first else 1 if tag.category == "character" else 2

        tags = sorted(tags, key=group)
    write = escape if options.escape_parentheses else str
    texts = []
    for tag, weight in zip(tags, tag_weights(tags) if weights else [1.0] * len(tags)):
        if tag.category == "rating":
            texts.append(weighted(write(tag.tag), weight))
            continue
        expand = options.character_expand and tag.category == "character"
        for name in expanded_character(tag.tag) if expand else [tag.tag]:
            texts.append(weighted(write(with_underscores(name, options.underscores, tagger)), weight))
    family = result.preset.family if result.preset else None
    sentence = [write(result.caption)] if result.caption else []
    if sentence and texts and result.prompt_style == "sentences":  # the prompt's `Sentence. tag, tag`
        texts[0] = f"{sentence.pop()} {texts[0]}"
    quality = (split_tags(family.prefix if family else "", ","), split_tags(family.suffix if family else "", ","))
    return _unique([*triggers(options.trigger), *quality[0], *sentence, *texts, *quality[1]])


def caption_text(items: Sequence[str], separator: str = ", ") -> str:
    return separator.join(items)


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for item in items:
        key = tag_key(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


# -- merging into a caption the user wrote ----------------------------------------------------------------


def merged(existing: str, items: Sequence[str], mode: str, separator: str = ", ", leading: int = 0) -> str | None:
    """`existing` with the items its caption line lacks appended or prepended (`mode`), or None when it has
    them all. The caption line is the first that isn't blank (kohya reads that one); every other byte stays.
    The first `leading` items (the trigger) go in front even when appending."""
    head, line, tail = _caption_line(existing)
    if not line.strip():
        return caption_text(items, separator) + "\n"
    have = {tag_key(tag) for tag in split_tags(line, separator)}
    missing = [item for item in items if not all(tag_key(tag) in have for tag in split_tags(item, separator))]
    if not missing:
        return None
    first = [item for item in missing if item in items[:leading]]
    rest = [item for item in missing if item not in first]
    front, back = (first, rest) if mode == "append" else (first + rest, [])
    indent = line[: len(line) - len(line.lstrip())]
    body = line.rstrip()
    trailing = line[len(body) :]
    core = body[len(indent) :]
    if front:
        core = caption_text(front, separator) + separator + core
    if back:
        core += separator + caption_text(back, separator)
    return head + indent + core + trailing + tail


def _caption_line(text: str) -> tuple[str, str, str]:
    """(everything before, the first non-blank line without its line end, the rest from that line end on)."""
    start = 1 if text.startswith("\ufeff") else 0  # a byte order mark stays first
    for line in text[start:].splitlines(keepends=True):
        if line.strip():
            body = line.rstrip("\r\n")
            return text[:start], body, text[start + len(body) :]
        start += len(line)
    return text, "", ""


# -- one caption file -------------------------------------------------------------------------------------


def read_caption(path: Path) -> str:
    """A caption file's text: a regular UTF-8 file of at most CAPTION_FILE_LIMIT bytes, never through a link
    (it may lead out of the dataset). OSError or UnicodeDecodeError otherwise, for a one-line message."""
    if path.is_symlink():
        raise OSError(errno.ELOOP, "a link, not a caption file; left as it is")
    return read_regular_file(path, CAPTION_FILE_LIMIT).decode("utf-8")


def write_caption(path: Path, items: Sequence[str], existing: str, separator: str = ", ", leading: int = 0) -> str:
    """Write the caption `items` to `path` as the `existing` mode says: "written", or "unchanged" (skip of a
    caption that is there, or a merge with nothing to add: the file is not touched). OSError or
    UnicodeDecodeError for a caption that can't be read: it is never rewritten."""
    if existing == "skip" and path.is_file():
        return "unchanged"
    text = caption_text(items, separator) + "\n"
    if existing in ("append", "prepend") and (path.exists() or path.is_symlink()):
        text = merged(read_caption(path), items, existing, separator, leading)
        if text is None:
            return "unchanged"
    remove_leftover_temp_files(path)  # from a run killed while writing this caption
    write_atomically(path, lambda temp: temp.write_bytes(text.encode("utf-8")))
    return "written"


@dataclass(frozen=True)
class CaptionWriter:
    """Writes an extraction's caption file as the caption-file options say (picklable: Ray sends it to actors)."""

    options: "CaptionFileOptions"
    tagger: bool = False  # the tags are a booru tagger's (their underscores; character tags)
    weights: bool = False  # the prompt wrote (tag:w): so does the caption
    first: tuple[str, ...] = ()  # the always-first tags (tag_text.normal): they lead even with character_first

    @classmethod
    def of(cls, files: "CaptionFileOptions", options: "ExtractOptions", tagger: bool) -> "CaptionWriter":
        """The writer of the caption files of extractions made with `options` by a tagger or a CLIP model."""
        return cls(files, tagger, options.weights, tag_list(options.first_tags))

    def path(self, image: Path) -> Path:
        return caption_path(image, self.options.caption_extension)

    def write(self, image: Path, result: "Extraction") -> str:
        """ "written" or "unchanged" (see write_caption); OSError or UnicodeDecodeError for a file left as it was."""
        options = self.options
        items = caption_items(result, options, self.tagger, self.weights, self.first)
        leading = len(triggers(options.trigger))  # the trigger leads even when appending
        return write_caption(self.path(image), items, options.existing, options.separator, leading)
