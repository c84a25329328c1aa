"""BlurPool (Zhang, arXiv 1904.11486) as a model transform, the way ffcv-imagenet applies it.

A fixed [1,2,1] x [1,2,1] / 16 depthwise blur runs in front of every stride-2 conv with at least 16 input
channels (the stem's 3-channel conv is left alone), which makes the downsampling less aliased.
"""
import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 16


class BlurConv2d(nn.Module):
    """A blur (stride 1, same size) followed by the original strided conv, whose weights keep their values."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(kernel, kernel) / 16
        # not persistent: the blur is a constant, checkpoints need not carry it
        self.register_buffer("blur", kernel.expand(conv.in_channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(model: nn.Module) -> nn.Module:
    """Wrap, in place, every stride-2 Conv2d with >= 16 input channels; returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= MIN_CHANNELS:
            setattr(model, name, BlurConv2d(child))
        else:
            apply_blurpool(child)
    return model
