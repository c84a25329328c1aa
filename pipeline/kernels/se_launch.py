"""Launches of the fused SE-tail kernels: allocation, tile sizes and the tiny excitation MLP around them.

Big tensors are handled in channels_last (a copy only when a caller passes another layout); everything of
size (B, C) or smaller is fp32. The excitation runs in fp32 with autocast off: it is a few MFLOP, and the
kernels read its fp32 logits (the sigmoid is applied inside them, one launch fewer).
"""
import contextlib
import os
from typing import Callable, Optional

import torch
import triton

from pipeline.kernels import interpreting, layout, se_triton as kernels

Tensor = torch.Tensor
FINALIZE_BLOCK_B, FINALIZE_BLOCK_C = 64, 16
# (BLOCK_HW, BLOCK_C, warps) tried by Triton's autotuner at the first call per (C, H*W) on a GPU; the first is
# used where nothing is tuned (TRITON_INTERPRET, or SSENET_AUTOTUNE=0 for quick GPU tests)
REDUCE_TILES = ((16, 64, 4), (32, 64, 4), (64, 64, 8), (32, 128, 8))
ELEMENTWISE_TILES = ((32, 64, 4), (64, 64, 8), (16, 128, 4), (32, 128, 8))
AUTOTUNE = os.environ.get("SSENET_AUTOTUNE", "1") != "0"


def _tuned(kernel, tiles):
    configs = [triton.Config({"BLOCK_HW": hw, "BLOCK_C": c}, num_warps=warps) for hw, c, warps in tiles]
    return triton.autotune(configs, key=["C", "HW"])(kernel)


_TUNED = {kernel: _tuned(kernel, tiles) for kernel, tiles in (
    (kernels.z_stats_kernel, REDUCE_TILES), (kernels.grad_reduce_kernel, REDUCE_TILES),
    (kernels.apply_kernel, ELEMENTWISE_TILES), (kernels.grad_apply_kernel, ELEMENTWISE_TILES))}


def _launch_tiled(kernel, tiles, grid: Callable[[dict], tuple], *args, **constexprs) -> None:
    """Launch a tiled kernel; `grid` maps the tile sizes to the launch grid."""
    if AUTOTUNE and not interpreting():
        _TUNED[kernel][grid](*args, **constexprs)
        return
    block_hw, block_c, warps = tiles[0]
    tile = {"BLOCK_HW": block_hw, "BLOCK_C": block_c}
    kernel[grid(tile)](*args, **constexprs, **tile, num_warps=warps)


# tests set this: every buffer a kernel must write starts as NaN, so a missed write cannot pass as a stale value
POISON_OUTPUTS = False


