"""Launches of the fused SE-tail kernels: allocation, tile sizes, launch grids.

Big tensors are handled in channels_last (a copy only when a caller passes another layout); everything of
size (B, C) or smaller is fp32 and lives in one workspace per call and direction (layout.py). The host is
what a fused tail pays for (a launch costs more CPU time than most of these kernels take on the GPU), so a
tail is four launches each way and two allocations besides its outputs: the excitation MLP runs in Triton
too, in fp32 (sigmoid applied where its logits are read). Every launch goes through direct_launch.py, which
skips Triton's per-call argument handling once a kernel is compiled for the call's signature.
"""
import contextlib
import os
from typing import Callable, NamedTuple, Optional

import torch
import triton

from pipeline.kernels import direct_launch, interpreting, layout, se_backward, se_forward

Tensor = torch.Tensor
FINALIZE_BLOCK_C = 16  # channels per program of the two finalize kernels
EXCITE_BLOCK_B = 16  # samples per program of the excitation kernels (tl.dot's smallest tile side)
# The finalize and excitation kernels are latency-bound: microseconds of work in a chain of dependent loads, one
# link per step over the batch (finalize) or the channels (excitation). Per excitation width (hidden units padded
# to a power of two): (samples per step of backward_finalize, channels per step of excite and excite_grad), the
# widest steps ptxas compiles for sm90 at 8 warps without spilling more than a few bytes, with a launch's
# divisibility hints or without (`scripts/compile_kernels.py` prints registers and spills and fails beyond a few
# bytes; the earlier fixed 32 samples / 64 channels at 4 warps spilled 536 bytes in ResNet-50 layer4's
# excitation). backward_finalize at 16 units takes 64 samples, not the 128 that compile: with a downsample BN
# folded in, avgmax's 128 spilled (255 registers, at the edge without the fold too). Shared memory bounds the
# excitations' steps too: Triton pipelines the channel loop through two shared buffers of the step's W tile,
# and excite_grad at 128 units in steps of 256 channels asked 288 KB (an H200 gives a block 227; the launch
# failed there). Both excitations take the same steps: 64 KB at most, which every GPU Triton runs on has.
# forward_finalize takes 128 samples per step at every width.
SMALL_KERNEL_STEPS = {16: (64, 256), 32: (64, 128), 64: (32, 64), 128: (32, 32)}
FORWARD_FINALIZE_BLOCK_B = 128
SMALL_KERNEL_WARPS = 8
# (BLOCK_HW, BLOCK_C, warps) tried by Triton's autotuner at the first call per (C, H*W) on a GPU; the first is
# used where nothing is tuned (TRITON_INTERPRET, or SSENET_AUTOTUNE=0 for quick GPU tests)
REDUCE_TILES = ((16, 64, 4), (32, 64, 4), (64, 64, 8), (32, 128, 8))
ELEMENTWISE_TILES = ((32, 64, 4), (64, 64, 8), (16, 128, 4), (32, 128, 8))
# decided once, as Triton decided at import whether the kernels are interpreted (an environment lookup per launch
# was a measurable part of the host's cost per tail)
AUTOTUNE = os.environ.get("SSENET_AUTOTUNE", "1") != "0" and not interpreting()


def _tuned(kernel, tiles, mode_flags=()):
    """Tuned per shape and per squeeze's work (mode_flags: the kernel's constexpr switches)."""
    configs = [triton.Config({"BLOCK_HW": hw, "BLOCK_C": c}, num_warps=warps) for hw, c, warps in tiles]
    return triton.autotune(configs, key=["C", "HW", *mode_flags])(kernel)


_TUNED = {kernel: _tuned(kernel, tiles, flags) for kernel, tiles, flags in (
    (se_forward.z_stats_kernel, REDUCE_TILES, ("EXTREMES", "FILTER")),
    (se_backward.grad_reduce_kernel, REDUCE_TILES, ("IDENTITY_NORM", "PREMASKED", "EXTREMES")),
    (se_forward.apply_kernel, ELEMENTWISE_TILES, ("IDENTITY_NORM",)),
    (se_backward.grad_apply_kernel, ELEMENTWISE_TILES, ("EXTREMES", "FILTER", "IDENTITY_NORM")))}


