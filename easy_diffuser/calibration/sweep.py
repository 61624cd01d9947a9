"""The sweep: settings (tau, number of negatives) measured over a set of images.

For an image and a setting: extract the prompts, generate an image from them with a fixed seed,
and score the generated image against the source with metric.py's BCE.

Cheap and resumable: settings that give the same prompts for an image share one generation (most
do: neighbouring taus often select the same tags); `search` measures every setting on a few images
and only the best fifth on more (successive halving); and every finished generation's loss is kept
in `{model}.partial.json`, saved as it goes, so a rerun after Stop or a crash replays what was done
and only generates what is missing.

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
from .generators import GenerationStopped, Generator
from .metric import Embedded, Metric
from .store import negatives_text, write_json

# tau is a z-score over the vocabulary; below -1 the "relevant subset" is most of the vocabulary,
# which is the whole-vocabulary rule the product rejects, so the sweep starts there.
DEFAULT_TAUS = tuple(x / 4 for x in range(-4, 11))  # -1.0, -0.75, ..., 2.5
DEFAULT_NEGATIVES = (1, 2, 3, 4, 6, 8)
WHOLE_VOCABULARY = float("-inf")  # tau that makes every tag "relevant": the lowest of the whole vocabulary
CHUNK = 16  # generations per metric forward pass (and per save of the partial results)
KEEP = 1 / 5  # share of the sweep's settings a search round keeps
GROWTH = 3  # times as many images in each search round
NO_NEGATIVES = "no negative prompt"
WHOLE_VOCABULARY_LABEL = "whole-vocabulary lowest"


@dataclass(frozen=True)
class Setting:
    tau: float
    negatives: int
    label: str = ""  # empty for the sweep; a baseline's name otherwise

    def describe(self) -> str:
        """ "tau 0.5, 1 negative", "whole-vocabulary lowest, 8 negatives", "no negative prompt"."""
        if self.label == NO_NEGATIVES:
            return self.label
        return f"{self.label or f'tau {self.tau:g}'}, {negatives_text(self.negatives)}"

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
    losses: list[float]  # per image, for the first len(losses) images (a search drops settings early)
    prompts: list[tuple[str, str]]  # (prompt, negative prompt) per image

    @property
    def images(self) -> int:
        return len(self.losses)

    def to_dict(self) -> dict:
        tau = None if math.isinf(self.setting.tau) else self.setting.tau
        return {
            "tau": tau,
            "negatives": self.setting.negatives,
            "label": self.setting.label,
            "loss": round(self.loss, 5),
            "cosine": round(self.cosine, 5),
            "images": self.images,
        }


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
    generations: int = 0  # distinct generations measured
    full_sweep: int = 0  # what every setting on every image would have needed
    path: Path | None = None  # the candidate calibration JSON, once written
    report: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # one line per unreadable image, naming it

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
                entries = dict(json.loads(path.read_text())["entries"])
            except (OSError, ValueError, KeyError, TypeError):
                entries = {}  # a damaged partial file only costs the work it held
            self.entries = {key: value for key, value in entries.items() if _finite_pair(value)}

    def save(self) -> None:
        if self.path:
            write_json(self.path, {"entries": self.entries})

    def remove(self) -> None:
        """Once the calibration is written its generations are in it; the partial file would only go stale."""
        if self.path:
            self.path.unlink(missing_ok=True)


def _finite_pair(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(x, float) and math.isfinite(x) for x in value)


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


@dataclass
class Measured:
    rows: list[Row]  # one per setting, in the order given; empty if stopped
    stopped: bool
    generations: int  # distinct generations the search needed (done now or found in the partial results)
    full_sweep: int  # distinct generations every setting on every image needs


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
    """Each setting's mean loss over all the images; (rows, stopped). Rows are empty if stopped."""
    measured = search(engine, images, generator, settings, [], options, metric, seed, partial, progress, should_stop)
    return measured.rows, measured.stopped


