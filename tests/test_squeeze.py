"""Each squeeze op against an independent computation."""
import math

import pytest
import torch

from pipeline.squeeze import (BASELINE, UnknownSqueezeError, build_squeeze, check_squeeze_name, fca_filters,
                              squeeze_names)

torch.manual_seed(0)
X = torch.randn(4, 32, 7, 9) * 3 + 1


def squeeze(name, x=X):
    return build_squeeze(name, x.shape[1])(x)


def test_registry_lists_every_op_and_baseline():
    assert squeeze_names() == ["baseline", "avgmax", "fca", "gap", "gapXstd", "gmp", "random", "std"]
    assert BASELINE not in squeeze_names(include_baseline=False)


@pytest.mark.parametrize("name", squeeze_names(include_baseline=False))
def test_every_op_maps_bchw_to_bc(name):
    z = squeeze(name)
    assert z.shape == (4, 32) and z.dtype == X.dtype and torch.isfinite(z).all()


def test_gap_is_mean_over_pixels():
    expected = X.flatten(2).sum(-1) / (7 * 9)
    torch.testing.assert_close(squeeze("gap"), expected)


def test_gmp_is_max_over_pixels():
    expected = torch.tensor([[X[b, c].max().item() for c in range(32)] for b in range(4)])
    torch.testing.assert_close(squeeze("gmp"), expected)


def test_std_is_unbiased_torch_std_with_eps():
    expected = torch.sqrt(X.flatten(2).double().var(-1, unbiased=True) + 1e-5).float()
    torch.testing.assert_close(squeeze("std"), expected)
    # close to the seed's plain torch.std once the variance dwarfs eps
    torch.testing.assert_close(squeeze("std"), torch.std(X, dim=(2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["std", "gapXstd"])
def test_std_in_bf16_accumulates_in_fp32(name):
    x = (torch.randn(4, 32, 14, 14) * 3 + 50).bfloat16()  # large mean: naive E[x^2]-E[x]^2 would cancel
    exact = torch.sqrt(x.double().flatten(2).var(-1) + 1e-5)
    if name == "gapXstd":
        exact = exact * x.double().mean((2, 3))
    relative = (squeeze(name, x).double() - exact).abs() / exact
    assert relative.max() < 2 ** -7  # bf16 rounding of the result only


def test_std_on_one_pixel_map_is_finite():
    assert torch.isfinite(squeeze("std", torch.randn(2, 16, 1, 1))).all()


def test_gapXstd_is_the_product():
    torch.testing.assert_close(squeeze("gapXstd"), squeeze("gap") * squeeze("std"), rtol=1e-5, atol=1e-5)


def test_avgmax_is_half_mean_plus_half_max():
    torch.testing.assert_close(squeeze("avgmax"), 0.5 * X.mean((2, 3)) + 0.5 * X.amax((2, 3)))


def test_random_is_uniform_and_ignores_the_input():
    op = build_squeeze("random", 32).train()
    zeros, noise = torch.zeros(4000, 32, 2, 2), torch.randn(4000, 32, 2, 2) * 100
    torch.manual_seed(5)
    a = op(zeros)
    torch.manual_seed(5)
    b = op(noise)
    torch.testing.assert_close(a, b)  # same RNG state -> same values, whatever the input
    assert 0 <= a.min() and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.01 and abs(a.var().item() - 1 / 12) < 0.005
    assert not torch.equal(op(X), op(X))  # fresh every training forward


def test_random_follows_input_dtype():
    op = build_squeeze("random", 32)
    assert op(X.to(torch.bfloat16)).dtype == torch.bfloat16


def test_random_eval_is_reproducible_pass_to_pass():
    op = build_squeeze("random", 32).eval()
    first = [op(X), op(X)]
    op.train()
    op(X)
    op.eval()
    second = [op(X), op(X)]
    torch.testing.assert_close(first, second)
    assert not torch.equal(first[0], first[1])  # still fresh within a pass


def test_fca_dc_group_is_gap_times_sqrt_area():
    z = squeeze("fca")
    dc_channels = 32 // 16  # the first group uses frequency (0, 0)
    torch.testing.assert_close(z[:, :dc_channels], X.mean((2, 3))[:, :dc_channels] * math.sqrt(7 * 9))


def test_fca_filters_on_7x7_are_orthonormal_dct():
    filters = fca_filters(16, 7, 7).flatten(1)  # one filter per frequency
    torch.testing.assert_close(filters @ filters.T, torch.eye(16), atol=1e-5, rtol=0)


def test_fca_matches_explicit_dct_sum():
    x = torch.randn(2, 16, 7, 7)
    u, v = 6, 0  # third group in FcaNet's top-16 list
    h = torch.arange(7.0)
    basis = torch.outer(torch.cos(math.pi * u * (h + 0.5) / 7), torch.cos(math.pi * v * (h + 0.5) / 7))
    basis = basis * math.sqrt(2) / 7  # sqrt(2/7) for u != 0 times sqrt(1/7) for v == 0
    torch.testing.assert_close(squeeze("fca", x)[:, 2], (x[:, 2] * basis).sum((1, 2)), rtol=1e-4, atol=1e-5)


def test_fca_refuses_channels_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_squeeze("fca", 24)(torch.randn(1, 24, 7, 7))


def test_unknown_name_is_one_line_listing_valid_names():
    with pytest.raises(UnknownSqueezeError) as error:
        check_squeeze_name("gpa", source="--squeeze")
    message = str(error.value)
    assert "\n" not in message
    assert message == ("unknown squeeze 'gpa' (from --squeeze); choose one of: "
                       "avgmax, baseline, fca, gap, gapXstd, gmp, random, std")
