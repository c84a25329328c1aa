"""Atomic file writes (temp file, fsync, rename): a reader or a crash sees the old file or the new one, never half."""
import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w"):
    """A handle on a temp file beside `path`, renamed onto `path` only when the block finishes without error."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
