"""Bulk edits of a dataset's captions: rename, remove and add tags, optionally only where a tag is.

An edit changes the tags it names and nothing else of a caption: the user's spacing, line breaks, empty
pieces and tags written twice stay byte for byte. Renaming onto a tag the caption already has, or two tags onto
one, leaves it once. Adding a tag to an image with no caption creates one (unless `where` asks for a tag).
Every changed caption is written atomically after its old bytes are in the journal (journal.py).
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..files import write_atomically
from . import journal
from .captions import (
    JOINER,
    SEPARATOR,
    DatasetError,
    NotACaption,
    caption_path,
    counted,
    existing_folder,
    find_images,
    read_caption,
    split_tags,
)
from .report import Progress

MAX_TAG = 200  # characters of a tag an edit names
OnChange = Callable[[str, "str | None", str], None]  # (caption, text before or None, text after)


@dataclass(frozen=True)
class Edit:
    """What to change in every caption (that has all of `where`): renames first, then removals, then additions."""

    renames: tuple[tuple[str, str], ...] = ()
    removes: tuple[str, ...] = ()
    adds: tuple[str, ...] = ()
    where: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, tags in (
            ("rename", [tag for pair in self.renames for tag in pair]),
            ("remove", self.removes),
            ("add", self.adds),
            ("where", self.where),
        ):
            for tag in tags:
                check_tag(name, tag)
        if not (self.renames or self.removes or self.adds):
            raise DatasetError("nothing to edit: give a tag to rename, remove or add")

    def apply(self, text: str | None) -> str | None:
        """The caption after the edit, None when it doesn't change (or, with no caption, isn't created)."""
        if text is None:
            return JOINER.join(dict.fromkeys(self.adds)) + "\n" if self.adds and not self.where else None
        tags = set(split_tags(text))
        if not tags.issuperset(self.where):
            return None
        edited = self._edited(text, tags)
        return None if edited == text else edited

    def _edited(self, text: str, tags: set[str]) -> str:
        bom = "\ufeff" if text.startswith("\ufeff") else ""
        body = text[len(bom) :]
        core = body.strip()
        lead = body[: len(body) - len(body.lstrip())] if core else ""  # all spaces: they are the tail
        tail = body[len(body.rstrip()) :]
        renames, kept, renamed, changed = dict(self.renames), [], set(), False
        for piece in core.split(SEPARATOR) if core else []:
            tag = piece.strip()
            name = renames.get(tag, tag)
            if name in self.removes or (name != tag and (name in tags or name in renamed)):
                changed = True  # removed, or renamed onto a tag it has: once is enough
                continue
            if name != tag:
                renamed.add(name)
                piece, changed = piece.replace(tag, name, 1), True  # the piece's own spaces stay
            kept.append(piece)
        core = SEPARATOR.join(kept).strip() if changed else core
        now = set(split_tags(core))
        for tag in dict.fromkeys(self.adds):
            if tag not in now:
                core = f"{core}{JOINER}{tag}" if core else tag
        return bom + lead + core + tail

    def describe(self) -> str:
        """The edit as its command-line flags, for the journal and the messages."""
        flags = [("--rename-tag", f"{_escaped(old)}={_escaped(new)}") for old, new in self.renames]
        flags += [(flag, tag) for flag, tags in self._lists() for tag in tags]
        return " ".join(f"{flag} {shlex.quote(value)}" for flag, value in flags)

    def _lists(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return (("--remove-tag", self.removes), ("--add-tag", self.adds), ("--where", self.where))


def _escaped(tag: str) -> str:
    return tag.replace("=", "\\=")


def check_tag(name: str, tag: str) -> str:
    if not isinstance(tag, str) or not tag.strip() or tag != tag.strip():
        raise DatasetError(f"{name}: {tag!r} is not a tag (empty, or with spaces around it)")
    if SEPARATOR in tag or len(tag) > MAX_TAG or not tag.isprintable():
        raise DatasetError(
            f"{name}: {tag[:60]!r} is not a tag: at most {MAX_TAG} printable characters without {SEPARATOR!r}"
        )
    return tag


def parse_tags(name: str, text: str) -> tuple[str, ...]:
    """ "a, b" -> ("a", "b"): a list of tags as the tab's boxes and the flags take it."""
    return tuple(check_tag(name, tag) for tag in split_tags(text))


def parse_renames(text: str) -> tuple[tuple[str, str], ...]:
    """ "old=new, old2=new2" -> pairs; `\\=` is an = inside a tag (kaomoji such as =_=)."""
    pairs = []
    for item in split_tags(text):
        parts = [part.replace("\0", "=").strip() for part in item.replace("\\=", "\0").split("=")]
        if len(parts) != 2 or not all(parts):
            raise DatasetError(f"rename: {item[:60]!r} is not old=new (write \\= for an = inside a tag)")
        pairs.append((check_tag("rename", parts[0]), check_tag("rename", parts[1])))
    return tuple(pairs)


@dataclass
class EditSummary:
    changed: int = 0
    created: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (caption file, why it was not touched)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (caption file, why it could not be written)
    journal: Path | None = None
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        changed = counted(self.changed + self.created, "caption")
        text = f"{changed} {verb} ({self.created} created), {self.unchanged} unchanged"
        text += f", {len(self.skipped)} not captions to touch" if self.skipped else ""
        return text + (f", {len(self.failed)} could not be written" if self.failed else "")


def edit_folder(
    folder: Path,
    edit: Edit,
    extension: str,
    recursive: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_change: OnChange | None = None,
) -> EditSummary:
    """Apply `edit` to every image's caption in `folder`, journalled (or, with `dry_run`, only reported)."""
    folder = existing_folder(folder)
    summary = EditSummary(dry_run=dry_run)
    images = find_images(folder, recursive)
    writer = None if dry_run else journal.JournalWriter(folder, edit.describe())
    with journal.lock(folder) if writer else contextlib.nullcontext():
        try:
            for index, image in enumerate(images):
                if progress and index % 256 == 0:
                    progress(index, len(images))
                _edit_caption(folder, caption_path(image, extension), edit, writer, summary, on_change)
        finally:
            if writer:
                writer.close()
                summary.journal = writer.path
    if progress:
        progress(len(images), len(images))
    return summary


def _edit_caption(
    folder: Path,
    caption: str,
    edit: Edit,
    writer: journal.JournalWriter | None,
    summary: EditSummary,
    on_change: OnChange | None,
) -> None:
    try:
        found = read_caption(folder / caption)
    except (NotACaption, OSError) as error:
        summary.skipped.append((caption, str(error) if isinstance(error, NotACaption) else error.strerror))
        return
    before = found.text if found else None
    after = edit.apply(before)
    if after is None:
        summary.unchanged += found is not None
        return
    if on_change:
        on_change(caption, before, after)
    if writer:
        data = after.encode("utf-8")
        writer.record(caption, None if before is None else before.encode("utf-8"), found.mode if found else 0, data)
        try:
            write_atomically(folder / caption, lambda temp: temp.write_bytes(data), mode=found.mode if found else None)
        except OSError as error:  # a read-only folder, a full disk: this caption stays as it was
            summary.failed.append((caption, f"cannot write it ({error.strerror or error})"))
            return
    if found:
        summary.changed += 1
    else:
        summary.created += 1
