"""Caption many images without the model waiting on JPEG decoding:

    paths -> worker threads: read, decode, preprocess -> a bounded window of decoded images
          -> the caller's thread: the model, one batch at a time -> a queue -> writer thread: captions, records

Decoding, resizing (PIL) and torch's ops release the GIL, so worker threads decode while the model
runs (bench/bench_pipeline.py measures it); results keep the input order. The window bounds memory:
at most `ahead` decoded images wait for the model, and at most a few batches wait for the writer.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .caption_files import CaptionWriter
from .engine import Engine, Extraction, ExtractOptions
from .images import ImageError, ImageInput, load_image
from .kinds.base import Loaded
from .options import CaptionFileOptions
from .records import RecordWriter, absolute, error_record, record
from .scoring import NonFiniteScores

Progress = Callable[[int, int], None]  # (images done, images to do)


class Preprocessor:
    """Image file -> the model's input tensor, bit for bit as `loaded.preprocess` makes it, without torch in
    the worker threads: `pixels` runs the PIL steps and ToTensor + Normalize in numpy (same float32 ops,
    checked for every uint8 value in tests), `to_tensors` only stacks. Every thread that calls torch ops
    starts an OpenMP team of its own, and on a busy CPU those teams stall the model's. A tagger's
    preprocessing (pad to a white square, resize, BGR: tagger.py) has the same shape and runs here too.
    Picklable (Ray sends it to decoding tasks); it never loads the model."""

    def __init__(self, loaded: Loaded) -> None:
        self.transform = loaded.preprocess
        self.min_side = loaded.image_size
        self.pil_steps, self.mean, self.std = _split_transform(loaded.preprocess)

    def load(self, source: ImageInput, name: str) -> Image.Image:
        return load_image(source, name, min_side=self.min_side)

    def pixels(self, image: Image.Image) -> np.ndarray | torch.Tensor:
        """The model's input, CxHxW float32 (a tensor from the whole transform when it isn't open_clip's shape)."""
        if self.pil_steps is None:
            return self.transform(image)
        for step in self.pil_steps:
            image = step(image)
        channels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
        return (channels / np.float32(255) - self.mean) / self.std  # ToTensor, then Normalize

    def to_tensors(self, pixels: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        if self.pil_steps is None:
            return torch.stack(list(pixels))
        return torch.from_numpy(np.stack(pixels))

    def __call__(self, source: ImageInput, name: str) -> torch.Tensor:
        return self.to_tensors([self.pixels(self.load(source, name))])[0]


def _split_transform(transform: Callable) -> tuple[list | None, np.ndarray | None, np.ndarray | None]:
    """(PIL steps, mean, std) of a torchvision Compose ending in ToTensor, Normalize (open_clip's); else Nones."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        return None, None, None
    mean, std = (np.asarray(value, dtype=np.float32).reshape(-1, 1, 1) for value in (steps[-1].mean, steps[-1].std))
    return steps[:-2], mean, std


@dataclass
class Task:
    path: Path
    caption: bool = True  # write its caption file
    record: bool = False  # write a record


@dataclass
class Prepared:
    task: Task
    pixels: np.ndarray | torch.Tensor | None = None  # Preprocessor.pixels
    image: Image.Image | None = None  # kept only for a captioner, which wants the picture itself
    error: str = ""


@dataclass
class Outcome:
    """What happened to every task; failures are (path, reason) with a reason that names the file."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0
    recorded: int = 0  # records written
    unchanged: list[Path] = field(default_factory=list)  # caption files that had every tag already (append, prepend)


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def run(
    engine: Engine,
    tasks: Sequence[Task],
    options: ExtractOptions = ExtractOptions(),
    records: RecordWriter | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_result: Callable[[Extraction], None] | None = None,
    caption_files: CaptionFileOptions = CaptionFileOptions(),
) -> Outcome:
    """Extract every task's image and write its caption file and/or record; one bad image or file costs one
    failure."""
    outcome = Outcome()
    started = time.perf_counter()
    preprocessor = Preprocessor(engine.loaded)
    captions = CaptionWriter.of(caption_files, options, engine.kind.writes == "booru")
    writer = _Writer(outcome, records, engine.model_id, on_result, captions)
    done = 0
    captioned = engine.style(options).caption is not None  # the captioner needs the decoded image
    prepared = _prepare_in_order(tasks, preprocessor, captioned, workers or default_workers(), 4 * batch_size)
    # A VLM server describes in a pool of its concurrency while the model goes on with the next batches: `ahead`
    # batches in flight keep at least twice that many images asked or waiting, so the server is never idle.
    concurrency = engine.describer.server.concurrency if captioned and engine.describer else 0
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="describe") if concurrency else None
    ahead = -(-2 * concurrency // batch_size)
    in_flight: deque[tuple[int, Finish]] = deque()
    try:
        for batch in _batches(prepared, batch_size):
            if should_stop():
                outcome.stopped = True
                break
            good = [item for item in batch if not item.error]
            _failed(batch, writer, outcome)
            in_flight.append((len(batch), _extract(engine, preprocessor, good, options, pool)))
            while len(in_flight) > ahead:
                done += _finish(*in_flight.popleft(), writer, outcome)
                if progress:
                    progress(done, len(tasks))
        while in_flight:
            done += _finish(*in_flight.popleft(), writer, outcome)
            if progress:
                progress(done, len(tasks))
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        prepared.close()  # cancels decoding nobody will use
        writer.close()  # every result handed over is written before we return
    outcome.seconds = time.perf_counter() - started
    return outcome


# A batch's results once its descriptions are in: (images extracted, their results, images that failed).
Finish = Callable[[], tuple[list["Prepared"], list[Extraction], list["Prepared"]]]


def _finish(size: int, finish: Finish, writer: "_Writer", outcome: Outcome) -> int:
    """Hand a batch's results to the writer; its size, for the progress."""
    extracted, results, failed = finish()
    if extracted:
        writer.put(extracted, results)
    _failed(failed, writer, outcome)
    return size


def _failed(items: list[Prepared], writer: "_Writer", outcome: Outcome) -> None:
    for item in items:
        if item.error:
            outcome.failed.append((item.task.path, item.error))
            writer.put_errors([item])


def _extract(
    engine: Engine,
    preprocessor: Preprocessor,
    batch: list[Prepared],
    options: ExtractOptions,
    pool: ThreadPoolExecutor | None,
) -> Finish:
    """The batch through the model now; its results once a server (in `pool`) has described it. An image the
    model gives non-finite scores, or the server could not describe, gets its `error` and is among the failed;
    the rest of the batch goes on."""
    if not batch:
        return lambda: ([], [], [])
    batch, embeddings, unscored = _encoded(engine, preprocessor, batch)
    if not batch:
        return lambda: ([], [], unscored)
    caption = engine.style(options).caption
    names = [str(item.task.path) for item in batch]
    if pool is None or engine.describer is None or caption is None:
        captions = engine.caption([item.image for item in batch], caption) if caption else []
        results = engine.extract_embeddings(embeddings, options, names, captions)
        return lambda: (batch, results, unscored)
    tags = engine.grounding(embeddings, options) or [""] * len(batch)
    describe = engine.describer.describe
    asked = [pool.submit(describe, item.image, caption, text) for item, text in zip(batch, tags)]

    def finish() -> tuple[list[Prepared], list[Extraction], list[Prepared]]:
        described = [future.result() for future in asked]
        for item, text in zip(batch, described):
            item.error = "" if isinstance(text, str) else f"{item.task.path}: {text}"
        kept = [index for index, item in enumerate(batch) if not item.error]
        failed = unscored + [item for item in batch if item.error]
        if not kept:
            return [], [], failed
        captions = [described[index] for index in kept]
        results = engine.extract_embeddings(embeddings[kept], options, [names[index] for index in kept], captions)
        return [batch[index] for index in kept], results, failed

    return finish


def _encoded(
    engine: Engine, preprocessor: Preprocessor, batch: list[Prepared]
) -> tuple[list[Prepared], torch.Tensor, list[Prepared]]:
    """(the images the model scored, their features, those it gave non-finite scores, each with its `error`)."""
    try:
        return batch, engine.encode_tensors(preprocessor.to_tensors([item.pixels for item in batch])), []
    except NonFiniteScores as error:
        finite = error.finite.tolist()
        unscored = [item for item, ok in zip(batch, finite) if not ok]
        for item in unscored:
            item.error = f"{item.task.path}: {error}"
        return list(itertools.compress(batch, finite)), error.features[error.finite], unscored


def _prepare(task: Task, preprocessor: Preprocessor, keep_image: bool) -> Prepared:
    try:
        image = preprocessor.load(task.path, str(task.path))
        return Prepared(task, preprocessor.pixels(image), image if keep_image else None)
    except ImageError as error:
        return Prepared(task, error=str(error))


def _prepare_in_order(
    tasks: Sequence[Task], preprocessor: Preprocessor, keep_image: bool, workers: int, ahead: int
) -> Iterator[Prepared]:
    """Decode in `workers` threads, at most `ahead` images ahead of the consumer, yielding in input order."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    pending: deque[Future] = deque()
    todo = iter(tasks)
    try:
        for task in todo:
            pending.append(pool.submit(_prepare, task, preprocessor, keep_image))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batches(items: Iterator[Prepared], size: int) -> Iterator[list[Prepared]]:
    """Batches of `size` decoded images; failed ones ride along without taking a place."""
    batch: list[Prepared] = []
    good = 0
    for item in items:
        batch.append(item)
        good += not item.error
        if good == size:
            yield batch
            batch, good = [], 0
    if batch:
        yield batch


class _Writer:
    """Writes captions and records in a thread of its own, so the model never waits on the disk."""

    def __init__(
        self,
        outcome: Outcome,
        records: RecordWriter | None,
        model: str,
        on_result: Callable[[Extraction], None] | None,
        captions: CaptionWriter,
    ) -> None:
        self.outcome, self.records, self.model, self.on_result = outcome, records, model, on_result
        self.captions = captions
        self.crash: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=4)  # a slow disk holds the model back after 4 batches, not never
        self.thread = threading.Thread(target=self._work, name="caption-writer", daemon=True)
        self.thread.start()

    def put(self, batch: list[Prepared], results: list[Extraction]) -> None:
        self.queue.put((batch, results))

    def put_errors(self, batch: list[Prepared]) -> None:
        if self.records and any(item.task.record for item in batch):
            self.queue.put((batch, None))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.crash:
            raise self.crash

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.crash is None:  # after a crash: keep taking batches so the model never blocks on a full queue
                try:
                    self._write(*item)
                except BaseException as error:  # a bug, not a user's file: the caller re-raises it at close()
                    self.crash = error

    def _write(self, batch: list[Prepared], results: list[Extraction] | None) -> None:
        if results is None:
            self._write_records(
                batch, [error_record(absolute(p.task.path), p.error, self.model) for p in batch if p.task.record]
            )
            return
        self._write_records(
            batch,
            [record(result, absolute(item.task.path)) for item, result in zip(batch, results) if item.task.record],
        )
        for prepared, result in zip(batch, results):
            written = self._write_caption(prepared.task.path, result) if prepared.task.caption else "written"
            if written == "failed":
                continue
            (self.outcome.written if written == "written" else self.outcome.unchanged).append(prepared.task.path)
            if self.on_result:
                self.on_result(result)

    def _write_caption(self, image: Path, result: Extraction) -> str:
        """ "written", "unchanged" (a caption file that had every tag already), or "failed" (one line in outcome)."""
        try:
            return self.captions.write(image, result)
        except OSError as error:  # read-only folder, full disk, a folder in the caption's place, a FIFO, ...
            reason = f"cannot write the caption ({error.strerror or error})"
        except UnicodeDecodeError:  # append/prepend to a file that is no UTF-8 text: never rewritten
            reason = "not UTF-8 text, left as it is (save it as UTF-8 to add to it)"
        self.outcome.failed.append((image, f"{self.captions.path(image)}: {reason}"))
        return "failed"

    def _write_records(self, batch: list[Prepared], rows: list[dict]) -> None:
        if not rows or self.records is None:
            return
        try:
            self.records.write(rows)
            self.outcome.recorded += len(rows)
        except OSError as error:
            reason = f"{self.records.lines}: cannot write the record ({error.strerror or error})"
            self.outcome.failed.extend((item.task.path, reason) for item in batch if item.task.record)
