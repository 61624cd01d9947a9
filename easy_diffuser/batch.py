"""Caption a folder of images: a caption file beside each image (`.txt` unless the options say another
extension; caption_files.py writes it), written as it goes (and/or one record per image).

Each caption is written atomically, so a kill at any moment leaves either no caption or a whole
one; a rerun skips the images already captioned and finishes the rest. The work runs on
pipeline.py: decoding in worker threads, the model in batches, writing in a thread of its own.

LoRA trainers (kohya sd-scripts and the like) pair `a.txt` with the image of stem `a`, so two
images `a.jpg` and `a.png` in one folder cannot both have a caption: the first by name gets it,
every other one is a failure naming both files, and no caption is ever overwritten by another's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import pipeline
from .caption_files import caption_path
from .engine import Engine, Extraction, ExtractOptions
from .images import is_image_path
from .options import CaptionFileOptions
from .pipeline import Task
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
    unchanged: list[Path] = field(default_factory=list)  # append/prepend: the caption file had every tag already

    def __str__(self) -> str:
        if self.captions:
            done = f"{len(self.written)} captioned" + (f", {self.recorded} records written" if self.recorded else "")
            done += f", {len(self.unchanged)} unchanged (every tag already there)" if self.unchanged else ""
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
    caption_files: CaptionFileOptions = CaptionFileOptions(),
) -> BatchSummary:
    """Write a caption file (the positive prompt's tags, as `caption_files` says) beside every image in `folder`,
    and/or a record of it to `records`. `overwrite`: records and caption files are made again (the same as
    caption_files.existing "overwrite" for the caption files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: no such folder")
    if overwrite:
        caption_files = replace(caption_files, existing="overwrite")
    summary = BatchSummary(captions=captions)
    tasks = plan(find_images(folder, recursive), summary, captions, overwrite, records, caption_files)
    outcome = pipeline.run(
        engine, tasks, options, records, batch_size, workers, progress, should_stop, on_result, caption_files
    )
    summary.written, summary.stopped, summary.seconds = outcome.written, outcome.stopped, outcome.seconds
    summary.recorded, summary.unchanged = outcome.recorded, outcome.unchanged
    summary.failed += outcome.failed
    # An image extracted only for its record kept the caption file it had: already captioned, not captioned now.
    summary.extracted = len(outcome.written) + len(outcome.unchanged)
    wrote_caption = {task.path for task in tasks if task.caption}
    summary.skipped += [path for path in summary.written if path not in wrote_caption] if captions else []
    summary.written = [path for path in summary.written if path in wrote_caption]
    return summary


def plan(
    images: list[Path],
    summary: BatchSummary,
    captions: bool,
    overwrite: bool,
    records: RecordWriter | None,
    caption_files: CaptionFileOptions = CaptionFileOptions(),
) -> list[Task]:
    """What each image needs (a caption, a record); images with nothing to do go to summary.skipped,
    images whose caption belongs to another image of the same stem to summary.failed."""
    extension = caption_files.caption_extension
    owners = caption_owners(images, extension) if captions else {}
    recorded = done_paths(records.path) if records and not overwrite else set()
    tasks = []
    for image in images:
        owner = owners.get(image, image)
        if owner != image:
            reason = (
                f"{image}: not captioned, {caption_path(image, extension).name} is {owner.name}'s caption "
                "(trainers pair a caption with one image by name); rename one of them"
            )
            summary.failed.append((image, reason))
        redo = caption_files.existing != "skip"  # overwrite, or add the tags a caption file lacks
        wants_caption = captions and owner == image and (redo or not caption_path(image, extension).is_file())
        wants_record = records is not None and recorded_path(absolute(image)) not in recorded
        if wants_caption or wants_record:
            tasks.append(Task(image, wants_caption, wants_record))
        elif owner == image:
            summary.skipped.append(image)
    return tasks


def caption_owners(images: list[Path], extension: str = ".txt") -> dict[Path, Path]:
    """Each image -> the image its caption file belongs to: of images sharing a stem, the first by name."""
    by_caption: dict[Path, list[Path]] = defaultdict(list)
    for image in images:
        by_caption[caption_path(image, extension)].append(image)
    return {image: min(group) for group in by_caption.values() for image in group}
