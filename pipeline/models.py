"""SE-ResNets on torchvision's ResNet in which only the squeeze differs (Hu et al., arXiv 1709.01507).

SE sits after the block's last BN and before the residual add (as SENet and the seed). The excitation is
Linear(C, C//r) -> ReLU -> Linear(C//r, C) -> sigmoid without biases (SENet removes them on ResNets).
Model depths are data; `se_resnet18/34/50/101` are one-line wrappers over `build_model`.
"""
from typing import Dict, Tuple, Type

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from pipeline.blurpool import apply_blurpool
from pipeline.squeeze import BASELINE, build_squeeze, check_squeeze_name


class SqueezeExcite(nn.Module):
    """Gate each channel by sigmoid(MLP(squeeze(x)))."""

    def __init__(self, channels: int, squeeze: str, reduction: int = 16):
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"reduction {reduction} leaves no hidden units for {channels} channels")
        hidden = channels // reduction
        self.squeeze = build_squeeze(squeeze, channels)
        self.excite = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(self.squeeze(x))  # (B, C)
        return x * gate[:, :, None, None].to(x.dtype)


class _SESlot:
    """Adds the one `se` slot to a torchvision block: Identity until the builder fills it, so a block with an
    empty slot consumes the RNG and holds the parameters of torchvision's block exactly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se: nn.Module = nn.Identity()


class SEBasicBlock(_SESlot, BasicBlock):
    """torchvision's BasicBlock with an `se` slot after bn2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.se(out)
        return self.relu(out + identity)


class SEBottleneck(_SESlot, Bottleneck):
    """torchvision's Bottleneck (stride on the 3x3 conv, as torchvision) with an `se` slot after bn3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.se(out)
        return self.relu(out + identity)


# arch name -> (block, blocks per stage), as torchvision's resnetNN
ARCHITECTURES: Dict[str, Tuple[Type[nn.Module], Tuple[int, int, int, int]]] = {
    "resnet18": (SEBasicBlock, (2, 2, 2, 2)),
    "resnet34": (SEBasicBlock, (3, 4, 6, 3)),
    "resnet50": (SEBottleneck, (3, 4, 6, 3)),
    "resnet101": (SEBottleneck, (3, 4, 23, 3)),
}

# The SE layers draw their init from their own stream so that, for one seed, every arm's shared layers
# start from identical weights (a paired comparison measures the squeeze alone).
SE_INIT_SEED_OFFSET = 1_000_003


def check_arch_name(name: str, source: str = "arch") -> str:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch '{name}' (from {source}); choose one of: {', '.join(ARCHITECTURES)}")
    return name


def build_model(arch: str = "resnet50", squeeze: str = "gap", reduction: int = 16, num_classes: int = 1000,
                zero_init_last: bool = True, blurpool: bool = False, se_seed: int = 0) -> ResNet:
    """An SE-ResNet; `squeeze='baseline'` gives a model interchangeable with torchvision's `resnetNN()`."""
    check_arch_name(arch)
    check_squeeze_name(squeeze)
    block, layers = ARCHITECTURES[arch]
    model = ResNet(block, list(layers), num_classes=num_classes, zero_init_residual=zero_init_last)
    if squeeze != BASELINE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(se_seed + SE_INIT_SEED_OFFSET)
            for module in model.modules():
                if isinstance(module, (SEBasicBlock, SEBottleneck)):
                    last_bn = getattr(module, "bn3", module.bn2)
                    module.se = SqueezeExcite(last_bn.num_features, squeeze, reduction)
    if blurpool:
        apply_blurpool(model)
    return model


def se_resnet18(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet18", squeeze, reduction, num_classes, zero_init_last, **kwargs)


def se_resnet34(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet34", squeeze, reduction, num_classes, zero_init_last, **kwargs)


def se_resnet50(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet50", squeeze, reduction, num_classes, zero_init_last, **kwargs)


def se_resnet101(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet101", squeeze, reduction, num_classes, zero_init_last, **kwargs)
