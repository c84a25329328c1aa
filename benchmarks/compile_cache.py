"""torch.compile's work carried between machines: one file of its cache artifacts (torch.compiler's "mega-cache").

A cold compile of a ResNet-50 training step took 46-77 s per model on the device machine, most of a 15-minute
lease, and every lease starts on a bare machine whose inductor cache is empty. `save` writes what this process
compiled (inductor's generated code with its Triton binaries, AOTAutograd's graphs, autotuning results) to a
gzip file; `load` puts such a file's entries into this machine's caches, so that the same graphs compiled with
the same torch, Triton and GPU find them there. Anything else (another torch, GPU or model code) misses and
compiles as before: the file only saves time, it cannot change what runs.
"""
import gzip
from pathlib import Path

import torch

from pipeline.atomic import write_bytes_atomic


def load(path: Path) -> str:
    """Load the artifacts in `path` into this process's compile caches, before anything is compiled; a line
    saying what was loaded (or why nothing was: a missing or unreadable file compiles from scratch)."""
    if not path.is_file():
        return f"compile cache: none at {path}, compiling from scratch"
    try:
        info = torch.compiler.load_cache_artifacts(gzip.decompress(path.read_bytes()))
    except Exception as error:  # a stale or damaged file must not stop a benchmark: it only costs compile time
        return f"compile cache: {path} unreadable ({type(error).__name__}: {error}), compiling from scratch"
    count = sum(map(len, info.artifacts.values())) if info else 0
    return f"compile cache: {count} artifacts loaded from {path}"


def save(path: Path) -> str:
    """Write every artifact this process compiled or found in its caches so far to `path` (replaced whole, so
    that a run cut off later keeps what it had); a line saying what was written."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return f"compile cache: nothing compiled, {path} left as it was"
    data, info = artifacts
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, gzip.compress(data, compresslevel=6))
    count, megabytes = sum(map(len, info.artifacts.values())), path.stat().st_size / 2**20
    return f"compile cache: {count} artifacts, {megabytes:.1f} MB written to {path}"
