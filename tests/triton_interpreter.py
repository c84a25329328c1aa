"""Triton's interpreter (TRITON_INTERPRET=1, how the CPU suite runs the kernels) without work it repeats or discards.

The interpreter swaps triton.language's builtins for interpreted ones when a kernel launch starts and puts them
back when it ends. It also re-runs that swap, with `inspect.getmembers` over the language modules, at every call
of a @triton.jit helper (tl.zeros and tl.sum are helpers too). Nothing is put back before the launch ends, so a
helper whose language modules this launch has already swapped gets nothing new from a second swap.
`patch_once_per_launch` skips those scans: tests/test_se_kernels.py took 129-130 s with them and 85-97 s without
(run side by side on this project's 2-core machine).
The interpreter also rebuilt its table of numpy dtypes (19 entries) at every lookup, a few per interpreted
operation: 12.7 us a lookup, 293,000 lookups in test_fused_tail_matches_reference. `table_np_dtypes` builds the
table once: test_se_kernels.py and this file's tests took 104.8-115.6 s with the table rebuilt, 97.4-99.8 s with it
built once (side by side, twice).
And it built an overflow check for every int32 addition, subtraction and product (InterpreterOptions'
sanitize_overflow): the operation again in int64, two comparisons, an `and`, and an assert that its builder drops
unless debug is on, which it is not (int32 products past 2**31 wrap without a word, checked or not). Work without
effect: `skip_overflow_checks` turns it off, and the same tests took 73-75 s with it and 52-59 s without (side by
side, twice).
All three are installed only for the Triton they were read against (TRITON_VERSION); with any other the
interpreter runs unchanged, slower, with the same results.
"""
import dataclasses
import functools
import inspect

TRITON_VERSION = "3.8.0"


def speed_up_interpreter() -> None:
    """Install all three, unless this Triton is not the one they were read against. Imports triton here, not at the
    top: conftest sets TRITON_INTERPRET first, and triton reads it on import."""
    import triton

    if triton.__version__ == TRITON_VERSION:
        patch_once_per_launch()
        table_np_dtypes()
        skip_overflow_checks()


def skip_overflow_checks() -> None:
    """The interpreter's one builder stops building overflow checks whose asserts it drops (debug is off)."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)


def table_np_dtypes() -> None:
    """`_get_np_dtype` with its table built once: the numpy dtype the interpreter stores a Triton type's (or a
    block's elements') values in."""
    import triton.language as tl
    from triton.runtime import interpreter

    lookup, table = interpreter._get_np_dtype, {}

    def np_dtype(tt_dtype):
        scalar = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        if isinstance(scalar, tl.pointer_type):  # unhashable; the lookup's first test
            return lookup(scalar)
        if scalar not in table:
            table[scalar] = lookup(scalar)
        return table[scalar]

    interpreter._get_np_dtype = np_dtype


def patch_once_per_launch() -> None:
    """Install the skip in triton's interpreter."""
    import triton.language as tl
    from triton.runtime import interpreter

    patch_language, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
    patched_in_launch = []  # per launch in progress: the language modules swapped so far

    @functools.lru_cache(maxsize=None)  # a helper's module keeps its imports
    def language_modules(fn) -> set:
        return {id(value) for value in fn.__globals__.values() if inspect.ismodule(value) and value in (tl, tl.core)}

    def launch_tracked(self, *args, **kwargs):
        patched_in_launch.append(set())
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched_in_launch.pop()

    def patch_unless_patched(fn):
        modules = language_modules(fn)
        # no modules: the interpreter's own patch asserts that the helper sees triton.language
        if patched_in_launch and modules and modules <= patched_in_launch[-1]:
            return None  # a helper's call: its callers ignore the scope
        if patched_in_launch:
            patched_in_launch[-1] |= modules
        return patch_language(fn)

    interpreter.GridExecutor.__call__ = launch_tracked
    interpreter._patch_lang = patch_unless_patched