def image_counts(total: int, first_images: int | None) -> list[int]:
    """Images measured in each round: first_images, GROWTH times as many, ..., all (None: all at once)."""
    counts = [min(first_images or total, total)]
    while counts[-1] < total:
        counts.append(min(counts[-1] * GROWTH, total))
    return counts


def search(
    engine: Engine,
    images: Sequence[Image.Image],
    generator: Generator,
    sweep: Sequence[Setting],
    baselines: Sequence[Setting],
    options: ExtractOptions,
    metric: Metric | None = None,
    seed: int = 0,
    partial: PartialResults | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    first_images: int | None = None,
) -> Measured:
    """Successive halving over the images in their order: every setting on the first `first_images`, the best
    fifth of the sweep on GROWTH times as many, and so on until the survivors have seen every image (None: every
    setting on every image, the full sweep). A baseline goes on while it scores within the sweep's kept fifth
    and never takes a sweep setting's place. Each setting's row holds the images it was measured on."""
    metric = metric or Metric(engine)
    partial = partial or PartialResults(None)
    keys = [image_key(image) for image in images]
    embeddings = metric.encode(images)  # once: every setting only selects tags differently
    sources = metric.embedded(embeddings)
    base, _ = engine.selection_options(options)
    settings = [*sweep, *baselines]
    prompts = {
        s: [
            (e.prompt, e.negative_prompt)
            for e in engine.extract_embeddings(embeddings, options, selection=s.selection(base))
        ]
        for s in settings
    }
    jobs_of = {s: _jobs(prompts[s], keys, generator, metric, seed) for s in settings}
    counts = image_counts(len(images), first_images)
    tally = _Tally(progress, _distinct(jobs_of, settings, len(images)))
    rows: dict[Setting, Row] = {}
    alive, measured = settings, 0
    for round_index, count in enumerate(counts):
        jobs = list({job.key: job for s in alive for job in jobs_of[s][measured:count]}.values())
        tally.plan(jobs, _estimate(jobs_of, settings, len(alive), counts, round_index))
        if _run_jobs(jobs, sources, generator, metric, partial, tally, should_stop):
            return Measured([], True, tally.total, tally.full_sweep)
        for setting in alive:
            rows[setting] = _row(setting, jobs_of[setting][:count], prompts[setting][:count], partial)
        alive, measured = _survivors(alive, rows, set(sweep)), count
    return Measured([rows[s] for s in settings], False, tally.total, tally.full_sweep)


def _row(setting: Setting, jobs: list[_Job], prompts: list[tuple[str, str]], partial: PartialResults) -> Row:
    results = [partial.entries[job.key] for job in jobs]
    losses = [loss for loss, _ in results]
    return Row(setting, sum(losses) / len(losses), sum(c for _, c in results) / len(results), losses, prompts)


def _survivors(alive: list[Setting], rows: dict[Setting, Row], sweep: set[Setting]) -> list[Setting]:
    """The best share KEEP of the sweep (ties at the cut stay: equal prompts share generations), and of each
    kind of baseline the best one, if it scores as well as the cut: the report compares with it."""
    ranked = sorted(rows[s].loss for s in alive if s in sweep)
    cut = ranked[max(1, math.ceil(len(ranked) * KEEP)) - 1] if ranked else -math.inf
    best_of_kind: dict[str, Setting] = {}
    for setting in (s for s in alive if s not in sweep):
        if setting.label not in best_of_kind or rows[setting].loss < rows[best_of_kind[setting.label]].loss:
            best_of_kind[setting.label] = setting
    kept = set(best_of_kind.values()) | {s for s in alive if s in sweep}
    return [s for s in alive if s in kept and rows[s].loss <= cut + 1e-9]


def _distinct(jobs_of: dict[Setting, list[_Job]], settings: Sequence[Setting], images: int) -> list[int]:
    """Distinct generations per image over all settings."""
    return [len({jobs_of[s][index].key for s in settings}) for index in range(images)]


