"""What the forward and backward SE-tail kernels share: the workspaces' rows, the squeeze in closed form.

The block's last BN output y = (z - mu) * gamma * inv_std + beta is never stored: every kernel recomputes it
from the conv output z, which BN's backward keeps anyway, so the SE arms hold the plain network's activations.
All big tensors are channels_last, read as (B, HW, C) with C contiguous; reductions accumulate in fp32.
Per-(b, c) statistics of z (mean, M2, max/min, DCT-weighted sum) give both the BN batch statistics and every
squeeze in closed form (`squeeze_terms`); the backward counts the ties at the extreme where it reads z anyway.
The math is derived in `pipeline/kernels/README.md`; the kernels are in se_forward.py and se_backward.py.
"""
import triton
import triton.language as tl

from pipeline.kernels import layout

# rows of the per-(b, c) statistics of z (layout.STAT_ROWS), as compile-time constants for the kernels
STAT_MEAN, STAT_M2, STAT_MAX, STAT_MIN, STAT_FILTERED, STAT_FIRST = map(tl.constexpr, range(6))
# the backward's per-(b, c) row of tie counts (layout.REDUCED_ROWS)
REDUCED_TIES = tl.constexpr(3)
STAT_ROWS, CHANNEL_ROWS, REDUCED_ROWS = map(tl.constexpr, (layout.STAT_ROWS, layout.CHANNEL_ROWS,
                                                          layout.REDUCED_ROWS))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


# Buffers in the workspaces, in layout's order. forward: stats (at the start) | channel | squeeze | hidden |
# logits; backward: reduced (at the start) | hidden_grad | coefficients. One accessor each: a tuple unpacked
# into `_` would make `_` a pointer, which a later loop's `_` may not re-type.
@triton.jit
def channel_rows(work, B, C):
    return work + STAT_ROWS * B * C


@triton.jit
def squeeze_row(work, B, C):
    return channel_rows(work, B, C) + CHANNEL_ROWS * C


@triton.jit
def hidden_rows(work, B, C):
    return squeeze_row(work, B, C) + B * C


@triton.jit
def logits_rows(work, B, C, H):
    return hidden_rows(work, B, C) + B * H


@triton.jit
def hidden_grad_rows(grad_work, B, C):
    return grad_work + REDUCED_ROWS * B * C


@triton.jit
def coefficient_rows(grad_work, B, C, H):
    return hidden_grad_rows(grad_work, B, C) + B * H


@triton.jit
def filtered_about_mean(stats, offsets, mask, plane, mean_bn, filter_sum):
    """sum over HW of filter * (z - mean_bn), from the shifted filtered sum."""
    filtered = tl.load(stats + STAT_FILTERED * plane + offsets, mask=mask, other=0.0)
    first = tl.load(stats + STAT_FIRST * plane + offsets, mask=mask, other=0.0)
    return filtered + (first - mean_bn) * filter_sum


@triton.jit
def squeeze_terms(stats, offsets, mask, plane, mean_bn, inv_std, gamma, beta, filter_sum, corr_count, std_eps,
                  MODE: tl.constexpr):
    """For a (BLOCK_B, BLOCK_C) tile of (b, c): the squeeze s of y = BN(z) and what its gradient needs.

    Returns (s, y_mean, y_std, extreme of z at the max of y, all_tied). With scale = 0 every y equals beta:
    all positions tie, as torch.amax shares its gradient among equal maxima.
    """
    scale = gamma * inv_std
    mean = tl.load(stats + STAT_MEAN * plane + offsets, mask=mask, other=0.0)
    m2 = tl.load(stats + STAT_M2 * plane + offsets, mask=mask, other=0.0)
    y_mean = (mean - mean_bn) * scale + beta
    y_std = tl.sqrt(scale * scale * m2 / corr_count + std_eps)
    extreme = mean
    all_tied = scale == 0.0
    s = y_mean
    if MODE == 1 or MODE == 4:
        extreme = extreme_of_z(stats, offsets, mask, plane, scale)
        y_max = tl.where(all_tied, y_mean, (extreme - mean_bn) * scale + beta)
        if MODE == 1:
            s = y_max
        else:
            s = 0.5 * y_mean + 0.5 * y_max
    if MODE == 2:
        s = y_std
    if MODE == 3:
        s = y_mean * y_std
    if MODE == 5:
        s = scale * filtered_about_mean(stats, offsets, mask, plane, mean_bn, filter_sum) + beta * filter_sum
    return s, y_mean, y_std, extreme, all_tied


@triton.jit
def extreme_of_z(stats, offsets, mask, plane, scale):
    """The extreme of z where y = z * scale + shift is largest: its max where scale > 0, else its min."""
    return tl.where(scale > 0.0, tl.load(stats + STAT_MAX * plane + offsets, mask=mask, other=0.0),
                    tl.load(stats + STAT_MIN * plane + offsets, mask=mask, other=0.0))


@triton.jit
def batch_tile(start, B, C, columns, column_ok, BLOCK_B: tl.constexpr):
    """Mask and (b, c) offsets of the BLOCK_B samples from `start` for a block of channels."""
    batch = start + tl.arange(0, BLOCK_B)
    return (batch < B)[:, None] & column_ok[None, :], batch[:, None] * C + columns[None, :]


@triton.jit
def rows_times_matrix(rows_ptr, matrix_ptr, stride_k, stride_unit, B, C, H, H_PAD: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """For this program's BLOCK_B samples: rows[samples, :C] @ matrix[:C, :H] in fp32 (IEEE products, as
    torch's fp32 matmul), matrix element (k, unit) at k * stride_k + unit * stride_unit; with the tile's
    (samples, sample_ok, units, unit_ok) for the caller's stores."""
    samples = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    sample_ok = samples < B
    units = tl.arange(0, H_PAD)
    unit_ok = units < H
    total = tl.zeros((BLOCK_B, H_PAD), tl.float32)
    for start in range(0, C, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        k_ok = k < C
        rows = tl.load(rows_ptr + samples[:, None] * C + k[None, :], mask=sample_ok[:, None] & k_ok[None, :],
                       other=0.0)
        matrix = tl.load(matrix_ptr + k[:, None] * stride_k + units[None, :] * stride_unit,
                         mask=k_ok[:, None] & unit_ok[None, :], other=0.0).to(tl.float32)
        total += tl.dot(rows, matrix, input_precision="ieee")
    return total, samples, sample_ok, units, unit_ok


@triton.jit
def norm_affine(channel_ptr, gamma_ptr, beta_ptr, columns, column_ok, C):
    """(scale, shift) of BN(x) = x * scale + shift per channel, from its rows (mean, 1/sqrt(var + eps))."""
    mean_bn = tl.load(channel_ptr + columns, mask=column_ok, other=0.0)
    scale = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * \
        tl.load(channel_ptr + C + columns, mask=column_ok, other=0.0)
    return scale, tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) - mean_bn * scale
