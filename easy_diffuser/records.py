"""One record per image, written as JSON Lines or Parquet, and read back to resume.

A record: {"path", "prompt", "negative_prompt", "tags": [{"tag", "score", "relevance", "category", "role"}],
"model", "tau", "error"}. `error` is None for a captioned image; for an image that could not be used it
names the cause and the prompts are None. Any record means "done": a rerun skips its image. Every text in a
record is valid Unicode (Parquet holds nothing else): a byte of a file name that isn't UTF-8 is written `\\xNN`.

A records file identifies itself by what it holds: a Parquet file by its schema (exactly the record's columns
and types), a JSON Lines file by its lines (each exactly a record: these keys, these types). Anything else given
as the output is refused in one line and left byte for byte as it was, --overwrite or not: resuming would count
its images as done, and rewriting a Parquet file would drop its other columns. One run writes an output at a
time (files.OutputLock).

JSON Lines files are appended to as the work goes; a kill can only cut the last line short. That line is set
aside (FILE.cut, with a warning) before appending, and its image is done again. A Parquet file cannot be
appended to, so records go to a JSON Lines journal beside it (`FILE.parquet.partial.jsonl`) and are merged into
the Parquet file, atomically, when the run ends; a killed or failed merge keeps the journal, and the next run
merges it. pyarrow is imported only for Parquet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Iterator

from .engine import Extraction
from .files import OutputLock, write_atomically
from .scoring import NON_FINITE

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".parquet")
JOURNAL_SUFFIX = ".partial.jsonl"
CUT_SUFFIX = ".cut"
RECORD_KEYS = ("path", "prompt", "negative_prompt", "tags", "model", "tau", "error")
TAG_KEYS = ("tag", "score", "relevance", "category", "role")
LONGEST_LINE = 4 * 2**20  # a record with hundreds of tags is tens of KB; a longer line is no record
PARQUET_EXTRA = "pip install 'easy-diffuser[parquet]' (in a webui's venv: pip install pyarrow)"


class RecordsError(ValueError):
    """An output that isn't a records file, or that can't be written; the message names it."""


def record(result: Extraction, path: str) -> dict[str, Any]:
    """The record of an extraction (an error record if its numbers are not finite: they are never written)."""
    tags = [tag.to_dict() for tag in result.tags]
    numbers = [result.tau] + [tag[key] for tag in tags for key in ("score", "relevance")]
    if not all(math.isfinite(number) for number in numbers):
        return error_record(path, f"{path}: the model {result.model} {NON_FINITE}", result.model)
    return valid_text(
        {
            "path": path,
            "prompt": result.prompt,
            "negative_prompt": result.negative_prompt,
            "tags": tags,
            "model": result.model,
            "tau": result.tau,
            "error": None,
        }
    )


def error_record(path: str, message: str, model: str = "") -> dict[str, Any]:
    return valid_text(
        {
            "path": path,
            "prompt": None,
            "negative_prompt": None,
            "tags": [],
            "model": model,
            "tau": None,
            "error": message,
        }
    )


def recorded_path(path: str) -> str:
    """A path as records hold it: valid Unicode, a byte of a name that isn't UTF-8 as `\\xNN`."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        try:
            return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
            return path.encode("utf-8", "backslashreplace").decode("utf-8")


def valid_text(item: dict[str, Any]) -> dict[str, Any]:
    """The record with every text valid Unicode (names in paths and error messages may not be)."""
    clean = {key: recorded_path(value) if isinstance(value, str) else value for key, value in item.items()}
    if isinstance(clean.get("tags"), list):
        clean["tags"] = [valid_text(tag) if isinstance(tag, dict) else tag for tag in clean["tags"]]
    return clean


