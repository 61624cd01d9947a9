"""`easy-diffuser INPUTS... --engine ray --output DIR`: the captioning job as a Ray Data pipeline.

    paths (driver: folders listed, lists read) -> decode + preprocess (CPU tasks)
          -> Engine in an actor pool (one per GPU, num_gpus=1; CPU actors without GPUs), map_batches
          -> Parquet or JSON Lines shards in DIR (records.py's record), caption files beside local images if asked

Local paths and URIs (s3://, gs://, ...) are read through pyarrow's filesystems, so a cluster reads its
bucket where credentials exist. The driver builds the tag-embedding cache once and hands the file to
every actor, which loads model and cache once. A bad image becomes an error record, never a failed job.
A lost worker is Ray's business: Ray Data's defaults retry lost tasks (max_retries) and restart lost
actors and rerun their batch (max_restarts=-1, max_task_retries=-1; tests/test_ray.py kills one).
A rerun skips every image that has a record in DIR.

Imported only for --engine ray: the core install and the webui never import Ray.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import logging
import os
import posixpath
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .batch import caption_owners, find_images
from .caption_files import CaptionWriter
from .checkpoint_family import Detected
from .describe_server import ServerDescriber
from .engine import Engine, Extraction, ExtractOptions
from .errors import ModelError
from .exit_codes import EXIT_IMAGE_FAILED, EXIT_SETUP_FAILED
from .files import OutputLock, read_regular_file, write_atomically
from .images import IMAGE_SUFFIXES, ImageError, load_image
from .options import CaptionFileOptions
from .pipeline import Preprocessor
from .prompt_style import Style
from .records import (
    LEFT_AS_IT_IS,
    RecordsError,
    absolute,
    arrow_schema,
    error_record,
    is_local,
    json_line,
    record,
    recorded_path,
    records_in_lines,
    schema_difference,
)
from .scoring import NonFiniteScores

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".csv", ".parquet")
LARGEST_FILE = 2**30  # a list of paths or a shard read into memory: 1 GiB is millions of paths or records


@dataclass
class JobSummary:
    images: int  # records written by this run
    errors: int  # of those, error records
    skipped: int  # images already in the output
    seconds: float

    def __str__(self) -> str:
        rate = f", {self.images / self.seconds:.1f} images/s" if self.images and self.seconds else ""
        return f"{self.images} images ({self.errors} errors), {self.skipped} already in the output{rate}"


def main(
    args: argparse.Namespace,
    options: ExtractOptions,
    style: Style,
    target: Detected | None,
    describer: ServerDescriber | None = None,
    caption_files: CaptionFileOptions = CaptionFileOptions(),
) -> int:
    """The CLI's --engine ray; `target` is the --checkpoint the prompts are for (None: none named). A captioner
    runs only as a VLM server (`describer`), which every actor asks: nothing is loaded on them for it."""
    try:
        import ray
    except ImportError:
        print("error: --engine ray needs Ray: pip install 'easy-diffuser[ray]'", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if args.output is None or (style.caption and describer is None):
        reason = (
            "needs --output DIR for its records"
            if args.output is None
            else "runs a captioner (--caption, --prompt-style sentences) only as a VLM server (--caption-url)"
            + _why_a_captioner(style)
        )
        print(f"error: --engine ray {reason}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    try:
        paths = list_inputs(args.inputs, args.recursive)
        if not ray.is_initialized():
            ray.init(address=args.ray_address, runtime_env={"env_vars": {"PYTHONWARNINGS": _worker_warnings()}})
        summary = run_job(
            paths,
            str(args.output),
            args.model,
            options,
            args.cache_dir,
            args.vocabulary,
            captions=args.captions,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            target=target,
            describer=describer,
            caption_files=caption_files,
        )
    except (ModelError, ValueError, OSError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    print(f"{args.output}: {summary}", file=sys.stderr)
    return EXIT_IMAGE_FAILED if summary.errors else 0


def _why_a_captioner(style: Style) -> str:
    """Why the style runs one, where the user may not have asked (automatic follows the checkpoint)."""
    if style.sentences and style.reason != "chosen":
        return f"; prompt style {style.reason} (--prompt-style tags runs without one)"
    return ""


def _worker_warnings() -> str:
    """PYTHONWARNINGS for the workers: without timm's FutureWarning, which an actor would print when it unpickles
    open_clip's transforms (the driver imports open_clip through clip_loading.open_clip_module, which hides it)."""
    timm = "ignore:Importing from timm.models.layers is deprecated:FutureWarning"
    return ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), timm]))


