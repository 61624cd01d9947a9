"""A dataset folder's caption files: which files are captions, reading one safely, and its tag list.

A caption belongs to an image: `a.txt` (with the caption extension .txt) beside `a.png`, as LoRA trainers
pair them; of images sharing a stem (a.jpg, a.png) the first by name owns it, as batch.py decides. Anything
else is not a caption and is never read or written: other extensions, a caption name with no image, names
starting with a dot (our temp files and the journal), symbolic links (the target may lie outside the folder,
and a rename would replace the link), FIFOs, devices, files over CAPTION_LIMIT, binary or non-UTF-8 files.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..files import FileTooLarge, NotARegularFile, read_regular_file
from ..images import IMAGE_SUFFIXES

SEPARATOR = ","  # a caption's tags are split on it and stripped (kohya's and the wd14 taggers' format) ...
JOINER = ", "  # ... and a tag we add is written after it
CAPTION_LIMIT = 2**20  # bytes: a caption of more is no caption (a misnamed file), and is never read whole


def counted(count: int, noun: str) -> str:
    """ "1 caption", "2 captions": the reports' counts, in English."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class DatasetError(ValueError):
    """A folder, output or edit that can't be used; the message names it and the fix."""


class NotACaption(ValueError):
    """A file with a caption's name that is not one to read or write; the message says why."""


@dataclass(frozen=True)
class Caption:
    text: str  # the whole file, decoded (UTF-8 decodes and encodes back byte for byte)
    mode: int  # its permission bits, kept when it is rewritten


def split_tags(text: str) -> list[str]:
    """A caption's tags, in order: the text split on the separator and stripped, empty pieces dropped."""
    return [tag for piece in text.removeprefix("\ufeff").split(SEPARATOR) if (tag := piece.strip())]


def caption_path(image: str, extension: str) -> str:
    """`sub/a.png` -> `sub/a.txt`: the caption of an image, both relative to the folder."""
    stem, _, _ = image.rpartition(".")
    return stem + extension


def existing_folder(folder: str | Path) -> Path:
    """The dataset folder, absolute (its journal may lie beside it), or DatasetError."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    return folder.resolve()


def find_images(folder: Path, recursive: bool = False) -> list[str]:
    """The images that own a caption, as sorted paths relative to `folder` with `/`: names only, no contents."""
    images: list[str] = []
    for directory, names in _image_names(folder, "", recursive):
        owners: dict[str, str] = {}
        for name in sorted(names):
            owners.setdefault(name.rpartition(".")[0], name)  # the first by name owns the stem's caption
        images += (f"{directory}{name}" for name in owners.values())
    return sorted(images)


def _image_names(folder: Path, prefix: str, recursive: bool) -> Iterator[tuple[str, list[str]]]:
    names, folders = [], []
    with os.scandir(folder / prefix if prefix else folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if recursive and entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                names.append(entry.name)  # an image may be a link (datasets often link theirs): it is only read
    yield prefix, names
    for name in sorted(folders):
        yield from _image_names(folder, f"{prefix}{name}/", recursive)


def read_caption(path: Path) -> Caption | None:
    """The caption at `path`, None when there is none, or NotACaption when the file there is not one to touch."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise NotACaption("a symbolic link, never followed")
    if not stat.S_ISREG(info.st_mode):
        raise NotACaption("not a regular file (a folder, FIFO, device or socket)")
    try:
        data = read_regular_file(path, CAPTION_LIMIT)
    except (FileTooLarge, NotARegularFile) as error:  # grown or swapped since the lstat
        raise NotACaption(error.strerror) from None
    if b"\0" in data:
        raise NotACaption("binary, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotACaption("not UTF-8 text") from None
    return Caption(text, stat.S_IMODE(info.st_mode))
