"""The journal of bulk edits, so that `--undo` takes an edit back byte for byte.

It lives in `FOLDER/.easy-diffuser-journal/`, or beside the folder (`.easy-diffuser-journal-NAME/`) when the
folder itself can't take it. Each edit is one file, `<UTC time>-<process>.jsonl`: a header line, then one
line per caption it changes, written before the caption is:

    {"path": "sub/a.txt", "before": "<base64 of the bytes>" or null (created), "mode": 420, "after": "<sha256>"}

Undo reads the newest edit: a caption still as the edit left it gets its bytes back (a created one is removed),
one already as before is left, and one changed since is refused and named, never overwritten (its line stays,
the others are dropped). An edit wholly undone is removed, so the next undo takes back the one before it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TextIO

from ..files import FileTooLarge, locked, read_regular_file, write_atomically, write_text_atomically
from .captions import CAPTION_LIMIT, counted, existing_folder

JOURNAL_NAME = ".easy-diffuser-journal"
FORMAT = 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


class JournalError(ValueError):
    """A journal that is missing or damaged; the message names it."""


def journal_folder(folder: Path) -> Path:
    """Where `folder`'s journal is: the one there already, else inside the folder when it is writable."""
    inside, beside = folder / JOURNAL_NAME, folder.parent / f"{JOURNAL_NAME}-{folder.name}"
    for existing in (inside, beside):
        if existing.is_dir():
            return existing
    return inside if _writable(folder) else beside


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock(folder: Path):
    """One edit or undo of a folder at a time (another process's waits)."""
    return locked(journal_folder(folder) / ".lock")


class JournalWriter:
    """The journal of one edit, opened on its first change (an edit that changes nothing leaves none)."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder, self.command = folder, command
        self.path: Path | None = None
        self._handle: TextIO | None = None

    def record(self, path: str, before: bytes | None, mode: int, after: bytes) -> None:
        """Note a caption's bytes before the change; call it before the caption is written."""
        if self._handle is None:
            self._open()
        entry = {"path": path, "before": _encoded(before), "mode": mode, "after": digest(after)}
        self._handle.write(json.dumps(entry) + "\n")
        self._handle.flush()  # on disk before the caption changes: a kill between the two leaves an undo

    def _open(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
        self.path = journal_folder(self.folder) / f"{stamp}-{os.getpid()}.jsonl"
        self.path.parent.mkdir(exist_ok=True)
        self._handle = open(self.path, "x", encoding="utf-8")
        header = {"journal": FORMAT, "folder": str(self.folder), "command": self.command}
        self._handle.write(json.dumps(header) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _encoded(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the folder, with /
    before: bytes | None
    mode: int
    after: str  # sha256 of the bytes the edit wrote


@dataclass
class UndoSummary:
    journal: Path
    command: str
    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # captions the edit had created
    unchanged: int = 0  # already as before the edit
    refused: list[str] = field(default_factory=list)  # changed since the edit: left as they are

    def __str__(self) -> str:
        text = f"undid `{self.command}`: {counted(len(self.restored), 'caption')} restored, {len(self.removed)} removed"
        return text + (f", {self.unchanged} already as before" if self.unchanged else "")

    def refusal(self) -> str:
        names = ", ".join(self.refused[:10]) + (f" and {len(self.refused) - 10} more" if len(self.refused) > 10 else "")
        return (
            f"not restored, changed after the edit: {names}; their text from before the edit stays in "
            f"{self.journal} (delete that file to give it up)"
        )


def latest(folder: Path) -> Path:
    """The newest edit's journal file of `folder`."""
    root = journal_folder(folder)
    runs = sorted(root.glob("*.jsonl")) if root.is_dir() else []
    if not runs:
        raise JournalError(f"{folder}: no edit to undo (no journal in {root})")
    return runs[-1]


def undo(folder: Path, progress: Callable[[int, int], None] | None = None) -> UndoSummary:
    """Take back the newest edit of `folder` (see the module's docstring)."""
    folder = existing_folder(folder)
    latest(folder)  # nothing to undo: said before the lock makes a journal folder
    with lock(folder):
        return _undo(latest(folder), folder, progress)  # the newest once another undo has finished


def _undo(path: Path, folder: Path, progress: Callable[[int, int], None] | None) -> UndoSummary:
    header, entries = read_journal(path)
    summary = UndoSummary(path, header["command"])
    kept = []
    for number, entry in enumerate(entries):
        if progress and number % 256 == 0:
            progress(number, len(entries))
        outcome = _restore(folder, entry)
        if outcome == "refused":
            kept.append(entry)
            summary.refused.append(entry.path)
        elif outcome == "unchanged":
            summary.unchanged += 1
        else:
            (summary.removed if entry.before is None else summary.restored).append(entry.path)
    if kept:
        lines = [json.dumps(header)] + [json.dumps(_entry_json(entry)) for entry in kept]
        write_text_atomically(path, "\n".join(lines) + "\n")
    else:
        path.unlink()
    return summary


def _restore(folder: Path, entry: Entry) -> str:
    target = folder / entry.path
    current = _current_bytes(target)
    if current == entry.before:
        return "unchanged"
    if current is None or digest(current) != entry.after:
        return "refused"
    if entry.before is None:
        target.unlink()
    else:
        write_atomically(target, lambda temp: temp.write_bytes(entry.before), mode=entry.mode)
    return "restored"


def _current_bytes(path: Path) -> bytes | None:
    """The file's bytes, None when it is missing; a link, a non-file or a huge file reads as a change."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return b"\0not a regular file"  # matches neither side: refused, left as it is
    try:
        return read_regular_file(path, 2 * CAPTION_LIMIT)
    except FileTooLarge:
        return b"\0too large"


def read_journal(path: Path) -> tuple[dict[str, Any], list[Entry]]:
    """A journal file's header and entries; JournalError (naming the file and line) when it is damaged."""
    try:
        lines = read_regular_file(path).decode("utf-8").splitlines()
        header = json.loads(lines[0])
        if (
            not isinstance(header, dict)
            or header.get("journal") != FORMAT
            or not isinstance(header.get("command"), str)
        ):
            raise ValueError("no journal header")
        return header, [_entry(json.loads(line), number) for number, line in enumerate(lines[1:], 2)]
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise JournalError(f"{path}: not a journal this version can read ({error}); nothing was undone") from None


def _entry(data: Any, line: int) -> Entry:
    if not isinstance(data, dict) or set(data) != {"path", "before", "mode", "after"}:
        raise ValueError(f"line {line} is not an entry")
    path, before, mode, after = data["path"], data["before"], data["mode"], data["after"]
    relative = PurePosixPath(path) if isinstance(path, str) else None
    if relative is None or relative.is_absolute() or ".." in relative.parts or not relative.parts or "\\" in path:
        raise ValueError(f"line {line}: a path outside the folder")
    if not (isinstance(mode, int) and 0 <= mode <= 0o7777) or not (isinstance(after, str) and _DIGEST.fullmatch(after)):
        raise ValueError(f"line {line}: a damaged entry")
    if before is not None and not isinstance(before, str):
        raise ValueError(f"line {line}: a damaged entry")
    decoded = None if before is None else base64.b64decode(before, validate=True)
    return Entry(path, decoded, mode, after)


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {"path": entry.path, "before": _encoded(entry.before), "mode": entry.mode, "after": entry.after}