def run_job(
    paths: Sequence[str],
    output: str,
    model: str,
    options: ExtractOptions = ExtractOptions(),
    cache_dir: str | None = None,
    vocabulary_dirs: Sequence[str] = (),
    captions: bool = False,
    overwrite: bool = False,
    batch_size: int = 64,
    extractor: type | None = None,
    target: Detected | None = None,
    describer: ServerDescriber | None = None,
    caption_files: CaptionFileOptions = CaptionFileOptions(),
) -> JobSummary:
    """Extract every path not yet in `output` on the running Ray cluster; `extractor` defaults to TagExtractor.
    `target` is the checkpoint the prompts are for, as Engine.target (its family's prompt style and preset).
    With `captions`, each local image gets its caption file as `caption_files` say (as batch.py writes them)."""
    started = time.perf_counter()
    lock = _lock(output)
    try:
        shards, done_rows = _read_output(output, ["path"])  # refuses a folder holding files that aren't ours
        if overwrite:
            _delete(output, shards)
        done = set() if overwrite else {item["path"] for item in done_rows}
        todo = [path for path in dict.fromkeys(paths) if recorded_path(path) not in done]
        if not todo:  # nothing to do: no model, no actors
            return JobSummary(0, 0, len(paths), time.perf_counter() - started)
        files = caption_files if captions else None
        _extract(
            todo,
            paths,
            output,
            model,
            options,
            target,
            cache_dir,
            vocabulary_dirs,
            files,
            batch_size,
            extractor,
            describer,
        )
        new = [item for item in _read_output(output, ["path", "error"])[1] if item["path"] not in done]
    finally:
        if lock:
            lock.release()
    errors = sum(1 for item in new if item["error"])
    return JobSummary(len(new), errors, len(paths) - len(todo), time.perf_counter() - started)


def _lock(output: str) -> OutputLock | None:
    """One job writes a local output folder at a time (a bucket can't be locked)."""
    if not is_local(output):
        return None
    folder = Path(absolute(output.removeprefix("file://")))
    folder.parent.mkdir(parents=True, exist_ok=True)
    return OutputLock(folder)


