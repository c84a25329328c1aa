"""SE tails and inputs shared by the tests of the fused implementations (the Triton kernels, the closed form):
each is compared with the torch reference computed in float64 on the same inputs."""
import copy

import pytest
import torch
from torch import nn

from pipeline.kernels.layout import SQUEEZE_MODES
from pipeline.models import SqueezeExcite, build_model, set_se_kernel

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SQUEEZES = sorted(SQUEEZE_MODES)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """|value - reference| / |reference|; a reference that is zero up to float64 rounding counts as 1e-6."""
    value, reference = value.double(), reference.double()
    assert torch.isfinite(value).all(), "non-finite values (an output element was not written?)"
    return ((value - reference).norm() / reference.norm().clamp_min(1e-6)).item()


def random_batch_norm(channels: int, generator: torch.Generator, zero_gamma: bool = False) -> nn.BatchNorm2d:
    """A BN with random affine parameters and running estimates (gamma zero where asked)."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.zeros(channels) if zero_gamma else torch.randn(channels, generator=generator))
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return bn


def make_tail(squeeze: str, channels: int, zero_gamma: bool, excite_scale: float = 0.5):
    """An SE module and a BN whose weights make every path carry gradient (reduction 4: 12+ hidden units;
    `excite_scale`: the excitation weights' standard deviation, smaller for wide ones so the gate's sigmoid
    does not saturate)."""
    generator = torch.Generator().manual_seed(7)
    se = SqueezeExcite(channels, squeeze, reduction=4, kernel="torch")
    with torch.no_grad():
        for linear in (se.excite[0], se.excite[2]):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * excite_scale)
    return se, random_batch_norm(channels, generator, zero_gamma)


def run_tail(se, bn, z, identity, grad, kernel: str, training: bool, identity_bn=None):
    """Output, every gradient and the running statistics of one forward + backward of the tail (with
    `identity_bn`: a downsample's BN applied to `identity` inside the tail, and its gradients and estimates)."""
    se, bn, identity_bn = copy.deepcopy(se), copy.deepcopy(bn), copy.deepcopy(identity_bn)
    se.set_kernel(kernel)
    se.train(training), bn.train(training)
    if se.squeeze_name == "random":  # the same draw on both paths, whatever their dtype
        draw = torch.rand(z.shape[:2], generator=torch.Generator().manual_seed(3)).to(z.device)
        se.squeeze.forward = lambda x: draw.to(x.dtype)
    if identity_bn is not None:
        identity_bn.train(training)
    z, identity = z.clone().requires_grad_(), identity.clone().requires_grad_()
    out = se.tail(z, bn, identity, identity_bn)
    (out * grad.to(out.dtype)).sum().backward()
    results = {"out": out, "dz": z.grad, "d_identity": identity.grad, "w1": se.excite[0].weight.grad,
               "w2": se.excite[2].weight.grad, "bn_weight": bn.weight.grad, "bn_bias": bn.bias.grad,
               "running_mean": bn.running_mean, "running_var": bn.running_var}
    if identity_bn is not None:
        results.update({"identity_bn_weight": identity_bn.weight.grad, "identity_bn_bias": identity_bn.bias.grad,
                        "identity_running_mean": identity_bn.running_mean,
                        "identity_running_var": identity_bn.running_var,
                        "identity_batches": identity_bn.num_batches_tracked})
    return results


CASES = {  # name: (batch, channels, height, width, dtype, training, input kind)
    "fp32": (2, 48, 7, 7, torch.float32, True, "normal"),
    "bf16": (2, 48, 7, 7, torch.bfloat16, True, "normal"),
    "fp16": (2, 48, 7, 7, torch.float16, True, "normal"),  # auto precision on GPUs without bf16 (a T4, a V100)
    "eval": (2, 48, 3, 5, torch.float32, False, "normal"),
    "1x1": (3, 48, 1, 1, torch.float32, True, "normal"),
    "B1-C80-bf16": (1, 80, 3, 5, torch.bfloat16, True, "normal"),
    "zero-gamma-all-equal": (2, 48, 7, 7, torch.float32, True, "constant"),
    # zero gamma, z not constant: gmp's ties in y (all positions) are not ties in z, and the gradient reaching
    # gamma is the mean of x_hat over the map, not x_hat at z's max
    "zero-gamma": (2, 48, 5, 5, torch.float32, True, "zero-gamma"),
    "ties": (2, 48, 4, 4, torch.float32, True, "ties"),
    "some-ties": (3, 48, 7, 7, torch.float32, True, "some-ties"),
    "large": (2, 48, 7, 7, torch.float32, True, "large"),
}
def case_inputs(batch, channels, height, width, dtype, kind):
    generator = torch.Generator().manual_seed(11)
    shape = (batch, channels, height, width)
    z, identity, grad = (torch.randn(shape, generator=generator) for _ in range(3))
    if kind == "constant":  # zero-init BN gamma at step 0: every y equals beta, every position ties
        z = torch.full(shape, 0.25)
    elif kind == "ties":  # each (b, c) map constant: all positions tie in max and min
        z = z[:, :, :1, :1].expand(shape).contiguous()
    elif kind == "some-ties":  # whole numbers: a map's max and min are taken by one position or by a few;
        z = torch.round(z * 1.5)  # each max is 0, the value a tile's positions past H*W are read as
        z = z - z.amax(dim=(2, 3), keepdim=True)
    elif kind == "large":
        z, identity = z * 1e3 + 500.0, identity * 1e3
    as_input = lambda t: t.to(dtype).contiguous(memory_format=torch.channels_last).to(DEVICE)  # noqa: E731
    return as_input(z), as_input(identity), grad.to(DEVICE)


def compare_tail_with_reference(squeeze: str, case: tuple, kernel: str, fold_identity_bn: bool = False,
                                excite_scale: float = 0.5) -> None:
    """One forward + backward of a tail under `kernel` against the float64 reference: out, every gradient,
    the running estimates and batch counts. `case`: a value of CASES."""
    batch, channels, height, width, dtype, training, kind = case
    se, bn = make_tail(squeeze, channels, zero_gamma=kind in ("constant", "zero-gamma"), excite_scale=excite_scale)
    identity_bn = random_batch_norm(channels, torch.Generator().manual_seed(5)) if fold_identity_bn else None
    z, identity, grad = case_inputs(batch, channels, height, width, dtype, kind)
    as_double = None if identity_bn is None else copy.deepcopy(identity_bn).double().to(DEVICE)
    reference = run_tail(se.double().to(DEVICE), bn.double().to(DEVICE), z.double(), identity.double(), grad.double(),
                         "torch", training, as_double)
    fused = run_tail(se.float().to(DEVICE), bn.float().to(DEVICE), z, identity, grad, kernel, training,
                     None if identity_bn is None else identity_bn.float().to(DEVICE))
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert fused["out"].dtype == dtype and fused["dz"].dtype == dtype and fused["d_identity"].dtype == dtype
    assert fused["out"].is_contiguous(memory_format=torch.channels_last)
    for name, value in fused.items():
        if value.dtype == torch.long:  # the batch count
            assert torch.equal(value, reference[name]), name
        elif reference[name].abs().max() == 0:  # e.g. no gradient reaches the excitation through a 0 gamma
            assert value.abs().max() == 0, name
        else:
            assert relative_error(value, reference[name]) < tolerance, name
    assert reference["w1"].abs().max() > 0 or squeeze == "random" or kind in ("constant", "zero-gamma")  # not vacuous


def compare_mixed_bn_modes(kernel: str, frozen: str) -> None:
    """A first block's tail with one of its two BNs (`frozen`: identity_bn or bn) in eval mode and the other
    training, under `kernel` against the torch ops: output, gradients and both BNs' running estimates."""
    se, bn = make_tail("gap", 16, zero_gamma=False)
    identity_bn = random_batch_norm(16, torch.Generator().manual_seed(5))
    z, identity, grad = case_inputs(2, 16, 3, 3, torch.float32, "normal")
    results = {}
    for implementation in ("torch", kernel):
        modules = [copy.deepcopy(m).to(DEVICE) for m in (se, bn, identity_bn)]
        modules[0].set_kernel(implementation)
        modules[2 if frozen == "identity_bn" else 1].eval()
        z_, identity_ = z.clone().requires_grad_(), identity.clone().requires_grad_()
        out = modules[0].tail(z_, modules[1], identity_, modules[2])
        (out * grad).sum().backward()
        results[implementation] = (out, z_.grad, identity_.grad, modules[1].running_mean, modules[2].running_mean,
                                   modules[2].weight.grad)
    for name, fused, reference in zip(("out", "dz", "d_identity", "running_mean", "identity_running_mean",
                                       "identity_bn_weight"), results[kernel], results["torch"]):
        assert relative_error(fused, reference) < 1e-4, name


def training_step(model, kernel: str, dtype: torch.dtype, images, labels, compiled: bool = False):
    """Loss, parameter gradients and buffers after one forward + backward of a copy of `model` (with
    `compiled`: of the copy compiled by torch.compile, inductor)."""
    trial = set_se_kernel(copy.deepcopy(model), kernel).to(dtype).to(memory_format=torch.channels_last)
    run = torch.compile(trial) if compiled else trial
    loss = nn.functional.cross_entropy(run(images.to(dtype).contiguous(memory_format=torch.channels_last)), labels)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in trial.named_parameters()}, dict(trial.named_buffers())


