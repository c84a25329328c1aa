"""The fused SE-tail kernels against the torch reference: values, every gradient, running statistics.

The reference is the torch path (`se_kernel=torch`) computed in float64 on the same inputs; on a CPU-only
machine the kernels run interpreted (TRITON_INTERPRET=1, set by conftest before triton is imported).
"""
import copy
import warnings

import pytest
import torch
from torch import nn

from pipeline.kernels import KernelUnavailableError, resolve_se_kernel, triton_unavailable_reason
from pipeline.kernels.layout import SQUEEZE_MODES
from pipeline.models import SqueezeExcite, build_model
from tail_cases import (CASES, DEVICE, SQUEEZES, case_inputs, compare_mixed_bn_modes,  # noqa: F401
                        compare_tail_with_reference, compare_training_step, exact_fp32, make_tail, random_batch_norm,
                        relative_error, run_tail)

pytest.importorskip("triton")
from pipeline.kernels import se_launch, se_ops  # noqa: E402  (imports triton)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(se_launch, "POISON_OUTPUTS", True)


# several sample blocks in excitation and finalize, several channel steps in the excitation's products (with
# se_launch's steps cut to 16 samples and 16 channels)
BATCH_BLOCKS_CASE = (40, 32, 2, 3, torch.float32, True, "normal")


# every case for every squeeze; the batch blocking is common code, covered through the extremes (gmp), filter
# (fca) and draw (random) paths
TAIL_CASES = [(squeeze, case) for case in CASES for squeeze in SQUEEZES] + [
    (squeeze, "batch-blocks") for squeeze in ("gmp", "fca", "random")]


def check_tail_against_reference(squeeze: str, case: str, monkeypatch, fold_identity_bn: bool = False) -> None:
    if case == "batch-blocks":
        monkeypatch.setattr(se_launch, "SMALL_KERNEL_STEPS", {16: (16, 16)})
        monkeypatch.setattr(se_launch, "FORWARD_FINALIZE_BLOCK_B", 16)
    compare_tail_with_reference(squeeze, CASES.get(case, BATCH_BLOCKS_CASE), "triton", fold_identity_bn)


@pytest.mark.parametrize("squeeze,case", TAIL_CASES)
def test_fused_tail_matches_reference(squeeze, case, monkeypatch):
    check_tail_against_reference(squeeze, case, monkeypatch)


# the downsample BN's fold is the same code for every squeeze: each squeeze once, then the other dtypes, modes and
# shapes through gmp (extremes) and fca (filter)
FOLDED_CASES = [(squeeze, "fp32") for squeeze in SQUEEZES] + [
    (squeeze, case) for case in ("bf16", "eval", "1x1", "B1-C80-bf16", "large", "batch-blocks")
    for squeeze in ("gmp", "fca")]


@pytest.mark.parametrize("squeeze,case", FOLDED_CASES)
def test_fused_tail_with_the_downsample_bn_folded_in_matches_reference(squeeze, case, monkeypatch):
    """relu(SE(bn(z)) + identity_bn(identity)): out, dz, the identity's gradient through its BN, both BNs'
    parameter gradients, running estimates and batch counts."""
    check_tail_against_reference(squeeze, case, monkeypatch, fold_identity_bn=True)


@pytest.mark.parametrize("hidden", [64, 128])
def test_the_widest_excitations_run_with_their_own_steps(hidden):
    """64 and 128 hidden units (SE-ResNet-50's layer3 and layer4) with the steps se_launch takes for them; the
    other cases have 12 to 20 units. On a GPU this launches them: excite_grad's step at 128 units once asked
    more shared memory than an H200 has and the launch failed, while every other kernel test passed there.
    (Reduction 4 keeps C, and the interpreter's time, 4 times smaller than ResNet-50's; the tiles are the same.)"""
    assert se_launch._hidden_padding(hidden) in se_launch.SMALL_KERNEL_STEPS
    channels = 4 * hidden
    # logits of a unit-scale squeeze: the weights' scale squared times sqrt(C * H / 2) (ReLU keeps half)
    compare_tail_with_reference("gap", (2, channels, 2, 3, torch.float32, True, "normal"), "triton",
                                excite_scale=(channels * hidden / 2) ** -0.25)


