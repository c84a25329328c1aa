"""SE-ResNets on torchvision's ResNet in which only the squeeze differs (Hu et al., arXiv 1709.01507).

SE sits after the block's last BN and before the residual add (as SENet and the seed). The excitation is
Linear(C, C//r) -> ReLU -> Linear(C//r, C) -> sigmoid without biases (SENet removes them on ResNets).
Model depths are data; `se_resnet18/34/50/101` are one-line wrappers over `build_model`.
"""
from typing import Dict, Optional, Tuple, Type

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from pipeline.blurpool import apply_blurpool
from pipeline.kernels import FOLDING, KernelUnavailableError, check_se_kernel, tail_implementation, triton_available
from pipeline.kernels.layout import SQUEEZE_MODES
from pipeline.kernels.se_closed_form import closed_form_tail
from pipeline.kernels.se_ops import fused_se_tail, supports_batch_norm
from pipeline.squeeze import BASELINE, MultiSpectralSqueeze, build_squeeze, check_squeeze_name


class SqueezeExcite(nn.Module):
    """Gate each channel by sigmoid(MLP(squeeze(x))).

    `tail` computes the whole block tail relu(SE(bn(z)) + identity), in fused Triton kernels, in the torch
    ops of `forward` (the reference) or in the kernels' algorithm in torch ops, as `kernel` says
    (pipeline/kernels: auto, torch, triton or closed-form).
    """

    def __init__(self, channels: int, squeeze: str, reduction: int = 16, kernel: str = "auto"):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction {reduction}: give a ratio of at least 1 (SENet's is 16)")
        if channels // reduction < 1:
            raise ValueError(f"reduction {reduction} leaves no hidden units for {channels} channels")
        hidden = channels // reduction
        self.squeeze_name = squeeze
        self.squeeze = build_squeeze(squeeze, channels)
        self.excite = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )
        self.set_kernel(kernel)

    def set_kernel(self, kernel: str) -> None:
        check_se_kernel(kernel)
        if kernel in FOLDING and self.squeeze_name not in SQUEEZE_MODES:
            raise KernelUnavailableError(f"squeeze '{self.squeeze_name}' has no fused form (se_kernel={kernel}); "
                                         "use se_kernel=torch")
        if kernel == "triton" and not triton_available():
            raise KernelUnavailableError("se_kernel=triton needs the triton package; use se_kernel=torch")
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(self.squeeze(x))  # (B, C)
        return x * gate[:, :, None, None].to(x.dtype)

    def tail(self, z: torch.Tensor, bn: nn.Module, identity: torch.Tensor,
             identity_bn: Optional[nn.Module] = None) -> torch.Tensor:
        """relu(self(bn(z)) + identity), z being the block's last conv output; with `identity_bn` (the
        downsample's BN, `identity` its input) relu(self(bn(z)) + identity_bn(identity)), which the kernels
        fold in as well."""
        fusable = self.squeeze_name in SQUEEZE_MODES and supports_batch_norm(bn)
        implementation = tail_implementation(self.kernel, z) if fusable else "torch"
        if self.kernel in FOLDING and not fusable:
            raise KernelUnavailableError(f"se_kernel={self.kernel} folds a plain BatchNorm2d, not {bn}")
        # the identity's BN runs as a module unless the fused form folds it (the kernels run one mode for both BNs)
        folds = implementation == "closed-form" or (implementation == "triton" and identity_bn is not None
                                                    and identity_bn.training == bn.training)
        if identity_bn is not None and not folds:
            identity, identity_bn = identity_bn(identity), None
        if implementation == "torch":
            return torch.relu(self(bn(z)) + identity)
        random_squeeze = self.squeeze(z) if self.squeeze_name == "random" else None  # the reference's draw
        mode = SQUEEZE_MODES[self.squeeze_name]
        filters = filter_sum = None
        if isinstance(self.squeeze, MultiSpectralSqueeze):
            filters, filter_sum = self.squeeze.kernel_filters(z)
        if implementation == "closed-form":
            return closed_form_tail(z, identity, bn, self.excite, mode, filters, filter_sum, random_squeeze,
                                    identity_bn)
        return fused_se_tail(z, identity, bn, self.excite[0].weight, self.excite[2].weight,
                             mode, filters, filter_sum, random_squeeze, identity_bn)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


