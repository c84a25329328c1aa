"""SGD with momentum over two parameter groups: weight decay on conv/linear weights only, by default
(decaying BN scales and biases hurts large-batch ResNet training; ffcv-imagenet does the same)."""
from typing import Any, Dict, List

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> List[dict]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            is_norm_or_bias = isinstance(module, nn.modules.batchnorm._NormBase) or name == "bias"
            (no_decay if is_norm_or_bias and not decay_norm_and_bias else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_sgd(model: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
              decay_norm_and_bias: bool) -> torch.optim.SGD:
    groups = parameter_groups(model, weight_decay, decay_norm_and_bias)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def build_sgd_for(model: nn.Module, lr: float, config: Dict[str, Any]) -> torch.optim.SGD:
    """build_sgd with a resolved config's training.* settings: a run's, or the declared defaults for a benchmark
    that steps as training does."""
    return build_sgd(model, lr, config["training.momentum"], config["training.nesterov"],
                     config["training.weight_decay"], config["training.decay_norm_and_bias"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