@pytest.mark.parametrize("tile", range(len(se_launch.REDUCE_TILES)))
@pytest.mark.parametrize("squeeze", ["avgmax", "fca"])
def test_every_autotuned_tile_gives_the_same_result(squeeze, tile, monkeypatch):
    """Each tile configuration the GPU autotuner may pick computes the same tail (here forced as the default)."""
    for name in ("REDUCE_TILES", "ELEMENTWISE_TILES"):
        tiles = getattr(se_launch, name)
        monkeypatch.setattr(se_launch, name, tiles[tile:] + tiles[:tile])
    monkeypatch.setattr(se_launch, "AUTOTUNE", False)
    se, bn = make_tail(squeeze, 80, zero_gamma=False)
    z, identity, grad = case_inputs(2, 80, 9, 7, torch.float32, "normal")
    reference = run_tail(se.double().to(DEVICE), bn.double().to(DEVICE), z.double(), identity.double(), grad.double(),
                         "torch", True)
    fused = run_tail(se.to(DEVICE), bn.to(DEVICE), z, identity, grad, "triton", True)
    for name, value in fused.items():
        assert relative_error(value, reference[name]) < 1e-4, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the autotuner runs on GPUs only")
@pytest.mark.parametrize("squeeze", ["gap", "gmp"])
def test_tuned_launches_match_reference(squeeze, monkeypatch):
    """The first call tunes the tiles, later calls launch the chosen tiles directly: both give the reference."""
    monkeypatch.setattr(se_launch, "AUTOTUNE", True)
    monkeypatch.setattr(se_launch, "_CHOSEN", {})
    se, bn = make_tail(squeeze, 80, zero_gamma=False)
    z, identity, grad = case_inputs(4, 80, 9, 7, torch.float32, "normal")
    reference = run_tail(se.double().to(DEVICE), bn.double().to(DEVICE), z.double(), identity.double(), grad.double(),
                         "torch", True)
    for call in ("tuning", "direct"):
        fused = run_tail(se.float().to(DEVICE), bn.float().to(DEVICE), z, identity, grad, "triton", True)
        for name, value in fused.items():
            assert relative_error(value, reference[name]) < 1e-4, (call, name)
    assert len(se_launch._CHOSEN) == 4  # z_stats, apply, grad_reduce, grad_apply


@pytest.mark.parametrize("frozen", ["identity_bn", "bn"])
def test_a_frozen_bn_beside_a_training_one_keeps_its_own_mode(frozen):
    """Fine-tuning with some BNs frozen (eval) and others training: the kernels run one mode, so a downsample
    BN in the other mode than the block's is applied before the fused tail, not folded with the wrong one."""
    compare_mixed_bn_modes("triton", frozen)


def test_gmp_ties_share_the_gradient_evenly():
    """At step 0 zero-init makes every y equal: each of the H*W maxima gets 1/(H*W) of d squeeze, which
    reaches BN's gamma as the mean of x_hat over the map (not x_hat at the largest z)."""
    se, bn = make_tail("gmp", 16, zero_gamma=True)
    z, identity, grad = (torch.randn(2, 16, 3, 3, device=DEVICE).contiguous(memory_format=torch.channels_last)
                         for _ in range(3))
    fused = run_tail(se.to(DEVICE), bn.to(DEVICE), z, identity, grad, "triton", True)
    reference = run_tail(se.double().to(DEVICE), bn.double().to(DEVICE), z.double(), identity.double(),
                         grad.double(), "torch", True)
    assert relative_error(fused["bn_weight"], reference["bn_weight"]) < 1e-5
    assert relative_error(fused["dz"], reference["dz"]) < 1e-5


def test_nan_propagates_through_the_fused_tail():
    """A diverged activation must reach the loss (the trainer's NaN stop), not vanish in the ReLU."""
    se, bn = make_tail("gap", 16, zero_gamma=False)
    z = torch.randn(2, 16, 3, 3, device=DEVICE).contiguous(memory_format=torch.channels_last)
    z[0, 3, 1, 1] = float("nan")
    outputs = {}
    for kernel in ("torch", "triton"):
        se.set_kernel(kernel)
        with torch.no_grad():
            outputs[kernel] = se.to(DEVICE).tail(z, bn.to(DEVICE), torch.zeros_like(z))
    assert torch.isnan(outputs["triton"]).any()
    assert torch.equal(torch.isnan(outputs["triton"]), torch.isnan(outputs["torch"]))


