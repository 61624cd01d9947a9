"""The dataset report: which tags the captions hold, how often, on which images, and which images have none.

Written into a folder outside the dataset (a chart inside it would be taken for a training image):

* `tags.csv`: one row per tag (kind `tag`: count, share of the images, the images one per line in the cell),
  then rows of kind `no caption` and `empty caption` listing those images;
* `tags.json`: the same, with the files skipped as no caption to read and, with a minimum share, the rare tags;
* `tags.png`: a bar chart of the top tags (needs matplotlib, the `report` extra; skipped without it).

Captions are read one at a time and only their tags are kept, each image as a 4-byte index: memory grows with
the number of images and tags, never with the size of the files (bench/bench_dataset_report.py measures it).
"""

from __future__ import annotations

import csv
import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

from ..files import write_atomically
from .captions import (
    DatasetError,
    NotACaption,
    caption_path,
    counted,
    existing_folder,
    find_images,
    read_caption,
    split_tags,
)

TOP_TAGS = 30  # bars in the chart
SHARE_DIGITS = 6
NO_CHART = "not drawn: it needs matplotlib, pip install 'easy-diffuser[report]'"
Progress = Callable[[int, int], None]


@dataclass
class Report:
    folder: Path
    extension: str
    images: list[str]  # relative paths; the tags below refer to them by index
    tags: dict[str, array] = field(default_factory=dict)  # tag -> indices of its images, in order
    no_caption: list[int] = field(default_factory=list)
    empty_caption: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (caption file, why it was not read)

    def ranked(self) -> list[tuple[str, array]]:
        """The tags, most frequent first (then by name)."""
        return sorted(self.tags.items(), key=lambda item: (-len(item[1]), item[0]))

    def share(self, count: int) -> float:
        return round(count / len(self.images), SHARE_DIGITS) if self.images else 0.0

    def rare(self, min_share: float) -> list[str]:
        """The tags on fewer than `min_share` of the images, rarest first."""
        rare = [(len(images), tag) for tag, images in self.tags.items() if len(images) < min_share * len(self.images)]
        return [tag for _, tag in sorted(rare)]

    def summary(self) -> str:
        captioned = len(self.images) - len(self.no_caption) - len(self.empty_caption) - len(self.skipped)
        images, tags = counted(len(self.images), "image"), counted(len(self.tags), "different tag")
        return (
            f"{self.folder}: {images}, {captioned} with tags, {len(self.empty_caption)} with an empty caption, "
            f"{len(self.no_caption)} without a {self.extension} caption, {tags}"
        )


def build_report(folder: Path, extension: str, recursive: bool = False, progress: Progress | None = None) -> Report:
    """Read every image's caption in `folder` (streaming) into a Report."""
    folder = existing_folder(folder)
    report = Report(folder, extension, find_images(folder, recursive))
    total = len(report.images)
    for index, image in enumerate(report.images):
        if progress and index % 256 == 0:
            progress(index, total)
        caption = caption_path(image, extension)
        try:
            found = read_caption(folder / caption)
        except (NotACaption, OSError) as error:  # OSError: unreadable (permissions, a vanished disk)
            report.skipped.append((caption, str(error) if isinstance(error, NotACaption) else error.strerror))
            continue
        tags = split_tags(found.text) if found else []
        if found is None:
            report.no_caption.append(index)
        elif not tags:
            report.empty_caption.append(index)
        for tag in dict.fromkeys(tags):  # a tag written twice is on the image once
            report.tags.setdefault(tag, array("I")).append(index)
    if progress:
        progress(total, total)
    return report


def check_out_dir(folder: Path, out_dir: Path) -> Path:
    """The report's folder, refused when it lies inside the dataset (or is it)."""
    folder, out = Path(folder).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if out == folder or folder in out.parents:
        raise DatasetError(
            f"{out_dir}: lies inside the dataset {folder}, where a trainer would take the chart for a training "
            "image; write the report to a folder outside it"
        )
    return out


def write_report(report: Report, out_dir: Path, min_share: float = 0.0) -> dict[str, Path]:
    """Write tags.csv, tags.json and (with matplotlib) tags.png into `out_dir`; returns them by kind."""
    out = check_out_dir(report.folder, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "tags.csv", "json": out / "tags.json"}
    write_atomically(paths["csv"], lambda temp: _write_text(temp, lambda handle: _write_csv(report, handle)))
    write_atomically(
        paths["json"], lambda temp: _write_text(temp, lambda handle: _write_json(report, handle, min_share))
    )
    if plot_tags(report, out / "tags.png"):
        paths["chart"] = out / "tags.png"
    return paths


def _write_text(path: Path, write: Callable[[TextIO], None]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        write(handle)


def _write_csv(report: Report, handle: TextIO) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(["kind", "tag", "count", "share", "images"])
    for tag, images in report.ranked():
        writer.writerow(["tag", tag, len(images), report.share(len(images)), _names(report, images)])
    for kind, images in (("no caption", report.no_caption), ("empty caption", report.empty_caption)):
        writer.writerow([kind, "", len(images), report.share(len(images)), _names(report, images)])


def _names(report: Report, indices: list[int] | array) -> str:
    return "\n".join(report.images[index] for index in indices)


def _write_json(report: Report, handle: TextIO, min_share: float) -> None:
    """The JSON object, written one tag at a time: the report's file may be larger than what it is built from."""
    head = {
        "folder": str(report.folder),
        "caption_extension": report.extension,
        "images": len(report.images),
        "no_caption": [report.images[index] for index in report.no_caption],
        "empty_caption": [report.images[index] for index in report.empty_caption],
        "skipped": [{"file": file, "reason": reason} for file, reason in report.skipped],
    }
    if min_share:
        head |= {"min_share": min_share, "rare_tags": report.rare(min_share)}
    # The head's object without its closing "\n}", then the tags as they are made.
    handle.write(json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ',\n "tags": [')
    for number, entry in enumerate(_tag_entries(report)):
        handle.write(("," if number else "") + "\n  " + json.dumps(entry, ensure_ascii=False))
    handle.write("\n ]\n}\n")


def _tag_entries(report: Report) -> Iterator[dict]:
    for tag, images in report.ranked():
        names = [report.images[index] for index in images]
        yield {"tag": tag, "count": len(images), "share": report.share(len(images)), "images": names}


def plot_tags(report: Report, path: Path) -> bool:
    """A bar chart of the TOP_TAGS most frequent tags; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: only files
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    top = report.ranked()[:TOP_TAGS]
    figure, axes = plt.subplots(figsize=(7.5, 1.4 + 0.26 * max(len(top), 1)), dpi=100)
    counts = [len(images) for _, images in top]
    bars = axes.barh(range(len(top)), counts, color="#4c72b0")
    axes.bar_label(bars, [f"{count} ({report.share(count):.0%})" for count in counts], padding=3, fontsize=8)
    axes.set_yticks(range(len(top)), [tag for tag, _ in top], fontsize=8)
    axes.invert_yaxis()  # the most frequent at the top
    axes.set_xlim(0, max(counts, default=1) * 1.18)
    axes.set_xlabel("images with the tag")
    title = f"{report.folder.name}: top {len(top)} of {len(report.tags)} tags over {len(report.images)} images"
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    write_atomically(path, lambda temp: figure.savefig(temp, format="png"))
    plt.close(figure)
    return True
