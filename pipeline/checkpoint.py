"""Checkpoints: one schema (model, optimizer, scaler, epoch, config, RNG states, format version), written
atomically from rank 0, saved unwrapped from DDP and torch.compile so any process or tool can load them."""
import random
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pipeline.atomic import atomic_open

FORMAT_VERSION = 1
# final.pt records the model it holds in its state_dict's own metadata, which torch.save keeps and
# load_state_dict ignores: the file stays a plain state_dict that torchvision's resnetNN loads (baseline)
MODEL_SETTINGS_KEY = "ssenet_model"
MODEL_SETTING_NAMES = ("arch", "squeeze", "reduction", "num_classes", "blurpool")


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


def save_final_weights(path: Path, model: nn.Module, settings: Dict[str, Any]) -> None:
    """The trained weights as a plain state_dict that also records `settings` (MODEL_SETTING_NAMES)."""
    state = unwrap(model).state_dict()
    state._metadata.setdefault("", {})[MODEL_SETTINGS_KEY] = {name: settings[name] for name in MODEL_SETTING_NAMES}
    save_atomic(state, path)


def load_weights(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """(state_dict, the model settings it records or None) from final.pt or a checkpoint.pt."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(payload, dict) and "format_version" in payload:
        model_config = payload["config"]
        return payload["model"], {name: model_config[f"model.{name}"] for name in MODEL_SETTING_NAMES
                                  if f"model.{name}" in model_config}
    metadata = getattr(payload, "_metadata", {}) or {}
    return payload, metadata.get("", {}).get(MODEL_SETTINGS_KEY)
