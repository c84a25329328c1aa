"""Fused Triton kernels for the SE-block tail, and the choice between them and the torch reference ops.

`model.se_kernel`: `torch` runs the reference ops (any device), `triton` the fused kernels (CUDA tensors, or CPU
tensors when TRITON_INTERPRET=1 was set before triton was imported: how CI checks them), `auto` whichever was
measured faster (benchmarks/RESULTS.md): the kernels for CUDA tensors in channels_last in eager mode, inductor's
own code for the torch ops under torch.compile.
"""
import importlib.util
import os

import torch

from pipeline.errors import UserError

SE_KERNELS = ("auto", "torch", "triton")
# what `auto` picks under torch.compile. Measured on an H200 (SE-ResNet-50 gap, 192 px, batch 256, bf16):
# inductor's code 7,558 img/s, the kernels 6,133 (the custom ops' host cost is not hidden in a compiled step)
AUTO_KERNELS_WHEN_COMPILED = False


class KernelUnavailableError(UserError, RuntimeError):
    """se_kernel=triton where the kernels cannot run; the message says what to use instead."""


def check_se_kernel(choice: str, source: str = "se_kernel") -> str:
    if choice not in SE_KERNELS:
        raise ValueError(f"unknown se_kernel '{choice}' (from {source}); choose one of: {', '.join(SE_KERNELS)}")
    return choice


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # found without importing it


def triton_available() -> bool:
    return _TRITON_INSTALLED


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_unavailable_reason(device: torch.device):
    """Why se_kernel=triton cannot run on `device` (None when it can)."""
    if not triton_available():
        return "se_kernel=triton needs the triton package (it comes with torch's CUDA builds); use se_kernel=torch"
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return (f"se_kernel=triton runs on CUDA tensors, not {device.type} (CPU only with TRITON_INTERPRET=1 "
                "set before triton is imported); use se_kernel=auto or torch")
    return None


def resolve_se_kernel(choice: str, device: torch.device, channels_last: bool, compiling: bool) -> str:
    """The implementation `choice` runs: 'triton' or 'torch' (raises where triton is asked for but cannot run)."""
    if choice == "triton":
        reason = triton_unavailable_reason(device)
        if reason:
            raise KernelUnavailableError(reason)
        return "triton"
    if choice == "auto" and device.type == "cuda" and triton_available() and channels_last and (
            AUTO_KERNELS_WHEN_COMPILED or not compiling):
        return "triton"
    return "torch"


def use_triton(choice: str, x: torch.Tensor) -> bool:
    """Whether the SE tail of `x` (the block's conv output) runs the fused kernels under `choice`."""
    if choice == "torch":
        return False
    return resolve_se_kernel(choice, x.device, x.is_contiguous(memory_format=torch.channels_last),
                             torch.compiler.is_compiling()) == "triton"
