"""numba's njit with its on-disk cache, where numba finds a place to write it: a new process loads the machine code
in milliseconds instead of compiling it again (0.25-2 s per function on 2 cores).

A read-only install run by a user without a writable home has no such place, and numba refuses cache=True there
at decoration time: those functions compile in each process instead, as they did before.
"""
from typing import Callable

from numba import njit


def cached_njit(function: Callable, signature=None, **options) -> Callable:
    """A new dispatcher of `function` (njit, without the GIL) that reads and writes numba's disk cache; with a
    `signature` it is compiled, or loaded, now."""
    arguments = () if signature is None else (signature,)
    try:
        return njit(*arguments, nogil=True, cache=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(*arguments, nogil=True, **options)(function)
