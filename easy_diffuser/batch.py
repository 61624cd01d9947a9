"""Caption a folder of images: a `.txt` beside each image, written as it goes (and/or one record per image).

Each caption is written atomically, so a kill at any moment leaves either no caption or a whole
one; a rerun skips the images already captioned and finishes the rest. The work runs on
pipeline.py: decoding in worker threads, the model in batches, writing in a thread of its own.

LoRA trainers (kohya sd-scripts and the like) pair `a.txt` with the image of stem `a`, so two
images `a.jpg` and `a.png` in one folder cannot both have a caption: the first by name gets it,
every other one is a failure naming both files, and no caption is ever overwritten by another's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import pipeline
from .engine import Engine, Extraction, ExtractOptions
from .images import is_image_path
from .pipeline import Task, caption_path
from .records import RecordWriter, absolute, done_paths, recorded_path

BATCH_SIZE = 8  # images per forward pass: throughput without holding a folder in memory


@dataclass
class BatchSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0  # time spent on the images to do
    captions: bool = True  # False: records only (--no-captions), so nothing is "captioned"
    recorded: int = 0  # records written (error records included)
    extracted: int = 0  # images extracted this run, whether for a caption or only for a record

    def __str__(self) -> str:
        if self.captions:
            done = f"{len(self.written)} captioned" + (f", {self.recorded} records written" if self.recorded else "")
            text = f"{done}, {len(self.skipped)} already captioned, {len(self.failed)} failed"
        else:
            text = f"{self.recorded} records written, {len(self.skipped)} already recorded, {len(self.failed)} failed"
        if self.seconds and self.extracted:
            text += f" ({self.extracted / self.seconds:.1f} images/s)"
        return text + (" (stopped)" if self.stopped else "")


def find_images(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(path for path in Path(folder).glob(pattern) if path.is_file() and is_image_path(path))


def caption_folder(
    engine: Engine,
    folder: str | Path,
    options: ExtractOptions = ExtractOptions(),
    recursive: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_result: Callable[[Extraction], None] | None = None,
    records: RecordWriter | None = None,
    captions: bool = True,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
) -> BatchSummary:
    """Write a caption (the positive prompt) beside every image in `folder`, and/or a record of it to `records`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: no such folder")
    summary = BatchSummary(captions=captions)
    tasks = plan(find_images(folder, recursive), summary, captions, overwrite, records)
    outcome = pipeline.run(engine, tasks, options, records, batch_size, workers, progress, should_stop, on_result)
    summary.written, summary.stopped, summary.seconds = outcome.written, outcome.stopped, outcome.seconds
    summary.recorded = outcome.recorded
    summary.failed += outcome.failed
    # An image extracted only for its record kept the caption file it had: already captioned, not captioned now.
    summary.extracted = len(outcome.written)
    wrote_caption = {task.path for task in tasks if task.caption}
    summary.skipped += [path for path in summary.written if path not in wrote_caption] if captions else []
    summary.written = [path for path in summary.written if path in wrote_caption]
    return summary


def plan(
    images: list[Path], summary: BatchSummary, captions: bool, overwrite: bool, records: RecordWriter | None
) -> list[Task]:
    """What each image needs (a caption, a record); images with nothing to do go to summary.skipped,
    images whose caption belongs to another image of the same stem to summary.failed."""
    owners = caption_owners(images) if captions else {}
    recorded = done_paths(records.path) if records and not overwrite else set()
    tasks = []
    for image in images:
        owner = owners.get(image, image)
        if owner != image:
            reason = (
                f"{image}: not captioned, {caption_path(image).name} is {owner.name}'s caption "
                "(trainers pair a caption with one image by name); rename one of them"
            )
            summary.failed.append((image, reason))
        wants_caption = captions and owner == image and (overwrite or not caption_path(image).is_file())
        wants_record = records is not None and recorded_path(absolute(image)) not in recorded
        if wants_caption or wants_record:
            tasks.append(Task(image, wants_caption, wants_record))
        elif owner == image:
            summary.skipped.append(image)
    return tasks


def caption_owners(images: list[Path]) -> dict[Path, Path]:
    """Each image -> the image its `.txt` caption belongs to: of images sharing a stem, the first by name."""
    by_caption: dict[Path, list[Path]] = defaultdict(list)
    for image in images:
        by_caption[caption_path(image)].append(image)
    return {image: min(group) for group in by_caption.values() for image in group}
