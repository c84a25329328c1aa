"""The fused SE tail relu(SE(BN(z)) + identity) as torch custom ops with a hand-written backward.

Registered with torch.library so that torch.compile traces a model through them without graph breaks (the
fake implementations give shapes and strides) and autograd runs `se_tail_backward`. The block's BN is folded
in, so y = BN(z) is recomputed from z rather than stored: the SE arms keep the plain network's activations.
A downsample's BN on the identity may be folded in too (the `identity_*` arguments). The caller updates the
BNs' running statistics from the returned batch statistics, as nn.BatchNorm2d would.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from pipeline.kernels import layout
from pipeline.squeeze import STD_EPS

Tensor = torch.Tensor


def _launch():
    from pipeline.kernels import se_launch  # imports triton: only when a kernel really runs
    return se_launch


def _like_channels_last(z: Tensor, dtype: torch.dtype) -> Tensor:
    """A fake output with the real one's strides (the kernels write channels_last)."""
    return torch.empty_like(z, dtype=dtype, memory_format=torch.channels_last)


@torch.library.custom_op("ssenet::se_tail_forward", mutates_args=())
def se_tail_forward(z: Tensor, identity: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                    running_var: Tensor, w1: Tensor, w2: Tensor, filters: Optional[Tensor],
                    filter_sum: Optional[Tensor], random_squeeze: Optional[Tensor], identity_weight: Optional[Tensor],
                    identity_bias: Optional[Tensor], identity_running_mean: Optional[Tensor],
                    identity_running_var: Optional[Tensor], mode: int, training: bool, eps: float,
                    identity_eps: float) -> Tuple[Tensor, Tensor]:
    """(out, the fp32 workspace the backward reads: statistics, BN's per-channel rows, squeeze, hidden, logits).
    With `identity_weight` the identity is a downsample conv's output whose BN (the identity_* tensors) is
    folded in."""
    norm = None if identity_weight is None else _identity_norm(
        identity_weight, identity_bias, identity_running_mean, identity_running_var, identity_eps)
    return _launch().forward(z, identity, weight, bias, running_mean, running_var, w1, w2, filters, filter_sum,
                             random_squeeze, mode, training, eps, STD_EPS, identity_norm=norm)


@se_tail_forward.register_fake
def _se_tail_forward_shapes(z, identity, weight, bias, running_mean, running_var, w1, w2, filters, filter_sum,
                            random_squeeze, identity_weight, identity_bias, identity_running_mean,
                            identity_running_var, mode, training, eps, identity_eps):
    batch, channels = z.shape[:2]
    size = layout.forward_workspace_size(batch, channels, w1.shape[0], identity_weight is not None)
    return (_like_channels_last(z, torch.promote_types(z.dtype, identity.dtype)),
            torch.empty((size,), dtype=torch.float32, device=z.device))


@torch.library.custom_op("ssenet::se_tail_backward", mutates_args=())
def se_tail_backward(gdm: Tensor, z: Tensor, work: Tensor, weight: Tensor, bias: Tensor, w1: Tensor, w2: Tensor,
                     filters: Optional[Tensor], filter_sum: Optional[Tensor], identity: Optional[Tensor],
                     identity_weight: Optional[Tensor], mode: int,
                     training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dz, d_identity_input, d_bn_weight, d_bn_bias, d_w1, d_w2, d_identity_bn_weight, d_identity_bn_bias) from
    gdm, the output's gradient masked by the ReLU (which is d_identity). The folded downsample BN's three are
    empty without one (a custom op returns tensors, none an alias of its input)."""
    grads = _launch().backward(gdm, None, z, work, weight, bias, w1, w2, filters, filter_sum, identity,
                               identity_weight, mode, training, STD_EPS)
    folded = identity_weight is not None
    return (grads[0], grads[1] if folded else _no_grad_like(weight), *grads[2:6],
            *(grads[6:] if folded else (_no_grad_like(weight), _no_grad_like(weight))))


def _no_grad_like(weight: Tensor) -> Tensor:
    """The empty stand-in for the folded BN's gradients of a block without one."""
    return weight.new_empty((0,))


@se_tail_backward.register_fake
def _se_tail_backward_shapes(gdm, z, work, weight, bias, w1, w2, filters, filter_sum, identity, identity_weight, mode,
                             training):
    if identity_weight is None:
        folded = (_no_grad_like(weight),) * 3
    else:
        folded = (_like_channels_last(z, identity.dtype), torch.empty_like(identity_weight),
                  torch.empty_like(identity_weight))
    return (_like_channels_last(z, z.dtype), folded[0], torch.empty_like(weight), torch.empty_like(bias),
            torch.empty_like(w1), torch.empty_like(w2), *folded[1:])


def _identity_norm(weight, bias, running_mean, running_var, eps, batches_tracked=None, momentum=0.0):
    """se_launch.IdentityNorm, built here so that importing this module does not import triton."""
    return _launch().IdentityNorm(weight, bias, running_mean, running_var, eps, batches_tracked, momentum)


def _remember(ctx, z, identity, outputs, weight, bias, w1, w2, filters, filter_sum, identity_weight, mode,
              training) -> None:
    """What the backward needs, saved the same way by the custom op and the eager Function (the identity only
    where its BN is folded in: its backward reads it, as BN's would)."""
    out, work = outputs
    folded = identity_weight is not None
    ctx.save_for_backward(out, z, work, weight, bias, w1, w2, filters, filter_sum, identity if folded else None,
                          identity_weight)
    ctx.mode, ctx.training = mode, training


def _backward_arguments(ctx, grad) -> tuple:
    """se_launch.backward's arguments (without std_eps) from what `_remember` saved."""
    return (grad, *ctx.saved_tensors, ctx.mode, ctx.training)


