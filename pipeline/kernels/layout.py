"""What the SE-tail kernels and their callers agree on: squeeze mode numbers and the small buffers' rows."""

# squeeze name -> kernel mode; `random` is drawn by its module and only goes through the excitation
SQUEEZE_MODES = {"gap": 0, "gmp": 1, "std": 2, "gapXstd": 3, "avgmax": 4, "fca": 5, "random": 6}
GAP, GMP, STD, GAPXSTD, AVGMAX, FCA, RANDOM = range(7)
# per-(b, c) statistics of z: mean, M2, max, min, filter-weighted sum of z - z[first position], z[first position]
STAT_ROWS = 6
# per-(b, c) coefficients of dz = gdm*a + p + q*(z - mean) + k*[z == extreme] + r*filter: a, p, q, extreme, k, r
COEF_ROWS = 6
# per-channel: BN mean, 1/sqrt(var + eps), unbiased batch variance (for the running estimate)
CHANNEL_ROWS = 3
# per-(b, c) rows the backward reduces over H*W: sum of gdm, sum of gdm * (z - mean), the logits' gradient, and
# (gmp, avgmax) how many positions hold the extreme of z that the max of y is at (its ties share the gradient)
REDUCED_ROWS = 4

# One fp32 workspace per call and direction, so that a tail allocates twice instead of a dozen times (host time
# is what the fused tail pays for). The kernels find their buffers at these offsets (se_common's accessors,
# channel_rows to coefficient_rows, follow the same order).
# forward: stats (STAT_ROWS, B, C) | channel (CHANNEL_ROWS, C) | squeeze (B, C) | hidden (B, H) | logits (B, C)
# backward: reduced (REDUCED_ROWS, B, C) | hidden_grad (B, H) | coefficients (COEF_ROWS, B, C)
# A block whose downsample BN is folded in (its identity is the downsample conv's output) appends its own area:
# forward: stats (STAT_ROWS, B, C) | channel (CHANNEL_ROWS, C); backward: sum of gdm * (identity - mean) (B, C) |
# the per-channel coefficients of d_identity = gdm * scale + p + q * (identity - mean) (IDENTITY_COEF_ROWS, C)
IDENTITY_COEF_ROWS = 2


def forward_workspace_size(batch: int, channels: int, hidden: int, identity_norm: bool = False) -> int:
    size = identity_area_offset(batch, channels, hidden)
    return size + (STAT_ROWS * batch * channels + CHANNEL_ROWS * channels if identity_norm else 0)


def identity_area_offset(batch: int, channels: int, hidden: int) -> int:
    """Where the folded downsample BN's area starts in the forward workspace (its end without one)."""
    return (STAT_ROWS + 2) * batch * channels + CHANNEL_ROWS * channels + batch * hidden


def channel_row_offset(batch: int, channels: int) -> int:
    """Where the per-channel rows start in the forward workspace (or in the folded downsample BN's area)."""
    return STAT_ROWS * batch * channels


def backward_workspace_size(batch: int, channels: int, hidden: int, identity_norm: bool = False) -> int:
    size = identity_grad_area_offset(batch, channels, hidden)
    return size + (batch * channels + IDENTITY_COEF_ROWS * channels if identity_norm else 0)


def identity_grad_area_offset(batch: int, channels: int, hidden: int) -> int:
    """Where the folded downsample BN's area starts in the backward workspace."""
    return (REDUCED_ROWS + COEF_ROWS) * batch * channels + batch * hidden


def uses_extremes(mode: int) -> bool:
    return mode in (GMP, AVGMAX)


def uses_filter(mode: int) -> bool:
    return mode == FCA
