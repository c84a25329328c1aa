"""Will a training run on the CPU fit in the machine's memory? Asked before it starts, since the kernel's
out-of-memory killer ends a run that does not with SIGKILL and not a word (`python pipeline/train.py` with no
recipe, ResNet-50 at batch 512, needs ~40 GB of activations; a laptop swaps first, for minutes).

The estimate is a lower bound: the bytes autograd keeps for the backward pass of one image (what a second
image adds to a forward pass on small probe images, scaled by pixel count: ResNet's feature maps scale exactly
with it at multiples of 32 px), times the batch, plus weights, gradients and momentum. Real peaks were 1.2-1.5x
higher on this project's CPU (ResNet-18/50, four arms), so a refusal does not stop a run that would have fit.
"""
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from pipeline.cgroups import memory_limit
from pipeline.errors import UserError

PROBE_PX = 64
MEMINFO = Path("/proc/meminfo")


class MemoryTooSmallError(UserError):
    """A CPU run whose lower-bound memory need is more than the machine has available."""


def saved_bytes(model: nn.Module, batch: int, precision) -> int:
    """Bytes of the tensors autograd saves for backward in a forward pass of `batch` probe images (a storage
    saved by several ops counts once)."""
    saved = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), precision.autocast():
        model(torch.randn(batch, 3, PROBE_PX, PROBE_PX))
    return sum(saved.values())


def saved_bytes_per_image(model: nn.Module, resolution: int, precision) -> float:
    """Bytes autograd saves for backward per training image at `resolution` px, under `precision`'s autocast:
    what a second probe image adds, so that what is saved once per pass (weights, fca's DCT filters) is not
    counted per image."""
    return (saved_bytes(model, 2, precision) - saved_bytes(model, 1, precision)) * (resolution / PROBE_PX) ** 2


def meminfo_bytes(field: str) -> Optional[int]:
    """A /proc/meminfo field in bytes (MemTotal, MemAvailable, ...), or None elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in MEMINFO.read_text().splitlines() if ":" in line)
        return int(fields[field].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def available_bytes() -> Optional[int]:
    """Linux's estimate of the memory new work can take without swapping (MemAvailable), or less where a cgroup
    limits this process's memory (cgroups.py); None elsewhere."""
    limited = memory_limit()
    return _smaller(meminfo_bytes("MemAvailable"), limited and limited.room)


def memory_bytes() -> Optional[int]:
    """The machine's memory (MemTotal), or a cgroup's memory limit where that is smaller; None elsewhere."""
    limited = memory_limit()
    return _smaller(meminfo_bytes("MemTotal"), limited and limited.limit)


def _smaller(*sizes: Optional[int]) -> Optional[int]:
    known = [size for size in sizes if size is not None]
    return min(known) if known else None


def check_cpu_memory(model: nn.Module, batch_size: int, resolution: int, precision, processes: int,
                     available: Optional[int]) -> None:
    """Refuse a CPU run of `processes` processes (on this machine) that needs more than `available` bytes."""
    if available is None:
        return
    parameters = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    per_image = saved_bytes_per_image(model, resolution, precision)
    needed = processes * (batch_size * per_image + 3 * parameters)  # weights, gradients, momentum
    if needed > available:
        fitting = max(1, int((available / processes - 3 * parameters) / per_image))
        several = f" x {processes} processes" if processes > 1 else ""
        raise MemoryTooSmallError(
            f"training on the CPU at training.batch_size {batch_size}, {resolution} px needs at least "
            f"{needed / 1e9:.1f} GB ({per_image / 1e6:.0f} MB per image{several}), and {available / 1e9:.1f} GB are "
            f"available: lower training.batch_size (at most ~{fitting} fits) or the resolution, or train a CPU "
            "recipe (recipes/sample.yaml)")
