"""Where calibration results live, and how one is put in force and taken back.

Beside the calibration file the engine reads, `{model}.json`:

    {model}.candidate.json   a finished calibration, not in force until applied
    {model}.previous.json    what was in force before the last apply (`{}`: nothing was)
    {model}.partial.json     the generations of an unfinished run (removed once it finishes)

apply: the file in force is kept as `.previous.json`, then the candidate replaces it (a rename).
undo: the file in force becomes the candidate again and `.previous.json` takes its place. Every
step is a whole-file write or rename, so a crash between two leaves files that a rerun completes.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import Engine, ExtractOptions, calibration_path
from ..files import locked, read_regular_file, write_text_atomically
from ..settings_files import SETTINGS_FILE_LIMIT, SettingsFileError, check_calibration, read_json_object

NOTHING = "{}\n"  # a previous calibration that was none: undo then leaves the model's defaults in force


class CalibrationFileError(ValueError):
    """A calibration file that is missing or can't be used; the message names it and the fix."""


def target_path(engine: Engine, out_dir: Path | None = None) -> Path:
    """The calibration file in force for the engine's model (or its name inside `out_dir`)."""
    target = calibration_path(engine.cache_dir, engine.model_id)
    return Path(out_dir) / target.name if out_dir else target


def candidate_path(target: Path) -> Path:
    return target.with_suffix(".candidate.json")


def previous_path(target: Path) -> Path:
    return target.with_suffix(".previous.json")


def partial_path(target: Path) -> Path:
    return target.with_suffix(".partial.json")


def non_finite(data: Any, where: str = "") -> str | None:
    """The first field holding a NaN or an infinity ("table[3].loss"), or None when every number is finite."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "value"
    if isinstance(data, dict):
        items = ((f"{where}.{key}" if where else str(key), value) for key, value in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{where}[{index}]", value) for index, value in enumerate(data))
    else:
        return None
    return next((found for name, value in items if (found := non_finite(value, name))), None)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically; a NaN or infinity anywhere is refused (not JSON, and tau = NaN breaks extraction)."""
    bad = non_finite(data)
    if bad:
        raise ValueError(f"{path}: {bad} is not a finite number; nothing was written")
    write_text_atomically(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


@dataclass(frozen=True)
class InForce:
    """What extraction uses with automatic tau and the default count of negatives, and where tau comes from."""

    tau: float
    negatives: int
    source: str

    @classmethod
    def of(cls, engine: Engine) -> "InForce":
        selection, source = engine.selection_options(ExtractOptions())
        return cls(selection.tau, selection.negatives, source)

    def describe(self) -> str:
        return f"tau {self.tau:g}, {negatives_text(self.negatives)} ({self.source})"


def change_text(before: InForce, after: InForce) -> str:
    """ "tau 1 -> -1, negatives 8 -> 6": what an apply or undo changed, for the user."""
    return f"tau {before.tau:g} -> {after.tau:g}, negatives {before.negatives} -> {after.negatives}"


def negatives_text(count: int) -> str:
    return f"{count} negative" if count == 1 else f"{count} negatives"


def apply(target: Path) -> None:
    """Put the candidate in force, keeping what was in force as `.previous.json`.
    The candidate must be a regular file (a symlink would become the file in force) holding what the options
    schema accepts (tau -5 to 5, negatives 0 to 75): anything else is refused in one line and left as it is."""
    candidate = candidate_path(target)
    with locked(_lock_path(target)):
        if not os.path.lexists(candidate):
            raise CalibrationFileError(
                f"{candidate}: no calibration to apply; run `easy-diffuser calibrate FOLDER` first"
            )
        _check_regular(candidate)
        try:
            check_calibration(read_json_object(candidate), candidate)
        except SettingsFileError as error:
            raise CalibrationFileError(f"{error}; nothing was applied, calibrate again") from None
        write_text_atomically(previous_path(target), _text_in_force(target))
        os.replace(candidate, target)


def undo(target: Path) -> None:
    """Put the previous calibration back in force; the undone one becomes the candidate again. Refused while a
    candidate waits to be applied: undo would overwrite it."""
    previous, candidate = previous_path(target), candidate_path(target)
    with locked(_lock_path(target)):
        if not os.path.lexists(previous):
            raise CalibrationFileError(f"{previous}: nothing to undo (no calibration was applied here)")
        if os.path.lexists(candidate):
            raise CalibrationFileError(
                f"{candidate}: a calibration waits there to be applied, and undo would overwrite it; "
                "apply it first (calibrate --apply), or delete it"
            )
        _check_regular(previous)
        restored = _read_text(previous)
        if target.is_file():
            write_text_atomically(candidate, _text_in_force(target))
        if restored == NOTHING:
            target.unlink(missing_ok=True)
            previous.unlink()
        else:
            os.replace(previous, target)


def _lock_path(target: Path) -> Path:
    """One lock per model: an apply and an undo run at once (two shells, the tab and a shell) take turns."""
    return target.with_suffix(".lock")


def _check_regular(path: Path) -> None:
    """A store file is renamed into force: a symlink or anything but a regular file is refused, not followed."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise CalibrationFileError(f"{path}: not a regular file (a symlink, folder or FIFO); delete it")


def _text_in_force(target: Path) -> str:
    if not os.path.lexists(target):
        return NOTHING
    _check_regular(target)
    return _read_text(target)


def _read_text(path: Path) -> str:
    try:
        return read_regular_file(path, SETTINGS_FILE_LIMIT).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CalibrationFileError(f"{path}: can't be read ({getattr(error, 'strerror', None) or error})") from None
