"""`easy-diffuser INPUTS... --engine ray --output DIR`: the captioning job as a Ray Data pipeline.

    paths (driver: folders listed, lists read) -> decode + preprocess (CPU tasks)
          -> Engine in an actor pool (one per GPU, num_gpus=1; CPU actors without GPUs), map_batches
          -> Parquet or JSON Lines shards in DIR (records.py's record), .txt captions beside local images if asked

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
import json
import posixpath
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import label_cache
from .batch import caption_owners
from .engine import Engine, ExtractOptions
from .files import write_atomically
from .images import IMAGE_SUFFIXES, ImageError
from .models import ModelError
from .pipeline import Preprocessor, caption_path
from .prompt_style import Style
from .records import absolute, arrow_schema, error_record, is_local, json_line, record

EXIT_IMAGE_FAILED, EXIT_SETUP_FAILED = 1, 2
LIST_SUFFIXES = (".txt", ".csv", ".parquet")


@dataclass
class JobSummary:
    images: int  # records written by this run
    errors: int  # of those, error records
    skipped: int  # images already in the output
    seconds: float

    def __str__(self) -> str:
        rate = f", {self.images / self.seconds:.1f} images/s" if self.images and self.seconds else ""
        return f"{self.images} images ({self.errors} errors), {self.skipped} already in the output{rate}"


def main(args: argparse.Namespace, options: ExtractOptions, style: Style) -> int:
    try:
        import ray
    except ImportError:
        print("error: --engine ray needs Ray: pip install 'easy-diffuser[ray]'", file=sys.stderr)
        return EXIT_SETUP_FAILED
    if args.output is None or style.caption:
        reason = (
            "needs --output DIR for its records"
            if args.output is None
            else "does not run a captioner (--caption, --prompt-style sentences) yet"
        )
        print(f"error: --engine ray {reason}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    try:
        paths = list_inputs(args.inputs, args.recursive)
        if not ray.is_initialized():
            ray.init(address=args.ray_address)
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
        )
    except (ModelError, ValueError, OSError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    print(f"{args.output}: {summary}", file=sys.stderr)
    return EXIT_IMAGE_FAILED if summary.errors else 0


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
) -> JobSummary:
    """Extract every path not yet in `output` on the running Ray cluster; `extractor` defaults to TagExtractor."""
    import ray

    started = time.perf_counter()
    if overwrite:
        _clear(output)
    done = done_paths(output)
    todo = [path for path in dict.fromkeys(paths) if path not in done]
    if not todo:  # nothing to do: no model, no actors
        return JobSummary(0, 0, len(paths) - len(todo), time.perf_counter() - started)
    engine = Engine(model, "cpu", cache_dir=cache_dir, vocabulary_dirs=vocabulary_dirs)  # builds the tag cache once
    cache = label_cache.cache_path(engine.cache_dir, engine.loaded.cache_key, engine.vocabulary)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actor_resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    actors = gpus or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)  # on CPUs, half decode, half extract
    owners = caption_owners([Path(path) for path in paths if is_local(path)]) if captions else {}
    items = [{"path": path, "caption_owner": str(owners.get(Path(path), path))} for path in todo]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(todo) // (4 * batch_size)))
    decoded = dataset.map_batches(
        decode_batch, fn_kwargs={"preprocessor": Preprocessor(engine.loaded)}, batch_size=batch_size
    )
    extracted = decoded.map_batches(
        extractor or TagExtractor,
        fn_constructor_kwargs={
            "model": model,
            "device": "cuda" if gpus else "cpu",
            "cache_dir": str(engine.cache_dir),
            "vocabulary_dirs": list(vocabulary_dirs),
            "cache_file": (str(cache), ray.put(cache.read_bytes() if cache.exists() else b"")),
            "options": options,
            "captions": captions,
        },
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        **actor_resources,
    )
    if output.rstrip("/").lower().endswith(".jsonl"):
        extracted.write_datasink(json_lines_shards(output))
    else:
        extracted.write_parquet(output)
    new = [item for item in _read_shards(output, ["path", "error"]) if item["path"] not in done]
    errors = sum(1 for item in new if item["error"])
    return JobSummary(len(new), errors, len(paths) - len(todo), time.perf_counter() - started)


def decode_batch(batch: dict[str, np.ndarray], preprocessor: Preprocessor) -> dict[str, np.ndarray]:
    """Paths -> the model's input tensors (zeros for a bad image) and an error message per image ("" when fine)."""
    pixels, errors = [], []
    for path in batch["path"]:
        try:
            pixels.append(preprocessor(_read(path), path).numpy())
            errors.append("")
        except ImageError as error:
            pixels.append(None)
            errors.append(str(error))
    blank = np.zeros((3, preprocessor.min_side, preprocessor.min_side), np.float32)
    shape = next((item.shape for item in pixels if item is not None), blank.shape)
    filled = [item if item is not None else np.zeros(shape, np.float32) for item in pixels]
    errors = np.array(errors, dtype=object)
    return {"path": batch["path"], "caption_owner": batch["caption_owner"], "pixels": np.stack(filled), "error": errors}


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
        captions: bool,
    ) -> None:
        import ray
        import torch

        torch.set_grad_enabled(False)
        _install_cache(cache_file[0], ray.get(cache_file[1]))  # an object reference: the file travels once per node
        self.engine = Engine(model, device, cache_dir=cache_dir, vocabulary_dirs=vocabulary_dirs)
        self.options, self.captions = options, captions

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa
        import torch

        paths, errors = list(batch["path"]), list(batch["error"])
        good = [index for index, error in enumerate(errors) if not error]
        rows: list[dict[str, Any]] = [
            error_record(path, error, self.engine.model_id) for path, error in zip(paths, errors)
        ]
        if good:
            embeddings = self.engine.encode_tensors(torch.from_numpy(batch["pixels"][good]))
            names = [paths[index] for index in good]
            for index, result in zip(good, self.engine.extract_embeddings(embeddings, self.options, names)):
                rows[index] = record(result, paths[index])
                if self.captions and is_local(paths[index]) and rows[index]["error"] is None:
                    rows[index]["error"] = _write_caption(paths[index], result.prompt, batch["caption_owner"][index])
        return pa.Table.from_pylist(rows, schema=arrow_schema())


