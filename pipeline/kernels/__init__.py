"""Fused Triton kernels for the SE-block tail, and the choice between them and the torch reference ops.

`model.se_kernel`: `torch` runs the reference ops (any device), `triton` the fused kernels (CUDA tensors, or CPU
tensors when TRITON_INTERPRET=1 was set before triton was imported: how CI checks them), `closed-form` the
kernels' algorithm in torch ops (any device; for torch.compile to generate the kernels: se_closed_form.py),
`auto` whichever was measured faster (benchmarks/RESULTS.md) for CUDA tensors in channels_last: the kernels in
eager mode and under torch.compile's reduce-overhead mode (CUDA graphs), inductor's code for the closed form in
its other modes.
"""
import functools
import importlib.util
import os
from typing import Optional

import torch

from pipeline.errors import UserError

SE_KERNELS = ("auto", "torch", "triton", "closed-form")
# the implementations that fold the block's BN into the squeeze: a plain BatchNorm2d and a squeeze with a mode in
# layout.SQUEEZE_MODES only
FOLDING = ("triton", "closed-form")
# torch.compile modes under which `auto` runs the kernels: with CUDA graphs the custom ops' host cost is gone and
# the kernels' fewer memory passes win; in the other modes inductor generates the closed form's kernels itself.
# Measured on an H200 (SE-ResNet-50 gap, 192 px, batch 256, bf16, x torchvision resnet50 in the same mode and
# run): reduce-overhead kernels 0.93 (session 16); default mode closed form 0.91, torch ops 0.86, kernels 0.79
# (session 17, benchmarks/logs/2026-11-27-h200-session17-check.log). The other arms' closed form, default mode:
# 0.69 (gmp) to 0.86 (random) (session 19); gmp's kernels were 0.76 in another run (session 17), so which of the
# two gmp should run there waits on one run with both (scripts/device_check.sh compiled50a). The closed form's
# backward has been rewritten since (session 20: fewer instructions per element, the same bytes), unmeasured
KERNEL_COMPILE_MODES = ("reduce-overhead",)


class KernelUnavailableError(UserError, RuntimeError):
    """se_kernel=triton where the kernels cannot run; the message says what to use instead."""


def check_se_kernel(choice: str, source: str = "se_kernel") -> str:
    if choice not in SE_KERNELS:
        raise ValueError(f"unknown se_kernel '{choice}' (from {source}); choose one of: {', '.join(SE_KERNELS)}")
    return choice


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # found without importing it
TRITON_MIN_CAPABILITY = (7, 0)  # torch's own test before inductor uses Triton (device_interface.is_triton_capable)


def triton_available() -> bool:
    return _TRITON_INSTALLED


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)  # asked at every SE tail's forward (`auto`): the answer is the GPU's
def gpu_too_old_for_triton(device: torch.device) -> Optional[str]:
    """'<GPU name> is CUDA capability 6.0' for a GPU Triton does not compile for (below 7.0: Pascal, e.g. the P100
    of free notebook services), else None. torch.compile's inductor needs Triton there too."""
    if device.type != "cuda" or not torch.cuda.is_available():  # no GPU to ask: nothing runs there anyway
        return None
    capability = torch.cuda.get_device_capability(device)
    if capability >= TRITON_MIN_CAPABILITY:
        return None
    return f"{torch.cuda.get_device_name(device)} is CUDA capability {capability[0]}.{capability[1]}"


@torch.compiler.assume_constant_result  # facts of the install and the machine: traced code takes the answer
def triton_unavailable_reason(device: torch.device):
    """Why se_kernel=triton cannot run on `device` (None when it can)."""
    if not triton_available():
        return "se_kernel=triton needs the triton package (it comes with torch's CUDA builds); use se_kernel=torch"
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return (f"se_kernel=triton runs on CUDA tensors, not {device.type} (CPU only with TRITON_INTERPRET=1 "
                "set before triton is imported); use se_kernel=auto or torch")
    too_old = gpu_too_old_for_triton(device)
    if too_old:
        return (f"se_kernel=triton needs a GPU of CUDA capability 7.0 or newer (Triton's): {too_old}; use "
                "se_kernel=auto")
    return None


def resolve_se_kernel(choice: str, device: torch.device, channels_last: bool, compile_mode: str = "none") -> str:
    """The implementation `choice` runs: 'triton', 'torch' or 'closed-form' (raises where triton is asked for
    but cannot run). `compile_mode` is training.compile's value: 'none' (eager) or a torch.compile mode. `auto`
    takes the torch ops off CUDA, off channels_last (what was measured) and where Triton cannot run (inductor
    needs it too)."""
    if choice == "triton":
        reason = triton_unavailable_reason(device)
        if reason:
            raise KernelUnavailableError(reason)
        return "triton"
    if choice != "auto":
        return choice
    if device.type != "cuda" or triton_unavailable_reason(device) is not None or not channels_last:
        return "torch"
    return "triton" if compile_mode == "none" or compile_mode in KERNEL_COMPILE_MODES else "closed-form"


def tail_implementation(choice: str, x: torch.Tensor) -> str:
    """What runs the SE tail of `x` (the block's conv output) under `choice`: triton, torch or closed-form.
    Inside a traced graph the mode is not known here: `auto` takes the closed form there, and the trainer
    resolves `auto` with its compile mode before compiling (set_se_kernel)."""
    return resolve_se_kernel(choice, x.device, x.is_contiguous(memory_format=torch.channels_last),
                             "default" if torch.compiler.is_compiling() else "none")
