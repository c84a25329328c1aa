"""Import ffcv without the numba compilations it repeats in every process: 4.5 s of each train.py start (a third
of a sample-set run), paid again by every run of an ablation and every process a test starts.

Import this module before anything from ffcv (pipeline/data.py, pipeline/crop_resize.py, dataset_prep/beton.py do).
"""
import numba.typed


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


_import_ffcv_with_a_plain_image_mode_table()
_cache_the_quasi_random_order()
