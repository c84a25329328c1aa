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

The passes over the big tensors have their backward written out (`_PlaneStatistics`, `_FirstAndFiltered`,
`_GatedResidual`), in the kernels' form dz = g * a + (z - mean) * slope + offset (+ gmp's share at its ties, fca's
table term), with each per-(b, c) coefficient computed once (`computed_once`). Left to autograd, inductor inlined
the backward of BN's statistics and of the squeeze into the dz pass and recomputed it at every element, divisions
included: 45 (gap) to 81 (fca) SASS instructions per element for sm90, 5.0 to 9.0 per byte moved, over the 6.2 an
H200 issues per byte of bandwidth for all but gap and random; now 28 to 41, at most 4.5 per byte. The statistics
are sums about z's first position, not inductor's Welford update (20-25 instructions per element, 10-12 per byte;
now 9-11). `scripts/inductor_traffic.py --instructions` counts them.
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
    # the max of y is z's max where gamma > 0 and its min where gamma < 0: the max of z * sign
    sign = torch.where(bn.weight.detach() < 0, -1.0, 1.0).to(accumulate) if mode in (GMP, AVGMAX) else None
    mean, variance, extreme = _PlaneStatistics.apply(values, sign)  # per (b, c)
    scale, shift = _batch_norm_affine(bn, mean, variance, spatial)
    squeezed = _squeeze(values, mean, variance, extreme, scale, shift, mode, filters, filter_sum, random_squeeze)
    # the excitation in fp32 (the weights' dtype), as the kernels run it: under autocast its two products would
    # add weight and gradient casts (17 kernels in a compiled tail instead of 13) to products of microseconds
    with torch.autocast(z.device.type, enabled=False):
        gate = excite(squeezed.to(excite[0].weight.dtype)).to(accumulate)
    residual = identity.to(accumulate)
    if identity_bn is not None:
        identity_mean, identity_variance, _ = _PlaneStatistics.apply(residual, None)
        identity_scale, identity_shift = _batch_norm_affine(identity_bn, identity_mean, identity_variance, spatial)
        # per (b, c), as z's: the gradient's sums over H*W then share the iteration space of the tail's
        batch = z.shape[0]
        residual = residual * _per_plane(identity_scale.expand(batch, -1)) + \
            _per_plane(identity_shift.expand(batch, -1))
    out = _GatedResidual.apply(values, scale * gate, shift * gate, residual)
    return out.to(torch.promote_types(z.dtype, identity.dtype))


# More positions than inductor unrolls a reduction over (its unroll_reductions_threshold, 8): an unrolled one is
# pointwise code, which it inlines like any other
_COMPUTED_ONCE_WIDTH = 16


def computed_once(coefficients: Tensor) -> Tensor:
    """`coefficients` (B, C), unchanged: the max of copies of each. Inductor inlines a pointwise producer into its
    consumer, so a per-(b, c) coefficient of a pass over (B, C, H, W) was recomputed at every element; a reduction
    is where its inlining stops, so under torch.compile this is a buffer written once (a small kernel). Eager
    mode computes each tensor once anyway."""
    if not torch.compiler.is_compiling():
        return coefficients
    return coefficients[..., None].expand(*coefficients.shape, _COMPUTED_ONCE_WIDTH).amax(-1)


def _per_plane(coefficients: Tensor) -> Tensor:
    return coefficients[:, :, None, None]


class _PlaneStatistics(torch.autograd.Function):
    """Per (b, c) over H*W of `values` (fp32 z): mean, biased variance and, with `sign` (C,) of +-1, the extreme
    max(z * sign) * sign (zeros without). The backward is one pass over z with coefficients computed once:
    dz = (z - mean) * slope + offset, plus the extreme's gradient shared evenly among the positions tied at it,
    as the reference's amax shares it."""

    @staticmethod
    def forward(ctx, values: Tensor, sign: Optional[Tensor]):
        # sums of z about its first position (a flat map's are exactly 0): a few instructions an element, where
        # inductor's Welford update for var_mean divides at every one (20 SASS instructions per element for sm90)
        first = values[:, :, :1, :1]
        centred, per_position = values - first, 1.0 / (values.shape[2] * values.shape[3])
        centred_mean = centred.sum((2, 3)) * per_position
        variance = (centred.square().sum((2, 3)) * per_position - centred_mean.square()).clamp_min(0.0)
        mean = first[:, :, 0, 0] + centred_mean
        if sign is None:
            extreme = torch.zeros_like(mean)
        else:
            extreme = torch.amax(values * sign[:, None, None], dim=(2, 3)) * sign
        ctx.save_for_backward(values, mean, extreme, sign)
        return mean, variance, extreme

    @staticmethod
    def backward(ctx, d_mean: Tensor, d_variance: Tensor, d_extreme: Tensor):
        values, mean, extreme, sign = ctx.saved_tensors
        per_position = 1.0 / (values.shape[2] * values.shape[3])
        slope, offset = computed_once(d_variance * (2.0 * per_position)), computed_once(d_mean * per_position)
        d_values = (values - _per_plane(mean)) * _per_plane(slope) + _per_plane(offset)  # slope term 0 at ties
        if sign is not None:
            ties = values * sign[:, None, None] == _per_plane(extreme * sign)
            share = computed_once(d_extreme / ties.sum((2, 3), dtype=values.dtype))
            d_values = d_values + torch.where(ties, _per_plane(share), 0.0)
        return d_values, None