def allocate(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def channels_last(x: Tensor) -> Tensor:
    return x if x.is_contiguous(memory_format=torch.channels_last) else x.contiguous(
        memory_format=torch.channels_last)


def empty_channels_last(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    batch, channels, height, width = shape
    return allocate((batch, height, width, channels), dtype, device).permute(0, 3, 1, 2)


def _grids(batch: int, channels: int, spatial: int):
    """Launch grids as functions of the tile: reductions over (C blocks, B), elementwise (HW blocks, C blocks, B)."""
    def reduce_grid(tile):
        return triton.cdiv(channels, tile["BLOCK_C"]), batch

    def elementwise_grid(tile):
        return triton.cdiv(spatial, tile["BLOCK_HW"]), triton.cdiv(channels, tile["BLOCK_C"]), batch
    return reduce_grid, elementwise_grid


def _on_device(x: Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _corrected_count(spatial: int) -> float:
    """Divisor of the unbiased variance over H*W (torch's correction falls back to 0 on a 1x1 map)."""
    return float(max(spatial - 1, 1))


def forward(z: Tensor, identity: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
            w1: Tensor, w2: Tensor, filters: Optional[Tensor], filter_sum: Optional[Tensor],
            random_squeeze: Optional[Tensor], mode: int, training: bool, eps: float, std_eps: float,
            batches_tracked: Optional[Tensor] = None, momentum: float = 0.0):
    """(out, stats, channel, squeeze, hidden, logits); see layout for what each holds. With `batches_tracked`
    (training only) BN's running estimates and batch count are updated in place, as nn.BatchNorm2d does."""
    batch, channels, height, width = z.shape
    spatial = height * width
    if training and batch * spatial <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(z.shape)}")
    out_dtype = torch.promote_types(z.dtype, identity.dtype)
    z, identity = channels_last(z), channels_last(identity.to(out_dtype))
    fp32 = dict(dtype=torch.float32, device=z.device)
    reduce_grid, elementwise_grid = _grids(batch, channels, spatial)
    extremes, filtered = layout.uses_extremes(mode), layout.uses_filter(mode)
    stats = allocate((layout.STAT_ROWS, batch, channels), **fp32)
    channel = allocate((layout.CHANNEL_ROWS, channels), **fp32)
    squeeze = random_squeeze.float() if mode == layout.RANDOM else allocate((batch, channels), **fp32)
    out = empty_channels_last(z.shape, out_dtype, z.device)
    with _on_device(z):
        _launch_tiled(kernels.z_stats_kernel, REDUCE_TILES, reduce_grid, z, filters if filtered else stats, stats,
                      batch, channels, spatial, EXTREMES=extremes, FILTER=filtered)
        kernels.forward_finalize_kernel[(triton.cdiv(channels, FINALIZE_BLOCK_C),)](
            stats, running_mean, running_var, stats if batches_tracked is None else batches_tracked, weight, bias,
            filter_sum if filtered else stats, channel, squeeze, batch, channels, spatial,
            _corrected_count(spatial), eps, std_eps, momentum, TRAINING=training,
            UPDATE=batches_tracked is not None, MODE=mode, BLOCK_B=FINALIZE_BLOCK_B, BLOCK_C=FINALIZE_BLOCK_C)
        with torch.autocast(z.device.type, enabled=False):
            hidden = torch.mm(squeeze, w1.float().t()).relu_()
            logits = torch.mm(hidden, w2.float().t())
        _launch_tiled(kernels.apply_kernel, ELEMENTWISE_TILES, elementwise_grid, z, identity, out, logits, channel,
                      weight, bias, channels, spatial)
    return out, stats, channel, squeeze, hidden, logits


def backward(grad: Tensor, out: Tensor, z: Tensor, stats: Tensor, channel: Tensor, squeeze: Tensor, hidden: Tensor,
             logits: Tensor, weight: Tensor, bias: Tensor, w1: Tensor, w2: Tensor, filters: Optional[Tensor],
             filter_sum: Optional[Tensor], mode: int, training: bool, std_eps: float):
    """(dz, d_identity, d_weight, d_bias, d_w1, d_w2) of the tail's output gradient `grad`."""
    batch, channels, height, width = z.shape
    spatial = height * width
    grad, out, z = channels_last(grad), channels_last(out), channels_last(z)
    fp32 = dict(dtype=torch.float32, device=z.device)
    reduce_grid, elementwise_grid = _grids(batch, channels, spatial)
    extremes, filtered = layout.uses_extremes(mode), layout.uses_filter(mode)
    reduced = allocate((3, batch, channels), **fp32)
    coefficients = allocate((layout.COEF_ROWS, batch, channels), **fp32)
    weight_grad, bias_grad = allocate((channels,), **fp32), allocate((channels,), **fp32)
    dz = empty_channels_last(z.shape, z.dtype, z.device)
    d_identity = empty_channels_last(z.shape, out.dtype, z.device)
    with _on_device(z):
        _launch_tiled(kernels.grad_reduce_kernel, REDUCE_TILES, reduce_grid, grad, out, z, channel, weight, bias,
                      logits, reduced, batch, channels, spatial)
        logits_grad = reduced[2]
        with torch.autocast(z.device.type, enabled=False):
            w2_grad = torch.mm(logits_grad.t(), hidden)
            hidden_grad = torch.ops.aten.threshold_backward(torch.mm(logits_grad, w2.float()), hidden, 0)
            w1_grad = torch.mm(hidden_grad.t(), squeeze)
            squeeze_grad = logits if mode == layout.RANDOM else torch.mm(hidden_grad, w1.float())  # unread if random
        kernels.backward_finalize_kernel[(triton.cdiv(channels, FINALIZE_BLOCK_C),)](
            stats, reduced, squeeze_grad, logits, channel, weight, bias, filter_sum if filtered else stats,
            coefficients, weight_grad, bias_grad, batch, channels, spatial, _corrected_count(spatial), std_eps,
            TRAINING=training, MODE=mode, BLOCK_B=FINALIZE_BLOCK_B, BLOCK_C=FINALIZE_BLOCK_C)
        _launch_tiled(kernels.grad_apply_kernel, ELEMENTWISE_TILES, elementwise_grid, grad, out, z,
                      filters if filtered else stats, stats, coefficients, dz, d_identity, batch, channels, spatial,
                      EXTREMES=extremes, FILTER=filtered)
    return (dz, d_identity, weight_grad.to(weight.dtype), bias_grad.to(bias.dtype), w1_grad.to(w1.dtype),
            w2_grad.to(w2.dtype))
