"""The fused kernels' algorithm in torch ops, for torch.compile to turn into kernels itself (se_kernel=closed-form).

The reference computes y = BN(z), writes it, and reduces it again for the squeeze; its backward goes through
both. Under inductor that moves 5.1 GB (gap) to 7.6 GB (gmp, std) per SE-ResNet-50 layer1 tail at 192 px,
batch 256, against 3.6 GB for torchvision's plain BN + add + ReLU (`scripts/inductor_traffic.py`). Here, as in
the Triton kernels, one pass of per-(b, c) statistics of z gives BN's batch statistics and the squeeze of y in
closed form (y is never formed), and the output is one pointwise pass. Autograd's backward of these ops is one
reduction and one pointwise pass over the big tensors, which inductor fuses with the ReLU's mask: 3.5 GB for
every squeeze, and no custom op for the host to dispatch. A stage's first block folds its downsample BN the
same way (4.39 GB, torchvision's 4.38). In eager mode every intermediate is materialised, so this gains
nothing there (the kernels or the reference serve eager runs).
"""
from typing import Optional

import torch
from torch import nn

from pipeline.kernels.layout import AVGMAX, FCA, GAP, GAPXSTD, GMP, RANDOM, STD
from pipeline.kernels.se_ops import follow_batch_statistics
from pipeline.squeeze import STD_EPS

Tensor = torch.Tensor


def closed_form_tail(z: Tensor, identity: Tensor, bn: nn.BatchNorm2d, excite: nn.Module, mode: int,
                     filters: Optional[Tensor] = None, filter_sum: Optional[Tensor] = None,
                     random_squeeze: Optional[Tensor] = None, identity_bn: Optional[nn.BatchNorm2d] = None) -> Tensor:
    """relu(excite(squeeze(bn(z))) * bn(z) + identity) with bn's running statistics updated as bn would; with
    `identity_bn` (a downsample's BN, `identity` its input) relu(... + identity_bn(identity)), that BN from the
    same per-(b, c) statistics, so that its backward's sums over H*W fuse with the tail's.
    `filters`, `filter_sum`: fca's DCT filters as the kernels take them ((H*W, C), and their sum over H*W, both
    cached by the squeeze module); `random_squeeze`: the draw of the `random` arm."""
    accumulate = torch.promote_types(z.dtype, torch.float32)  # fp32 statistics of bf16 activations
    values, spatial = z.to(accumulate), z.shape[2] * z.shape[3]
    variance, mean = torch.var_mean(values, dim=(2, 3), correction=0)  # per (b, c)
    scale, shift = _batch_norm_affine(bn, mean, variance, spatial)
    squeezed = _squeeze(values, mean, variance, scale, shift, bn.weight, mode, filters, filter_sum, random_squeeze)
    # the excitation in fp32 (the weights' dtype), as the kernels run it: under autocast its two products would
    # add weight and gradient casts (17 kernels in a compiled tail instead of 13) to products of microseconds
    with torch.autocast(z.device.type, enabled=False):
        gate = excite(squeezed.to(excite[0].weight.dtype)).to(accumulate)
    residual = identity.to(accumulate)
    if identity_bn is not None:
        identity_variance, identity_mean = torch.var_mean(residual, dim=(2, 3), correction=0)
        identity_scale, identity_shift = _batch_norm_affine(identity_bn, identity_mean, identity_variance, spatial)
        # per (b, c), as z's: the gradient's sums over H*W then share the iteration space of the tail's
        batch = z.shape[0]
        residual = residual * identity_scale.expand(batch, -1)[:, :, None, None] + \
            identity_shift.expand(batch, -1)[:, :, None, None]
    out = values * (scale * gate)[:, :, None, None] + (shift * gate)[:, :, None, None] + residual
    return torch.relu(out).to(torch.promote_types(z.dtype, identity.dtype))


def _batch_norm_affine(bn: nn.BatchNorm2d, mean: Tensor, variance: Tensor, spatial: int):
    """Per-channel (scale, shift) with bn(x) = x * scale + shift, from x's per-(b, c) mean and
    biased variance over `spatial` positions: in training the batch statistics by the law of total variance
    (and bn's running estimates follow them), in eval the running estimates."""
    if bn.training:
        batch_mean = mean.mean(0)
        batch_variance = variance.mean(0) + (mean - batch_mean).square().mean(0)
        count = mean.shape[0] * spatial
        follow_batch_statistics(bn, batch_mean.detach(), batch_variance.detach() * count / max(count - 1, 1))
    else:
        batch_mean, batch_variance = bn.running_mean.to(mean.dtype), bn.running_var.to(mean.dtype)
    scale = bn.weight.to(mean.dtype) * torch.rsqrt(batch_variance + bn.eps)
    return scale, bn.bias.to(mean.dtype) - batch_mean * scale


def _squeeze(values: Tensor, mean: Tensor, variance: Tensor, scale: Tensor, shift: Tensor, gamma: Tensor, mode: int,
             filters: Optional[Tensor], filter_sum: Optional[Tensor], random_squeeze: Optional[Tensor]) -> Tensor:
    """The squeeze (B, C) of y = values * scale + shift from z's per-(b, c) statistics (gamma: BN's weight, whose
    sign says which extreme of z the max of y is at)."""
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
        table = filters.t().view(values.shape[1:])  # (H*W, C) as (C, H, W): a view, no copy
        filtered = ((values - first) * table).sum((2, 3))
        return scale * filtered + (scale * first[:, :, 0, 0] + shift) * filter_sum
    if mode == RANDOM:
        return random_squeeze.to(values.dtype)
    raise ValueError(f"no closed form for squeeze mode {mode}")