def _write_caption(path: str, prompt: str, owner: str) -> str | None:
    """None, or why there is no caption: written for another image of the same stem (batch.py), or unwritable."""
    caption = caption_path(Path(path))
    if owner != path:
        return f"{path}: not captioned, {caption.name} is {Path(owner).name}'s caption; rename one of them"
    try:
        write_atomically(caption, lambda temp: temp.write_text(prompt + "\n", encoding="utf-8"))
    except OSError as error:
        return f"{caption}: cannot write the caption ({error.strerror or error})"
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
    import pyarrow.fs as pafs

    paths: list[str] = []
    for item in map(str, inputs):
        filesystem, inner = _filesystem(item)
        info = filesystem.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise ValueError(f"{item}: no such file or folder")
        if info.type == pafs.FileType.Directory:
            found = filesystem.get_file_info(pafs.FileSelector(inner, recursive=recursive))
            images = sorted(entry.path for entry in found if entry.is_file and _is_image(entry.path))
            paths += [_rejoin(item, path) for path in images]
        elif _is_image(inner):
            paths.append(absolute(item))
        elif posixpath.splitext(inner)[1].lower() in LIST_SUFFIXES:
            paths += _read_list(item, filesystem, inner)
        else:
            raise ValueError(f"{item}: not an image, a folder, or a .txt/.csv/.parquet list of paths")
    return paths


def _read_list(item: str, filesystem, inner: str) -> list[str]:
    """A list's paths; relative ones are relative to the list's folder."""
    suffix = posixpath.splitext(inner)[1].lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(inner, filesystem=filesystem)
        if "path" not in table.column_names:
            raise ValueError(f"{item}: a Parquet list needs a 'path' column")
        entries = [str(value) for value in table.column("path").to_pylist() if value]
    else:
        with filesystem.open_input_stream(inner) as stream:
            text = stream.read().decode("utf-8")
        if suffix == ".csv":
            rows = list(csv.reader(io.StringIO(text)))
            column = rows[0].index("path") if rows and "path" in rows[0] else 0
            entries = [row[column] for row in rows[1 if rows and "path" in rows[0] else 0 :] if row and row[column]]
        else:
            entries = [line.strip() for line in text.splitlines() if line.strip()]
    base = posixpath.dirname(item)
    return [
        entry if "://" in entry or posixpath.isabs(entry) else absolute(posixpath.join(base, entry))
        for entry in entries
    ]


def done_paths(output: str) -> set[str]:
    return {item["path"] for item in _read_shards(output, ["path"])}


def _read_shards(output: str, columns: list[str]) -> list[dict]:
    """The records (only `columns`) of every shard in `output`; a shard a killed job left unreadable is skipped."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    filesystem, inner = _filesystem(output)
    if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    rows: list[dict] = []
    for entry in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True)):
        if entry.path.endswith(".parquet"):
            try:
                rows += pq.read_table(entry.path, filesystem=filesystem, columns=columns).to_pylist()
            except (OSError, ValueError):  # ArrowInvalid (a ValueError): not one of our shards
                continue
        elif entry.path.endswith(".jsonl"):
            with filesystem.open_input_stream(entry.path) as stream:
                lines = stream.read().decode("utf-8", "surrogateescape").splitlines(keepends=True)
            rows += _records_in(lines, columns)
    return rows


def _records_in(lines: list[str], columns: list[str]) -> list[dict]:
    """The whole lines that are our records; anything else only means its image is done again."""
    rows = []
    for line in filter(lambda line: line.endswith("\n"), lines):
        try:
            record = json.loads(line)
            rows.append({key: record[key] for key in columns})
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return rows


def _clear(output: str) -> None:
    import pyarrow.fs as pafs

    filesystem, inner = _filesystem(output)
    if filesystem.get_file_info(inner).type == pafs.FileType.Directory:
        filesystem.delete_dir_contents(inner)


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
