"""Squeeze operations for Squeeze-and-Excitation: a registry from name to a (B,C,H,W) -> (B,C) module.

The seed (SsENet.PyTorch) compares gap, gmp, std, gapXstd and random; `avgmax` follows CBAM / timm's
`add_maxpool` and `fca` follows FcaNet (Qin et al., arXiv 2012.11879). `baseline` is not an op: it means
"no SE block at all" and is handled by the model builder.
"""
import math
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from pipeline.errors import UserError

BASELINE = "baseline"

# name -> builder(channels) -> nn.Module mapping (B, C, H, W) to (B, C)
_REGISTRY: Dict[str, Callable[[int], nn.Module]] = {}


class UnknownSqueezeError(UserError, ValueError):
    """A squeeze name that is not registered; the message lists the valid ones."""


def register(name: str):
    """Register a squeeze builder under `name`; a function (x -> z) is wrapped into a module."""

    def decorate(builder):
        if name in _REGISTRY or name == BASELINE:
            raise ValueError(f"squeeze '{name}' is registered twice")
        if isinstance(builder, type) and issubclass(builder, nn.Module):
            _REGISTRY[name] = builder
        else:
            _REGISTRY[name] = lambda channels: _FunctionSqueeze(name, builder)
        return builder

    return decorate


def squeeze_names(include_baseline: bool = True) -> List[str]:
    """Every valid `--squeeze` value, sorted (baseline first when included)."""
    names = sorted(_REGISTRY, key=str.lower)
    return ([BASELINE] + names) if include_baseline else names


def check_squeeze_name(name: str, source: str = "squeeze") -> str:
    """Return `name` if valid, else raise a one-line error that names the source and lists the valid names."""
    if name != BASELINE and name not in _REGISTRY:
        valid = ", ".join(sorted(squeeze_names(), key=str.lower))
        raise UnknownSqueezeError(f"unknown squeeze '{name}' (from {source}); choose one of: {valid}")
    return name


def build_squeeze(name: str, channels: int) -> nn.Module:
    """Build the squeeze module `name` for a block with `channels` output channels."""
    check_squeeze_name(name)
    if name == BASELINE:
        raise ValueError("'baseline' has no squeeze op: it means no SE block (the model builder skips it)")
    return _REGISTRY[name](channels)


class _FunctionSqueeze(nn.Module):
    """Wraps a stateless squeeze function so that every op is a module (printable, swappable)."""

    def __init__(self, name: str, function: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.name = name
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)

    def extra_repr(self) -> str:
        return self.name


@register("gap")
def global_average(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling, the SENet squeeze. `mean` beats adaptive pooling in channels_last."""
    return x.mean((2, 3))


@register("gmp")
def global_max(x: torch.Tensor) -> torch.Tensor:
    """Global max pooling."""
    return x.amax((2, 3))


STD_EPS = 1e-5


def _spatial_var_mean(x: torch.Tensor):
    """Variance (unbiased) and mean over H*W as fp32 tensors.

    torch's var_mean accumulates bf16/fp16 inputs in fp32 (Welford, no E[x^2]-E[x]^2 cancellation), so the
    reduction runs on the activation as it is: no fp32 copy of it (measured +7-12% step speed on an H200,
    REFERENCE §4). Only the (B, C) result is rounded to the input dtype before it is widened again.
    Correction falls back to 0 on a 1x1 map, where the unbiased estimate is undefined.
    """
    spatial = x.shape[2] * x.shape[3]
    variance, mean = torch.var_mean(x, dim=(2, 3), correction=min(1, spatial - 1))
    return variance.float(), mean.float()


@register("std")
def spatial_std(x: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviation over H*W: sqrt(var + eps) in fp32, unbiased as the seed's `torch.std`.

    The eps keeps the gradient finite at step 0, where zero-init of the last BN makes every input exactly 0.
    """
    variance, _ = _spatial_var_mean(x)
    return torch.sqrt(variance + STD_EPS).to(x.dtype)


@register("gapXstd")
def mean_times_std(x: torch.Tensor) -> torch.Tensor:
    """gap * std (the seed's product), both from one var_mean pass."""
    variance, mean = _spatial_var_mean(x)
    return (mean * torch.sqrt(variance + STD_EPS)).to(x.dtype)


@register("avgmax")
def average_plus_max(x: torch.Tensor) -> torch.Tensor:
    """0.5 * mean + 0.5 * max, as CBAM's pair of descriptors summed and timm's `add_maxpool`."""
    return 0.5 * x.mean((2, 3)) + 0.5 * x.amax((2, 3))


@register("random")
class RandomSqueeze(nn.Module):
    """U[0,1) per sample and channel, never computed from the input: the seed's control arm.

    Training draws fresh values from the global RNG on every forward (as the seed). Evaluation draws from
    the module's own generator, re-seeded whenever the module enters eval mode, so two evaluation passes
    of the same weights give the same accuracy. Device and dtype follow the input (the seed's
    `x.get_device()` failed on CPU).
    """

    def __init__(self, channels: int, eval_seed: int = 0):
        super().__init__()
        self.eval_seed = eval_seed
        self._eval_generator = None

    def train(self, mode: bool = True):
        self._eval_generator = None  # re-seeded lazily at the next eval forward
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:2]
        if self.training:
            return torch.rand(shape, device=x.device, dtype=x.dtype)
        if self._eval_generator is None or self._eval_generator.device != x.device:
            self._eval_generator = torch.Generator(device=x.device).manual_seed(self.eval_seed)
        return torch.rand(shape, generator=self._eval_generator, device=x.device, dtype=x.dtype)


