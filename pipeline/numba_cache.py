"""numba's njit with its on-disk cache, where numba finds a place to write it: a new process loads the machine code
in milliseconds instead of compiling it again (0.25-2 s per function on 2 cores).

A read-only install run by a user without a writable home has no such place, and numba refuses cache=True there
at decoration time: those functions compile in each process instead, as they did before.
"""
import hashlib
from typing import Callable

from numba import njit
from numba.core.caching import IndexDataCacheFile
from numba.extending import register_jitable


def _save_in_a_file_of_the_keys_own(self, key, data) -> None:
    """IndexDataCacheFile.save: numba named a new entry's data file by the first number free in the index it had
    read, then wrote the index, then the data. Two processes saving entries of other keys at once (ablation runs
    of other seeds, whose decoders' keys differ, starting together) chose the same file, and the index could end
    up pointing one key at the other's code. Here the file is named by the key's hash and written before the
    index: a race can only drop an entry from the index, which a later process compiles and saves again."""
    number = int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16)
    name = self._data_name(number)
    self._save_data(name, data)
    overloads = self._load_index()
    if overloads.get(key) != name:
        overloads[key] = name
        self._save_index(overloads)


IndexDataCacheFile.save = _save_in_a_file_of_the_keys_own


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