def _extract(
    todo: list[str],
    paths: Sequence[str],
    output: str,
    model: str,
    options: ExtractOptions,
    target: Detected | None,
    cache_dir: str | None,
    vocabulary_dirs: Sequence[str],
    caption_files: CaptionFileOptions | None,
    batch_size: int,
    extractor: type | None,
    describer: ServerDescriber | None = None,
) -> None:
    import ray

    # The driver's engine builds the tag cache once and gives the preprocessor; it extracts nothing (no target).
    engine = Engine(model, "cpu", cache_dir=cache_dir, vocabulary_dirs=vocabulary_dirs)
    cache = engine.scorer.cache_file  # CLIP's tag embeddings; a tagger needs none
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actor_resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    actors = gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)  # on CPUs, half decode, half extract
    extension = caption_files.caption_extension if caption_files else ".txt"
    owners = caption_owners([Path(path) for path in paths if is_local(path)], extension) if caption_files else {}
    items = [
        {
            "path": recorded_path(path),  # Arrow holds valid Unicode only; the file's own name travels as bytes
            "source": path.encode("utf-8", "surrogateescape"),
            "caption_owner": recorded_path(str(owners.get(Path(path), path))),
        }
        for path in todo
    ]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(todo) // (4 * batch_size)))
    decoded = dataset.map_batches(
        decode_batch, fn_kwargs={"preprocessor": Preprocessor(engine.loaded)}, batch_size=batch_size
    )
    _spend_rays_restart_warning()
    extracted = decoded.map_batches(
        extractor or TagExtractor,
        fn_constructor_kwargs={
            "model": model,
            "device": "cuda" if gpus else "cpu",
            "cache_dir": str(engine.cache_dir),
            "vocabulary_dirs": list(vocabulary_dirs),
            "cache_file": (str(cache or ""), ray.put(cache.read_bytes() if cache and cache.exists() else b"")),
            "options": options,
            "target": target,  # a frozen dataclass: pickled to every actor
            "caption_files": caption_files,  # None: no caption files
            "describer": describer,  # the server every actor asks (its repr leaves the key out)
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **actor_resources,
    )
    if output.rstrip("/").lower().endswith(".jsonl"):
        extracted.write_datasink(json_lines_shards(output))
    else:
        extracted.write_parquet(output)


def _spend_rays_restart_warning() -> None:
    """Ray Data hands every actor it starts object references of its own (the map function, the context) and
    restarts lost actors, so Ray's core logs an ERROR once per process that an actor with constructor arguments
    in the object store may not restart (ray-project/ray#53727). Ray Data holds those references for the whole
    job, so it does not apply here, yet it reads as a failure. It is logged once per process: spend it on a probe
    actor, with the process's stderr silenced for the one call that logs it."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class Probe:
        def __init__(self, argument: Any) -> None:
            pass

    sys.stderr.flush()
    saved, silent = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(silent, 2)
    try:
        probe = Probe.remote(ray.put(None))  # an argument in the object store: the warning's condition
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(silent)
    ray.kill(probe)


def decode_batch(batch: dict[str, np.ndarray], preprocessor: Preprocessor) -> dict[str, np.ndarray]:
    """Paths -> the model's input tensors (zeros for a bad image) and an error message per image ("" when fine)."""
    pixels, errors = [], []
    for source in batch["source"]:
        path = _source(source)
        try:
            pixels.append(preprocessor(_read(path), path).numpy())
            errors.append("")
        except ImageError as error:
            pixels.append(None)
            errors.append(recorded_path(str(error)))  # Arrow carries valid Unicode only
    blank = np.zeros((3, preprocessor.min_side, preprocessor.min_side), np.float32)
    shape = next((item.shape for item in pixels if item is not None), blank.shape)
    filled = [item if item is not None else np.zeros(shape, np.float32) for item in pixels]
    errors = np.array(errors, dtype=object)
    pixels = np.stack(filled)
    return {
        "path": batch["path"],
        "source": batch["source"],
        "caption_owner": batch["caption_owner"],
        "pixels": pixels,
        "error": errors,
    }


class TagExtractor:
    """One per actor: loads the model and the driver's tag-embedding cache once, then extracts batch after batch."""

    def __init__(
        self,
        model: str,
        device: str,
        cache_dir: str,
        vocabulary_dirs: list[str],
        cache_file: tuple,
        options: ExtractOptions,
        target: Detected | None,
        caption_files: CaptionFileOptions | None,
        describer: ServerDescriber | None = None,
    ) -> None:
        import ray
        import torch

        torch.set_grad_enabled(False)
        _install_cache(cache_file[0], ray.get(cache_file[1]))  # an object reference: the file travels once per node
        self.engine = Engine(model, device, cache_dir=cache_dir, vocabulary_dirs=vocabulary_dirs)
        self.engine.target = target  # the --checkpoint the prompts are for, as the CLI's own engine has it
        self.engine.describer = describer
        self.options = options
        tagger = self.engine.kind.writes == "booru"  # its tags are booru tags, written with spaces
        self.captions = CaptionWriter.of(caption_files, options, tagger) if caption_files else None

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa
        import torch

        paths, errors = list(batch["path"]), list(batch["error"])
        good = [index for index, error in enumerate(errors) if not error]
        rows: list[dict[str, Any]] = [
            error_record(path, error, self.engine.model_id) for path, error in zip(paths, errors)
        ]
        if good:
            try:
                embeddings = self.engine.encode_tensors(torch.from_numpy(batch["pixels"][good]))
            except NonFiniteScores as error:  # those images fail, the rest of the batch goes on
                for index, finite in zip(good, error.finite.tolist()):
                    if not finite:
                        rows[index] = error_record(paths[index], f"{paths[index]}: {error}", self.engine.model_id)
                embeddings, good = error.features[error.finite], list(itertools.compress(good, error.finite.tolist()))
            captions: list[str] = []
            if self.engine.style(self.options).caption:  # a server's (main refuses any other captioner)
                good, embeddings, captions = self._describe(batch, good, embeddings, rows)
            names = [paths[index] for index in good]
            results = self.engine.extract_embeddings(embeddings, self.options, names, captions) if good else []
            for index, result in zip(good, results):
                rows[index] = record(result, paths[index])
                if self.captions and is_local(paths[index]) and rows[index]["error"] is None:
                    owner, source = batch["caption_owner"][index], _source(batch["source"][index])
                    rows[index]["error"] = _write_caption(paths[index], source, result, owner, self.captions)
        return pa.Table.from_pylist(rows, schema=arrow_schema())

    def _describe(self, batch: dict[str, np.ndarray], good: list[int], embeddings: Any, rows: list[dict]) -> tuple:
        """(images described, their embeddings, their descriptions): each image read again for the server, the
        batch's descriptions asked at once; an image the server fails gets its error record."""
        engine, caption = self.engine, self.engine.style(self.options).caption
        assert engine.describer is not None and caption is not None
        paths = [batch["path"][index] for index in good]
        images = [load_image(_read(_source(batch["source"][index])), path) for index, path in zip(good, paths)]
        described = engine.describer.caption_each(images, caption, engine.grounding(embeddings, self.options))
        kept = []
        for position, (index, path, text) in enumerate(zip(good, paths, described)):
            if isinstance(text, str):
                kept.append(position)
            else:
                rows[index] = error_record(path, recorded_path(f"{path}: {text}"), engine.model_id)
        return [good[i] for i in kept], embeddings[kept], [described[i] for i in kept]


def _source(source: bytes) -> str:
    """An image's own path or URI (a local name that isn't UTF-8 kept as os.fsdecode gives it)."""
    return source.decode("utf-8", "surrogateescape")


def _write_caption(path: str, source: str, result: Extraction, owner: str, captions: CaptionWriter) -> str | None:
    """None, or why there is no caption file: it is another image's of the same stem (batch.py), or it can't be
    written (or read, to append to it)."""
    if owner != path:
        name = captions.path(Path(path)).name
        return f"{path}: not captioned, {name} is {Path(owner).name}'s caption; rename one of them"
    try:
        captions.write(Path(source), result)
    except OSError as error:
        return recorded_path(f"{captions.path(Path(source))}: cannot write the caption ({error.strerror or error})")
    except UnicodeDecodeError:
        return recorded_path(f"{captions.path(Path(source))}: not UTF-8 text, left as it is (save it as UTF-8)")
    return None


def _install_cache(path: str, data: bytes) -> None:
    """Put the driver's tag-embedding cache where this node's Engine looks, unless it is already there."""
    if data and not Path(path).exists():
        write_atomically(Path(path), lambda temp: temp.write_bytes(data))


def _read(path: str):
    """A local path as is (load_image names what is wrong with it), a URI's bytes through pyarrow."""
    if is_local(path):
        return path.removeprefix("file://")
    filesystem, inner = _filesystem(path)
    try:
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error})") from None


