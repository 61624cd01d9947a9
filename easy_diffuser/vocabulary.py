"""The tags a model ranks: categorised lists, one `.txt` file per category, one tag per line.

The package ships lists in data/vocabulary/; a model folder may bring its own (the shapes-demo
model knows only its own world); users add lists by dropping `.txt` files into a folder.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from .files import read_regular_file
from .tag_text import normal, prompt_syntax

BUILTIN_DIR = Path(__file__).parent / "data" / "vocabulary"
# Tags of this category only ever go into negative prompts (lowres, watermark, ...).
NEGATIVE_QUALITY = "negative_quality"
TAG_LIST_LIMIT = 16 * 2**20  # the shipped lists hold a few KB each; a list of 16 MB is no list of tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocabulary:
    tags: tuple[str, ...]
    categories: tuple[str, ...]  # category of each tag, same order

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def fingerprint(self) -> str:
        """Changes whenever any tag or its order changes: the key of the embedding cache."""
        return hashlib.sha256("\n".join(self.tags).encode()).hexdigest()[:16]

    def in_category(self, category: str) -> list[int]:
        return list(self._by_category.get(category, ()))

    @cached_property
    def _by_category(self) -> dict[str, tuple[int, ...]]:
        """Each category's positions, found once: every selection asks for the quality tags' (a re-selection
        is a few milliseconds, and a walk over 3,770 categories was a tenth of it)."""
        found: dict[str, list[int]] = {}
        for index, name in enumerate(self.categories):
            found.setdefault(name, []).append(index)
        return {name: tuple(indices) for name, indices in found.items()}

    @cached_property
    def index(self) -> dict[str, int]:
        """Each tag's position by its `tag_text.normal` form, as users type tags in lists."""
        return {normal(tag): index for index, tag in reversed(list(enumerate(self.tags)))}

    def indices(self, tags: Iterable[str]) -> list[int]:
        """The positions of the tags (already `normal`) that the vocabulary has, in the given order."""
        return [self.index[tag] for tag in tags if tag in self.index]


def load_vocabulary(folders: Sequence[Path | str]) -> Vocabulary:
    """Read every `*.txt` in the folders, in order; a tag already seen keeps its first category."""
    seen: dict[str, str] = {}
    for folder in map(lambda name: Path(name).expanduser(), folders):
        if not folder.is_dir():  # a mistyped folder would silently add nothing
            raise ValueError(f"vocabulary folder {folder}: no such folder")
        for path in sorted(folder.glob("*.txt")):
            for tag in _read_tags(path):
                seen.setdefault(tag, path.stem)
    if not seen:
        raise ValueError(
            f"no tags found in {', '.join(map(str, folders))}: add one .txt file per category, one tag per line"
        )
    return Vocabulary(tuple(seen), tuple(seen.values()))


def _read_tags(path: Path) -> Iterable[str]:
    try:
        lines = read_regular_file(path, TAG_LIST_LIMIT).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:  # a FIFO or /dev/zero is refused, not read (files.py)
        # A broken user list must not stop extraction with the other lists.
        log.warning("skipping tag list %s: %s", path, getattr(error, "strerror", None) or error)
        return []
    tags = []
    for number, line in enumerate(lines, start=1):
        # Commas separate prompt tags, so a comma inside a tag would split it in two.
        tag = " ".join(line.replace(",", " ").split())
        if not tag or tag.startswith("#"):
            continue
        refused = prompt_syntax(tag)
        if refused:  # a tag is text in the prompt, never <lora:...>, BREAK or AND
            raise ValueError(f"{path}: line {number}: {refused}; a tag must be plain text in a prompt")
        tags.append(tag)
    return tags
