"""One record per image, written as JSON Lines or Parquet, and read back to resume.

A record: {"path", "prompt", "negative_prompt", "tags": [{"tag", "score", "relevance", "category", "role"}],
"model", "tau", "error", "prompt_style", "caption"}. `error` is None for a captioned image; for an image
that could not be used it names the cause and the prompts are None. Any record means "done": a rerun skips its image.

JSON Lines files are appended to as the work goes; a kill can only cut the last line short, and that
line is dropped on reading and repaired before appending. A Parquet file cannot be appended to, so
records go to a JSON Lines journal beside it (`FILE.parquet.partial.jsonl`) and are merged into the
Parquet file, atomically, when the run ends; a killed run's journal is read on resume and merged then.
pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from .engine import Extraction
from .files import write_atomically

FORMATS = (".jsonl", ".parquet")
JOURNAL_SUFFIX = ".partial.jsonl"


def record(result: Extraction, path: str) -> dict[str, Any]:
    """The record of an extraction (an error record if its numbers are not finite: they are never written)."""
    tags = [tag.to_dict() for tag in result.tags]
    numbers = [result.tau] + [tag[key] for tag in tags for key in ("score", "relevance")]
    if not all(math.isfinite(number) for number in numbers):
        return error_record(path, "the model gave non-finite scores (fp16 overflow? try --device cpu)", result.model)
    return {
        "path": path,
        "prompt": result.prompt,
        "negative_prompt": result.negative_prompt,
        "tags": tags,
        "model": result.model,
        "tau": result.tau,
        "error": None,
        "prompt_style": result.prompt_style,
        "caption": result.caption,
    }


def error_record(path: str, message: str, model: str = "") -> dict[str, Any]:
    return {
        "path": path,
        "prompt": None,
        "negative_prompt": None,
        "tags": [],
        "model": model,
        "tau": None,
        "error": message,
        "prompt_style": None,
        "caption": None,
    }


def json_line(data: dict) -> str:
    """One JSON line; a name that is not valid Unicode (undecodable bytes) is written as \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text + "\n"


def check_output_path(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: the output must end in .jsonl or .parquet")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file name ending in .jsonl or .parquet")


class RecordWriter:
    """Appends records to a .jsonl file, or to a .parquet file through its journal (see the module docstring)."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        check_output_path(path)
        self.path = Path(path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        if self.parquet:
            _arrow()  # no pyarrow: fail now, not after the first batch
        self.lines = journal_path(self.path) if self.parquet else self.path
        self.lines.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.lines.unlink(missing_ok=True)
            if self.parquet:
                self.path.unlink(missing_ok=True)
        # Resuming reads the records there: a file that isn't ours (or is damaged) is refused now, in one line,
        # before anything is appended to it or merged over it.
        for _ in read_records(self.path, strict=True):
            pass
        _drop_cut_last_line(self.lines)
        self._file = open(self.lines, "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        self._file.write("".join(json_line(item) for item in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self.parquet:
            merge_journal(self.path)


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + JOURNAL_SUFFIX)


def merge_journal(path: Path) -> None:
    """Fold the journal's records into the Parquet file (atomically), then drop the journal."""
    journal = journal_path(path)
    if not journal.exists():
        return
    new = list(_read_lines(journal))
    if new:
        rows = (list(read_parquet(path)) if path.exists() else []) + new
        pa, pq = _arrow()
        write_atomically(path, lambda temp: pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), temp))
    journal.unlink()


def read_records(path: Path, strict: bool = False) -> Iterator[dict]:
    """Every record in a .jsonl or .parquet file (with a killed run's journal), or in a folder of shards of either.

    A line or file that is not a record is a ValueError naming it; `strict` also refuses a .parquet file that
    can't be read (in a folder of shards, one a killed job left unfinished is skipped)."""
    path = Path(path)
    if path.is_dir():
        for shard in sorted(path.rglob("*")):
            if shard.is_file() and shard.suffix.lower() in (".parquet", ".jsonl", ".json"):
                yield from read_records(shard)
        return
    if path.suffix.lower() == ".parquet":
        if path.exists():
            yield from read_parquet(path, strict)
        yield from _read_lines(journal_path(path))
    else:
        yield from _read_lines(path)


def done_paths(path: Path) -> set[str]:
    return {item["path"] for item in read_records(path)}


def read_parquet(path: Path, strict: bool = False) -> Iterator[dict]:
    _, pq = _arrow()
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        if strict:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{path}: not a Parquet file of records ({first}); {_WAY_OUT}") from None
        return  # a shard a killed writer left unfinished (no footer): its images are done again
    for number, item in enumerate(table.to_pylist(), 1):
        yield _checked(item, path, f"row {number}")


_WAY_OUT = "give another --output, or --overwrite to start it again"
# How every line json_line writes begins: a last line that begins so but is cut short is a killed run's.
_RECORD_START = '{"path": '


def _read_lines(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not line.endswith("\n") and _is_cut_record(line):  # a killed run's last line: never trusted
                return
            yield _checked(_parse(line, path, number), path, f"line {number}")


def _parse(line: str, path: Path, number: int) -> Any:
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"{path}: line {number} is nested too deeply to be a record; {_WAY_OUT}") from None
    except ValueError as error:
        raise ValueError(f"{path}: line {number} is not a JSON record ({error}); {_WAY_OUT}") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _checked(item: Any, path: Path, where: str) -> dict:
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise ValueError(f'{path}: {where} is not a record of easy-diffuser (no "path"); {_WAY_OUT}')
    return item


def _is_cut_record(line: str) -> bool:
    """A last line without its newline that a kill cut short; a whole record merely missing it is kept."""
    if not line.startswith(_RECORD_START):
        return False
    try:
        json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return True
    return False


def _drop_cut_last_line(path: Path) -> None:
    """Truncate a line a kill cut short (or end a whole last record missing its newline), so that appended
    records start on a line of their own. Called after the file was read without error."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        if _is_cut_record(data[start:].decode("utf-8", "surrogateescape")):
            handle.truncate(start)
        else:
            handle.write(b"\n")


def arrow_schema():
    pa, _ = _arrow()
    tag = pa.struct(
        [
            ("tag", pa.string()),
            ("score", pa.float64()),
            ("relevance", pa.float64()),
            ("category", pa.string()),
            ("role", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("path", pa.string()),
            ("prompt", pa.string()),
            ("negative_prompt", pa.string()),
            ("tags", pa.list_(tag)),
            ("model", pa.string()),
            ("tau", pa.float64()),
            ("error", pa.string()),
            ("prompt_style", pa.string()),
            ("caption", pa.string()),
        ]
    )


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("Parquet output needs pyarrow: pip install pyarrow (or write .jsonl)") from None
    return pa, pq


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def absolute(path: str | os.PathLike) -> str:
    """An image's path as recorded: absolute for local files (a rerun from elsewhere still matches), URIs as given."""
    text = os.fspath(path)
    return os.path.abspath(text) if is_local(text) and not text.startswith("file://") else text