def json_lines_shards(path: str):
    """A Ray datasink of JSON Lines shards written as records.py writes them (Ray's own JSON writer rounds floats)."""
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonLinesShards(BlockBasedFileDatasink):
        def write_block_to_file(self, block, file) -> None:
            file.write("".join(json_line(row) for row in block.to_arrow().to_pylist()).encode("utf-8"))

    return JsonLinesShards(path, file_format="jsonl")


# -- reading inputs and outputs through pyarrow's filesystems (local, s3://, gs://, ...) ---------


def list_inputs(inputs: Iterable[str], recursive: bool = False) -> list[str]:
    """Image paths/URIs from images, folders, and .txt/.csv/.parquet lists of paths; ValueError names a bad input."""
    paths: list[str] = []
    for item in map(str, inputs):
        kind, size = _kind(item)
        if kind == "missing":
            raise ValueError(f"{item}: no such file or folder")
        if kind == "folder":
            paths += _list_folder(item, recursive)
        elif _is_image(item):
            paths.append(absolute(item))
        elif posixpath.splitext(item)[1].lower() in LIST_SUFFIXES:
            if kind != "file":
                raise ValueError(f"{item}: not a regular file (a FIFO, device or socket); give a list of paths")
            paths += _read_list(item, _read_capped(item, size, "list of paths"))
        else:
            raise ValueError(f"{item}: not an image, a folder, or a .txt/.csv/.parquet list of paths")
    return paths


