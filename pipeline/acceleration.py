"""Mixed precision, memory format, DDP and torch.compile: one helper each, so the loop stays plain."""
import contextlib
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.kernels import gpu_too_old_for_triton


@dataclass(frozen=True)
class Precision:
    name: str  # bf16, fp16 or fp32
    device_type: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """fp16 needs loss scaling; bf16 has fp32's range and does not."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def choose_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on GPUs that compute in it (capability 8.0 and newer), fp16 on older GPUs, fp32 on the CPU
    (CPU bf16 is slower here). torch's bf16 test counts emulation as support by default: it said bf16 on a T4
    or V100, which has no bf16 arithmetic."""
    if requested == "auto":
        if device.type == "cuda":
            requested = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            requested = "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise UserError("training.precision fp16 needs a GPU (fp16 autocast with GradScaler); use bf16 or fp32")
    return Precision(requested, device.type)


def tune_convolutions(device: torch.device) -> None:
    """cuDNN's autotuner (as ffcv-imagenet): convolution algorithms timed once per shape, which the fixed
    shapes of training (one per resolution) repay."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def to_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if enabled else model


def wrap_ddp(model: nn.Module, device: torch.device, distributed: bool) -> nn.Module:
    if not distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def compile_mode_used(choice: str, device: torch.device, distributed: bool) -> str:
    """training.compile's `auto`: reduce-overhead on one GPU (torch.compile with CUDA graphs: the fastest
    configuration measured, benchmarks/RESULTS.md), default under DDP (there the graphs are split at the gradient
    buckets, and BatchNorm's running statistics, mutated inside the pieces, are reported to keep CUDA graphs off
    with a large slowdown: pytorch/pytorch#139207), none on the CPU (compiling costs more than it saves in the
    short runs a CPU does) and on GPUs Triton does not compile for. Any other value as given (refused there)."""
    too_old = gpu_too_old_for_triton(device)
    if choice not in ("auto", "none") and too_old:
        raise UserError(f"training.compile={choice} needs a GPU of CUDA capability 7.0 or newer (inductor compiles "
                        f"with Triton): {too_old}; use training.compile=none (or auto)")
    if choice != "auto":
        return choice
    if device.type != "cuda" or too_old:
        return "none"
    return "default" if distributed else "reduce-overhead"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def maybe_compile(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile with `mode` ('none' = eager). Compilation itself happens lazily at the first step; each
    training resolution gets its own static graph (two in the ffcv recipes' 160 -> 192 ramp) rather than one
    slower dynamic-shape graph."""
    if mode == "none":
        return model
    compiled = torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
    plain = unwrap(model)
    if any(getattr(module, "builds_per_feature_size", False) for module in plain.modules()):
        compiled.register_forward_pre_hook(FeatureSizeWarmup(plain))
    return compiled


class FeatureSizeWarmup:
    """Forward pre-hook of a compiled model with modules that build and cache tensors per feature size (fca's
    DCT filters): at each input size not seen before, one eager forward of one image (eval mode, no grad) builds
    them before dynamo traces. Built while tracing, they were a side effect that dynamo then guarded on, and each
    resolution compiled twice."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.seen = set()

    def __call__(self, compiled: nn.Module, args: tuple) -> None:
        if not args or not isinstance(args[0], torch.Tensor):  # called by keyword: traced as it comes
            return
        images = args[0]
        key = (tuple(images.shape[2:]), images.device)
        if key in self.seen:
            return
        build_per_size_tensors(self.model, images)
        self.seen.add(key)


def build_per_size_tensors(model: nn.Module, images: torch.Tensor) -> None:
    """One eager forward of the first image in eval mode without gradients, each module's mode restored after:
    it fills the caches of tensors built per feature size (fca's filters) and changes no other state."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(images[:1])
    finally:
        for module, training in modes:
            module.training = training


class Stopwatch:
    """Wall time that waits for queued GPU work, so timings measure work, not kernel launches."""

    def __init__(self, device: torch.device):
        self.device = device
        self.started = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def elapsed(self) -> float:
        return self._now() - self.started