@pytest.fixture
def wide_interpreted_tiles(monkeypatch):
    """Where the kernels are interpreted, wider tiles than the GPU's: the interpreter runs each program as a pass
    of Python over numpy blocks, so a whole network's step costs its number of programs (26 s with the GPU's
    tiles on 2 cores, 6 s with these). The tail tests above check the GPU's tiles, at odd shapes."""
    if se_launch.interpreting():
        monkeypatch.setattr(se_launch, "FINALIZE_BLOCK_C", 128)
        for name in ("REDUCE_TILES", "ELEMENTWISE_TILES"):
            monkeypatch.setattr(se_launch, name, ((64, 128, 4),))


@pytest.mark.parametrize("squeeze,zero_init_last", [("gmp", True), ("fca", False)])
def test_se_resnet18_training_step_matches_reference(squeeze, zero_init_last, exact_fp32, wide_interpreted_tiles):
    """Loss, every gradient and every BN buffer of one step: the fp32 kernels are as close to the float64
    reference as torch's own fp32 ops are (a tiny batch makes layer4's BN ill-conditioned for both)."""
    compare_training_step(squeeze, zero_init_last, "triton")


def test_compiles_without_graph_breaks(monkeypatch):
    """Under torch.compile(fullgraph=True) the custom ops trace and give eager's values, gradients and BN
    running statistics (updated outside the ops there, inside the kernel in eager), the folded downsample BN's
    included (layer2's first block has one); and without a warning (dynamo warned of tracing the memoised GPU
    check, at every compiled run's start)."""
    monkeypatch.setattr(torch._dynamo.utils, "warn_once_cache", set())  # dynamo's warnings, even if given before
    model = build_model("resnet18", "gmp", num_classes=10, zero_init_last=False, se_kernel="triton").to(DEVICE)
    blocks = {mode: copy.deepcopy(model.layer2[0]) for mode in ("eager", "compiled")}
    x = torch.randn(2, 64, 8, 8, device=DEVICE)
    results = {}
    for mode, block in blocks.items():
        run = torch.compile(block, backend="aot_eager", fullgraph=True) if mode == "compiled" else block
        inputs = x.clone().requires_grad_()
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            warnings.filterwarnings("ignore", "Guards may run slower on Python 3.13.0")  # dynamo's, on 3.13.0 alone
            out = run(inputs)
        assert [str(warning.message) for warning in warned] == []
        out.square().sum().backward()
        identity_bn = block.downsample[1]
        results[mode] = (out, inputs.grad, block.bn2.running_mean, block.bn2.running_var, identity_bn.running_mean,
                         identity_bn.running_var, identity_bn.weight.grad, block.downsample[0].weight.grad)
    for compiled, eager in zip(results["compiled"], results["eager"]):
        assert relative_error(compiled, eager) < 1e-5
    for bn in ("bn2", "downsample.1"):
        counts = [block.get_submodule(bn).num_batches_tracked.item() for block in blocks.values()]
        assert counts == [1, 1], bn


