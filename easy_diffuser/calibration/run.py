"""Learn the negative-prompt threshold tau by the round trip: extract -> generate -> compare.

Runs the sweep (sweep.py) over a folder, picks the lowest loss, writes the report (report.py)
and `{cache_dir}/calibration/{model}.json`, which Engine.resolve_tau uses from then on.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from ..batch import find_images
from ..embedding import ProgressFn
from ..engine import Engine, ExtractOptions, calibration_path
from ..files import write_text_atomically
from ..images import ImageError, load_image
from .generators import Generator
from .metric import Metric
from .report import write_report
from .sweep import (
    DEFAULT_NEGATIVES, DEFAULT_TAUS, NO_NEGATIVES, WHOLE_VOCABULARY, WHOLE_VOCABULARY_LABEL,
    Calibration, PartialResults, Setting, best_row, calibration_options, measure,
)

def load_folder(folder: Path) -> tuple[list[Image.Image], list[Path]]:
    """The folder's readable images; unreadable ones are reported and skipped."""
    if not folder.is_dir():  # else a mistyped folder would read as an empty one
        raise NotADirectoryError(f"{folder}: no such folder")
    images, paths = [], []
    for path in find_images(folder):
        try:
            images.append(load_image(path))
            paths.append(path)
        except ImageError as error:
            print(f"skipped: {error}", file=sys.stderr)
    if not images:
        raise ValueError(f"{folder}: no readable images to calibrate on")
    return images, paths


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
) -> Calibration:
    """Sweep, pick the lowest loss, write the calibration JSON (and report) unless stopped."""
    images, paths = load_folder(Path(folder))
    # No captioner: it would run again for every setting, and tau only moves the tags.
    options = replace(options or calibration_options(engine), caption=None)
    target = calibration_path(engine.cache_dir, engine.model_id)
    if out_dir:
        target = Path(out_dir) / target.name
    partial = PartialResults(target.with_suffix(".partial.json"))
    sweep = [Setting(t, n) for n in negatives for t in taus]
    # The baselines cost a few generations more and let the report say what calibration bought.
    baselines = [Setting(0.0, 0, NO_NEGATIVES)] + [Setting(WHOLE_VOCABULARY, n, WHOLE_VOCABULARY_LABEL) for n in negatives]
    metric = Metric(engine)
    rows, stopped = measure(engine, images, generator, sweep + baselines, options, metric, seed, partial, progress, should_stop)
    if stopped:
        return Calibration(engine.model_id, generator.name, [], [], None, paths, seed, stopped=True)
    rows, baseline_rows = rows[: len(sweep)], rows[len(sweep) :]
    best = best_row(rows)
    result = Calibration(engine.model_id, generator.name, rows, baseline_rows, best, paths, seed)
    if report:
        result.report = write_report(result, images, generator, target)
    _write(result, target, options, seed, metric)
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
        "folder": str(result.images[0].parent.resolve()),
        "seed": seed,
        "positive_tags": options.max_tags,
        "probabilities": metric.calibration.to_dict(),
        "table": [row.to_dict() for row in result.rows],
        "baselines": [row.to_dict() for row in result.baselines],
        "report": {name: str(path) for name, path in result.report.items()},
    }
    write_text_atomically(target, json.dumps(data, indent=2) + "\n")
    result.path = target