class _GatedResidual(torch.autograd.Function):
    """relu(values * a + b + residual), all fp32, with a, b per (b, c) (the BN's affine times the gate). The
    backward is the ReLU's masked gradient g: g * a for the values, its sums over H*W with them and alone for
    a and b, g itself for the residual. (Both classes return fp32 gradients, which autograd adds before the one
    cast to z's dtype.)"""

    @staticmethod
    def forward(ctx, values: Tensor, a: Tensor, b: Tensor, residual: Tensor):
        out = torch.relu(values * _per_plane(a) + _per_plane(b) + residual)
        ctx.save_for_backward(values, a, out > 0)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        values, a, positive = ctx.saved_tensors
        masked = torch.where(positive, d_out, 0.0)
        return (masked * _per_plane(computed_once(a)), (masked * values).sum((2, 3)), masked.sum((2, 3)),
                masked)


class _FirstAndFiltered(torch.autograd.Function):
    """fca's terms per (b, c): the values at the first position, and the sum over H*W of (values - those) *
    table (C, H, W), whose sum over H*W is `table_sum` (C,). The backward is one pointwise term for the values:
    the filtered sum's gradient times the table, and at the first position the first value's gradient less
    the filtered sum's times table_sum, both coefficients computed once."""

    @staticmethod
    def forward(ctx, values: Tensor, table: Tensor, table_sum: Tensor):
        ctx.save_for_backward(table, table_sum)
        first = values[:, :, :1, :1]
        return first[:, :, 0, 0], ((values - first) * table).sum((2, 3))

    @staticmethod
    def backward(ctx, d_first: Tensor, d_filtered: Tensor):
        table, table_sum = ctx.saved_tensors
        share = computed_once(d_filtered)
        at_first = computed_once(d_first - share * table_sum)
        positions = torch.arange(table.shape[1] * table.shape[2], device=table.device).view(table.shape[1:])
        first_position = positions == 0
        return _per_plane(share) * table + torch.where(first_position, _per_plane(at_first), 0.0), None, None


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


def _squeeze(values: Tensor, mean: Tensor, variance: Tensor, extreme: Tensor, scale: Tensor, shift: Tensor,
             mode: int, filters: Optional[Tensor], filter_sum: Optional[Tensor],
             random_squeeze: Optional[Tensor]) -> Tensor:
    """The squeeze (B, C) of y = z * scale + shift from z's per-(b, c) statistics (`extreme`: max(z * sign) * sign,
    the z at which y is largest)."""
    y_mean = mean * scale + shift
    if mode == GAP:
        return y_mean
    if mode in (GMP, AVGMAX):
        # with scale = 0 every y ties and the reference's amax shares the gradient evenly among the positions,
        # which is the mean's gradient
        y_max = torch.where(scale == 0, y_mean, extreme * scale + shift)
        return y_max if mode == GMP else 0.5 * y_mean + 0.5 * y_max
    if mode in (STD, GAPXSTD):
        spatial = values.shape[2] * values.shape[3]
        y_std = torch.sqrt(scale.square() * variance * (spatial / max(spatial - 1, 1)) + STD_EPS)  # unbiased
        return y_std if mode == STD else y_mean * y_std
    if mode == FCA:
        # sum f y = scale * sum f (z - z_first) + y_first * sum f: z about its first position, so that a flat
        # map's part is exact however large its values
        table = filters.t().view(values.shape[1:])  # (H*W, C) as (C, H, W): a view, no copy
        first, filtered = _FirstAndFiltered.apply(values, table, filter_sum)
        return scale * filtered + (scale * first + shift) * filter_sum
    if mode == RANDOM:
        return random_squeeze.to(values.dtype)
    raise ValueError(f"no closed form for squeeze mode {mode}")
