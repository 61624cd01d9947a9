"""Writing files so that a crash or kill never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

TEMP_SUFFIX = ".tmp"
# The process's umask, read once: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: Path, write: Callable[[Path], None], mode: int | None = None) -> None:
    """Call write(temp_path) on a temp file beside `path`, then rename it over `path`; the file gets `mode`
    (a user's file rewritten keeps its own), else the mode a plain open() would give it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        write(temp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        os.chmod(temp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _temp_prefix(name: str) -> str:
    """`.NAME.`, or for a name near the system's 255-byte limit a shortened one (its start and a digest of all
    of it), so that the temp name, longer by the prefix and suffix, is still a name the system accepts."""
    encoded = os.fsencode(name)
    if len(encoded) <= _LONGEST_KEPT_NAME:
        return f".{name}."
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    return f".{os.fsdecode(encoded[:_SHORTENED_NAME])}~{digest}."


_LONGEST_KEPT_NAME = 200  # + "." + "." + mkstemp's 8 random characters + ".tmp": within 255 bytes
_SHORTENED_NAME = 150


def remove_leftover_temp_files(path: Path) -> None:
    """Temp files of `path` that a killed process (SIGKILL runs no cleanup) left behind."""
    for leftover in path.parent.glob(f"{glob.escape(_temp_prefix(path.name))}*{TEMP_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def safe_name(text: str) -> str:
    """A model id such as "ViT-L-14/openai" as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class NotARegularFile(OSError):
    """A folder, FIFO, device or socket where a file was expected."""


class FileTooLarge(OSError):
    """A file larger than its reader's limit (a settings file of gigabytes is a mistake or an attack)."""


def read_regular_file(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. A FIFO would block a plain read forever and a device
    may never end (a symlink to /dev/zero reads until memory runs out), so the file is opened without blocking
    and checked before anything is read, and no more than `limit` + 1 bytes are ever read (a file may grow).
    Every reader of a user's file goes through here: images, settings files, model configs and vocabularies."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise NotARegularFile(errno.EISDIR, "is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file (a FIFO, device or socket)")
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as handle:
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise FileTooLarge(errno.EFBIG, f"larger than {_size_text(limit)}, too large for this kind of file")
    return data


def _size_text(size: int) -> str:
    if size >= 2**20:
        return f"{size / 2**20:g} MB"
    return f"{size / 2**10:g} KB" if size >= 2**10 else f"{size:,} bytes"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing; left behind, empty), waiting for other processes'.
    Steps that read one file and rename another are then never interleaved with another process's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        _lock(descriptor, wait=True)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


class OutputBusy(OSError):
    """Another run is writing the same output."""


class OutputLock:
    """One writer per output: an advisory lock (flock) on `.NAME.lock` beside it, held while a run writes it and
    removed after. The kernel drops the lock when its process ends, even killed, so a stale file never blocks."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(_temp_prefix(self.output.name) + "lock")
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            except OSError as error:
                raise OSError(f"{self.output}: cannot lock it ({error.strerror})") from None  # one line, no [Errno]
            if not _lock(descriptor, wait=False):
                holder = _holder(descriptor)
                os.close(descriptor)
                raise OutputBusy(
                    f"{self.output}: another easy-diffuser run (process {holder}) is writing it; "
                    "wait for it to end, or give another --output",
                )
            if _same_file(descriptor, self.path):  # not a lock file the previous holder removed as we opened it
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, str(os.getpid()).encode("ascii"))
        self.descriptor: int | None = descriptor

    def release(self) -> None:
        if self.descriptor is not None:
            with contextlib.suppress(OSError):  # Windows keeps an open file: the next run then locks it again
                self.path.unlink(missing_ok=True)  # while still locked: a run opening it now retries on a new file
            os.close(self.descriptor)
            self.descriptor = None


def _lock(descriptor: int, wait: bool) -> bool:
    """An exclusive lock on the open file, waiting for other processes' when `wait`; False when it is held."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:
            try:
                msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
                time.sleep(0.1)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _holder(descriptor: int) -> str:
    try:
        return os.read(descriptor, 20).decode("ascii", "replace").strip() or "?"
    except OSError:  # Windows: the holder's locked byte can't be read
        return "?"


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False
