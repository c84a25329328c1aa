"""Run as a script (without TRITON_INTERPRET): what Triton's launcher receives from Triton's own launches and from
pipeline/kernels/direct_launch.py, for a kernel really compiled for sm90 on a machine without a GPU. A stand-in
driver gives the target, a device, a stream and a launcher that records its arguments instead of launching.
Prints one dict (test_direct_launch.py reads it)."""
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("launch_probe.py: unset TRITON_INTERPRET (the interpreter compiles nothing)")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from pipeline.kernels import direct_launch  # noqa: E402

STREAM = 7
LAUNCHES = []


class RecordingLauncher:
    def __init__(self, src, metadata):
        pass

    def __call__(self, *call):
        LAUNCHES.append(call)


class Utils:
    def load_binary(self, name, kernel, shared, device):
        return 1, 2, 32, 0, 1024  # module, function, registers, spills, threads

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448}


class StandInDriver:
    launcher_cls = RecordingLauncher
    utils = Utils()

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return STREAM

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


@triton.jit
def scaled_copy_kernel(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr, SHIFT: tl.constexpr = 0):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * scale + SHIFT, mask=mask)


TRITON_RUNS = []
_run = JITFunction.run


def counted_run(self, *args, **kwargs):
    TRITON_RUNS.append(1)
    return _run(self, *args, **kwargs)


def plain(value):
    """A launcher argument as comparable data: tensors by address, Triton 3.8's launch metadata (a new object per
    launch) by content, its hook chains by identity."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.data_ptr(), str(value.dtype))
    if type(value).__name__ == "LazyDict":
        return ("metadata", value.get())
    if value is None or isinstance(value, (int, float, str, tuple)):
        return value
    return f"{type(value).__name__} {id(value)}"


def launches(count: int, args: tuple) -> dict:
    """Triton's runs and the launcher's calls (as data) over `count` launches of one signature."""
    runs, start = len(TRITON_RUNS), len(LAUNCHES)
    for _ in range(count):
        direct_launch.launch(scaled_copy_kernel, (2,), args, dict(BLOCK=64, num_warps=4))
    return dict(triton_runs=len(TRITON_RUNS) - runs, calls=[tuple(map(plain, call)) for call in LAUNCHES[start:]])


def main() -> None:
    driver.set_active(StandInDriver())
    JITFunction.run = counted_run
    x, out = torch.ones(101), torch.zeros(101)
    aligned = launches(4, (x, out, 100, 2.0))
    unaligned = launches(3, (x[1:], out[1:], 100, 2.0))  # 4 bytes off: Triton specialises on 16-byte alignment
    direct_launch.ENABLED = False
    disabled = launches(3, (x, out, 100, 2.0))
    print(dict(aligned=aligned, unaligned=unaligned, disabled=disabled, stream=STREAM,
               compiled=len(next(iter(scaled_copy_kernel.device_caches.values()))[0])))


if __name__ == "__main__":
    main()
