"""GPU paths (ToDevice, bf16 autocast, torch.compile): skipped without CUDA, run on a GPU machine."""
import json

import pytest
import torch

from conftest import run_script, tiny_settings
from pipeline.models import build_model
from pipeline.squeeze import squeeze_names
from tail_cases import compare_training_step, exact_fp32  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("squeeze", squeeze_names())
def test_every_arm_trains_in_bf16_channels_last(squeeze):
    model = build_model("resnet50", squeeze, num_classes=10).cuda().to(memory_format=torch.channels_last)
    images = torch.randn(8, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(images).float().logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_matches_eager():
    model = build_model("resnet18", "std", num_classes=10).cuda().eval()
    images = torch.randn(4, 3, 64, 64, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(images), model(images), rtol=1e-3, atol=1e-3)


def test_closed_form_compiled_by_inductor_matches_the_reference(exact_fp32):
    """se_kernel=closed-form is for inductor's CUDA code: a compiled SE-ResNet-18 step in fp32 is as close to the
    float64 reference as torch's own fp32 ops are (bf16 rounding alone moves this tiny step's gradients by ~30%,
    too much to check against)."""
    compare_training_step("gmp", False, "closed-form", compiled=True)


def test_training_run_on_the_gpu(tiny_betons, tmp_path):
    run_dir = tmp_path / "gpu"
    result = run_script(["pipeline/train.py", *tiny_settings(tiny_betons, run_dir, "--training.epochs=2",
                                                             "--training.precision=auto", "--squeeze", "gmp")])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["device"] == "cuda" and summary["precision"] in ("bf16", "fp16")
    assert summary["finished_epochs"] == 2 and summary["top1"] > 0


def test_training_run_with_cuda_graphs(tiny_betons, tmp_path):
    """training.compile=auto as the GPU recipes set it: on one GPU, torch.compile with CUDA graphs through the
    whole loop, the SE tails in the fused kernels. The graphs' outputs are reused between steps, so this catches
    any tensor the loop keeps across a step."""
    run_dir = tmp_path / "graphs"
    result = run_script(["pipeline/train.py", *tiny_settings(tiny_betons, run_dir, "--training.epochs=2",
                                                             "--training.precision=auto", "--squeeze", "gap",
                                                             "--training.compile=auto")])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["finished_epochs"] == 2 and summary["top1"] > 0
    assert (summary["compile_used"], summary["se_kernel_used"]) == ("reduce-overhead", "triton")


def test_direct_launches_give_the_results_of_tritons_own(monkeypatch):
    """pipeline/kernels/direct_launch.py on the GPU: from a signature's third launch on, the fused tail's kernels
    are launched without Triton's run, and the tail's output, batch statistics and gradients are bitwise those
    of Triton's own launches (tests/test_direct_launch.py checks the launcher's arguments without a GPU)."""
    from pipeline.kernels import direct_launch, se_launch
    generator = torch.Generator(device="cuda").manual_seed(0)
    batch, channels, size, hidden = 8, 64, 6, 4

    def cuda_randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, device="cuda", generator=generator).to(dtype)
    z, identity, grad = (cuda_randn(batch, channels, size, size, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last) for _ in range(3))
    weight, bias, w1, w2 = cuda_randn(channels), cuda_randn(channels), cuda_randn(hidden, channels), cuda_randn(
        channels, hidden)

    def tail_three_times() -> list:
        mean, variance = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
        for _ in range(3):
            out, work = se_launch.forward(z, identity, weight, bias, mean, variance, w1, w2, None, None, None, 1,
                                          True, 1e-5, 1e-5, torch.zeros((), dtype=torch.long, device="cuda"), 0.1)
            grads = se_launch.backward(grad, out, z, work, weight, bias, w1, w2, None, None, None, None, 1, True,
                                       1e-5)
        return [out, work, mean, variance, *[g for g in grads if g is not None]]

    monkeypatch.setattr(direct_launch, "_SIGNATURES", {})
    monkeypatch.setattr(direct_launch, "ENABLED", False)
    through_triton = tail_three_times()
    monkeypatch.setattr(direct_launch, "ENABLED", True)
    direct = tail_three_times()
    assert sum(type(entry) is direct_launch._Direct for entry in direct_launch._SIGNATURES.values()) >= 8
    for seen, expected in zip(direct, through_triton):
        assert torch.equal(seen, expected)
