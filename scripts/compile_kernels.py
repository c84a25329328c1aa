"""Compile every fused SE-tail kernel variant for an NVIDIA GPU target, on a machine without one.

    python scripts/compile_kernels.py              # sm90 (H100/H200); about 30 s uncached, 2 s cached
    python scripts/compile_kernels.py --arch 80    # A100

The CPU tests run the kernels interpreted (TRITON_INTERPRET=1), which skips Triton's compiler: a kernel can
pass them and still fail to compile for a GPU (e.g. a loop-carried variable changing type). Device time is
scarce, so run this before a GPU check. Exit 1 names the kernels that did not compile.
"""
import argparse
import inspect
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_kernels.py: unset TRITON_INTERPRET (the interpreter does not compile kernels)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pipeline.kernels import layout, se_triton as kernels  # noqa: E402

FLOAT_SCALARS = {"corr_count", "eps", "std_eps", "momentum"}
FP32_POINTERS = {"work", "grad_work", "stats", "running_mean", "running_var"}
BIG_TENSORS = {"z_ptr", "identity_ptr", "out_ptr", "grad_ptr", "dz_ptr", "d_identity_ptr", "random_ptr"}


def signature(kernel, constexprs: dict) -> dict:
    """Triton types of a kernel's parameters: big tensors bf16 (the training dtype), small buffers fp32."""
    types = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in BIG_TENSORS:
            types[name] = "*bf16"
        elif name == "batches_tracked":
            types[name] = "*i64"
        elif name.endswith("_ptr") or name in FP32_POINTERS:
            types[name] = "*fp32"
        elif name in FLOAT_SCALARS:
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


def variants():
    """(kernel, constexprs) for every squeeze mode and the largest excitation (ResNet-50's layer4: 128 units)."""
    for mode in range(len(layout.SQUEEZE_MODES)):
        switches = dict(EXTREMES=layout.uses_extremes(mode), FILTER=layout.uses_filter(mode))
        tiles = dict(BLOCK_HW=32, BLOCK_C=64)
        yield kernels.z_stats_kernel, {**switches, **tiles}
        yield kernels.grad_apply_kernel, {**switches, **tiles}
        for training in (True, False):
            yield kernels.forward_finalize_kernel, dict(TRAINING=training, UPDATE=training, MODE=mode, BLOCK_B=32,
                                                        BLOCK_C=16)
            yield kernels.backward_finalize_kernel, dict(TRAINING=training, MODE=mode, H_PAD=128, BLOCK_B=32,
                                                         BLOCK_C=16)
    for padded in (16, 128):
        yield kernels.excite_kernel, dict(H_PAD=padded, BLOCK_B=16, BLOCK_K=64)
        yield kernels.excite_grad_kernel, dict(H_PAD=padded, BLOCK_B=16, BLOCK_K=64)
    yield kernels.apply_kernel, dict(BLOCK_HW=32, BLOCK_C=64)
    yield kernels.grad_reduce_kernel, dict(BLOCK_HW=32, BLOCK_C=64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90: Hopper)")
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    failed = []
    for kernel, constexprs in variants():
        names = list(inspect.signature(kernel.fn).parameters)
        source = ASTSource(kernel, signature(kernel, constexprs),
                           constexprs={(names.index(name),): value for name, value in constexprs.items()})
        label = f"{kernel.fn.__name__} {constexprs}"
        try:
            triton.compile(source, target=target)
        except Exception as error:  # noqa: BLE001 - every failure is reported, then the exit code says so
            failed.append(label)
            print(f"FAILED {label}: {str(error).strip().splitlines()[-1]}")
            continue
        print(f"ok     {label}")
    if failed:
        print(f"compile_kernels.py: {len(failed)} kernel variant(s) do not compile for sm{args.arch}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