def _kind(item: str) -> tuple[str, int | None]:
    """("folder" | "file" | "other" | "missing", size): what a path or URI names, links followed."""
    import pyarrow.fs as pafs

    if is_local(item):
        try:
            info = os.stat(item.removeprefix("file://"))
        except FileNotFoundError:
            return "missing", None
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
        return kind, info.st_size
    filesystem, inner = _filesystem(item)
    info = filesystem.get_file_info(inner)
    kinds = {pafs.FileType.NotFound: "missing", pafs.FileType.Directory: "folder", pafs.FileType.File: "file"}
    return kinds.get(info.type, "other"), info.size


def _list_folder(item: str, recursive: bool) -> list[str]:
    """The images in a folder; a local one is listed by the OS (pyarrow can't list a name that isn't UTF-8)."""
    import pyarrow.fs as pafs

    if is_local(item):
        return [absolute(path) for path in find_images(Path(item.removeprefix("file://")), recursive)]
    filesystem, inner = _filesystem(item)
    found = filesystem.get_file_info(pafs.FileSelector(inner, recursive=recursive))
    return [
        _rejoin(item, entry.path)
        for entry in sorted(found, key=lambda e: e.path)
        if entry.is_file and _is_image(entry.path)
    ]


def _read_capped(item: str, size: int | None, what: str) -> bytes:
    """A regular file's bytes (never a FIFO's or a device's, which would hang or never end), at most LARGEST_FILE."""
    if size is None or size > LARGEST_FILE:
        raise ValueError(f"{item}: larger than {LARGEST_FILE // 2**20} MiB, too large for a {what}; split it")
    if is_local(item):
        data = read_regular_file(item.removeprefix("file://"))
    else:
        filesystem, inner = _filesystem(item)
        with filesystem.open_input_stream(inner) as stream:
            data = stream.read(LARGEST_FILE + 1)
    if len(data) > LARGEST_FILE:
        raise ValueError(f"{item}: larger than {LARGEST_FILE // 2**20} MiB, too large for a {what}; split it")
    return data


def _read_list(item: str, data: bytes) -> list[str]:
    """A list's paths; relative ones are relative to the list's folder. Names that aren't UTF-8 are kept as the
    file system's bytes (as os.fsdecode gives them); a list that isn't text, or a row without a path, is refused."""
    suffix = posixpath.splitext(item)[1].lower()
    if suffix == ".parquet":
        entries = _parquet_list(item, data)
    elif b"\0" in data:
        raise ValueError(f"{item}: not a text list of paths (it holds NUL bytes: UTF-16? save it as UTF-8)")
    elif suffix == ".csv":
        entries = _csv_list(item, data.decode("utf-8", "surrogateescape"))
    else:
        entries = [line.strip() for line in data.decode("utf-8", "surrogateescape").splitlines() if line.strip()]
    base = posixpath.dirname(item)
    return [
        entry if "://" in entry or posixpath.isabs(entry) else absolute(posixpath.join(base, entry))
        for entry in entries
    ]


def _parquet_list(item: str, data: bytes) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, ValueError) as error:  # ArrowInvalid is a ValueError
        raise ValueError(f"{item}: not a Parquet file ({str(error).splitlines()[0]})") from None
    if "path" not in table.column_names:
        raise ValueError(f"{item}: a Parquet list needs a 'path' column")
    return [str(value) for value in table.column("path").to_pylist() if value]


