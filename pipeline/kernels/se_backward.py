"""The backward SE-tail kernels: the reductions over H*W, the excitation's and BN's backward, dz in one pass.

The backward reads (dout, out, z) once, writing gdm = d_identity, then (gdm, z): the traffic of the plain
BN + add + ReLU (under torch.compile it reads gdm, masked by inductor, instead of (dout, out)).
"""
import triton
import triton.language as tl

from pipeline.kernels.se_common import (
    REDUCED_TIES, STAT_M2, STAT_MEAN, batch_tile, channel_rows, coefficient_rows, extreme_of_z, filtered_about_mean,
    hidden_grad_rows, hidden_rows, logits_rows, rows_times_matrix, sigmoid, squeeze_row, squeeze_terms)


@triton.jit
def grad_reduce_kernel(grad_ptr, out_ptr, z_ptr, identity_ptr, work, gamma_ptr, beta_ptr, grad_work,
                       d_identity_ptr, identity_work, identity_grad_work, B, H, C, HW, IDENTITY_NORM: tl.constexpr,
                       PREMASKED: tl.constexpr, EXTREMES: tl.constexpr, BLOCK_HW: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """Per (b, c): A = sum gdm, Bh = sum gdm * (z - mean_bn) with gdm = dout * [out > 0], then the gradient
    at the gate's pre-activation: (scale * Bh + beta * A) * gate * (1 - gate). gdm is d_identity, written on
    the way: grad_apply then reads (gdm, z) instead of (dout, out, z), one tensor less per element. PREMASKED:
    grad_ptr holds gdm already (computed by inductor where it sums the output's gradient), so neither out nor
    d_identity is touched. With IDENTITY_NORM also sum gdm * (identity - its BN mean), for the folded
    downsample BN's backward. With EXTREMES (gmp, avgmax) also how many positions hold the extreme of z that
    the max of y is at: the ties that share the squeeze's gradient."""
    channel_ptr, logits_ptr = channel_rows(work, B, C), logits_rows(work, B, C, H)
    reduced_ptr = grad_work
    columns = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(1)
    column_ok = columns < C
    rows = tl.arange(0, BLOCK_HW)
    mean_bn = tl.load(channel_ptr + columns, mask=column_ok, other=0.0)
    scale = tl.load(gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * \
        tl.load(channel_ptr + C + columns, mask=column_ok, other=0.0)
    plane = B * C
    extreme = mean_bn
    if EXTREMES:
        extreme = extreme_of_z(work, b * C + columns, column_ok, plane, scale)
    identity_mean = mean_bn
    if IDENTITY_NORM:
        identity_mean = tl.load(channel_rows(identity_work, B, C) + columns, mask=column_ok, other=0.0)
    base = b.to(tl.int64) * HW * C
    total = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    centred = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    identity_centred = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
    ties = tl.zeros((BLOCK_HW, BLOCK_C), tl.float32)
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
        if EXTREMES:
            ties += tl.where(mask & (z == extreme[None, :]), 1.0, 0.0)
        if IDENTITY_NORM:
            identity = tl.load(identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            identity_centred += grad * (identity - identity_mean[None, :])
    a_sum = tl.sum(total, axis=0)
    b_sum = tl.sum(centred, axis=0)
    beta = tl.load(beta_ptr + columns, mask=column_ok, other=0.0).to(tl.float32)
    gate = sigmoid(tl.load(logits_ptr + b * C + columns, mask=column_ok, other=0.0))
    out_row = reduced_ptr + b * C + columns
    tl.store(out_row, a_sum, mask=column_ok)
    tl.store(out_row + plane, b_sum, mask=column_ok)
    tl.store(out_row + 2 * plane, (scale * b_sum + beta * a_sum) * gate * (1.0 - gate), mask=column_ok)
    if EXTREMES:
        tl.store(out_row + REDUCED_TIES * plane, tl.sum(ties, axis=0), mask=column_ok)
    if IDENTITY_NORM:
        tl.store(identity_grad_work + b * C + columns, tl.sum(identity_centred, axis=0), mask=column_ok)


@triton.jit
def _squeeze_gradient(stats, offsets, mask, plane, reduced, d_squeeze, logits_ptr, mean_bn, inv_std, gamma, beta,
                      filter_sum, HW, corr_count, std_eps, MODE: tl.constexpr):
    """dL/dy = gdm*gate + alpha + rho*(y - y_mean) + kappa*[tie] + phi*filter for a (b, c) tile, as
    (alpha, rho, kappa, phi, extreme, count) and the sums over HW of dL/dy and dL/dy * x_hat."""
    scale = gamma * inv_std
    _, y_mean, y_std, extreme, all_tied = squeeze_terms(
        stats, offsets, mask, plane, mean_bn, inv_std, gamma, beta, filter_sum, corr_count, std_eps, MODE)
    zero = d_squeeze * 0.0
    alpha, rho, kappa, phi = zero, zero, zero, zero
    count = zero + HW
    if MODE == 0:
        alpha = d_squeeze / HW
    if MODE == 1 or MODE == 4:
        count = tl.load(reduced + REDUCED_TIES * plane + offsets, mask=mask, other=1.0)
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
    gate = sigmoid(tl.load(logits_ptr + offsets, mask=mask, other=0.0))
    a_sum = tl.load(reduced + offsets, mask=mask, other=0.0)
    b_sum = tl.load(reduced + plane + offsets, mask=mask, other=0.0)
    grad_sum = gate * a_sum + HW * alpha + kappa * count
    grad_xhat_sum = gate * b_sum + alpha * HW * (mean - mean_bn) + rho * scale * m2 + \
        kappa * count * (extreme - mean_bn)
    if MODE == 5:
        grad_sum += phi * filter_sum
        grad_xhat_sum += phi * filtered_about_mean(stats, offsets, mask, plane, mean_bn, filter_sum)
    grad_sum = tl.where(mask, grad_sum, 0.0)
    grad_xhat_sum = tl.where(mask, grad_xhat_sum * inv_std, 0.0)
    return alpha, rho, kappa, phi, extreme, mean, gate, grad_sum, grad_xhat_sum


@triton.jit
def excite_grad_kernel(work, grad_work, w2_ptr, B, C, H, H_PAD: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """The hidden units' gradient for BLOCK_B samples: (dlogits W2) * [hidden > 0], in fp32."""
    hidden_ptr, hidden_grad_ptr = hidden_rows(work, B, C), hidden_grad_rows(grad_work, B, C)
    total, samples, sample_ok, units, unit_ok = rows_times_matrix(
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
        mask, offsets = batch_tile(start, B, C, columns, column_ok, BLOCK_B)
        d_beta += tl.sum(tl.load(grad_work + offsets, mask=mask, other=0.0), axis=0)
        centred += tl.sum(tl.load(identity_grad_work + offsets, mask=mask, other=0.0), axis=0)
    inv_std = tl.load(channel_rows(identity_work, B, C) + C + columns, mask=column_ok, other=0.0)
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
    stats, channel_ptr, squeeze_ptr = work, channel_rows(work, B, C), squeeze_row(work, B, C)
    hidden_ptr, logits_ptr = hidden_rows(work, B, C), logits_rows(work, B, C, H)
    reduced, hidden_grad_ptr = grad_work, hidden_grad_rows(grad_work, B, C)
    coef_ptr = coefficient_rows(grad_work, B, C, H)
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
        mask, offsets = batch_tile(start, B, C, columns, column_ok, BLOCK_B)
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
        mask, offsets = batch_tile(start, B, C, columns, column_ok, BLOCK_B)
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
    stats, coef_ptr = work, coefficient_rows(grad_work, B, C, H)
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
        identity_channel = channel_rows(identity_work, B, C)
        identity_mean = tl.load(identity_channel + columns, mask=column_ok, other=0.0)[None, :]
        identity_scale = tl.load(identity_gamma_ptr + columns, mask=column_ok, other=0.0).to(tl.float32) * \
            tl.load(identity_channel + C + columns, mask=column_ok, other=0.0)
        coefficients = identity_grad_work + B * C
        identity_p = tl.load(coefficients + columns, mask=column_ok, other=0.0)[None, :]
        identity_q = tl.load(coefficients + C + columns, mask=column_ok, other=0.0)[None, :]
        identity = tl.load(identity_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        d_input = grad * identity_scale[None, :] + identity_p + identity_q * (identity - identity_mean)
        tl.store(d_norm_input_ptr + offsets, d_input.to(d_norm_input_ptr.dtype.element_ty), mask=mask)