def json_line(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n"


def check_output_path(path: Path) -> None:
    """A name for records: .jsonl or .parquet, not a folder, a link (a dangling one would create its target) or
    a FIFO or device (reading one would hang or never end)."""
    if path.suffix.lower() not in FORMATS:
        raise RecordsError(f"{path}: the output must end in .jsonl or .parquet")
    for name in (path, journal_path(path)) if path.suffix.lower() == ".parquet" else (path,):
        try:
            mode = os.lstat(name).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            raise RecordsError(f"{name}: is a folder; give a file name ending in .jsonl or .parquet")
        if stat.S_ISLNK(mode):
            raise RecordsError(f"{name}: is a symbolic link; give the file itself as --output")
        if not stat.S_ISREG(mode):
            raise RecordsError(f"{name}: not a regular file (a FIFO, device or socket); give another --output")


class RecordWriter:
    """Appends records to a .jsonl file, or to a .parquet file through its journal (see the module docstring).
    Holds the output's lock until close()."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        if self.parquet:
            _arrow()  # no pyarrow: fail now, not after the first batch
        self.lines = journal_path(self.path) if self.parquet else self.path
        self.lines.parent.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(self.path)
        try:
            self._file = self._open(overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, overwrite: bool):
        # Whatever is there must be records (or it is refused now, in one line, before anything is appended
        # to it, merged over it or deleted): reading them all checks it.
        for _ in read_records(self.path, strict=True):
            pass
        if overwrite:
            self.lines.unlink(missing_ok=True)
            if self.parquet:
                self.path.unlink(missing_ok=True)
        _set_aside_cut_last_line(self.lines)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        return open(os.open(self.lines, flags, 0o666), "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        self._file.write("".join(json_line(item) for item in records))
        self._file.flush()

    def close(self) -> None:
        """Close; a Parquet output gets its journal merged (RecordsError, the journal kept, if that fails)."""
        try:
            self._file.close()
            if self.parquet:
                merge_journal(self.path)
        finally:
            self.lock.release()


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + JOURNAL_SUFFIX)


def merge_journal(path: Path) -> None:
    """Fold the journal's records into the Parquet file (atomically), then drop the journal. When that fails
    (a read-only folder, a full disk) the journal is kept for the next run and RecordsError says why."""
    journal = journal_path(path)
    if not journal.exists():
        return
    new = [valid_text(item) for item in _read_lines(journal)]  # a journal of an older version may hold raw names
    if new:
        rows = (list(read_parquet(path)) if path.exists() else []) + new
        pa, pq = _arrow()
        try:
            table = pa.Table.from_pylist(rows, schema=arrow_schema())
            write_atomically(path, lambda temp: pq.write_table(table, temp))
        except (OSError, ValueError, TypeError, pa.ArrowException) as error:
            cause = getattr(error, "strerror", None) or str(error).splitlines()[0] or type(error).__name__
            raise RecordsError(
                f"{path}: cannot write it ({cause}); its {len(new)} new records are kept in {journal.name}, "
                "and the next run merges them"
            ) from None
    journal.unlink()


def read_records(path: Path, strict: bool = False) -> Iterator[dict]:
    """Every record in a .jsonl or .parquet file (with a killed run's journal), or in a folder of shards of either.

    A line or file that is not a record is a RecordsError naming it; `strict` also refuses a .parquet file that
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
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        if strict:
            reason = f"not a Parquet file of records ({_first_line(error)})"
            raise RecordsError(f"{path}: {reason}; {LEFT_AS_IT_IS}") from None
        return  # a shard a killed writer left unfinished (no footer): its images are done again
    difference = schema_difference(parquet.schema_arrow)
    if difference:
        raise RecordsError(f"{path}: not a Parquet file of easy-diffuser records ({difference}); {LEFT_AS_IT_IS}")
    for number, item in enumerate(parquet.read().to_pylist(), 1):
        if not isinstance(item["path"], str):
            raise RecordsError(f"{path}: row {number} has no path; {LEFT_AS_IT_IS}")
        yield item


def schema_difference(schema) -> str:
    """How a Parquet schema differs from the records' ("" for none): the first column that is not ours."""
    ours = arrow_schema()
    for field in schema:
        if field.name not in ours.names:
            return f"column {field.name!r} is not a record's"
        if not field.type.equals(ours.field(field.name).type):
            return f"column {field.name!r} is {field.type}, not {ours.field(field.name).type}"
    missing = [name for name in ours.names if name not in schema.names]
    return f"no column {missing[0]!r}" if missing else ""


# Said of a file that isn't a records file: we can't tell a foreign file from a damaged one, so we never delete it.
LEFT_AS_IT_IS = "it was left as it is: give another --output, or move it away"
# How every line json_line writes begins: a last line that begins so but is cut short is a killed run's.
_RECORD_START = '{"path": '


def _read_lines(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        yield from records_in_lines(iter(lambda: handle.readline(LONGEST_LINE + 1), ""), path)


def records_in_lines(lines: Iterable[str], name: str | os.PathLike) -> Iterator[dict]:
    """The records of JSON Lines (`name` is the file, for messages); RecordsError at the first line that is not
    exactly a record. A last line a kill cut short (no newline) ends them."""
    for number, line in enumerate(lines, 1):
        if len(line) > LONGEST_LINE:
            raise RecordsError(f"{name}: line {number} is longer than any record; {LEFT_AS_IT_IS}")
        if not line.strip():
            continue
        if not line.endswith("\n") and _is_cut_record(line):  # a killed run's last line: never trusted
            return
        item = _parse(line, name, number)
        problem = record_problem(item)
        if problem:
            raise RecordsError(f"{name}: line {number} is not a record of easy-diffuser ({problem}); {LEFT_AS_IT_IS}")
        yield item


def _parse(line: str, path: str | os.PathLike, number: int) -> Any:
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except RecursionError:
        raise RecordsError(f"{path}: line {number} is nested too deeply to be a record; {LEFT_AS_IT_IS}") from None
    except ValueError as error:
        raise RecordsError(f"{path}: line {number} is not a JSON record ({error}); {LEFT_AS_IT_IS}") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def record_problem(item: Any) -> str:
    """Why `item` (a parsed JSON line) is not exactly a record ("" when it is)."""
    if not isinstance(item, dict):
        return f"a JSON {type(item).__name__}, not an object"
    if tuple(sorted(item)) != tuple(sorted(RECORD_KEYS)):
        return f"its keys are not {', '.join(RECORD_KEYS)}"
    kinds = {"path": (str,), "prompt": (str, type(None)), "negative_prompt": (str, type(None))}
    kinds |= {"model": (str,), "error": (str, type(None))}
    for key, allowed in kinds.items():
        if not isinstance(item[key], allowed):
            return f"{key!r} is a {type(item[key]).__name__}"
    if item["tau"] is not None and not _is_number(item["tau"]):
        return "'tau' is not a number"
    if not isinstance(item["tags"], list):
        return "'tags' is not a list"
    for tag in item["tags"]:
        if not isinstance(tag, dict) or tuple(sorted(tag)) != tuple(sorted(TAG_KEYS)):
            return f"a tag is not {{{', '.join(TAG_KEYS)}}}"
        if not all(isinstance(tag[key], str) for key in ("tag", "category", "role")):
            return "a tag's text is not text"
        if not (_is_number(tag["score"]) and _is_number(tag["relevance"])):
            return "a tag's score is not a number"
    return ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_cut_record(line: str) -> bool:
    """A last line without its newline that a kill cut short; a whole record merely missing it is kept."""
    if not line.startswith(_RECORD_START):
        return False
    try:
        json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return True
    return False


def _set_aside_cut_last_line(path: Path) -> None:
    """Move a last line a kill cut short to FILE.cut (with a warning), or end a whole last record missing its
    newline, so that appended records start on a line of their own. Called after the file was read without
    error, so its lines are at most LONGEST_LINE long: reading the file's tail is enough."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(max(0, handle.seek(0, os.SEEK_END) - LONGEST_LINE - 1))
        tail = handle.read()
        if tail.endswith(b"\n"):
            return
        cut = tail[tail.rfind(b"\n") + 1 :]
        if not _is_cut_record(cut.decode("utf-8", "surrogateescape")):
            handle.write(b"\n")
            return
        aside = path.with_name(path.name + CUT_SUFFIX)
        with open(aside, "ab") as kept:
            kept.write(cut + b"\n")
        handle.truncate(handle.tell() - len(cut))
    log.warning(
        "%s: its last line was cut short (a run stopped while writing it); moved to %s, and that image is done again",
        path,
        aside.name,
    )


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
        ]
    )


def _arrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtra(f"Parquet output needs pyarrow: {PARQUET_EXTRA}; or write .jsonl") from None
    return pa, pq


class MissingExtra(RecordsError):
    """An optional package the output needs is not installed."""


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def absolute(path: str | os.PathLike) -> str:
    """An image's path as recorded: absolute for local files (a rerun from elsewhere still matches), URIs as given."""
    text = os.fspath(path)
    return os.path.abspath(text) if is_local(text) and not text.startswith("file://") else text
