"""numba's njit with its on-disk cache, where numba finds a place to write it: a new process loads the machine code
in milliseconds instead of compiling it again (0.25-2 s per function on 2 cores).

A read-only install run by a user without a writable home has no such place, and numba refuses cache=True there
at decoration time: those functions compile in each process instead, as they did before.
"""
from typing import Callable

from numba import njit
from numba.extending import register_jitable


def cached_njit(function: Callable, signature=None, **options) -> Callable:
    """A new dispatcher of `function` (njit, without the GIL) that reads and writes numba's disk cache; with a
    `signature` it is compiled, or loaded, now."""
    arguments = () if signature is None else (signature,)
    try:
        return njit(*arguments, nogil=True, cache=True, **options)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(*arguments, nogil=True, **options)(function)


_JITABLE = set()


def jitable(function: Callable, **options) -> Callable:
    """`function` itself, made callable from numba-compiled code, which compiles it into its own machine code (with
    the jit `options` of its first call here). A cached function may hold it in its closure where it could not hold
    a dispatcher: numba keys its cache on the closure's values, pickled, and a dispatcher pickles with an id of its
    own process, so the key never matched (and each process added an entry). numba checks only the cached
    function's own file for changes: after changing `function` in another file, touch the caller's."""
    if function not in _JITABLE:
        register = register_jitable(**options) if options else register_jitable
        register(function)
        _JITABLE.add(function)
    return function
