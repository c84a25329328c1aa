"""The fused SE tail relu(SE(BN(z)) + identity) as torch custom ops with a hand-written backward.

Registered with torch.library so that torch.compile traces a model through them without graph breaks (the
fake implementations give shapes and strides) and autograd runs `se_tail_backward`. The block's BN is folded
in, so y = BN(z) is recomputed from z rather than stored: the SE arms keep the plain network's activations.
The caller updates BN's running statistics from the returned batch statistics, as nn.BatchNorm2d would.
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
                    filter_sum: Optional[Tensor], random_squeeze: Optional[Tensor], mode: int, training: bool,
                    eps: float) -> Tuple[Tensor, Tensor]:
    """(out, the fp32 workspace the backward reads: statistics, BN's per-channel rows, squeeze, hidden, logits)."""
    return _launch().forward(z, identity, weight, bias, running_mean, running_var, w1, w2, filters, filter_sum,
                             random_squeeze, mode, training, eps, STD_EPS)


@se_tail_forward.register_fake
def _se_tail_forward_shapes(z, identity, weight, bias, running_mean, running_var, w1, w2, filters, filter_sum,
                            random_squeeze, mode, training, eps):
    batch, channels = z.shape[:2]
    size = layout.forward_workspace_size(batch, channels, w1.shape[0])
    return (_like_channels_last(z, torch.promote_types(z.dtype, identity.dtype)),
            torch.empty((size,), dtype=torch.float32, device=z.device))


@torch.library.custom_op("ssenet::se_tail_backward", mutates_args=())
def se_tail_backward(grad: Tensor, out: Tensor, z: Tensor, work: Tensor, weight: Tensor, bias: Tensor, w1: Tensor,
                     w2: Tensor, filters: Optional[Tensor], filter_sum: Optional[Tensor], mode: int,
                     training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dz, d_identity, d_bn_weight, d_bn_bias, d_w1, d_w2)."""
    return _launch().backward(grad, out, z, work, weight, bias, w1, w2, filters, filter_sum, mode, training,
                              STD_EPS)


@se_tail_backward.register_fake
def _se_tail_backward_shapes(grad, out, z, work, weight, bias, w1, w2, filters, filter_sum, mode, training):
    return (_like_channels_last(z, z.dtype), _like_channels_last(z, out.dtype),
            torch.empty_like(weight), torch.empty_like(bias), torch.empty_like(w1), torch.empty_like(w2))


def _remember(ctx, z, outputs, weight, bias, w1, w2, filters, filter_sum, mode, training) -> None:
    """What the backward needs, saved the same way by the custom op and the eager Function."""
    out, work = outputs
    ctx.save_for_backward(out, z, work, weight, bias, w1, w2, filters, filter_sum)
    ctx.mode, ctx.training = mode, training


def _backward_arguments(ctx, grad) -> tuple:
    """se_tail_backward's arguments (without std_eps) from what `_remember` saved."""
    return (grad, *ctx.saved_tensors, ctx.mode, ctx.training)


def _save_for_backward(ctx, inputs, output):
    z, _, weight, bias, _, _, w1, w2, filters, filter_sum, _, mode, training, _ = inputs
    _remember(ctx, z, output, weight, bias, w1, w2, filters, filter_sum, mode, training)


def _backward(ctx, grad, *unused_grads):
    dz, d_identity, d_weight, d_bias, d_w1, d_w2 = se_tail_backward(*_backward_arguments(ctx, grad))
    return dz, d_identity, d_weight, d_bias, None, None, d_w1, d_w2, None, None, None, None, None, None


se_tail_forward.register_autograd(_backward, setup_context=_save_for_backward)


class _EagerTail(torch.autograd.Function):
    """The same kernels without the custom-op dispatch, whose host cost eager mode pays at every call; BN's
    running estimates are updated inside the statistics kernel."""

    @staticmethod
    def forward(ctx, z, identity, weight, bias, w1, w2, bn, filters, filter_sum, random_squeeze, mode):
        update = bn.training  # batch statistics, and the running estimates follow them
        outputs = _launch().forward(
            z, identity, weight, bias, bn.running_mean, bn.running_var, w1, w2, filters, filter_sum, random_squeeze,
            mode, update, bn.eps, STD_EPS, bn.num_batches_tracked if update else None, bn.momentum)
        _remember(ctx, z, outputs, weight, bias, w1, w2, filters, filter_sum, mode, update)
        return outputs[0]

    @staticmethod
    def backward(ctx, grad):
        dz, d_identity, d_weight, d_bias, d_w1, d_w2 = _launch().backward(*_backward_arguments(ctx, grad), STD_EPS)
        return dz, d_identity, d_weight, d_bias, d_w1, d_w2, None, None, None, None, None


def fused_se_tail(z: Tensor, identity: Tensor, bn: nn.BatchNorm2d, w1: Tensor, w2: Tensor, mode: int,
                  filters: Optional[Tensor] = None, filter_sum: Optional[Tensor] = None,
                  random_squeeze: Optional[Tensor] = None) -> Tensor:
    """relu(SE(bn(z)) + identity) in the fused kernels, with bn's running statistics updated as bn would.

    Eager calls go through a plain autograd.Function; under torch.compile the custom ops are traced instead
    and the running statistics are updated here, where inductor fuses the update.
    """
    if not torch.compiler.is_compiling():
        return _EagerTail.apply(z, identity, bn.weight, bn.bias, w1, w2, bn, filters, filter_sum, random_squeeze,
                                mode)
    out, work = se_tail_forward(z, identity, bn.weight, bn.bias, bn.running_mean, bn.running_var, w1, w2, filters,
                                filter_sum, random_squeeze, mode, bn.training, bn.eps)
    if bn.training:
        channels = z.shape[1]
        rows = layout.channel_row_offset(z.shape[0], channels)
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            bn.running_mean.lerp_(work[rows:rows + channels], bn.momentum)
            bn.running_var.lerp_(work[rows + 2 * channels:rows + 3 * channels], bn.momentum)
    return out


def supports_batch_norm(bn: nn.Module) -> bool:
    """The kernels fold a plain affine BatchNorm2d with running statistics and a fixed momentum."""
    return (type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and bn.momentum is not None)