def _csv_list(item: str, text: str) -> list[str]:
    """The `path` column (else the first) of a CSV; a row too short to have it is refused, naming the row."""
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise ValueError(f"{item}: not a CSV list of paths ({error})") from None
    header = rows[0] if rows and "path" in rows[0] else None
    column = header.index("path") if header else 0
    entries = []
    for number, row in enumerate(rows[1:] if header else rows, 2 if header else 1):
        if not row:
            continue
        if len(row) <= column:
            raise ValueError(
                f"{item}: row {number} has {len(row)} field(s), no {'path' if header else 'path in the first'} column"
            )
        if row[column]:
            entries.append(row[column])
    return entries


def _read_output(output: str, columns: list[str]) -> tuple[list[str], list[dict]]:
    """Our shards in `output` and their records (only `columns`). A file there that is not a records shard is a
    RecordsError naming it: it would count its images as done, and --overwrite would delete it. A Parquet file
    that can't be read (a shard a killed job left unfinished, or anyone's damaged file) is skipped with a
    warning: its images are done again, and it is never deleted."""
    import pyarrow.fs as pafs

    filesystem, inner = _filesystem(output)
    info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return [], []
    if info.type != pafs.FileType.Directory:
        raise RecordsError(f"{output}: is a file; with --engine ray, --output is a folder of shards")
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))
    except UnicodeDecodeError:
        raise RecordsError(
            f"{_undecodable_name(inner)}: a name that isn't UTF-8 in the output folder; {LEFT_AS_IT_IS}"
        ) from None
    shards, rows = [], []
    for entry in sorted(entries, key=lambda entry: entry.path):
        suffix = posixpath.splitext(entry.path)[1].lower()
        if suffix not in (".parquet", ".jsonl") or entry.type == pafs.FileType.Directory:
            continue  # a file of another kind: not ours to read or delete
        if entry.type != pafs.FileType.File:
            raise RecordsError(f"{entry.path}: not a regular file (a FIFO, device or socket); {LEFT_AS_IT_IS}")
        found = (
            _parquet_shard(filesystem, entry.path, columns)
            if suffix == ".parquet"
            else _jsonl_shard(filesystem, entry, columns)
        )
        if found is not None:
            shards.append(entry.path)
            rows += found
    return shards, rows


def _parquet_shard(filesystem, path: str, columns: list[str]) -> list[dict] | None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path, filesystem=filesystem)
    except (OSError, ValueError) as error:  # ArrowInvalid is a ValueError
        log.warning("%s: skipped, not a readable Parquet file (%s); its images, if any, are done again", path, error)
        return None
    difference = schema_difference(schema)
    if difference:
        raise RecordsError(f"{path}: not a shard of easy-diffuser records ({difference}); {LEFT_AS_IT_IS}")
    return pq.read_table(path, filesystem=filesystem, columns=columns).to_pylist()


def _jsonl_shard(filesystem, entry, columns: list[str]) -> list[dict]:
    if entry.size is None or entry.size > LARGEST_FILE:
        raise RecordsError(f"{entry.path}: larger than any shard this job writes; {LEFT_AS_IT_IS}")
    with filesystem.open_input_stream(entry.path) as stream:
        data = stream.read()
    lines = data.decode("utf-8", "surrogateescape").splitlines(keepends=True)
    return [{key: item[key] for key in columns} for item in records_in_lines(lines, entry.path)]


def _undecodable_name(folder: str) -> str:
    """The first name under `folder` that isn't valid UTF-8 (for a message that names it)."""
    for parent, folders, names in os.walk(folder):
        for name in folders + names:
            if recorded_path(name) != name:
                return os.path.join(parent, recorded_path(name))
    return folder


def _delete(output: str, shards: list[str]) -> None:
    """--overwrite: only our shards go; anything else in the folder stays."""
    filesystem, _ = _filesystem(output)
    for shard in shards:
        filesystem.delete_file(shard)


def _filesystem(path: str):
    import pyarrow.fs as pafs

    if is_local(path):
        return pafs.LocalFileSystem(), absolute(path.removeprefix("file://"))
    return pafs.FileSystem.from_uri(path)


def _rejoin(item: str, inner: str) -> str:
    """A path pyarrow listed, as the URI the user's input was (s3://bucket/x, not bucket/x)."""
    return inner if is_local(item) else f"{item.split('://', 1)[0]}://{inner}"


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES
