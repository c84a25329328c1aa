"""Atomic file writes (temp file, fsync, rename): a reader or a crash sees the old file or the new one, never half."""
import contextlib
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import List, Optional

from pipeline.errors import StorageError

# `.NAME.tmp-PID` (temp_path) and `.NAME.failures-PID` (the beton writer's failure log)
_TEMPORARY = re.compile(r"^\..+\.(tmp|failures)-(\d+)$")


def temporary_path(path: Path) -> Path:
    """The hidden, per-process temp name beside `path` that is renamed onto it once complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def free_bytes(folder: Path) -> Optional[int]:
    """Free bytes on the disk of `folder`, asked of the nearest folder above it that exists (a write may fail, or
    be planned, before the folder is made); None where the filesystem reports no size at all (sysfs, procfs, and
    FUSE mounts that report 0 of 0 bytes while they take writes)."""
    existing = next(path for path in (Path(folder), *Path(folder).parents) if path.exists())
    usage = shutil.disk_usage(existing)
    return usage.free if usage.total else None


def free_space(folder: Path) -> str:
    """'0.00 GB free on the disk of <folder>': for a refusal of a write that may have filled it."""
    free = free_bytes(folder)
    return f"{free / 1e9:.2f} GB free on the disk of {folder}" if free is not None else \
        f"the disk of {folder} reports no size"


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C, and a SIGTERM that raises (termination.py), within the block take effect when it ends. torch.save
    turned an interrupt in mid-checkpoint into a short-write RuntimeError, which was reported as a full disk. Only
    the main thread receives signals, and a SIGINT that is ignored (a background job) stays ignored."""
    deferred = [number for number in (signal.SIGINT, signal.SIGTERM) if _deferrable(number)]
    if threading.current_thread() is not threading.main_thread() or not deferred:
        yield
        return
    received = []
    previous = {number: signal.signal(number, lambda got, frame: received.append(got)) for number in deferred}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for number in dict.fromkeys(received):  # each once, in the order they came: the handler now in place acts
        signal.raise_signal(number)


def _deferrable(number: int) -> bool:
    """SIGINT unless ignored; SIGTERM where a Python handler takes it (its default action ends the process)."""
    handler = signal.getsignal(number)
    return callable(handler) if number == signal.SIGTERM else handler not in (signal.SIG_IGN, None)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", previous: Optional[Path] = None):
    """A handle on a temp file beside `path`, renamed onto `path` only when the block finishes without error;
    with `previous`, the file it replaces is kept under that name. A failed write (disk full, read-only
    folder) is a one-line StorageError naming the file, and leaves the old file as it was. Ctrl-C waits for the
    write to end (the files written so are small: logs, results, checkpoints)."""
    path = Path(path)
    temporary = temporary_path(path)
    with interrupts_deferred():
        try:
            with open(temporary, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            if previous is not None and path.exists():
                os.replace(path, previous)
            os.replace(temporary, path)
        except OSError as error:
            raise StorageError(f"could not write {path}: {error.strerror or error} ({free_space(path.parent)}); "
                               "free space on its filesystem or choose a writable folder (the previous file, if any, "
                               "is intact)") from None
        finally:
            temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(folder: Path) -> List[Path]:
    """Remove the temp files in `folder` whose writing process is dead (a kill -9 mid-write leaves them, and a
    beton's can be hundreds of GB); returns what was removed. PIDs are this host's: run directories are locked
    and betons are written by one process, so a live writer elsewhere does not share the folder."""
    removed = []
    for path in Path(folder).glob(".*"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
