"""Writing files so that a crash or kill never leaves a half-written one behind."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temp_path) on a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def safe_name(text: str) -> str:
    """A model id such as "ViT-L-14/openai" as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
