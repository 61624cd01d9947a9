"""The sweep: every setting (tau, number of negatives) measured over a set of images.

For every image and every setting: extract the prompts, generate an image from them with a fixed
seed, and score the generated image against the source with metric.py's BCE.

Cheap and resumable: settings that give the same prompts for an image share one generation (most
do), and every finished generation's loss is kept in `{model}.partial.json`, saved as it goes, so
a rerun (after Stop, a crash, or with more taus) only generates what is missing.

The positive prompt matters: if it already names everything the image shows, a negative prompt
has nothing left to decide and every tau scores the same. Calibrate with the number of positive
tags the model's defaults give as "calibration_tags" (shapes-demo: 2, so colour and shape are named
and background and size are left to the negative prompt), else the usual ExtractOptions.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from ..embedding import ProgressFn
from ..engine import Engine, ExtractOptions
from ..selection import SelectionOptions
from ..files import write_text_atomically
from .generators import GenerationStopped, Generator
from .metric import Embedded, Metric

# tau is a z-score over the vocabulary; below -1 the "relevant subset" is most of the vocabulary,
# which is the whole-vocabulary rule the product rejects, so the sweep starts there.
DEFAULT_TAUS = tuple(x / 4 for x in range(-4, 11))  # -1.0, -0.75, ..., 2.5
DEFAULT_NEGATIVES = (1, 2, 3, 4, 6, 8)
WHOLE_VOCABULARY = float("-inf")  # tau that makes every tag "relevant": the lowest of the whole vocabulary
CHUNK = 16  # generations per metric forward pass (and per save of the partial results)
NO_NEGATIVES = "no negative prompt"
WHOLE_VOCABULARY_LABEL = "whole-vocabulary lowest"


@dataclass(frozen=True)
class Setting:
    tau: float
    negatives: int
    label: str = ""  # empty for the sweep; a baseline's name otherwise

    def describe(self) -> str:
        return self.label or f"tau {self.tau:g}, {self.negatives} negatives"

    def selection(self, base: SelectionOptions) -> SelectionOptions:
        if self.label == NO_NEGATIVES:
            return replace(base, tau=self.tau, negatives=0, quality_negatives=0)
        return replace(base, tau=self.tau, negatives=self.negatives)


@dataclass
class Row:
    """One setting measured over all images."""

    setting: Setting
    loss: float  # mean BCE over the images
    cosine: float  # mean image-image cosine
    losses: list[float]
    prompts: list[tuple[str, str]]  # (prompt, negative prompt) per image

    def to_dict(self) -> dict:
        tau = None if math.isinf(self.setting.tau) else self.setting.tau
        return {"tau": tau, "negatives": self.setting.negatives, "label": self.setting.label,
                "loss": round(self.loss, 5), "cosine": round(self.cosine, 5)}


@dataclass
class Calibration:
    model: str
    generator: str
    rows: list[Row]  # the sweep
    baselines: list[Row]  # no negative prompt; whole-vocabulary lowest at each number of negatives
    best: Row | None
    images: list[Path]
    seed: int = 0
    stopped: bool = False
    path: Path | None = None  # the calibration JSON, once written
    report: dict[str, Path] = field(default_factory=dict)

    @property
    def tau(self) -> float | None:
        return self.best.setting.tau if self.best else None


class PartialResults:
    """Loss and cosine of every generation done so far, on disk, so a rerun resumes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[float]] = {}
        if path and path.is_file():
            try:
                self.entries = dict(json.loads(path.read_text())["entries"])
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}  # a damaged partial file only costs the work it held

    def save(self) -> None:
        if self.path:
            write_text_atomically(self.path, json.dumps({"entries": self.entries}))


@dataclass(frozen=True)
class _Job:
    key: str
    image: int
    prompt: str
    negative: str
    seed: int


def image_key(image: Image.Image) -> str:
    """Identity of an image by its pixels, so renamed or moved files keep their results."""
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()[:16]


def image_seed(key: str, seed: int) -> int:
    """A fixed generation seed per image (the same for every setting: paired comparisons)."""
    return seed + int(key[:7], 16)


