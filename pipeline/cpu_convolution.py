"""On the CPU, the weight gradient of a convolution with a small output map, computed as one matrix product.

For ResNet's late stages at small resolutions (a 2x2 or 1x1 map, 512 x 512 x 3 x 3 weights) oneDNN, torch's CPU
convolutions, computes the weight gradient on its im2col + GEMM path (`x64:gemm:jit` in ONEDNN_VERBOSE) in 26-43
ms where one torch.mm of the same size takes 3.7 ms: a few multiply-adds per weight, and passes over 9.4 MB of
weights. The same gradient is one GEMM over the unfolded input (im2col), whose extra memory is small exactly where
the map is. Measured on a 2-core AMD EPYC (AVX2), batch 64, channels_last, ms per weight gradient (oneDNN / GEMM):
512->512 at 1x1 62 / 3.9, at 2x2 124 / 16.5; 256->256 at 2x2 9.7 / 4.1; but 128->128 at 4x4 3.6 / 6.1, so only
maps of at most SMALL_MAP positions take the GEMM. A SE-ResNet-18 step at 32 px (the demo's) took 430 ms, 210 ms
with it. The forward pass and the input gradient stay oneDNN's, so outputs are unchanged and gradients differ by
float rounding only.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

SMALL_MAP = 4  # output positions (H_out * W_out) up to which the GEMM was measured faster: 2x2, 1x2, 1x1


def output_positions(conv: nn.Conv2d, height: int, width: int) -> int:
    """H_out * W_out of `conv` on an input of `height` x `width`."""
    sizes = [(size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
             for size, pad, dilation, kernel, stride in zip((height, width), conv.padding, conv.dilation,
                                                             conv.kernel_size, conv.stride)]
    return sizes[0] * sizes[1]


def weight_gradient(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: Tuple[int, int],
                    padding: Tuple[int, int], dilation: Tuple[int, int]) -> torch.Tensor:
    """dL/dweight of conv2d(x, weight) given dL/dout, with `weight`'s strides (a channels_last weight's gradient
    comes out channels_last: no copy at accumulation, and DDP's bucket views keep their strides)."""
    batch, out_channels, out_height, out_width = grad_out.shape
    in_channels, kernel_height, kernel_width = weight.shape[1:]
    positions = out_height * out_width
    columns = F.unfold(x, (kernel_height, kernel_width), dilation, padding, stride)  # (B, C_in*kh*kw, positions)
    grad_rows = grad_out.permute(1, 0, 2, 3).reshape(out_channels, batch * positions)
    grad_weight = torch.empty_like(weight)
    target = grad_weight.permute(0, 2, 3, 1)  # (C_out, kh, kw, C_in): channels_last's order in memory
    if target.is_contiguous():
        columns = columns.view(batch, in_channels, kernel_height * kernel_width, positions).permute(0, 3, 2, 1)
    else:  # (C_out, C_in, kh, kw)
        columns, target = columns.transpose(1, 2), grad_weight
    torch.mm(grad_rows, columns.reshape(batch * positions, -1), out=target.view(out_channels, -1))
    return grad_weight


class GemmWeightGradientConv(torch.autograd.Function):
    """conv2d without bias whose backward takes the input gradient from torch and the weight's from
    `weight_gradient`."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding, dilation,
                                                         False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad_out, x, weight, stride, padding, dilation)
        return grad_x, grad_weight, None, None, None


class SmallMapConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters, same state_dict) that trains through GemmWeightGradientConv where that was
    measured faster: batched fp32 CPU tensors, an output map of at most SMALL_MAP positions, gradients wanted,
    and neither autocast nor torch.compile (which generates its own code)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()
                and output_positions(self, x.shape[-2], x.shape[-1]) <= SMALL_MAP):
            return GemmWeightGradientConv.apply(x, self.weight, self.stride, self.padding, self.dilation)
        return super().forward(x)


def use_gemm_weight_gradients(model: nn.Module, device: torch.device) -> int:
    """On the CPU, make every plain convolution of `model` (no bias, no groups, zero padding by numbers) a
    SmallMapConv2d, in place; returns how many (none on a GPU, whose cuDNN picks its own algorithms). The class is
    switched on the module itself, so its parameters, their values, the RNG and every checkpoint stay as they
    were."""
    if device.type != "cpu":
        return 0
    switched = 0
    for module in model.modules():
        if (type(module) is nn.Conv2d and module.bias is None and module.groups == 1
                and module.padding_mode == "zeros" and isinstance(module.padding, tuple)):
            module.__class__ = SmallMapConv2d
            switched += 1
    return switched