def _save_for_backward(ctx, inputs, output):
    z, identity, weight, bias, _, _, w1, w2, filters, filter_sum, _, identity_weight, _, _, _, mode, training, _, _ \
        = inputs
    _remember(ctx, z, identity, output, weight, bias, w1, w2, filters, filter_sum, identity_weight, mode, training)


def _backward(ctx, grad, *unused_grads):
    """The ReLU's mask is applied here in torch ops, so that inductor fuses it with the sum that makes `grad`
    (the next block's d_identity plus its conv's input gradient) and writes gdm once; the kernels then read
    gdm instead of (grad, out) and do not write it again."""
    out, *saved = ctx.saved_tensors
    gdm = torch.where(out > 0, grad, 0.0)
    dz, d_input, d_weight, d_bias, d_w1, d_w2, d_identity_weight, d_identity_bias = se_tail_backward(
        gdm, *saved, ctx.mode, ctx.training)
    folded = saved[-1] is not None
    return (dz, d_input if folded else gdm, d_weight, d_bias, None, None, d_w1, d_w2, None, None, None,
            d_identity_weight if folded else None, d_identity_bias if folded else None, None, None, None, None, None,
            None)


se_tail_forward.register_autograd(_backward, setup_context=_save_for_backward)


class _EagerTail(torch.autograd.Function):
    """The same kernels without the custom-op dispatch, whose host cost eager mode pays at every call; BN's
    running estimates are updated inside the statistics kernel."""

    @staticmethod
    def forward(ctx, z, identity, weight, bias, w1, w2, bn, filters, filter_sum, random_squeeze, mode,
                identity_weight, identity_bias, identity_bn):
        update = bn.training  # batch statistics, and the running estimates follow them
        norm = None if identity_bn is None else _identity_norm(
            identity_weight, identity_bias, identity_bn.running_mean, identity_bn.running_var, identity_bn.eps,
            identity_bn.num_batches_tracked if update else None, identity_bn.momentum)
        outputs = _launch().forward(
            z, identity, weight, bias, bn.running_mean, bn.running_var, w1, w2, filters, filter_sum, random_squeeze,
            mode, update, bn.eps, STD_EPS, bn.num_batches_tracked if update else None, bn.momentum, norm)
        _remember(ctx, z, identity, outputs, weight, bias, w1, w2, filters, filter_sum, identity_weight, mode, update)
        return outputs[0]

    @staticmethod
    def backward(ctx, grad):
        dz, d_identity, d_weight, d_bias, d_w1, d_w2, d_identity_weight, d_identity_bias = _launch().backward(
            *_backward_arguments(ctx, grad), STD_EPS)
        return (dz, d_identity, d_weight, d_bias, d_w1, d_w2, None, None, None, None, None, d_identity_weight,
                d_identity_bias, None)


def fused_se_tail(z: Tensor, identity: Tensor, bn: nn.BatchNorm2d, w1: Tensor, w2: Tensor, mode: int,
                  filters: Optional[Tensor] = None, filter_sum: Optional[Tensor] = None,
                  random_squeeze: Optional[Tensor] = None, identity_bn: Optional[nn.BatchNorm2d] = None) -> Tensor:
    """relu(SE(bn(z)) + identity) in the fused kernels, with bn's running statistics updated as bn would;
    with `identity_bn` (a downsample's BN, `identity` its input) relu(SE(bn(z)) + identity_bn(identity)).

    Eager calls go through a plain autograd.Function; under torch.compile the custom ops are traced instead
    and the running statistics are updated here, where inductor fuses the update.
    """
    folded = identity_bn is not None
    identity_weight, identity_bias = (identity_bn.weight, identity_bn.bias) if folded else (None, None)
    if not torch.compiler.is_compiling():
        return _EagerTail.apply(z, identity, bn.weight, bn.bias, w1, w2, bn, filters, filter_sum, random_squeeze,
                                mode, identity_weight, identity_bias, identity_bn)
    out, work = se_tail_forward(
        z, identity, bn.weight, bn.bias, bn.running_mean, bn.running_var, w1, w2, filters, filter_sum,
        random_squeeze, identity_weight, identity_bias, identity_bn.running_mean if folded else None,
        identity_bn.running_var if folded else None, mode, bn.training, bn.eps, identity_bn.eps if folded else 0.0)
    if bn.training:
        batch, channels = z.shape[:2]
        _follow_channel_rows(bn, work[layout.channel_row_offset(batch, channels):])
        if folded:
            area = layout.identity_area_offset(batch, channels, w1.shape[0])
            _follow_channel_rows(identity_bn, work[area + layout.channel_row_offset(batch, channels):])
    return out


def _follow_channel_rows(bn: nn.BatchNorm2d, channel_rows: Tensor) -> None:
    """bn's running estimates after a training step, from its per-channel rows in a workspace (layout.py)."""
    channels = bn.num_features
    follow_batch_statistics(bn, channel_rows[:channels], channel_rows[2 * channels:3 * channels])


def follow_batch_statistics(bn: nn.BatchNorm2d, mean: Tensor, unbiased_variance: Tensor) -> None:
    """bn's running estimates and batch count after a training step on a batch with these statistics, as
    nn.BatchNorm2d updates them (in torch ops: under torch.compile inductor fuses the update)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_(unbiased_variance.to(bn.running_var.dtype), bn.momentum)


def supports_batch_norm(bn: nn.Module) -> bool:
    """The kernels fold a plain affine BatchNorm2d with running statistics and a fixed momentum."""
    return (type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and bn.momentum is not None)
