"""Triton kernels of the fused BN + SE + residual tail of an SE-ResNet block, forward and backward.

The block's last BN output y = (z - mu) * gamma * inv_std + beta is never stored: every kernel recomputes it
from the conv output z, which BN's backward keeps anyway, so the SE arms hold the plain network's activations.
All big tensors are channels_last, read as (B, HW, C) with C contiguous; reductions accumulate in fp32.
Per-(b, c) statistics of z (mean, M2, max/min with tie counts, DCT-weighted sum) give both the BN batch
statistics and every squeeze in closed form, so the forward reads z twice and the backward reads
(dout, out, z) once, writing gdm = d_identity, then (gdm, z): the traffic of the plain BN + add + ReLU. The
math is derived in `pipeline/kernels/README.md`.
"""
import triton
import triton.language as tl

from pipeline.kernels import layout

# rows of the per-(b, c) statistics of z (layout.STAT_ROWS), as compile-time constants for the kernels
STAT_MEAN, STAT_M2, STAT_MAX, STAT_MAX_COUNT, STAT_MIN, STAT_MIN_COUNT, STAT_FILTERED, STAT_FIRST = \
    map(tl.constexpr, range(8))
STAT_ROWS, CHANNEL_ROWS, REDUCED_ROWS = map(tl.constexpr, (layout.STAT_ROWS, layout.CHANNEL_ROWS,
                                                          layout.REDUCED_ROWS))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


# Buffers in the workspaces, in layout's order. forward: stats (at the start) | channel | squeeze | hidden |
# logits; backward: reduced (at the start) | hidden_grad | coefficients. One accessor each: a tuple unpacked
# into `_` would make `_` a pointer, which a later loop's `_` may not re-type.
@triton.jit
def _channel_rows(work, B, C):
    return work + STAT_ROWS * B * C


@triton.jit
def _squeeze_row(work, B, C):
    return _channel_rows(work, B, C) + CHANNEL_ROWS * C


@triton.jit
def _hidden_rows(work, B, C):
    return _squeeze_row(work, B, C) + B * C


@triton.jit
def _logits_rows(work, B, C, H):
    return _hidden_rows(work, B, C) + B * H


@triton.jit
def _hidden_grad_rows(grad_work, B, C):
    return grad_work + REDUCED_ROWS * B * C


@triton.jit
def _coefficient_rows(grad_work, B, C, H):
    return _hidden_grad_rows(grad_work, B, C) + B * H


