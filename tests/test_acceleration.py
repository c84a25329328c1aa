"""torch.compile as training runs it: one graph per resolution, also for modules that build per-size tensors."""
from unittest import mock

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from pipeline import acceleration
from pipeline.models import SqueezeExcite
from pipeline.squeeze import build_squeeze


def two_size_model(squeeze: str) -> nn.Sequential:
    """SE at two feature sizes, with a BN whose running statistics show whether a warm-up trained it."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), SqueezeExcite(16, squeeze, 4),
                         nn.MaxPool2d(2), SqueezeExcite(16, squeeze, 4))


class OtherPathWhenTraced(nn.Module):
    """Reads fca's filters through the squeeze in eager mode (the warm-up) and through the kernels' accessor when
    traced, as `se_kernel=auto` may pick the torch ops for one and a fused form for the other."""

    def __init__(self):
        super().__init__()
        self.conv, self.squeeze = nn.Conv2d(3, 16, 3, padding=1), build_squeeze("fca", 16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv(images)
        if torch.compiler.is_compiling():
            filters, _ = self.squeeze.kernel_filters(x)
            return torch.einsum("bchw,hwc->bc", x, filters.view(x.shape[2], x.shape[3], -1))
        return self.squeeze(x)


def compile_like_training(model: nn.Module) -> nn.Module:
    """maybe_compile as training calls it, on aot_eager (dynamo's tracing and guards, no code generation)."""
    real_compile = torch.compile
    with mock.patch.object(torch, "compile", lambda model, **_: real_compile(model, backend="aot_eager",
                                                                            dynamic=False)):
        return acceleration.maybe_compile(model, "default")


def graphs_traced(model: nn.Module, sizes: tuple, tolerance: float) -> int:
    """Graphs dynamo traced for steps (forward and backward) at these input sizes, each step's output checked
    against the eager model's."""
    torch._dynamo.reset()
    counters.clear()
    compiled = compile_like_training(model)
    for size in sizes:
        images = torch.randn(2, 3, size, size)
        out = compiled(images)
        out.sum().backward()
        torch.testing.assert_close(out, model(images), rtol=tolerance, atol=tolerance)
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("squeeze", ["fca", "gap"])
def test_each_resolution_compiles_once(squeeze):
    """fca's filters, built inside the first trace at a size, made dynamo trace every resolution twice."""
    torch.manual_seed(0)
    assert graphs_traced(two_size_model(squeeze), (8, 8, 8, 12, 12), 1e-5) == 2


def test_a_warm_up_through_one_path_serves_the_other():
    torch.manual_seed(0)
    assert graphs_traced(OtherPathWhenTraced(), (8, 8, 8), 1e-4) == 1


def test_warm_up_changes_no_state_and_restores_each_modules_mode():
    torch.manual_seed(0)
    model = two_size_model("fca").train()
    model[1].eval()  # a frozen BN among training modules
    before = {name: value.clone() for name, value in model.state_dict().items()}
    modes = [module.training for module in model.modules()]
    warm_up = acceleration.FeatureSizeWarmup(model)
    warm_up(model, (torch.randn(4, 3, 10, 10),))
    assert [module.training for module in model.modules()] == modes
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert warm_up.seen == {((10, 10), torch.device("cpu"))}
    warm_up(model, ())  # a model called by keyword is left to trace as it comes
    assert len(warm_up.seen) == 1


def test_only_models_with_per_size_tensors_get_the_warm_up():
    assert len(compile_like_training(two_size_model("fca"))._forward_pre_hooks) == 1
    assert len(compile_like_training(two_size_model("gap"))._forward_pre_hooks) == 0
    assert acceleration.maybe_compile(two_size_model("fca"), "none")._forward_pre_hooks == {}


def test_unwrap_reaches_the_plain_model():
    model = two_size_model("gap")
    assert acceleration.unwrap(compile_like_training(model)) is model


def test_a_gpu_triton_does_not_compile_for_runs_eager_torch_ops(monkeypatch, request):
    """On a Pascal GPU (the P100 of free notebook services, CUDA capability 6.0) the defaults ran the SE tails as
    Triton kernels (se_kernel=auto) and the GPU recipes compiled with inductor (training.compile=auto): both
    need Triton, which does not compile for it, so the first step failed deep inside the compiler."""
    from pipeline.errors import UserError
    from pipeline.kernels import KernelUnavailableError, gpu_too_old_for_triton, resolve_se_kernel
    gpu_too_old_for_triton.cache_clear()  # it caches each GPU's answer: the fake GPUs' must not outlive the test
    request.addfinalizer(gpu_too_old_for_triton.cache_clear)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    gpu = torch.device("cuda", 0)
    assert resolve_se_kernel("auto", gpu, True) == "torch"
    assert acceleration.compile_mode_used("auto", gpu, distributed=False) == "none"
    with pytest.raises(KernelUnavailableError, match=r"^se_kernel=triton needs a GPU of CUDA capability 7.0 or newer "
                                                     r"\(Triton's\): Tesla P100-PCIE-16GB is CUDA capability 6.0"):
        resolve_se_kernel("triton", gpu, True)
    with pytest.raises(UserError, match=r"^training.compile=default needs a GPU of CUDA capability 7.0 or newer .*"
                                        r"Tesla P100-PCIE-16GB is CUDA capability 6.0; use training.compile=none"):
        acceleration.compile_mode_used("default", gpu, distributed=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4: Triton's
    gpu_too_old_for_triton.cache_clear()
    assert resolve_se_kernel("auto", gpu, True) == "triton"
    assert acceleration.compile_mode_used("auto", gpu, distributed=False) == "reduce-overhead"


def test_auto_precision_is_fp16_on_gpus_without_bf16_arithmetic(monkeypatch):
    """torch.cuda.is_bf16_supported() counts emulation as support, so auto chose bf16 on a T4 (Colab, Kaggle)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # a bf16 tensor: made
    for major, expected in [(7, "fp16"), (8, "bf16"), (9, "bf16")]:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, major=major: mock.Mock(major=major))
        assert acceleration.choose_precision("auto", torch.device("cuda", 0)).name == expected
