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
