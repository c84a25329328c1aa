"""The forward SE-tail kernels: statistics of z, BN's rows and the squeeze, the excitation, the output pass.

The forward reads z twice (statistics, then the output pass): the traffic of the plain BN + add + ReLU.
"""
import triton
import triton.language as tl

from pipeline.kernels.se_common import (
    STAT_FILTERED, STAT_FIRST, STAT_M2, STAT_MAX, STAT_MEAN, STAT_MIN, batch_tile, channel_rows, hidden_rows,
    logits_rows, norm_affine, rows_times_matrix, sigmoid, squeeze_row, squeeze_terms)


@triton.jit
def z_stats_kernel(z_ptr, filter_ptr, stats_ptr, B, C, HW,
                   EXTREMES: tl.constexpr, FILTER: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (b, c) over HW: mean, M2 (Welford per row slot, Chan-merged at the end), max and min, and the
    filter-weighted sum of z - z[first position] (shifted, so a flat map sums to exactly 0). The ties at the
    extreme are counted by the backward, which reads z anyway: counting them here made this pass issue twice
    the instructions of the others per byte (scripts/kernel_instructions.py), more than the GPU issues."""
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(1)
    column_ok = columns < C
    rows = tl.arange(0, BLOCK_HW)
    base = z_ptr + b.to(tl.int64) * HW * C
    mean = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    m2 = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    high = tl.full((BLOCK_HW, BLOCK_C), float("-inf"), tl.float32)
    low = tl.full((BLOCK_HW, BLOCK_C), float("inf"), tl.float32)
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
            high = tl.maximum(high, tl.where(mask, x, float("-inf")))
            low = tl.minimum(low, tl.where(mask, x, float("inf")))
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
    bottom, filtered_sum, shift = top, top, top
    if EXTREMES:
        top = tl.max(high, axis=0)
        bottom = tl.min(low, axis=0)
    if FILTER:
        filtered_sum = tl.sum(filtered, axis=0)
        shift = first
    tl.store(out + STAT_MAX * plane, top, mask=column_ok)
    tl.store(out + STAT_MIN * plane, bottom, mask=column_ok)
    tl.store(out + STAT_FILTERED * plane, filtered_sum, mask=column_ok)
    tl.store(out + STAT_FIRST * plane, shift, mask=column_ok)


@triton.jit
def _bn_stats(stats, columns, column_ok, running_mean, running_var, B, C, HW, eps,
              TRAINING: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel: (BN mean, 1/sqrt(var + eps), unbiased var for the running estimate)."""
    plane = B * C
    if TRAINING:  # the mean about sample 0's, so that a channel constant over the batch gives exactly its value
        first = tl.load(stats + STAT_MEAN * plane + columns, mask=column_ok, other=0.0)
        total = tl.zeros((BLOCK_C,), tl.float32)
        for start in range(0, B, BLOCK_B):
            mask, offsets = batch_tile(start, B, C, columns, column_ok, BLOCK_B)
            sample_mean = tl.load(stats + STAT_MEAN * plane + offsets, mask=mask, other=0.0)
            total += tl.sum(tl.where(mask, sample_mean - first[None, :], 0.0), axis=0)
        mean_bn = first + total / B
        squares = tl.zeros((BLOCK_C,), tl.float32)
        for start in range(0, B, BLOCK_B):
            mask, offsets = batch_tile(start, B, C, columns, column_ok, BLOCK_B)
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
    stats, channel_ptr, squeeze_ptr = work, channel_rows(work, B, C), squeeze_row(work, B, C)
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    column_ok = columns < C
    mean_bn, inv_std = _finalize_norm(stats, channel_ptr, columns, column_ok, running_mean, running_var,
                                      batches_tracked, B, C, HW, eps, momentum, TRAINING, UPDATE, BLOCK_B, BLOCK_C)
    if IDENTITY_NORM:
        _finalize_norm(identity_work, channel_rows(identity_work, B, C), columns, column_ok, identity_running_mean,
                       identity_running_var, identity_batches_tracked, B, C, HW, identity_eps, identity_momentum,
                       TRAINING, UPDATE, BLOCK_B, BLOCK_C)
    gamma = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)[None, :]
    filter_sum = gamma * 0.0
    if MODE == 5:
        filter_sum = tl.load(filter_sum_ptr + columns, mask=column_ok, other=0.0)[None, :]
    for start in range(0, B, BLOCK_B):
        mask, offsets = batch_tile(start, B, C, columns, column_ok, BLOCK_B)
        if MODE == 6:
            s = tl.load(random_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            s, _, _, _, _ = squeeze_terms(stats, offsets, mask, B * C, mean_bn[None, :], inv_std[None, :],
                                          gamma, beta, filter_sum, corr_count, std_eps, MODE)
        tl.store(squeeze_ptr + offsets, s, mask=mask)


@triton.jit
def excite_kernel(work, w1_ptr, w2_ptr, B, C, H, H_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """The excitation for BLOCK_B samples: hidden = relu(s W1^T), logits = hidden W2^T, in fp32 (the gate's
    sigmoid is applied where the logits are read). NaN stays NaN through the relu, as in torch."""
    hidden_ptr, logits_ptr = hidden_rows(work, B, C), logits_rows(work, B, C, H)
    total, samples, sample_ok, units, unit_ok = rows_times_matrix(
        squeeze_row(work, B, C), w1_ptr, 1, C, B, C, H, H_PAD, BLOCK_B, BLOCK_K)  # W1 is (H, C)
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
def apply_kernel(z_ptr, identity_ptr, out_ptr, work, gamma_ptr, beta_ptr, identity_work, identity_gamma_ptr,
                 identity_beta_ptr, B, H, C, HW, IDENTITY_NORM: tl.constexpr, BLOCK_HW: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    """out = relu(BN(z) * sigmoid(logits) + identity); NaN stays NaN (relu as torch), so divergence is seen.
    With IDENTITY_NORM the identity is the downsample conv's output and its BN is applied here."""
    logits_ptr = logits_rows(work, B, C, H)
    hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    columns = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2)
    column_ok = columns < C
    gate = sigmoid(tl.load(logits_ptr + b * C + columns, mask=column_ok, other=0.0))
    scale, shift = norm_affine(channel_rows(work, B, C), gamma_ptr, beta_ptr, columns, column_ok, C)
    multiplier = (scale * gate)[None, :]
    offset = (shift * gate)[None, :]
    mask = (hw < HW)[:, None] & column_ok[None, :]
    offsets = b.to(tl.int64) * HW * C + hw[:, None] * C + columns[None, :]
    z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    identity = tl.load(identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if IDENTITY_NORM:
        identity_scale, identity_shift = norm_affine(channel_rows(identity_work, B, C), identity_gamma_ptr,
                                                      identity_beta_ptr, columns, column_ok, C)
        identity = identity * identity_scale[None, :] + identity_shift[None, :]
    value = z * multiplier + offset + identity
    value = tl.where(value < 0.0, 0.0, value)
    tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=mask)
