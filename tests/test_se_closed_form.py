"""se_kernel=closed-form (the fused kernels' algorithm in torch ops) against the torch reference, eager and
compiled: values, every gradient, running statistics."""
import copy
import json
import os

import pytest
import torch
from torch import nn

from conftest import run_script
from pipeline.kernels import KernelUnavailableError
from pipeline.models import SqueezeExcite, build_model
from tail_cases import (CASES, DEVICE, SQUEEZES, compare_mixed_bn_modes, compare_tail_with_reference,  # noqa: F401
                        compare_training_step, exact_fp32, relative_error)


@pytest.mark.parametrize("squeeze,case", [(squeeze, case) for case in CASES for squeeze in SQUEEZES])
def test_closed_form_tail_matches_reference(squeeze, case):
    compare_tail_with_reference(squeeze, CASES[case], "closed-form")


@pytest.mark.parametrize("squeeze,case", [(squeeze, "fp32") for squeeze in SQUEEZES] + [("gmp", "eval")])
def test_closed_form_tail_with_a_downsample_bn_matches_reference(squeeze, case):
    """The downsample's BN from its own per-(b, c) statistics, in the same passes as the block's BN."""
    compare_tail_with_reference(squeeze, CASES[case], "closed-form", fold_identity_bn=True)


@pytest.mark.parametrize("frozen", ["identity_bn", "bn"])
def test_a_frozen_bn_beside_a_training_one_keeps_its_own_mode(frozen):
    """The closed form folds a downsample BN in whatever mode each BN is in."""
    compare_mixed_bn_modes("closed-form", frozen)


@pytest.mark.parametrize("squeeze,zero_init_last", [("gmp", True), ("fca", False)])
def test_se_resnet18_training_step_matches_reference(squeeze, zero_init_last, exact_fp32):
    compare_training_step(squeeze, zero_init_last, "closed-form")


@pytest.mark.parametrize("squeeze", ["gmp", "std"])
def test_compiled_by_inductor_without_graph_breaks(squeeze):
    """What the closed form is for: inductor compiles a block (layer2's first: its downsample BN included) in
    one graph, and gives eager's values, input and parameter gradients, running estimates and batch counts."""
    torch.manual_seed(0)
    model = build_model("resnet18", squeeze, num_classes=10, zero_init_last=False, se_kernel="closed-form")
    blocks = {mode: copy.deepcopy(model.layer2[0]).to(DEVICE) for mode in ("eager", "compiled")}
    x = torch.randn(4, 64, 10, 10, device=DEVICE).contiguous(memory_format=torch.channels_last)
    results = {}
    for mode, block in blocks.items():
        run = torch.compile(block, fullgraph=True) if mode == "compiled" else block
        inputs = x.clone().requires_grad_()
        out = run(inputs)
        out.square().sum().backward()
        results[mode] = (out, inputs.grad, block.bn2.weight.grad, block.se.excite[0].weight.grad,
                         block.conv1.weight.grad, block.bn2.running_mean, block.bn2.running_var,
                         block.downsample[1].running_var)
    for index, (compiled, eager) in enumerate(zip(results["compiled"], results["eager"])):
        assert relative_error(compiled, eager) < 1e-5, index
    assert [block.bn2.num_batches_tracked.item() for block in blocks.values()] == [1, 1]


# the kernels of the tail the first main() measures last (closed-form gmp, layer1 at batch 16), kept for the
# instruction count instead of generated again
KEEP_GENERATED = ("kept = []; generate = traffic.generate_for_gpu; "
                  "traffic.generate_for_gpu = lambda: kept.append(generate()) or kept[-1]; ")
# its big passes as inductor_traffic.py --instructions counts them, and one persistent reduction (a (B, C) step)
INSTRUCTION_PROBE = (
    "import generated_instructions as counted; g = kept[0]; "
    "sources = {name: source for (_, name), source in g.items()}; "
    "persistent = min(name for name in sources if name.startswith('triton_per')); "
    "print(json.dumps({'passes': traffic.instruction_counter(g, 16 * 256 * 48 * 48)(), "
    "'persistent': counted.fewest_instructions(sources[persistent], persistent)}))")


def test_inductor_generates_the_plain_tails_traffic_for_the_closed_form():
    """scripts/inductor_traffic.py: inductor's GPU code for a gmp tail (forward + backward, layer1's width)
    moves the bytes of torchvision's plain BN + add + ReLU in the closed form (twice that in the torch ops); in
    a stage's first block too, whose downsample BN's sums over H*W fuse with the tail's. And its passes issue
    fewer instructions per byte than an H200 issues per byte of bandwidth (6.2), compiled for sm90: the dz pass
    issued 7.8 when autograd's backward left inductor to recompute the per-(b, c) coefficients at every element,
    the statistics pass 11 with Welford's update. All in one process (a process start and inductor's set-up
    less)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    arguments = ["--squeezes", "gmp", "--batch", "16", "--implementations", "closed-form"]
    result = run_script(["-c", "import json, sys; sys.path.insert(0, 'scripts'); import inductor_traffic as traffic; "
                         + KEEP_GENERATED + f"traffic.main({arguments}); traffic.main({arguments + ['--downsample']}); "
                         + INSTRUCTION_PROBE], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [report.get("scope", {}).get("downsample") for report in reports] == [False, True, None]
    for report in reports[:2]:  # (the torch ops' code moves 2.0x; scripts/inductor_traffic.py measures them too)
        assert report["tails"]["closed-form"]["gmp"][1] <= 1.05 * report["plain"][1], report
    passes = reports[2]["passes"]  # forward: statistics, output; backward: gradient sums, dz
    assert reports[2]["persistent"][0] > 0  # a persistent reduction (all of its positions at once) is counted too
    assert sorted(kind for kind, *_ in passes) == ["pointwise", "pointwise", "reduction", "reduction"], passes
    for _, _, per_element, per_byte, launch in passes:
        assert 0 < per_element and 0 < per_byte < 6.2 and "XBLOCK=" in launch, passes


def test_a_bn_the_closed_form_cannot_fold_is_refused_by_name_and_left_to_torch_by_auto():
    """A BN with a cumulative average (momentum=None) is not the one the closed form computes: asked for by
    name it is refused in one line; under `auto` the tail runs the torch ops."""
    se, bn = SqueezeExcite(16, "gap", kernel="closed-form"), nn.BatchNorm2d(16, momentum=None)
    z, identity = torch.randn(2, 16, 3, 3), torch.randn(2, 16, 3, 3)
    with pytest.raises(KernelUnavailableError, match="se_kernel=closed-form folds a plain BatchNorm2d"):
        se.tail(z, bn, identity)
    se.set_kernel("auto")
    assert torch.allclose(se.tail(z, bn, identity), torch.relu(se(bn(z)) + identity))
