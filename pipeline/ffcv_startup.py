"""Import ffcv without the numba compilations it repeats in every process: 6.5 s of each train.py start (a third
of a sample-set run), paid again by every run of an ablation and every process a test starts; and let a loader's
decoders load from numba's disk cache (2 s more).

Import this module before anything from ffcv (pipeline/data.py, pipeline/crop_resize.py, dataset_prep/beton.py do).
"""
import numba
import numba.typed
import numpy as np

from pipeline.numba_cache import cached_njit


def _import_ffcv_with_a_plain_image_mode_table() -> None:
    """ffcv.fields.rgb_image keeps IMAGE_MODES ('jpg' -> 0, 'raw' -> 1) in a numba typed Dict, and building one
    compiles numba's dict machinery: 3 s, at import. Only Python code reads the table (the decoders read it in
    generate_code, outside their jitted functions), so a plain dict serves; numba.typed.Dict is restored after."""
    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        import ffcv.fields.rgb_image  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict


def _cache_the_quasi_random_order() -> None:
    """QUASI_RANDOM's order generator takes 1.5 s to compile; numba caches it on disk (next to ffcv, or in its
    user cache where that is read-only), so only the first process compiles it. Where numba has nowhere to
    cache (a read-only install and no writable home) each process compiles it, as before."""
    from ffcv.traversal_order import quasi_random
    try:
        quasi_random.generate_order_inner.enable_caching()
    except RuntimeError:  # "cannot cache function ...: no locator available"
        pass


def _stored_bytes(address, state):
    """The bytes stored at `address` of the memory-mapped beton: `state` is OSCacheContext.state, (the mapped file,
    every stored item's address in ascending order, their sizes in that order). The image decoders compile it into
    their cached code (crop_resize.py): after changing it, touch that file, whose changes alone numba checks."""
    mapped, addresses, sizes = state
    return mapped[address:address + sizes[np.searchsorted(addresses, address)]]


def _load_the_os_cache_reader_from_disk() -> None:
    """OSCacheManager.compile_reader compiles its reader, signature given, for every loader it builds: 2 s for a
    process's first loader, 0.25 s for each after. The same read from here loads from numba's disk cache in
    milliseconds (signature and options as ffcv's); each loader still gets a dispatcher of its own."""
    from ffcv.memory_managers.os_cache import OSCacheManager

    def compile_reader(self):
        signature = numba.uint8[::1](numba.uint64, self.state_type)
        return cached_njit(_stored_bytes, signature, fastmath=True, error_model="numpy")

    OSCacheManager.compile_reader = compile_reader


def _compile_marked_code_with_a_disk_cache() -> None:
    """ffcv compiles each loader's decoders afresh (Compiler.compile: njit without a cache), ~1 s for a training
    loader's image decoder and 0.2 s for a label decoder, in every loader of every process. Code marked
    `disk_cache = True` by its generate_code is compiled with numba's disk cache instead, with ffcv's options.
    numba keys its cache on the signature, the bytecode and the closure's values, not on the options: code
    compiled both serial and parallel must tell the two apart in its closure (the image decoders hold prange or
    range)."""
    from ffcv.pipeline.compiler import Compiler
    compile_afresh = Compiler.compile.__func__

    def compile(cls, code, signature=None):
        if not (cls.is_enabled and getattr(code, "disk_cache", False)):
            return compile_afresh(cls, code, signature)
        parallel = getattr(code, "is_parallel", False) and cls.num_threads > 1
        return cached_njit(code, signature, fastmath=True, error_model="numpy", parallel=parallel)

    Compiler.compile = classmethod(compile)


_import_ffcv_with_a_plain_image_mode_table()
_cache_the_quasi_random_order()
_load_the_os_cache_reader_from_disk()
_compile_marked_code_with_a_disk_cache()
