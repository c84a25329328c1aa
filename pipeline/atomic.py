"""Atomic file writes (temp file, fsync, rename): a reader or a crash sees the old file or the new one, never half."""
import contextlib
import os
from pathlib import Path


def temporary_path(path: Path) -> Path:
    """The hidden, per-process temp name beside `path` that is renamed onto it once complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w"):
    """A handle on a temp file beside `path`, renamed onto `path` only when the block finishes without error."""
    temporary = temporary_path(path)
    try:
        with open(temporary, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, Path(path))
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
