"""The fused kernels' algorithm in torch ops, for torch.compile to turn into kernels itself (se_kernel=closed-form).

The reference computes y = BN(z), writes it, and reduces it again for the squeeze; its backward goes through
both. Under inductor that moves 5.1 GB (gap) to 7.6 GB (gmp, std) per SE-ResNet-50 layer1 tail at 192 px,
batch 256, against 3.6 GB for torchvision's plain BN + add + ReLU (`scripts/inductor_traffic.py`). Here, as in
the Triton kernels, one pass of per-(b, c) statistics of z gives BN's batch statistics and the squeeze of y in
closed form (y is never formed), and the output is one pointwise pass. Autograd's backward of these ops is one
reduction and one pointwise pass over the big tensors, which inductor fuses with the ReLU's mask: 3.5 GB for
every squeeze, and no custom op for the host to dispatch. In eager mode every intermediate is materialised, so
this gains nothing there (the kernels or the reference serve eager runs).
"""
from typing import Optional

import torch
from torch import nn

from pipeline.kernels.layout import AVGMAX, FCA, GAP, GAPXSTD, GMP, RANDOM, STD
from pipeline.kernels.se_ops import follow_batch_statistics
from pipeline.squeeze import STD_EPS

Tensor = torch.Tensor


def closed_form_tail(z: Tensor, identity: Tensor, bn: nn.BatchNorm2d, excite: nn.Module, mode: int,
                     filters: Optional[Tensor] = None, random_squeeze: Optional[Tensor] = None) -> Tensor:
    """relu(excite(squeeze(bn(z))) * bn(z) + identity) with bn's running statistics updated as bn would.
    `filters`: fca's (C, H, W) DCT filters; `random_squeeze`: the draw of the `random` arm."""
    accumulate = torch.promote_types(z.dtype, torch.float32)  # fp32 statistics of bf16 activations
    values = z.to(accumulate)
    spatial = z.shape[2] * z.shape[3]
    variance, mean = torch.var_mean(values, dim=(2, 3), correction=0)  # per (b, c)
    gamma, beta = bn.weight.to(accumulate), bn.bias.to(accumulate)
    if bn.training:  # the batch statistics from the per-sample ones (the law of total variance)
        mean_bn = mean.mean(0)
        variance_bn = variance.mean(0) + (mean - mean_bn).square().mean(0)
        count = z.shape[0] * spatial
        follow_batch_statistics(bn, mean_bn.detach(), variance_bn.detach() * count / max(count - 1, 1))
    else:
        mean_bn, variance_bn = bn.running_mean.to(accumulate), bn.running_var.to(accumulate)
    scale = gamma * torch.rsqrt(variance_bn + bn.eps)
    shift = beta - mean_bn * scale
    squeezed = _squeeze(values, mean, variance, scale, shift, gamma, mode, filters, random_squeeze)
    # the excitation in fp32 (the weights' dtype), as the kernels run it: under autocast its two products would
    # add weight and gradient casts (17 kernels in a compiled tail instead of 13) to products of microseconds
    with torch.autocast(z.device.type, enabled=False):
        gate = excite(squeezed.to(excite[0].weight.dtype)).to(accumulate)
    out = values * (scale * gate)[:, :, None, None] + (shift * gate)[:, :, None, None] + identity.to(accumulate)
    return torch.relu(out).to(torch.promote_types(z.dtype, identity.dtype))


def _squeeze(values: Tensor, mean: Tensor, variance: Tensor, scale: Tensor, shift: Tensor, gamma: Tensor, mode: int,
             filters: Optional[Tensor], random_squeeze: Optional[Tensor]) -> Tensor:
    """The squeeze (B, C) of y = values * scale + shift from z's per-(b, c) statistics."""
    y_mean = mean * scale + shift
    if mode == GAP:
        return y_mean
    if mode in (GMP, AVGMAX):
        # max of y: z's max where scale > 0, its min where scale < 0, found in the statistics pass as the max
        # of z * sign. With scale = 0 every y ties and the reference's amax shares the gradient evenly among
        # the positions, which is the mean's gradient.
        sign = torch.where(gamma.detach() < 0, -1.0, 1.0).to(values.dtype)[:, None, None]
        extreme = torch.amax(values * sign, dim=(2, 3)) * sign[:, 0, 0]
        y_max = torch.where(scale == 0, y_mean, extreme * scale + shift)
        return y_max if mode == GMP else 0.5 * y_mean + 0.5 * y_max
    if mode in (STD, GAPXSTD):
        spatial = values.shape[2] * values.shape[3]
        y_std = torch.sqrt(scale.square() * variance * (spatial / max(spatial - 1, 1)) + STD_EPS)  # unbiased
        return y_std if mode == STD else y_mean * y_std
    if mode == FCA:
        # sum f y = scale * sum f (z - z_first) + y_first * sum f: z about its first position, so that a flat
        # map's part is exact however large its values
        first = values[:, :, :1, :1]
        filtered = ((values - first) * filters).sum((2, 3))
        return scale * filtered + (scale * first[:, :, 0, 0] + shift) * filters.sum((1, 2))
    if mode == RANDOM:
        return random_squeeze.to(values.dtype)
    raise ValueError(f"no closed form for squeeze mode {mode}")
