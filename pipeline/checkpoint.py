"""Checkpoints: one schema (model, optimizer, scaler, epoch, config, RNG states, format version), written
atomically from rank 0, saved unwrapped from DDP and torch.compile so any process or tool can load them."""
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from pipeline.atomic import atomic_open

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
FINAL_WEIGHTS_NAME = "final.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_atomic(payload: Any, path: Path) -> None:
    """torch.save through a temp file: a kill mid-save leaves the previous file intact."""
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def rng_states() -> Dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], epoch: int, config: Dict[str, Any],
                    history: list) -> None:
    """`epoch` is the last finished epoch (0-based); `history` the log lines so far."""
    save_atomic({
        "format_version": FORMAT_VERSION, "epoch": epoch, "config": config, "history": history,
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_states(),
    }, path)


def load_checkpoint(path: Path, map_location="cpu") -> Dict[str, Any]:
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {checkpoint.get('format_version')}, "
                         f"this code reads format {FORMAT_VERSION}")
    return checkpoint


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    """A plain state_dict from final.pt, or the model part of a checkpoint.pt."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and "format_version" in payload:
        return payload["model"]
    return payload