class _SESlot:
    """Adds the one `se` slot to a torchvision block: Identity until the builder fills it, so a block with an
    empty slot consumes the RNG and holds the parameters of torchvision's block exactly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se: nn.Module = nn.Identity()

    def _identity(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[nn.Module]]:
        """(identity, None), or with an SE slot and a downsample ending in a plain BN (torchvision's) that BN's
        input and the BN: the SE tail applies it, so the fused kernels fold it in (two activation passes less
        each way) and the torch ops compute exactly what torchvision's block does."""
        if self.downsample is None:
            return x, None
        layers = list(self.downsample) if isinstance(self.downsample, nn.Sequential) else [self.downsample]
        if not (isinstance(self.se, SqueezeExcite) and supports_batch_norm(layers[-1])):
            return self.downsample(x), None
        for layer in layers[:-1]:
            x = layer(x)
        return x, layers[-1]

    def _tail(self, z: torch.Tensor, bn: nn.Module, identity: torch.Tensor,
              identity_bn: Optional[nn.Module]) -> torch.Tensor:
        """relu(SE(bn(z)) + identity), or torchvision's relu(bn(z) + identity) with an empty slot."""
        if isinstance(self.se, SqueezeExcite):
            return self.se.tail(z, bn, identity, identity_bn)
        return self.relu(bn(z) + identity)


class SEBasicBlock(_SESlot, BasicBlock):
    """torchvision's BasicBlock with an `se` slot after bn2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity, identity_bn = self._identity(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self._tail(self.conv2(out), self.bn2, identity, identity_bn)


class SEBottleneck(_SESlot, Bottleneck):
    """torchvision's Bottleneck (stride on the 3x3 conv, as torchvision) with an `se` slot after bn3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity, identity_bn = self._identity(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._tail(self.conv3(out), self.bn3, identity, identity_bn)


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


def largest_reduction(arch: str) -> int:
    """The largest SE reduction ratio `arch` takes: its narrowest SE blocks (the first stage's, 64 channels per
    block expansion) keep one hidden unit."""
    block, _ = ARCHITECTURES[arch]
    return 64 * block.expansion


def check_arch_name(name: str, source: str = "arch") -> str:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch '{name}' (from {source}); choose one of: {', '.join(ARCHITECTURES)}")
    return name


def build_model(arch: str = "resnet50", squeeze: str = "gap", reduction: int = 16, num_classes: int = 1000,
                zero_init_last: bool = True, blurpool: bool = False, se_seed: int = 0,
                se_kernel: str = "auto") -> ResNet:
    """An SE-ResNet; `squeeze='baseline'` gives a model interchangeable with torchvision's `resnetNN()`.

    `se_kernel` (auto, torch or triton) picks how the SE tail runs; it changes speed, not results (beyond
    float rounding), and can be changed later with `set_se_kernel`.
    """
    check_arch_name(arch)
    check_squeeze_name(squeeze)
    check_se_kernel(se_kernel)
    if num_classes < 1:  # torch builds a Linear(…, 0) without a word, and every loss is then NaN
        raise ValueError(f"num_classes {num_classes}: give at least 1 (train.py's model.num_classes: 0 means "
                         "'from the data', which it resolves before building)")
    block, layers = ARCHITECTURES[arch]
    model = ResNet(block, list(layers), num_classes=num_classes, zero_init_residual=zero_init_last)
    if squeeze != BASELINE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(se_seed + SE_INIT_SEED_OFFSET)
            for module in model.modules():
                if isinstance(module, (SEBasicBlock, SEBottleneck)):
                    last_bn = getattr(module, "bn3", module.bn2)
                    module.se = SqueezeExcite(last_bn.num_features, squeeze, reduction, se_kernel)
    if blurpool:
        apply_blurpool(model)
    return model


def set_se_kernel(model: nn.Module, se_kernel: str) -> nn.Module:
    """Switch every SE block of `model` to `se_kernel` (auto, torch or triton); returns the model."""
    for module in model.modules():
        if isinstance(module, SqueezeExcite):
            module.set_kernel(se_kernel)
    return model


def se_resnet18(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet18", squeeze, reduction, num_classes, zero_init_last, **kwargs)


def se_resnet34(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet34", squeeze, reduction, num_classes, zero_init_last, **kwargs)


def se_resnet50(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet50", squeeze, reduction, num_classes, zero_init_last, **kwargs)


def se_resnet101(squeeze="gap", reduction=16, num_classes=1000, zero_init_last=True, **kwargs) -> ResNet:
    return build_model("resnet101", squeeze, reduction, num_classes, zero_init_last, **kwargs)