@triton.jit
def z_stats_kernel(z_ptr, filter_ptr, stats_ptr, B, C, HW,
                   EXTREMES: tl.constexpr, FILTER: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (b, c) over HW: mean, M2 (Welford per row slot, Chan-merged at the end), max/min with tie counts,
    and the filter-weighted sum of z - z[first position] (shifted, so a flat map sums to exactly 0)."""
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(1)
    column_ok = columns < C
    rows = tl.arange(0, BLOCK_HW)
    base = z_ptr + b.to(tl.int64) * HW * C
    mean = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    m2 = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    high = tl.full((BLOCK_HW, BLOCK_C), float("-inf"), tl.float32)
    high_count = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    low = tl.full((BLOCK_HW, BLOCK_C), float("inf"), tl.float32)
    low_count = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    filtered = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    first = tl.load(base + columns, mask=column_ok, other=0.0).to(tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + rows
        mask = (hw < HW)[:, None] & column_ok[None, :]
        offsets = hw[:, None] * C + columns[None, :]
        x = tl.load(base + offsets, mask=mask, other=0.0).to(tl.float32)
        inverse_count = 1.0 / (start // BLOCK_HW + 1)
        delta = x - mean
        new_mean = mean + delta * inverse_count
        m2 = tl.where(mask, m2 + delta * (x - new_mean), m2)
        mean = tl.where(mask, new_mean, mean)
        if EXTREMES:
            high_count = tl.where(mask, tl.where(x > high, 1.0, high_count + (x == high).to(tl.float32)),
                                  high_count)
            high = tl.where(mask & (x > high), x, high)
            low_count = tl.where(mask, tl.where(x < low, 1.0, low_count + (x == low).to(tl.float32)), low_count)
            low = tl.where(mask & (x < low), x, low)
        if FILTER:
            weights = tl.load(filter_ptr + offsets, mask=mask, other=0.0)
            filtered += weights * (x - first[None, :])
    # merge the BLOCK_HW row slots (slot r saw every BLOCK_HW-th position from r on), about the first value so
    # that a flat map gives exactly its value and M2 = 0 whatever the order of the sum
    slot_count = tl.where(rows < HW, (HW - 1 - rows) // BLOCK_HW + 1, 0).to(tl.float32)
    total_mean = first + tl.sum((mean - first[None, :]) * slot_count[:, None], axis=0) / HW
    spread = mean - total_mean[None, :]
    total_m2 = tl.sum(m2 + slot_count[:, None] * spread * spread, axis=0)
    out = stats_ptr + b * C + columns
    plane = B * C
    tl.store(out + STAT_MEAN * plane, total_mean, mask=column_ok)
    tl.store(out + STAT_M2 * plane, total_m2, mask=column_ok)
    # rows a mode does not use are written as zeros, so that every output is defined
    top = total_mean * 0.0
    top_count, bottom, bottom_count, filtered_sum, shift = top, top, top, top, top
    if EXTREMES:
        top = tl.max(high, axis=0)
        top_count = tl.sum(tl.where(high == top[None, :], high_count, 0.0), axis=0)
        bottom = tl.min(low, axis=0)
        bottom_count = tl.sum(tl.where(low == bottom[None, :], low_count, 0.0), axis=0)
    if FILTER:
        filtered_sum = tl.sum(filtered, axis=0)
        shift = first
    tl.store(out + STAT_MAX * plane, top, mask=column_ok)
    tl.store(out + STAT_MAX_COUNT * plane, top_count, mask=column_ok)
    tl.store(out + STAT_MIN * plane, bottom, mask=column_ok)
    tl.store(out + STAT_MIN_COUNT * plane, bottom_count, mask=column_ok)
    tl.store(out + STAT_FILTERED * plane, filtered_sum, mask=column_ok)
    tl.store(out + STAT_FIRST * plane, shift, mask=column_ok)


@triton.jit
def _filtered_about_mean(stats, offsets, mask, plane, mean_bn, filter_sum):
    """sum over HW of filter * (z - mean_bn), from the shifted filtered sum."""
    filtered = tl.load(stats + STAT_FILTERED * plane + offsets, mask=mask, other=0.0)
    first = tl.load(stats + STAT_FIRST * plane + offsets, mask=mask, other=0.0)
    return filtered + (first - mean_bn) * filter_sum


@triton.jit
def _squeeze_terms(stats, offsets, mask, plane, mean_bn, inv_std, gamma, beta, filter_sum, HW, corr_count,
                   std_eps, MODE: tl.constexpr):
    """For a (BLOCK_B, BLOCK_C) tile of (b, c): the squeeze s of y = BN(z) and what its gradient needs.

    Returns (s, y_mean, y_std, extreme of z at the max of y, its tie count, all_tied). With scale = 0 every
    y equals beta: all positions tie, as torch.amax shares its gradient among equal maxima.
    """
    scale = gamma * inv_std
    mean = tl.load(stats + STAT_MEAN * plane + offsets, mask=mask, other=0.0)
    m2 = tl.load(stats + STAT_M2 * plane + offsets, mask=mask, other=0.0)
    y_mean = (mean - mean_bn) * scale + beta
    y_std = tl.sqrt(scale * scale * m2 / corr_count + std_eps)
    extreme = mean
    count = tl.zeros_like(mean) + HW
    all_tied = scale == 0.0
    s = y_mean
    if MODE == 1 or MODE == 4:
        positive = scale > 0.0
        extreme = tl.where(positive, tl.load(stats + STAT_MAX * plane + offsets, mask=mask, other=0.0),
                           tl.load(stats + STAT_MIN * plane + offsets, mask=mask, other=0.0))
        count = tl.where(positive, tl.load(stats + STAT_MAX_COUNT * plane + offsets, mask=mask, other=1.0),
                         tl.load(stats + STAT_MIN_COUNT * plane + offsets, mask=mask, other=1.0))
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
        s = scale * _filtered_about_mean(stats, offsets, mask, plane, mean_bn, filter_sum) + beta * filter_sum
    return s, y_mean, y_std, extreme, count, all_tied


@triton.jit
def _batch_tile(start, B, C, columns, column_ok, BLOCK_B: tl.constexpr):
    """Mask and (b, c) offsets of the BLOCK_B samples from `start` for a block of channels."""
    batch = start + tl.arange(0, BLOCK_B)
    return (batch < B)[:, None] & column_ok[None, :], batch[:, None] * C + columns[None, :]


@triton.jit
def _bn_stats(stats, columns, column_ok, running_mean, running_var, B, C, HW, eps,
              TRAINING: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel: (BN mean, 1/sqrt(var + eps), unbiased var for the running estimate)."""
    plane = B * C
    if TRAINING:  # the mean about sample 0's, so that a channel constant over the batch gives exactly its value
        first = tl.load(stats + STAT_MEAN * plane + columns, mask=column_ok, other=0.0)
        total = tl.zeros((BLOCK_C,), tl.float32)
        for start in range(0, B, BLOCK_B):
            mask, offsets = _batch_tile(start, B, C, columns, column_ok, BLOCK_B)
            sample_mean = tl.load(stats + STAT_MEAN * plane + offsets, mask=mask, other=0.0)
            total += tl.sum(tl.where(mask, sample_mean - first[None, :], 0.0), axis=0)
        mean_bn = first + total / B
        squares = tl.zeros((BLOCK_C,), tl.float32)
        for start in range(0, B, BLOCK_B):
            mask, offsets = _batch_tile(start, B, C, columns, column_ok, BLOCK_B)
            sample_mean = tl.load(stats + STAT_MEAN * plane + offsets, mask=mask, other=0.0)
            spread = tl.where(mask, sample_mean - mean_bn[None, :], 0.0)
            squares += tl.sum(tl.load(stats + STAT_M2 * plane + offsets, mask=mask, other=0.0)
                              + HW * spread * spread, axis=0)
        count = B * HW
        variance = squares / count
        unbiased = squares / tl.maximum(count - 1, 1)
    else:
        mean_bn = tl.load(running_mean + columns, mask=column_ok, other=0.0).to(tl.float32)
        variance = tl.load(running_var + columns, mask=column_ok, other=1.0).to(tl.float32)
        unbiased = variance
    return mean_bn, 1.0 / tl.sqrt(variance + eps), unbiased


@triton.jit
def _finalize_norm(stats, channel_ptr, columns, column_ok, running_mean, running_var, batches_tracked, B, C, HW,
                   eps, momentum, TRAINING: tl.constexpr, UPDATE: tl.constexpr, BLOCK_B: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """One BN's per-channel rows (mean, 1/sqrt(var + eps), unbiased var) from its per-(b, c) statistics; with
    UPDATE its running estimates and batch count follow, as nn.BatchNorm2d's. Returns (mean, inv_std)."""
    mean_bn, inv_std, unbiased = _bn_stats(stats, columns, column_ok, running_mean, running_var, B, C, HW, eps,
                                           TRAINING, BLOCK_B, BLOCK_C)
    tl.store(channel_ptr + columns, mean_bn, mask=column_ok)
    tl.store(channel_ptr + C + columns, inv_std, mask=column_ok)
    tl.store(channel_ptr + 2 * C + columns, unbiased, mask=column_ok)
    if UPDATE:
        old_mean = tl.load(running_mean + columns, mask=column_ok, other=0.0).to(tl.float32)
        old_var = tl.load(running_var + columns, mask=column_ok, other=0.0).to(tl.float32)
        tl.store(running_mean + columns, (old_mean + momentum * (mean_bn - old_mean)).to(
            running_mean.dtype.element_ty), mask=column_ok)
        tl.store(running_var + columns, (old_var + momentum * (unbiased - old_var)).to(
            running_var.dtype.element_ty), mask=column_ok)
        if tl.program_id(0) == 0:
            tl.store(batches_tracked, tl.load(batches_tracked) + 1)
    return mean_bn, inv_std


@triton.jit
def forward_finalize_kernel(work, random_ptr, running_mean, running_var, batches_tracked, gamma_ptr, beta_ptr,
                            filter_sum_ptr, identity_work, identity_running_mean, identity_running_var,
                            identity_batches_tracked, B, C, H, HW, corr_count, eps, std_eps, momentum, identity_eps,
                            identity_momentum, TRAINING: tl.constexpr, UPDATE: tl.constexpr, MODE: tl.constexpr,
                            IDENTITY_NORM: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """BN statistics per channel (with UPDATE: BN's running estimates and batch count updated as
    nn.BatchNorm2d does), then the squeeze s (B, C) of y = BN(z) for every sample (`random`: its draw).
    With IDENTITY_NORM the folded downsample BN's rows too, from its statistics in `identity_work`."""
    stats, channel_ptr, squeeze_ptr = work, _channel_rows(work, B, C), _squeeze_row(work, B, C)
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    column_ok = columns < C
    mean_bn, inv_std = _finalize_norm(stats, channel_ptr, columns, column_ok, running_mean, running_var,
                                      batches_tracked, B, C, HW, eps, momentum, TRAINING, UPDATE, BLOCK_B, BLOCK_C)
    if IDENTITY_NORM:
        _finalize_norm(identity_work, _channel_rows(identity_work, B, C), columns, column_ok, identity_running_mean,
                       identity_running_var, identity_batches_tracked, B, C, HW, identity_eps, identity_momentum,
                       TRAINING, UPDATE, BLOCK_B, BLOCK_C)
    gamma = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
    filter_sum = gamma * 0.0
    if MODE == 5:
        filter_sum = tl.load(filter_sum_ptr + columns, mask=column_ok, other=0.0)[None, :]
    for start in range(0, B, BLOCK_B):
        mask, offsets = _batch_tile(start, B, C, columns, column_ok, BLOCK_B)
        if MODE == 6:
            s = tl.load(random_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            s, _, _, _, _, _ = _squeeze_terms(stats, offsets, mask, B * C, mean_bn[None, :], inv_std[None, :],
                                              gamma, beta, filter_sum, HW, corr_count, std_eps, MODE)
        tl.store(squeeze_ptr + offsets, s, mask=mask)


@triton.jit
def _rows_times_matrix(rows_ptr, matrix_ptr, stride_k, stride_unit, B, C, H, H_PAD: tl.constexpr,
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
def excite_kernel(work, w1_ptr, w2_ptr, B, C, H, H_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """The excitation for BLOCK_B samples: hidden = relu(s W1^T), logits = hidden W2^T, in fp32 (the gate's
    sigmoid is applied where the logits are read). NaN stays NaN through the relu, as in torch."""
    hidden_ptr, logits_ptr = _hidden_rows(work, B, C), _logits_rows(work, B, C, H)
    total, samples, sample_ok, units, unit_ok = _rows_times_matrix(
        _squeeze_row(work, B, C), w1_ptr, 1, C, B, C, H, H_PAD, BLOCK_B, BLOCK_K)  # W1 is (H, C)
    ks = tl.arange(0, BLOCK_K)
    hidden = tl.where(total < 0.0, 0.0, total)
    tl.store(hidden_ptr + samples[:, None] * H + units[None, :], hidden, mask=sample_ok[:, None] & unit_ok[None, :])
    for start in range(0, C, BLOCK_K):
        k = start + ks
        k_ok = k < C
        w2 = tl.load(w2_ptr + k[None, :] * H + units[:, None], mask=unit_ok[:, None] & k_ok[None, :],
                     other=0.0).to(tl.float32)
        logits = tl.dot(hidden, w2, input_precision="ieee")
        tl.store(logits_ptr + samples[:, None] * C + k[None, :], logits, mask=sample_ok[:, None] & k_ok[None, :])


@triton.jit
def _norm_affine(channel_ptr, gamma_ptr, beta_ptr, columns, column_ok, C):
    """(scale, shift) of BN(x) = x * scale + shift per channel, from its rows (mean, 1/sqrt(var + eps))."""
    mean_bn = tl.load(channel_ptr + columns, mask=column_ok, other=0.0)
    scale = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * \
        tl.load(channel_ptr + C + columns, mask=column_ok, other=0.0)
    return scale, tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) - mean_bn * scale


@triton.jit
def apply_kernel(z_ptr, identity_ptr, out_ptr, work, gamma_ptr, beta_ptr, identity_work, identity_gamma_ptr,
                 identity_beta_ptr, B, H, C, HW, IDENTITY_NORM: tl.constexpr, BLOCK_HW: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """out = relu(BN(z) * sigmoid(logits) + identity); NaN stays NaN (relu as torch), so divergence is seen.
    With IDENTITY_NORM the identity is the downsample conv's output and its BN is applied here."""
    logits_ptr = _logits_rows(work, B, C, H)
    hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2)
    column_ok = columns < C
    gate = _sigmoid(tl.load(logits_ptr + b * C + columns, mask=column_ok, other=0.0))
    scale, shift = _norm_affine(_channel_rows(work, B, C), gamma_ptr, beta_ptr, columns, column_ok, C)
    multiplier = (scale * gate)[None, :]
    offset = (shift * gate)[None, :]
    mask = (hw < HW)[:, None] & column_ok[None, :]
    offsets = b.to(tl.int64) * HW * C + hw[:, None] * C + columns[None, :]
    z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    identity = tl.load(identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if IDENTITY_NORM:
        identity_scale, identity_shift = _norm_affine(_channel_rows(identity_work, B, C), identity_gamma_ptr,
                                                      identity_beta_ptr, columns, column_ok, C)
        identity = identity * identity_scale[None, :] + identity_shift[None, :]
    value = z * multiplier + offset + identity
    value = tl.where(value < 0.0, 0.0, value)
    tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grad_reduce_kernel(grad_ptr, out_ptr, z_ptr, identity_ptr, work, gamma_ptr, beta_ptr, grad_work,
                       d_identity_ptr, identity_work, identity_grad_work, B, H, C, HW, IDENTITY_NORM: tl.constexpr,
                       PREMASKED: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (b, c): A = sum gdm, Bh = sum gdm * (z - mean_bn) with gdm = dout * [out > 0], then the gradient
    at the gate's pre-activation: (scale * Bh + beta * A) * gate * (1 - gate). gdm is d_identity, written on
    the way: grad_apply then reads (gdm, z) instead of (dout, out, z), one tensor less per element. PREMASKED:
    grad_ptr holds gdm already (computed by inductor where it sums the output's gradient), so neither out nor
    d_identity is touched. With IDENTITY_NORM also sum gdm * (identity - its BN mean), for the folded
    downsample BN's backward."""
    channel_ptr, logits_ptr = _channel_rows(work, B, C), _logits_rows(work, B, C, H)
    reduced_ptr = grad_work
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(1)
    column_ok = columns < C
    rows = tl.arange(0, BLOCK_HW)
    mean_bn = tl.load(channel_ptr + columns, mask=column_ok, other=0.0)
    identity_mean = mean_bn
    if IDENTITY_NORM:
        identity_mean = tl.load(_channel_rows(identity_work, B, C) + columns, mask=column_ok, other=0.0)
    base = b.to(tl.int64) * HW * C
    total = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    centred = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    identity_centred = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + rows
        mask = (hw < HW)[:, None] & column_ok[None, :]
        offsets = base + hw[:, None] * C + columns[None, :]
        if PREMASKED:
            gdm = tl.load(grad_ptr + offsets, mask=mask, other=0.0)
        else:
            out = tl.load(out_ptr + offsets, mask=mask, other=0.0)
            gdm = tl.where(out > 0, tl.load(grad_ptr + offsets, mask=mask, other=0.0), 0.0).to(
                d_identity_ptr.dtype.element_ty)
            tl.store(d_identity_ptr + offsets, gdm, mask=mask)
        grad = gdm.to(tl.float32)  # summed as stored: the value grad_apply reads
        z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        total += grad
        centred += grad * (z - mean_bn[None, :])
        if IDENTITY_NORM:
            identity = tl.load(identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            identity_centred += grad * (identity - identity_mean[None, :])
    a_sum = tl.sum(total, axis=0)
    b_sum = tl.sum(centred, axis=0)
    scale = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * \
        tl.load(channel_ptr + C + columns, mask=column_ok, other=0.0)
    beta = tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)
    gate = _sigmoid(tl.load(logits_ptr + b * C + columns, mask=column_ok, other=0.0))
    plane = B * C
    out_row = reduced_ptr + b * C + columns
    tl.store(out_row, a_sum, mask=column_ok)
    tl.store(out_row + plane, b_sum, mask=column_ok)
    tl.store(out_row + 2 * plane, (scale * b_sum + beta * a_sum) * gate * (1.0 - gate), mask=column_ok)
    if IDENTITY_NORM:
        tl.store(identity_grad_work + b * C + columns, tl.sum(identity_centred, axis=0), mask=column_ok)


@triton.jit
def _squeeze_gradient(stats, offsets, mask, plane, reduced, d_squeeze, logits_ptr, mean_bn, inv_std, gamma, beta,
                      filter_sum, HW, corr_count, std_eps, MODE: tl.constexpr):
    """dL/dy = gdm*gate + alpha + rho*(y - y_mean) + kappa*[tie] + phi*filter for a (b, c) tile, as
    (alpha, rho, kappa, phi, extreme, count) and the sums over HW of dL/dy and dL/dy * x_hat."""
    scale = gamma * inv_std
    _, y_mean, y_std, extreme, count, all_tied = _squeeze_terms(
        stats, offsets, mask, plane, mean_bn, inv_std, gamma, beta, filter_sum, HW, corr_count, std_eps, MODE)
    zero = d_squeeze * 0.0
    alpha, rho, kappa, phi = zero, zero, zero, zero
    if MODE == 0:
        alpha = d_squeeze / HW
    if MODE == 1 or MODE == 4:
        weight = d_squeeze
        if MODE == 4:
            weight = 0.5 * d_squeeze
            alpha = weight / HW
        alpha += tl.where(all_tied, weight / HW, 0.0)
        kappa = tl.where(all_tied, 0.0, weight / count)
    if MODE == 2:
        rho = d_squeeze / (corr_count * y_std)
    if MODE == 3:
        alpha = d_squeeze * y_std / HW
        rho = d_squeeze * y_mean / (corr_count * y_std)
    if MODE == 5:
        phi = d_squeeze
    mean = tl.load(stats + STAT_MEAN * plane + offsets, mask=mask, other=0.0)
    m2 = tl.load(stats + STAT_M2 * plane + offsets, mask=mask, other=0.0)
    gate = _sigmoid(tl.load(logits_ptr + offsets, mask=mask, other=0.0))
    a_sum = tl.load(reduced + offsets, mask=mask, other=0.0)
    b_sum = tl.load(reduced + plane + offsets, mask=mask, other=0.0)
    grad_sum = gate * a_sum + HW * alpha + kappa * count
    grad_xhat_sum = gate * b_sum + alpha * HW * (mean - mean_bn) + rho * scale * m2 + \
        kappa * count * (extreme - mean_bn)
    if MODE == 5:
        grad_sum += phi * filter_sum
        grad_xhat_sum += phi * _filtered_about_mean(stats, offsets, mask, plane, mean_bn, filter_sum)
    grad_sum = tl.where(mask, grad_sum, 0.0)
    grad_xhat_sum = tl.where(mask, grad_xhat_sum * inv_std, 0.0)
    return alpha, rho, kappa, phi, extreme, mean, gate, grad_sum, grad_xhat_sum


@triton.jit
def excite_grad_kernel(work, grad_work, w2_ptr, B, C, H, H_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """The hidden units' gradient for BLOCK_B samples: (dlogits W2) * [hidden > 0], in fp32."""
    hidden_ptr, hidden_grad_ptr = _hidden_rows(work, B, C), _hidden_grad_rows(grad_work, B, C)
    total, samples, sample_ok, units, unit_ok = _rows_times_matrix(
        grad_work + 2 * B * C, w2_ptr, H, 1, B, C, H, H_PAD, BLOCK_B, BLOCK_K)  # the logits' gradient; W2 is (C, H)
    tile = samples[:, None] * H + units[None, :]
    tile_ok = sample_ok[:, None] & unit_ok[None, :]
    hidden = tl.load(hidden_ptr + tile, mask=tile_ok, other=0.0)
    tl.store(hidden_grad_ptr + tile, tl.where(hidden > 0.0, total, 0.0), mask=tile_ok)


@triton.jit
def _identity_norm_backward(grad_work, identity_work, identity_grad_work, gamma_ptr, gamma_grad_ptr, beta_grad_ptr,
                            B, C, HW, TRAINING: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """The folded downsample BN's backward for a block of channels: its input x gets gdm through the BN,
    dx = gdm * scale + p + q * (x - mean) (batch statistics: p = -scale * dbeta / N, q = -scale * inv_std *
    dgamma / N), from the per-(b, c) sums of gdm (grad_reduce's A) and of gdm * (x - mean)."""
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    column_ok = columns < C
    d_beta = tl.zeros((BLOCK_C,), tl.float32)
    centred = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, B, BLOCK_B):
        mask, offsets = _batch_tile(start, B, C, columns, column_ok, BLOCK_B)
        d_beta += tl.sum(tl.load(grad_work + offsets, mask=mask, other=0.0), axis=0)
        centred += tl.sum(tl.load(identity_grad_work + offsets, mask=mask, other=0.0), axis=0)
    inv_std = tl.load(_channel_rows(identity_work, B, C) + C + columns, mask=column_ok, other=0.0)
    d_gamma = centred * inv_std
    tl.store(gamma_grad_ptr + columns, d_gamma, mask=column_ok)
    tl.store(beta_grad_ptr + columns, d_beta, mask=column_ok)
    scale = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * inv_std
    p = d_beta * 0.0
    q = p
    if TRAINING:
        count = B * HW
        p = -scale * d_beta / count
        q = -scale * inv_std * d_gamma / count
    coefficients = identity_grad_work + B * C
    tl.store(coefficients + columns, p, mask=column_ok)
    tl.store(coefficients + C + columns, q, mask=column_ok)


@triton.jit
def backward_finalize_kernel(work, grad_work, w1_ptr, gamma_ptr, beta_ptr, filter_sum_ptr, gamma_grad_ptr,
                             beta_grad_ptr, w1_grad_ptr, w2_grad_ptr, identity_work, identity_grad_work,
                             identity_gamma_ptr, identity_gamma_grad_ptr, identity_beta_grad_ptr, B, C, H, HW,
                             corr_count, std_eps, TRAINING: tl.constexpr, MODE: tl.constexpr,
                             IDENTITY_NORM: tl.constexpr, H_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
                             BLOCK_C: tl.constexpr):
    """For a block of channels: the excitation's weight gradients (dW1 = dhidden^T s, dW2 = dlogits^T hidden),
    the squeeze's gradient ds = dhidden W1, then BN's and the squeeze's backward in closed form: dgamma, dbeta,
    and per (b, c) the coefficients of dz = gdm*a + p + q*(z - mean) + k*[z == extreme] + r*filter. With
    IDENTITY_NORM the folded downsample BN's backward too (its input's gradient is gdm through that BN)."""
    stats, channel_ptr, squeeze_ptr = work, _channel_rows(work, B, C), _squeeze_row(work, B, C)
    hidden_ptr, logits_ptr = _hidden_rows(work, B, C), _logits_rows(work, B, C, H)
    reduced, hidden_grad_ptr = grad_work, _hidden_grad_rows(grad_work, B, C)
    coef_ptr = _coefficient_rows(grad_work, B, C, H)
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    column_ok = columns < C
    units = tl.arange(0, H_PAD)
    unit_ok = units < H
    plane = B * C
    mean_bn = tl.load(channel_ptr + columns, mask=column_ok, other=0.0)[None, :]
    inv_std = tl.load(channel_ptr + C + columns, mask=column_ok, other=0.0)[None, :]
    gamma = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
    w1 = tl.load(w1_ptr + units[:, None] * C + columns[None, :], mask=unit_ok[:, None] & column_ok[None, :],
                 other=0.0).to(tl.float32)
    filter_sum = gamma * 0.0
    if MODE == 5:
        filter_sum = tl.load(filter_sum_ptr + columns, mask=column_ok, other=0.0)[None, :]
    scale = gamma * inv_std
    d_beta = tl.zeros((BLOCK_C,), tl.float32)
    d_gamma = tl.zeros((BLOCK_C,), tl.float32)
    w1_grad = tl.zeros((H_PAD, BLOCK_C), tl.float32)
    w2_grad = tl.zeros((BLOCK_C, H_PAD), tl.float32)
    for start in range(0, B, BLOCK_B):
        mask, offsets = _batch_tile(start, B, C, columns, column_ok, BLOCK_B)
        batch = start + tl.arange(0, BLOCK_B)
        hidden_tile = batch[:, None] * H + units[None, :]
        hidden_ok = (batch < B)[:, None] & unit_ok[None, :]
        hidden_grad = tl.load(hidden_grad_ptr + hidden_tile, mask=hidden_ok, other=0.0)
        hidden = tl.load(hidden_ptr + hidden_tile, mask=hidden_ok, other=0.0)
        squeeze = tl.load(squeeze_ptr + offsets, mask=mask, other=0.0)
        logits_grad = tl.load(reduced + 2 * plane + offsets, mask=mask, other=0.0)
        w1_grad += tl.dot(tl.trans(hidden_grad), squeeze, input_precision="ieee")
        w2_grad += tl.dot(tl.trans(logits_grad), hidden, input_precision="ieee")
        d_squeeze = tl.dot(hidden_grad, w1, input_precision="ieee")
        _, _, _, _, _, _, _, grad_sum, grad_xhat_sum = _squeeze_gradient(
            stats, offsets, mask, plane, reduced, d_squeeze, logits_ptr, mean_bn, inv_std, gamma, beta,
            filter_sum, HW, corr_count, std_eps, MODE)
        d_beta += tl.sum(grad_sum, axis=0)
        d_gamma += tl.sum(grad_xhat_sum, axis=0)
    tl.store(gamma_grad_ptr + columns, d_gamma, mask=column_ok)
    tl.store(beta_grad_ptr + columns, d_beta, mask=column_ok)
    tl.store(w1_grad_ptr + units[:, None] * C + columns[None, :], w1_grad, mask=unit_ok[:, None] & column_ok[None, :])
    tl.store(w2_grad_ptr + columns[:, None] * H + units[None, :], w2_grad, mask=column_ok[:, None] & unit_ok[None, :])
    count_bn = B * HW
    for start in range(0, B, BLOCK_B):
        mask, offsets = _batch_tile(start, B, C, columns, column_ok, BLOCK_B)
        batch = start + tl.arange(0, BLOCK_B)
        hidden_grad = tl.load(hidden_grad_ptr + batch[:, None] * H + units[None, :],
                              mask=(batch < B)[:, None] & unit_ok[None, :], other=0.0)
        d_squeeze = tl.dot(hidden_grad, w1, input_precision="ieee")  # recomputed: cheaper than a round trip
        alpha, rho, kappa, phi, extreme, mean, gate, _, _ = _squeeze_gradient(
            stats, offsets, mask, plane, reduced, d_squeeze, logits_ptr, mean_bn, inv_std, gamma, beta,
            filter_sum, HW, corr_count, std_eps, MODE)
        p = scale * alpha
        q = scale * scale * rho
        if TRAINING:  # BN's batch statistics: dz = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat))
            p -= scale * (d_beta[None, :] / count_bn + inv_std * (d_gamma[None, :] / count_bn) * (mean - mean_bn))
            q -= scale * inv_std * d_gamma[None, :] / count_bn
        row = coef_ptr + offsets
        tl.store(row, scale * gate, mask=mask)
        tl.store(row + plane, p, mask=mask)
        tl.store(row + 2 * plane, q, mask=mask)
        tl.store(row + 3 * plane, extreme, mask=mask)
        tl.store(row + 4 * plane, scale * kappa, mask=mask)
        tl.store(row + 5 * plane, scale * phi, mask=mask)
    if IDENTITY_NORM:  # last: its loop then adds nothing to the live registers of the loops above
        _identity_norm_backward(grad_work, identity_work, identity_grad_work, identity_gamma_ptr,
                                identity_gamma_grad_ptr, identity_beta_grad_ptr, B, C, HW, TRAINING, BLOCK_B, BLOCK_C)


@triton.jit
def grad_apply_kernel(d_identity_ptr, z_ptr, filter_ptr, work, grad_work, dz_ptr, identity_ptr, identity_work,
                      identity_grad_work, identity_gamma_ptr, d_norm_input_ptr, B, H, C, HW,
                      EXTREMES: tl.constexpr, FILTER: tl.constexpr, IDENTITY_NORM: tl.constexpr,
                      BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """dz in one pass over (gdm, z); gdm = dout * [out > 0] is d_identity, which grad_reduce wrote. With
    IDENTITY_NORM also the gradient of the downsample conv's output through its folded BN."""
    stats, coef_ptr = work, _coefficient_rows(grad_work, B, C, H)
    hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2)
    column_ok = columns < C
    plane = B * C
    small = b * C + columns
    a = tl.load(coef_ptr + small, mask=column_ok, other=0.0)[None, :]
    p = tl.load(coef_ptr + plane + small, mask=column_ok, other=0.0)[None, :]
    q = tl.load(coef_ptr + 2 * plane + small, mask=column_ok, other=0.0)[None, :]
    mean = tl.load(stats + STAT_MEAN * plane + small, mask=column_ok, other=0.0)[None, :]
    mask = (hw < HW)[:, None] & column_ok[None, :]
    offsets = b.to(tl.int64) * HW * C + hw[:, None] * C + columns[None, :]
    grad = tl.load(d_identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dz = grad * a + p + q * (z - mean)
    if EXTREMES:
        extreme = tl.load(coef_ptr + 3 * plane + small, mask=column_ok, other=0.0)[None, :]
        k = tl.load(coef_ptr + 4 * plane + small, mask=column_ok, other=0.0)[None, :]
        dz += tl.where(z == extreme, k, 0.0)
    if FILTER:
        r = tl.load(coef_ptr + 5 * plane + small, mask=column_ok, other=0.0)[None, :]
        dz += r * tl.load(filter_ptr + hw[:, None] * C + columns[None, :], mask=mask, other=0.0)
    tl.store(dz_ptr + offsets, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    if IDENTITY_NORM:
        identity_channel = _channel_rows(identity_work, B, C)
        identity_mean = tl.load(identity_channel + columns, mask=column_ok, other=0.0)[None, :]
        identity_scale = tl.load(identity_gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * \
            tl.load(identity_channel + C + columns, mask=column_ok, other=0.0)
        coefficients = identity_grad_work + B * C
        identity_p = tl.load(coefficients + columns, mask=column_ok, other=0.0)[None, :]
        identity_q = tl.load(coefficients + C + columns, mask=column_ok, other=0.0)[None, :]
        identity = tl.load(identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        d_input = grad * identity_scale[None, :] + identity_p + identity_q * (identity - identity_mean)
        tl.store(d_norm_input_ptr + offsets, d_input.to(d_norm_input_ptr.dtype.element_ty), mask=mask)