@pytest.mark.parametrize("squeeze,folded", [(squeeze, False) for squeeze in SQUEEZES] + [("gmp", True), ("fca", True)])
def test_the_custom_ops_give_the_eager_functions_values_and_gradients(squeeze, folded):
    """The custom ops (what torch.compile traces) against the eager autograd.Function: the ops' backward takes
    the output's gradient already masked by the ReLU, the Function's kernels mask it themselves."""
    se, bn = make_tail(squeeze, 32, zero_gamma=False)
    identity_bn = random_batch_norm(32, torch.Generator().manual_seed(5)) if folded else None
    z, identity, grad = case_inputs(3, 32, 5, 3, torch.float32, "normal")
    w1, w2 = se.excite[0].weight.to(DEVICE), se.excite[2].weight.to(DEVICE)
    filters = filter_sum = random_squeeze = None
    if squeeze == "fca":
        filters, filter_sum = se.squeeze.to(DEVICE).kernel_filters(z)
    if squeeze == "random":
        random_squeeze = torch.rand(3, 32, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    results = {}
    for path in ("function", "ops"):
        leaves = [t.detach().clone().requires_grad_() for t in (z, identity, w1, w2)]
        norms = [copy.deepcopy(m).to(DEVICE) for m in (bn, identity_bn) if m is not None]
        mode = SQUEEZE_MODES[squeeze]
        if path == "function":
            out = se_ops.fused_se_tail(*leaves[:2], norms[0], *leaves[2:], mode, filters, filter_sum, random_squeeze,
                                       norms[1] if folded else None)
        else:
            norm_args = (norms[1].weight, norms[1].bias, norms[1].running_mean, norms[1].running_var) if folded \
                else (None,) * 4
            out, _ = se_ops.se_tail_forward(*leaves[:2], norms[0].weight, norms[0].bias, norms[0].running_mean,
                                            norms[0].running_var, *leaves[2:], filters, filter_sum, random_squeeze,
                                            *norm_args, mode, True, norms[0].eps, 1e-5)
        (out * grad).sum().backward()
        results[path] = [out] + [t.grad for t in leaves] + [p.grad for m in norms for p in (m.weight, m.bias)]
    for index, (ops, function) in enumerate(zip(results["ops"], results["function"])):
        assert relative_error(ops, function) < 1e-5, index


def test_custom_op_registration_passes_torch_opcheck():
    """Schema, fake (meta) shapes and strides, and the autograd registration, as torch.library checks them."""
    channels = 32
    z, identity = (torch.randn(2, channels, 3, 5, device=DEVICE, requires_grad=True) for _ in range(2))
    weight, bias = (torch.randn(channels, device=DEVICE, requires_grad=True) for _ in range(2))
    w1 = torch.randn(8, channels, device=DEVICE, requires_grad=True)
    w2 = torch.randn(channels, 8, device=DEVICE, requires_grad=True)
    running = (torch.zeros(channels, device=DEVICE), torch.ones(channels, device=DEVICE))
    identity_norm = (*(torch.randn(channels, device=DEVICE, requires_grad=True) for _ in range(2)),
                     torch.zeros(channels, device=DEVICE), torch.ones(channels, device=DEVICE))
    for mode in (SQUEEZE_MODES["gmp"], SQUEEZE_MODES["std"]):
        for folded in (None, None, None, None), identity_norm:  # without and with the downsample's BN folded in
            torch.library.opcheck(torch.ops.ssenet.se_tail_forward.default,
                                  (z, identity, weight, bias, *running, w1, w2, None, None, None, *folded, mode, True,
                                   1e-5, 1e-5))


def test_triton_choice_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in triton_unavailable_reason(torch.device("cpu"))
    se = SqueezeExcite(16, "gap", kernel="triton")
    with pytest.raises(KernelUnavailableError, match="se_kernel=auto or torch"):
        se.tail(torch.randn(2, 16, 3, 3), nn.BatchNorm2d(16), torch.randn(2, 16, 3, 3))


def test_auto_uses_torch_ops_on_cpu():
    se, bn = make_tail("gap", 16, zero_gamma=False)
    seen = []
    bn.register_forward_hook(lambda *args: seen.append("bn ran as a module"))
    se.set_kernel("auto")
    se.tail(torch.randn(2, 16, 3, 3), bn, torch.randn(2, 16, 3, 3))
    assert seen == ["bn ran as a module"]


@pytest.mark.parametrize("compile_mode,expected", [("none", "triton"), ("reduce-overhead", "triton"),
                                                   ("default", "closed-form"),
                                                   ("max-autotune-no-cudagraphs", "closed-form")])
def test_auto_picks_what_was_measured_faster_per_compile_mode(compile_mode, expected):
    """Kernels in eager mode and with CUDA graphs; inductor's code for the closed form where the custom ops'
    host cost shows (H200, default mode: closed form 0.91 x torchvision, torch ops 0.86, kernels 0.79)."""
    assert resolve_se_kernel("auto", torch.device("cuda"), True, compile_mode) == expected
    assert resolve_se_kernel("auto", torch.device("cuda"), False, compile_mode) == "torch"  # not channels_last
    assert resolve_se_kernel("auto", torch.device("cpu"), True, compile_mode) == "torch"