def measure(
    engine: Engine,
    images: Sequence[Image.Image],
    generator: Generator,
    settings: Sequence[Setting],
    options: ExtractOptions,
    metric: Metric | None = None,
    seed: int = 0,
    partial: PartialResults | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[list[Row], bool]:
    """Each setting's mean loss over the images; (rows, stopped). Rows are empty if stopped."""
    metric = metric or Metric(engine)
    partial = partial or PartialResults(None)
    keys = [image_key(image) for image in images]
    embeddings = metric.encode(images)  # once: every setting only selects tags differently
    base, _ = engine.selection_options(options)
    prompts = {
        s: [(e.prompt, e.negative_prompt) for e in engine.extract_embeddings(embeddings, options, selection=s.selection(base))]
        for s in settings
    }
    jobs_of = {s: _jobs(prompts[s], keys, generator, metric, seed) for s in settings}
    jobs = {job.key: job for setting_jobs in jobs_of.values() for job in setting_jobs}
    stopped = _run_jobs(list(jobs.values()), embeddings, generator, metric, partial, progress, should_stop)
    if stopped:
        return [], True
    rows = []
    for setting in settings:
        results = [partial.entries[job.key] for job in jobs_of[setting]]
        losses = [loss for loss, _ in results]
        cosine = sum(c for _, c in results) / len(results)
        rows.append(Row(setting, sum(losses) / len(losses), cosine, losses, prompts[setting]))
    return rows, False


def _jobs(prompts: list[tuple[str, str]], keys: list[str], generator: Generator, metric: Metric, seed: int) -> list[_Job]:
    jobs = []
    fingerprint = metric.fingerprint
    for index, ((prompt, negative), key) in enumerate(zip(prompts, keys)):
        generation_seed = image_seed(key, seed)
        # Everything that changes the loss is in the key, so a cached loss is never stale.
        identity = [generator.name, fingerprint, key, prompt, negative, generation_seed]
        job_key = hashlib.sha1(json.dumps(identity).encode()).hexdigest()
        jobs.append(_Job(job_key, index, prompt, negative, generation_seed))
    return jobs


def _run_jobs(jobs, embeddings, generator, metric, partial, progress, should_stop) -> bool:
    """Generate and score the jobs not done yet, a chunk at a time; True if stopped."""
    pending = [job for job in jobs if job.key not in partial.entries]
    sources = metric.embedded(embeddings)
    done = len(jobs) - len(pending)
    if progress:
        progress(done, len(jobs))
    for start in range(0, len(pending), CHUNK):
        chunk, generated = pending[start : start + CHUNK], []
        try:
            stopped = _generate(chunk, generator, should_stop, generated)
        finally:  # on Stop or an error too: what was generated is scored and kept
            if generated:
                _score(chunk[: len(generated)], generated, sources, metric, partial)
                partial.save()
        done += len(generated)
        if progress:
            progress(done, len(jobs))
        if stopped:
            return True
    return False


def _generate(chunk: list[_Job], generator: Generator, should_stop: Callable[[], bool], out: list[Image.Image]) -> bool:
    """Append each job's image to `out`; True if stopped before the chunk was done."""
    for job in chunk:
        if should_stop():
            return True
        try:
            out.append(generator.generate(job.prompt, job.negative, job.seed))
        except GenerationStopped:
            return True
    return False


def _score(chunk: list[_Job], generated: list[Image.Image], sources: Embedded, metric: Metric, partial: PartialResults) -> None:
    rows = [job.image for job in chunk]
    source = Embedded(sources.embeddings[rows], sources.probabilities[rows])
    loss, cosine = metric.compare(source, metric.embed(generated))
    for job, job_loss, job_cosine in zip(chunk, loss.tolist(), cosine.tolist()):
        partial.entries[job.key] = [job_loss, job_cosine]


def best_row(rows: Sequence[Row]) -> Row:
    """The lowest loss; ties (settings that gave the same prompts) go to the middle tau of the tie."""
    lowest = min(row.loss for row in rows)
    tied = [row for row in rows if row.loss <= lowest + 1e-9]
    fewest = min(row.setting.negatives for row in tied)
    tied = sorted((row for row in tied if row.setting.negatives == fewest), key=lambda row: row.setting.tau)
    return tied[(len(tied) - 1) // 2]  # the middle of a plateau is farthest from both failure modes


def calibration_options(engine: Engine) -> ExtractOptions:
    """Positive tags for calibrating: the model's "calibration_tags" default, else the usual count."""
    tags = int(engine.loaded.defaults.get("calibration_tags", ExtractOptions.max_tags))
    return ExtractOptions(max_tags=tags)


