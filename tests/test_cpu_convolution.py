"""pipeline/cpu_convolution.py: small maps' weight gradients as one GEMM give torch's gradients, in the weight's
layout, and only where they were measured faster."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.cpu_convolution import SMALL_MAP, SmallMapConv2d, use_gemm_weight_gradients, weight_gradient
from pipeline.models import build_model

CPU = torch.device("cpu")


def float64_weight_gradient(grad_out, x, weight, stride, padding, dilation):
    """dL/dweight by autograd through torch's own conv2d, in float64 (the independent computation)."""
    weight = weight.detach().double().requires_grad_()
    F.conv2d(x.double(), weight, None, stride, padding, dilation).backward(grad_out.double())
    return weight.grad


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("batch, in_channels, out_channels, size, kernel, stride, padding, dilation", [
    (3, 24, 40, 1, 3, 1, 1, 1),  # ResNet's late 3x3 convs on a 1x1 map: only the centre tap sees the input
    (2, 16, 8, 2, 3, 1, 1, 1),
    (1, 8, 16, 3, 3, 2, 1, 1),  # a stride-2 3x3 conv onto a 2x2 map, batch 1
    (2, 16, 32, 4, 1, 2, 0, 1),  # a downsample's 1x1 conv
    (2, 8, 8, (1, 5), 3, 1, 2, 2),  # a 1x5 map (a non-square output), dilated
])
def test_weight_gradient_equals_torchs_in_the_weights_layout(channels_last, batch, in_channels, out_channels, size,
                                                             kernel, stride, padding, dilation):
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_channels, height, width, generator=generator)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator)
    if channels_last:
        x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
    geometry = ((stride, stride), (padding, padding), (dilation, dilation))
    grad_out = torch.randn_like(F.conv2d(x, weight, None, *geometry))
    ours = weight_gradient(grad_out, x, weight, *geometry)
    torch.testing.assert_close(ours.double(), float64_weight_gradient(grad_out, x, weight, *geometry),
                               rtol=1e-5, atol=1e-5)
    assert ours.stride() == weight.stride()


def gemm_and_torch(conv: nn.Conv2d, x: torch.Tensor):
    """(output, input gradient, weight gradient, grad_fn name) through `conv` switched to SmallMapConv2d, and
    through an untouched copy."""
    results = []
    for module in (use_and_return(copy.deepcopy(conv)), conv):
        inputs = x.clone().requires_grad_()
        out = module(inputs)
        out.square().sum().backward()
        results.append((out, inputs.grad, module.weight.grad, type(out.grad_fn).__name__))
    return results


def use_and_return(conv: nn.Conv2d) -> nn.Conv2d:
    assert use_gemm_weight_gradients(conv, CPU) == 1 and type(conv) is SmallMapConv2d
    return conv


def test_a_small_map_trains_through_the_gemm_with_torchs_output_and_input_gradient():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(4, 32, 2, 2).contiguous(memory_format=torch.channels_last)
    (out, grad_x, grad_weight, via), (reference, reference_grad_x, reference_grad_weight, _) = gemm_and_torch(conv, x)
    assert via == "GemmWeightGradientConvBackward"
    assert torch.equal(out, reference)  # the forward pass is torch's own
    torch.testing.assert_close(grad_x, reference_grad_x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_weight, reference_grad_weight, rtol=1e-5, atol=1e-5)


def test_larger_maps_evaluation_autocast_and_unbatched_inputs_keep_torchs_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    larger = torch.randn(2, 8, 3, 3)  # 9 output positions, more than SMALL_MAP
    assert 9 > SMALL_MAP and gemm_and_torch(conv, larger)[0][3] == "ConvolutionBackward0"
    small = torch.randn(2, 8, 2, 2)
    switched = use_and_return(copy.deepcopy(conv))
    with torch.no_grad():
        assert torch.equal(switched(small), conv(small))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = switched(small.requires_grad_())
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ != "GemmWeightGradientConvBackward"
    for module in (switched, conv):  # (C, H, W): nn.Conv2d takes it too
        module.weight.grad = None
        module(small[0].detach()).square().sum().backward()
    assert torch.equal(switched.weight.grad, conv.weight.grad)


def test_a_network_switches_its_plain_convolutions_on_the_cpu_only_and_keeps_its_checkpoints():
    model = build_model("resnet18", "gap", num_classes=10)
    keys = list(model.state_dict())
    assert use_gemm_weight_gradients(model, torch.device("cuda")) == 0  # cuDNN picks its own algorithms
    assert use_gemm_weight_gradients(model, CPU) == 20  # stem, 16 in the blocks, 3 downsamples
    assert not any(type(module) is nn.Conv2d for module in model.modules())
    assert list(model.state_dict()) == keys
    build_model("resnet18", "gap", num_classes=10).load_state_dict(model.state_dict())  # strict
    grouped, biased = nn.Conv2d(8, 8, 3, groups=2, bias=False), nn.Conv2d(8, 8, 3)
    assert use_gemm_weight_gradients(nn.Sequential(grouped, biased), CPU) == 0


def test_an_se_resnet18_training_step_gives_torchs_loss_and_gradients():
    """At 32 px (the demo's resolution) layer3 and layer4 run on 2x2 and 1x1 maps, the convolutions switched."""
    torch.manual_seed(0)
    reference = build_model("resnet18", "gmp", num_classes=10).to(memory_format=torch.channels_last)
    switched = copy.deepcopy(reference)
    use_gemm_weight_gradients(switched, CPU)
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([0, 3, 5, 9])
    losses = [F.cross_entropy(model(images), labels) for model in (switched, reference)]
    for loss in losses:
        loss.backward()
    assert torch.equal(losses[0], losses[1])
    gemm_layers = 0
    for (name, ours), theirs in zip(switched.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)
        assert ours.grad.stride() == theirs.grad.stride(), name  # DDP's bucket views expect the weight's strides
        gemm_layers += not torch.equal(ours.grad, theirs.grad)
    assert gemm_layers > 0
