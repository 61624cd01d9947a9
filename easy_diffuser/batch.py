"""Caption a folder of images: a `.txt` beside each image, written as it goes.

Each caption is written atomically, so a kill at any moment leaves either no caption or a whole
one; a rerun skips the images already captioned and finishes the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .engine import Engine, ExtractOptions, Extraction
from .files import remove_leftover_temp_files, write_text_atomically
from .images import ImageError, is_image_path, load_image

BATCH_SIZE = 8  # images per forward pass: throughput without holding a folder in memory


@dataclass
class BatchSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False

    def __str__(self) -> str:
        text = f"{len(self.written)} captioned, {len(self.skipped)} already captioned, {len(self.failed)} failed"
        return text + (" (stopped)" if self.stopped else "")


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(path for path in Path(folder).glob(pattern) if path.is_file() and is_image_path(path))


def caption_path(image: Path) -> Path:
    return image.with_suffix(".txt")


def caption_folder(
    engine: Engine,
    folder: str | Path,
    options: ExtractOptions = ExtractOptions(),
    recursive: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_result: Callable[[Extraction], None] | None = None,
) -> BatchSummary:
    """Write a caption (the positive prompt) beside every image in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: no such folder")
    summary = BatchSummary()
    images = find_images(folder, recursive)
    todo = [path for path in images if overwrite or not caption_path(path).exists()]
    summary.skipped = sorted(set(images) - set(todo))
    for chunk in _chunks(todo, BATCH_SIZE):
        if should_stop():
            summary.stopped = True
            break
        for result in _extract_chunk(engine, chunk, options, summary):
            caption = caption_path(Path(result.source))
            remove_leftover_temp_files(caption)  # from a run killed while writing this caption
            write_text_atomically(caption, result.prompt + "\n")
            summary.written.append(Path(result.source))
            if on_result:
                on_result(result)
        if progress:
            progress(len(summary.written) + len(summary.failed), len(todo))
    return summary


def _extract_chunk(engine: Engine, paths: Sequence[Path], options: ExtractOptions, summary: BatchSummary) -> list[Extraction]:
    loaded, names = [], []
    for path in paths:
        try:
            loaded.append(load_image(path))
            names.append(str(path))
        except ImageError as error:
            summary.failed.append((path, str(error)))
    return engine.extract_many(loaded, options, names) if loaded else []


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