# FcaNet's "top16" selection on a 7x7 DCT grid: (u, v) frequency pairs, most useful first (paper, Fig. 4).
FCA_TOP16 = (
    (0, 0), (0, 1), (6, 0), (0, 5), (0, 2), (1, 0), (1, 2), (4, 0),
    (5, 0), (1, 6), (3, 0), (0, 4), (0, 6), (0, 3), (3, 5), (2, 2),
)
FCA_GRID = 7


def _dct_basis(frequency: float, size: int) -> torch.Tensor:
    """Orthonormal 1-D DCT-II basis vector of a (possibly fractional) frequency over `size` positions."""
    positions = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi * frequency * (positions + 0.5) / size) / math.sqrt(size)
    return basis * (math.sqrt(2) if frequency != 0 else 1.0)


def fca_filters(channels: int, height: int, width: int) -> torch.Tensor:
    """(C, H, W) DCT filters: channel group g uses FcaNet frequency g, scaled from the 7x7 grid to H x W."""
    groups = len(FCA_TOP16)
    if channels % groups:
        raise ValueError(f"fca squeeze needs channels divisible by {groups}, got {channels}")
    filters = torch.stack([
        torch.outer(_dct_basis(u * height / FCA_GRID, height), _dct_basis(v * width / FCA_GRID, width))
        for u, v in FCA_TOP16
    ])
    return filters.repeat_interleave(channels // groups, dim=0).float()


@register("fca")
class MultiSpectralSqueeze(nn.Module):
    """FcaNet multi-spectral squeeze: each channel group pooled with one fixed 2-D DCT basis.

    The filters depend on the feature size, which changes with progressive resizing, so they are built
    per (H, W, device) and cached rather than stored: the state_dict stays resolution-free. The DC group
    equals gap times sqrt(H*W). Under torch.compile, `acceleration.maybe_compile` builds them before tracing
    (`builds_per_feature_size`), so that each resolution compiles once.
    """

    builds_per_feature_size = True

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        # (H, W, device) -> the filters in both layouts, built together: whichever path fills the cache (an eager
        # warm-up in the torch ops, a traced step in the kernels), the other finds it filled
        self._filters: Dict[tuple, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _built_for(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (x.shape[2], x.shape[3], x.device)
        if key not in self._filters:
            filters = fca_filters(self.channels, x.shape[2], x.shape[3]).to(x.device)
            flat = filters.flatten(1).t().contiguous()
            self._filters[key] = (filters, flat, flat.sum(0))
        return self._filters[key]

    def kernel_filters(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The filters as the fused kernels read them: (H*W, C) in fp32, and their sum over H*W per channel."""
        return self._built_for(x)[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filters = self._built_for(x)[0]
        return torch.einsum("bchw,chw->bc", x.float(), filters).to(x.dtype)