@pytest.fixture
def exact_fp32():
    """fp32 means fp32: TF32 convolutions (cuDNN's default) round inputs to 10 bits, and a tiny batch's BN
    amplifies which elements round differently into 1e-2 gradient differences (seen on an H200)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def compare_training_step(squeeze: str, zero_init_last: bool, kernel: str, compiled: bool = False) -> None:
    """Loss, every gradient and every BN buffer of one SE-ResNet-18 step under `kernel` (compiled by inductor
    where asked) against the float64 reference: as close as torch's own fp32 ops are (a tiny batch makes
    layer4's BN ill-conditioned for both)."""
    torch.manual_seed(0)
    model = build_model("resnet18", squeeze, num_classes=10, zero_init_last=zero_init_last).to(DEVICE)
    images, labels = torch.randn(2, 3, 64, 64, device=DEVICE), torch.tensor([1, 7], device=DEVICE)
    loss_ref, grads_ref, buffers_ref = training_step(model, "torch", torch.float64, images, labels)
    loss_torch, grads_torch, _ = training_step(model, "torch", torch.float32, images, labels)
    loss, grads, buffers = training_step(model, kernel, torch.float32, images, labels, compiled)
    assert abs(loss.item() - loss_ref.item()) <= 2 * abs(loss_torch.item() - loss_ref.item()) + 1e-6
    for name, grad in grads_ref.items():
        assert relative_error(grads[name], grad) <= 2 * relative_error(grads_torch[name], grad) + 1e-4, name
    for name, buffer in buffers_ref.items():
        if buffer.dtype == torch.long:
            assert torch.equal(buffers[name], buffer), name
        else:
            assert relative_error(buffers[name], buffer) < 1e-5, name
