"""Triton's interpreter (TRITON_INTERPRET=1, how the CPU suite runs the kernels) without its repeated patching.

The interpreter swaps triton.language's builtins for interpreted ones when a kernel launch starts and puts them
back when it ends. It also re-runs that swap, with `inspect.getmembers` over the language modules, at every call
of a @triton.jit helper (tl.zeros and tl.sum are helpers too). Nothing is put back before the launch ends, so a
helper whose language modules this launch has already swapped gets nothing new from a second swap.
`patch_once_per_launch` skips those scans: tests/test_se_kernels.py took 129-130 s with them and 85-97 s without
(run side by side on this project's 2-core machine).
It is installed only for the Triton it was read against (TRITON_VERSION); with any other the interpreter runs
unchanged, slower, with the same results.
"""
import inspect

TRITON_VERSION = "3.8.0"


def patch_once_per_launch() -> None:
    """Install the skip in triton's interpreter, unless this Triton is not the one it was read against.
    Imports triton here, not at the top: conftest sets TRITON_INTERPRET first, and triton reads it on import."""
    import triton
    import triton.language as tl
    from triton.runtime import interpreter

    if triton.__version__ != TRITON_VERSION:
        return
    patch_language, launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
    patched_in_launch = []  # per launch in progress: the language modules swapped so far

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
