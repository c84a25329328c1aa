"""What the SE-tail kernels and their callers agree on: squeeze mode numbers and the small buffers' rows."""

# squeeze name -> kernel mode; `random` is drawn by its module and only goes through the excitation
SQUEEZE_MODES = {"gap": 0, "gmp": 1, "std": 2, "gapXstd": 3, "avgmax": 4, "fca": 5, "random": 6}
GAP, GMP, STD, GAPXSTD, AVGMAX, FCA, RANDOM = range(7)
# per-(b, c) statistics of z: mean, M2, max, its tie count, min, its tie count, filter-weighted sum of
# z - z[first position], z[first position]
STAT_ROWS = 8
# per-(b, c) coefficients of dz = gdm*a + p + q*(z - mean) + k*[z == extreme] + r*filter: a, p, q, extreme, k, r
COEF_ROWS = 6
# per-channel: BN mean, 1/sqrt(var + eps), unbiased batch variance (for the running estimate)
CHANNEL_ROWS = 3


def uses_extremes(mode: int) -> bool:
    return mode in (GMP, AVGMAX)


def uses_filter(mode: int) -> bool:
    return mode == FCA
