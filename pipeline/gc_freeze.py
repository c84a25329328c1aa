"""The objects a process's libraries create at import, frozen out of Python's cyclic garbage collector.

torch, torchvision (which imports torch._dynamo), numba and ffcv leave ~600,000 objects that live as long as the
process, and Python's collector scanned them all at each full collection: several while they were imported (a
full collection starts whenever a quarter more objects have piled up), then at exit, where the modules' teardown
took 2 s. `import pipeline.trainer` plus exit took 8.3 s of CPU on this project's 2-core machine, 5.0 s with the
collector paused during the imports and their objects frozen afterwards (`gc.freeze`: moved to a generation that
no collection scans; Python's documentation gives this pattern before a fork, where it also spares copy-on-write).
Every process of a run pays its imports: each torchrun rank, each run of an ablation. Objects made later, a run's,
are collected as before; the cyclic garbage the imports left (~9,500 objects, ~8 MB) stays until exit. The
benchmarks freeze theirs too, so that a full collection inside a timed step costs what it costs in training.
"""
import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def imports_frozen(as_a_script: bool = True) -> Iterator[None]:
    """Around an entry point's imports: no collection inside, everything alive at the end frozen. A module that is
    a script and a library passes `__name__ == "__main__"`: imported, it leaves the importer's collector alone
    (frozen, the importer's own objects would never be collected in a cycle)."""
    if not as_a_script:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
