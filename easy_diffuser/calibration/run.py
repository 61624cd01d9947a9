"""Learn the negative-prompt threshold tau by the round trip: extract -> generate -> compare.

Runs the search (sweep.py) over a folder, picks the lowest loss, writes the report (report.py) and
the candidate `{cache_dir}/calibration/{model}.candidate.json`. Nothing changes for extraction until
it is applied (store.apply), which makes it `{model}.json`, the file Engine.resolve_tau reads.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from ..batch import find_images
from ..embedding import ProgressFn
from ..engine import Engine, ExtractOptions
from ..images import ImageError, load_image
from .generators import Generator
from .metric import Metric
from .report import write_report
from .store import candidate_path, partial_path, target_path, write_json
from .sweep import (
    DEFAULT_NEGATIVES,
    DEFAULT_TAUS,
    NO_NEGATIVES,
    WHOLE_VOCABULARY,
    WHOLE_VOCABULARY_LABEL,
    Calibration,
    PartialResults,
    Setting,
    best_row,
    calibration_options,
    image_key,
    search,
)

FIRST_IMAGES = 2  # the search's first round: every setting on this many images (bench/bench_calibration.py)


def load_folder(folder: Path) -> tuple[list[Image.Image], list[Path], list[str]]:
    """The folder's readable images and their paths, and a line for each image skipped as unreadable."""
    if not folder.is_dir():  # else a mistyped folder would read as an empty one
        raise NotADirectoryError(f"{folder}: no such folder")
    images, paths, skipped = [], [], []
    for path in find_images(folder):
        try:
            images.append(load_image(path))
            paths.append(path)
        except ImageError as error:
            skipped.append(str(error))  # the caller shows them: the CLI on stderr, the tab in its report
    if not images:
        raise ValueError(f"{folder}: no readable images to calibrate on")
    return images, paths, skipped


def calibrate(
    engine: Engine,
    folder: str | Path,
    generator: Generator,
    taus: Sequence[float] = DEFAULT_TAUS,
    negatives: Sequence[int] = DEFAULT_NEGATIVES,
    options: ExtractOptions | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    report: bool = True,
    first_images: int | None = FIRST_IMAGES,
) -> Calibration:
    """Search, pick the lowest loss, write the candidate calibration (and report) unless stopped.

    first_images: images every setting is measured on before the search keeps the best fifth
    (sweep.search); None measures every setting on every image (the full sweep)."""
    images, paths, skipped = load_folder(Path(folder))
    # The search measures the first images first: in the pseudo-random order of their pixels, not by file name.
    order = sorted(range(len(images)), key=lambda index: image_key(images[index]))
    images, paths = [images[i] for i in order], [paths[i] for i in order]
    # No captioner: it would run again for every setting, and tau only moves the tags. The tags style, too:
    # under a Flux checkpoint automatic would mean sentences, which runs the describer.
    options = replace(options or calibration_options(engine), caption=None, prompt_style="tags")
    target = target_path(engine, out_dir)
    partial = PartialResults(partial_path(target))
    sweep = [Setting(t, n) for n in negatives for t in taus]
    # The baselines cost a few generations more and let the report say what calibration bought.
    baselines = [Setting(0.0, 0, NO_NEGATIVES)] + [
        Setting(WHOLE_VOCABULARY, n, WHOLE_VOCABULARY_LABEL) for n in negatives
    ]
    metric = Metric(engine)
    measured = search(
        engine, images, generator, sweep, baselines, options, metric, seed, partial, progress, should_stop, first_images
    )
    counts = dict(generations=measured.generations, full_sweep=measured.full_sweep)
    if measured.stopped:
        return Calibration(
            engine.model_id, generator.name, [], [], None, paths, seed, stopped=True, skipped=skipped, **counts
        )
    rows, baseline_rows = measured.rows[: len(sweep)], measured.rows[len(sweep) :]
    result = Calibration(
        engine.model_id, generator.name, rows, baseline_rows, best_row(rows), paths, seed, skipped=skipped, **counts
    )
    candidate = candidate_path(target)
    if report:
        result.report = write_report(result, images, generator, target)  # the latest run's report
    _write(result, candidate, options, seed, metric)
    partial.remove()
    return result


def _write(result: Calibration, target: Path, options: ExtractOptions, seed: int, metric: Metric) -> None:
    assert result.best is not None
    data = {
        "tau": result.best.setting.tau,
        "negatives": result.best.setting.negatives,
        "loss": round(result.best.loss, 5),
        "model": result.model,
        "generator": result.generator,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "images": len(result.images),
        "generations": result.generations,
        "folder": str(result.images[0].parent.resolve()),
        "seed": seed,
        "positive_tags": options.max_tags,
        "probabilities": metric.calibration.to_dict(),
        "table": [row.to_dict() for row in result.rows],
        "baselines": [row.to_dict() for row in result.baselines],
        "report": {name: str(path) for name, path in result.report.items()},
    }
    write_json(target, data)
    result.path = target
