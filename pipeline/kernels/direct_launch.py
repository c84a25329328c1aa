"""Launches of compiled Triton kernels without Triton's per-call argument handling.

`kernel[grid](*args)` binds and specialises every argument, builds a cache key from them and checks the kernel's
globals at every call: 24-38 us of host time per launch on this project's CPU (Triton 3.8, kernels compiled for
sm90, the launcher itself replaced by a no-op), eight launches per fused SE tail; a direct launch costs 8-18 us
there, most of it reading each tensor's dtype and alignment for the signature. Once a kernel is compiled for a call
signature (the arguments' dtypes and pointer alignment, the integers, the constexprs and options, the device), the
same compiled kernel serves every later call of that signature. Later calls hand it to the compiled kernel's own
launcher, as inductor's generated launchers do: `compiled.run(grid, stream, function, metadata, launch metadata,
hooks, *every argument)`.

Triton's own launch stays the reference. A signature's first call goes through it, which compiles. Its second
call goes through it too, with the compiled kernel's launcher watched. Later calls are direct only if Triton
passed exactly what this module would have passed. Otherwise they keep Triton's path: a Triton whose calling
convention differs, the interpreter (which compiles nothing), a kernel with pre-run hooks.
SSENET_DIRECT_LAUNCH=0 keeps Triton's path everywhere.
"""
import inspect
import os

import torch
from triton import knobs
from triton.runtime import driver

ENABLED = os.environ.get("SSENET_DIRECT_LAUNCH", "1") != "0"

# signature -> None (Triton's path for good), _Watch (compiled, to be checked at the next call) or _Direct
_SIGNATURES = {}
_NEW = object()  # a signature not launched yet
_PARAMETERS = {}  # id(kernel) -> its parameters' names and defaults, in order


class _Watch:
    __slots__ = ("compiled",)

    def __init__(self, compiled):
        self.compiled = compiled


class _Direct:
    __slots__ = ("compiled", "run", "function", "metadata", "tail")

    def __init__(self, compiled, tail: tuple):
        self.compiled, self.run, self.function = compiled, compiled.run, compiled.function
        self.metadata, self.tail = compiled.packed_metadata, tail


def _signature(kernel, device: int, args: tuple, options: dict) -> tuple:
    """What Triton specialises a launch on, or more: each tensor's dtype and 16-byte alignment, and every other
    argument, constexpr and option by value (the same shapes launch the same code)."""
    return (id(kernel), device, *[(value.dtype, value.data_ptr() % 16 == 0) if isinstance(value, torch.Tensor)
                                  else value for value in args], *options.items())


def _tail(kernel, count: int, options: dict) -> tuple:
    """The kernel's parameters after the `count` positional ones, as Triton binds them: from `options` by name,
    else the parameter's default."""
    parameters = _PARAMETERS.get(id(kernel))
    if parameters is None:
        parameters = _PARAMETERS[id(kernel)] = tuple(inspect.signature(kernel.fn).parameters.values())
    return tuple(options[parameter.name] if parameter.name in options else parameter.default
                 for parameter in parameters[count:])


def _grid3(grid: tuple) -> tuple:
    return (*grid, 1, 1)[:3]


def launch(kernel, grid: tuple, args: tuple, options: dict) -> None:
    """`kernel[grid](*args, **options)`, direct where Triton was seen to launch this signature the same way.
    `args[0]` is a tensor on the launch's device (the current one)."""
    if not ENABLED:
        kernel[grid](*args, **options)
        return
    device = args[0].get_device()
    signature = _signature(kernel, device, args, options)
    entry = _SIGNATURES.get(signature, _NEW)
    if type(entry) is _Direct and not kernel.pre_run_hooks:
        stream = driver.active.get_current_stream(device)
        values = (*args, *entry.tail)
        entry.run(*_grid3(grid), stream, entry.function, entry.metadata,
                  entry.compiled.launch_metadata(grid, stream, *values), knobs.runtime.launch_enter_hook,
                  knobs.runtime.launch_exit_hook, *values)
    elif entry is _NEW:  # Triton compiles (or finds) its kernel
        compiled = kernel[grid](*args, **options)
        launched = all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata"))
        _SIGNATURES[signature] = _Watch(compiled) if launched else None  # the interpreter returns nothing
    elif type(entry) is _Watch:
        _SIGNATURES[signature] = _launch_watched(kernel, grid, device, args, options, entry.compiled)
    else:
        kernel[grid](*args, **options)


def _launch_watched(kernel, grid: tuple, device: int, args: tuple, options: dict, compiled):
    """Launch through Triton with `compiled`'s launcher watched; a _Direct if Triton called it once, with what a
    direct launch passes (the same objects), else None (Triton's path for good)."""
    calls = []
    # Triton 3.8 keeps the launcher in `_run` behind a read-only `run` property; earlier versions in `run` itself
    name = "_run" if isinstance(getattr(type(compiled), "run", None), property) else "run"
    launcher = getattr(compiled, name, None)

    def watched(*call):
        calls.append(call)
        return launcher(*call)
    watching = launcher is not None
    if watching:
        try:
            setattr(compiled, name, watched)
        except AttributeError:  # a launcher that cannot be swapped cannot be watched
            watching = False
    try:
        kernel[grid](*args, **options)
    finally:
        if watching:
            setattr(compiled, name, launcher)
    if len(calls) != 1 or kernel.pre_run_hooks:
        return None
    direct = _Direct(compiled, _tail(kernel, len(args), options))
    expected = (*_grid3(grid), driver.active.get_current_stream(device), direct.function, direct.metadata)
    values = (*args, *direct.tail)
    call = calls[0]
    same = (len(call) == len(expected) + 3 + len(values) and call[:len(expected)] == expected
            and all(seen is value for seen, value in zip(call[len(expected) + 3:], values)))
    return direct if same else None