def _estimate(jobs_of, settings, alive: int, counts: list[int], round_index: int) -> int:
    """Generations of the rounds after this one, if the survivors' prompts were as varied as all settings'."""
    distinct = _distinct(jobs_of, settings, counts[-1])
    estimate, survivors = 0.0, alive
    for previous, count in zip(counts[round_index:], counts[round_index + 1 :]):
        survivors = math.ceil(survivors * KEEP)
        estimate += sum(distinct[previous:count]) * min(1.0, survivors / len(settings))
    return round(estimate)


def _jobs(
    prompts: list[tuple[str, str]], keys: list[str], generator: Generator, metric: Metric, seed: int
) -> list[_Job]:
    jobs = []
    fingerprint = metric.fingerprint
    for index, ((prompt, negative), key) in enumerate(zip(prompts, keys)):
        generation_seed = image_seed(key, seed)
        # Everything that changes the loss is in the key, so a cached loss is never stale.
        identity = [generator.name, fingerprint, key, prompt, negative, generation_seed]
        job_key = hashlib.sha1(json.dumps(identity).encode()).hexdigest()
        jobs.append(_Job(job_key, index, prompt, negative, generation_seed))
    return jobs


class _Tally:
    """Generations done and planned, for the progress callback: the current round exactly, later ones estimated."""

    def __init__(self, progress: ProgressFn | None, distinct: list[int]) -> None:
        self.progress = progress
        self.full_sweep = sum(distinct)
        self.done = self.total = 0  # total: generations of the rounds planned so far
        self.later = 0

    def plan(self, jobs: list[_Job], later: int) -> None:
        self.total += len(jobs)
        self.later = later

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress:
            self.progress(self.done, self.total + self.later)


def _run_jobs(jobs: list[_Job], sources: Embedded, generator, metric, partial, tally: _Tally, should_stop) -> bool:
    """Generate and score the jobs not done yet, a chunk at a time; True if stopped."""
    pending = [job for job in jobs if job.key not in partial.entries]
    tally.advance(len(jobs) - len(pending))  # found in the partial results: already done
    for start in range(0, len(pending), CHUNK):
        chunk, generated = pending[start : start + CHUNK], []
        try:
            stopped = _generate(chunk, generator, should_stop, generated)
        finally:  # on Stop or an error too: what was generated is scored and kept
            if generated:
                _score(chunk[: len(generated)], generated, sources, metric, partial)
                partial.save()
        tally.advance(len(generated))
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


def _score(
    chunk: list[_Job], generated: list[Image.Image], sources: Embedded, metric: Metric, partial: PartialResults
) -> None:
    rows = [job.image for job in chunk]
    source = Embedded(sources.embeddings[rows], sources.probabilities[rows])
    loss, cosine = metric.compare(source, metric.embed(generated))
    for job, job_loss, job_cosine in zip(chunk, loss.tolist(), cosine.tolist()):
        partial.entries[job.key] = [job_loss, job_cosine]


def best_row(rows: Sequence[Row]) -> Row:
    """The lowest loss among the rows measured on the most images; ties (settings that gave the same
    prompts) go to the fewest negatives, then the middle tau of the tie."""
    most = max(row.images for row in rows)
    rows = [row for row in rows if row.images == most]
    lowest = min(row.loss for row in rows)
    tied = [row for row in rows if row.loss <= lowest + 1e-9]
    fewest = min(row.setting.negatives for row in tied)
    tied = sorted((row for row in tied if row.setting.negatives == fewest), key=lambda row: row.setting.tau)
    return tied[(len(tied) - 1) // 2]  # the middle of a plateau is farthest from both failure modes


def calibration_options(engine: Engine) -> ExtractOptions:
    """Positive tags for calibrating: the model's "calibration_tags" default, else the usual count."""
    tags = int(engine.loaded.defaults.get("calibration_tags", ExtractOptions.max_tags))
    return ExtractOptions(max_tags=tags)