# (kernel, C, HW, dtypes) -> the launch options the autotuner chose (tile sizes, warps, stages): later calls
# launch the kernel with them directly, without the autotuner's per-call argument handling
_CHOSEN = {}


def _launch_tiled(kernel, tiles, grid: Callable[[dict], tuple], shape_key: tuple, *args, **constexprs) -> None:
    """Launch a tiled kernel; `grid` maps the tile sizes to the launch grid. `shape_key` (C, H*W and the big
    tensors' dtypes: what the autotuner keys on) finds the tuned choice."""
    if AUTOTUNE:
        key = (kernel, *shape_key)
        options = _CHOSEN.get(key)
        if options is None:
            tuner = _TUNED[kernel]
            tuner[grid](*args, **constexprs)
            _CHOSEN[key] = tuner.best_config.all_kwargs()
            return
    else:
        block_hw, block_c, warps = tiles[0]
        options = {"BLOCK_HW": block_hw, "BLOCK_C": block_c, "num_warps": warps}
    direct_launch.launch(kernel, grid(options), args, {**constexprs, **options})


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


def _cdiv(numerator: int, denominator: int) -> int:
    """Blocks of `denominator` covering `numerator`. Not triton.cdiv: in recent Triton (3.8 here) that is a
    constexpr function whose argument unwrapping cost ~2 us a call on the host, six calls a forward."""
    return -(-numerator // denominator)


def _grids(batch: int, channels: int, spatial: int):
    """Launch grids as functions of the tile: reductions over (C blocks, B), elementwise (HW blocks, C blocks, B)."""
    def reduce_grid(tile):
        return _cdiv(channels, tile["BLOCK_C"]), batch

    def elementwise_grid(tile):
        return _cdiv(spatial, tile["BLOCK_HW"]), _cdiv(channels, tile["BLOCK_C"]), batch
    return reduce_grid, elementwise_grid


def _on_device(x: Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _corrected_count(spatial: int) -> float:
    """Divisor of the unbiased variance over H*W (torch's correction falls back to 0 on a 1x1 map)."""
    return float(max(spatial - 1, 1))


def _hidden_padding(hidden: int) -> int:
    """The excitation's hidden width as a tile dimension: a power of two, at least tl.dot's 16."""
    return max(16, 1 << (hidden - 1).bit_length())  # not triton.next_power_of_2 (see _cdiv)


def small_kernel_steps(padded_hidden: int) -> tuple:
    """SMALL_KERNEL_STEPS for an excitation padded to `padded_hidden` units; wider than measured (a reduction
    below 16): the narrowest steps."""
    return SMALL_KERNEL_STEPS.get(padded_hidden, (16, 16))


def _identity_area(work: Tensor, offset: int, folded: bool) -> Tensor:
    """The folded downsample BN's area of a workspace, from `offset` (layout's); without one, the workspace
    itself as a placeholder the kernels do not read."""
    return work[offset:] if folded else work


class IdentityNorm(NamedTuple):
    """A downsample BN folded into the tail: the identity passed is its input (the downsample conv's output).
    `batches_tracked` is given where the kernels update its running estimates (eager training)."""
    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    eps: float
    batches_tracked: Optional[Tensor] = None
    momentum: float = 0.0


def forward(z: Tensor, identity: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
            w1: Tensor, w2: Tensor, filters: Optional[Tensor], filter_sum: Optional[Tensor],
            random_squeeze: Optional[Tensor], mode: int, training: bool, eps: float, std_eps: float,
            batches_tracked: Optional[Tensor] = None, momentum: float = 0.0,
            identity_norm: Optional[IdentityNorm] = None):
    """(out, workspace); layout says what the fp32 workspace holds. With `batches_tracked` (training only) BN's
    running estimates and batch count are updated in place, as nn.BatchNorm2d does (the identity's BN's too
    with its own `batches_tracked`)."""
    batch, channels, height, width = z.shape
    spatial, hidden = height * width, w1.shape[0]
    if training and batch * spatial <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(z.shape)}")
    folded = identity_norm is not None
    out_dtype = torch.promote_types(z.dtype, identity.dtype)
    z, identity = channels_last(z), channels_last(identity if folded else identity.to(out_dtype))
    reduce_grid, elementwise_grid = _grids(batch, channels, spatial)
    extremes, filtered = layout.uses_extremes(mode), layout.uses_filter(mode)
    work = allocate((layout.forward_workspace_size(batch, channels, hidden, folded),), torch.float32, z.device)
    identity_work = _identity_area(work, layout.identity_area_offset(batch, channels, hidden), folded)
    norm = identity_norm or IdentityNorm(weight, bias, running_mean, running_var, eps)  # placeholders when not folded
    update = batches_tracked is not None
    out = empty_channels_last(z.shape, out_dtype, z.device)
    shape_key = (channels, spatial, z.dtype)
    padded = _hidden_padding(hidden)
    _, excite_step = small_kernel_steps(padded)
    with _on_device(z):
        _launch_tiled(se_forward.z_stats_kernel, REDUCE_TILES, reduce_grid, (*shape_key, extremes, filtered), z,
                      filters if filtered else work, work, batch, channels, spatial, EXTREMES=extremes,
                      FILTER=filtered)
        if folded:  # the identity's BN statistics: mean and M2 per (b, c), as z's
            _launch_tiled(se_forward.z_stats_kernel, REDUCE_TILES, reduce_grid, (channels, spatial, identity.dtype,
                          False, False), identity, work, identity_work, batch, channels, spatial, EXTREMES=False,
                          FILTER=False)
        direct_launch.launch(se_forward.forward_finalize_kernel, (_cdiv(channels, FINALIZE_BLOCK_C),), (
            work, work if random_squeeze is None else random_squeeze, running_mean, running_var,
            batches_tracked if update else work, weight, bias, filter_sum if filtered else work, identity_work,
            norm.running_mean, norm.running_var, norm.batches_tracked if update and folded else work, batch,
            channels, hidden, spatial, _corrected_count(spatial), eps, std_eps, momentum, norm.eps, norm.momentum),
            dict(TRAINING=training, UPDATE=update, MODE=mode, IDENTITY_NORM=folded, BLOCK_B=FORWARD_FINALIZE_BLOCK_B,
                 BLOCK_C=FINALIZE_BLOCK_C, num_warps=SMALL_KERNEL_WARPS))
        direct_launch.launch(se_forward.excite_kernel, (_cdiv(batch, EXCITE_BLOCK_B),), (
            work, w1, w2, batch, channels, hidden), dict(H_PAD=padded, BLOCK_B=EXCITE_BLOCK_B, BLOCK_K=excite_step,
                                                         num_warps=SMALL_KERNEL_WARPS))
        _launch_tiled(se_forward.apply_kernel, ELEMENTWISE_TILES, elementwise_grid,
                      (*shape_key, out_dtype, identity.dtype, folded), z, identity, out, work, weight, bias,
                      identity_work, norm.weight, norm.bias, batch, hidden, channels, spatial, IDENTITY_NORM=folded)
    return out, work


def backward(grad: Tensor, out: Optional[Tensor], z: Tensor, work: Tensor, weight: Tensor, bias: Tensor, w1: Tensor,
             w2: Tensor, filters: Optional[Tensor], filter_sum: Optional[Tensor], identity: Optional[Tensor],
             identity_weight: Optional[Tensor], mode: int, training: bool, std_eps: float):
    """(dz, d_identity, d_weight, d_bias, d_w1, d_w2, d_identity_weight, d_identity_bias) of the tail's output
    gradient `grad`. With `out` None, `grad` is already masked by the ReLU (gdm = dout * [out > 0], which is
    then d_identity itself). With a folded downsample BN (`identity`: its input, `identity_weight`: its gamma)
    d_identity is its input's gradient; without, the last two are None."""
    batch, channels, height, width = z.shape
    spatial, hidden = height * width, w1.shape[0]
    folded, premasked = identity_weight is not None, out is None
    grad, z = channels_last(grad), channels_last(z)
    out = grad if premasked else channels_last(out)  # premasked: a placeholder the kernels do not read
    identity = channels_last(identity) if folded else z  # z: a placeholder the kernels do not read
    reduce_grid, elementwise_grid = _grids(batch, channels, spatial)
    extremes, filtered = layout.uses_extremes(mode), layout.uses_filter(mode)
    grad_work = allocate((layout.backward_workspace_size(batch, channels, hidden, folded),), torch.float32,
                         z.device)
    identity_work = _identity_area(work, layout.identity_area_offset(batch, channels, hidden), folded)
    identity_grad_work = _identity_area(grad_work, layout.identity_grad_area_offset(batch, channels, hidden), folded)
    weight_grad, bias_grad = (allocate((channels,), torch.float32, z.device) for _ in range(2))
    identity_weight_grad, identity_bias_grad = (allocate((channels,), torch.float32, z.device) if folded
                                                else weight_grad for _ in range(2))
    w1_grad, w2_grad = allocate(w1.shape, torch.float32, z.device), allocate(w2.shape, torch.float32, z.device)
    dz = empty_channels_last(z.shape, z.dtype, z.device)
    # d_identity, or the folded BN's output gradient
    gdm = grad if premasked else empty_channels_last(z.shape, out.dtype, z.device)
    d_input = empty_channels_last(z.shape, identity.dtype, z.device) if folded else dz
    shape_key = (channels, spatial, z.dtype, gdm.dtype, grad.dtype, identity.dtype, folded)
    padded = _hidden_padding(hidden)
    finalize_step, excite_step = small_kernel_steps(padded)
    with _on_device(z):
        _launch_tiled(se_backward.grad_reduce_kernel, REDUCE_TILES, reduce_grid, (*shape_key, premasked, extremes),
                      grad, out, z, identity, work, weight, bias, grad_work, gdm, identity_work, identity_grad_work,
                      batch, hidden, channels, spatial, IDENTITY_NORM=folded, PREMASKED=premasked,
                      EXTREMES=extremes)
        direct_launch.launch(se_backward.excite_grad_kernel, (_cdiv(batch, EXCITE_BLOCK_B),), (
            work, grad_work, w2, batch, channels, hidden), dict(H_PAD=padded, BLOCK_B=EXCITE_BLOCK_B,
                                                                BLOCK_K=excite_step, num_warps=SMALL_KERNEL_WARPS))
        direct_launch.launch(se_backward.backward_finalize_kernel, (_cdiv(channels, FINALIZE_BLOCK_C),), (
            work, grad_work, w1, weight, bias, filter_sum if filtered else work, weight_grad, bias_grad, w1_grad,
            w2_grad, identity_work, identity_grad_work, identity_weight if folded else weight, identity_weight_grad,
            identity_bias_grad, batch, channels, hidden, spatial, _corrected_count(spatial), std_eps),
            dict(TRAINING=training, MODE=mode, IDENTITY_NORM=folded, H_PAD=padded, BLOCK_B=finalize_step,
                 BLOCK_C=FINALIZE_BLOCK_C, num_warps=SMALL_KERNEL_WARPS))
        _launch_tiled(se_backward.grad_apply_kernel, ELEMENTWISE_TILES, elementwise_grid,
                      (*shape_key, extremes, filtered), gdm, z, filters if filtered else work, work, grad_work, dz,
                      identity, identity_work, identity_grad_work, identity_weight if folded else weight, d_input,
                      batch, hidden, channels, spatial, EXTREMES=extremes, FILTER=filtered, IDENTITY_NORM=folded)
    folded_grads = (_as(identity_weight_grad, identity_weight), _as(identity_bias_grad, identity_weight)) if folded \
        else (None, None)
    return (dz, d_input if folded else gdm, _as(weight_grad, weight), _as(bias_grad, bias), _as(w1_grad, w1),
            _as(w2_grad, w2), *folded_grads)


def _as(grad: Tensor, parameter: Tensor) -> Tensor:
    """An fp32 gradient in its parameter's dtype."""
    return grad if grad.dtype == parameter.dtype else grad.to(parameter.dtype)
