"""Checkpoints: one schema (model, optimizer, scaler, epoch, config, every rank's RNG states, format version),
written atomically from rank 0, saved unwrapped from DDP and torch.compile so any process or tool can load them."""
import errno
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pipeline.acceleration import unwrap
from pipeline.atomic import atomic_open
from pipeline.errors import StorageError
from pipeline.run_dir import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME

FORMAT_VERSION = 1
# final.pt records the model it holds in its state_dict's own metadata, which torch.save keeps and
# load_state_dict ignores: the file stays a plain state_dict that torchvision's resnetNN loads (baseline)
MODEL_SETTINGS_KEY = "ssenet_model"
MODEL_SETTING_NAMES = ("arch", "squeeze", "reduction", "num_classes", "blurpool")


def save_atomic(payload: Any, path: Path, previous: Optional[Path] = None) -> None:
    """torch.save through a temp file: a kill mid-save leaves the previous file intact (kept as `previous`)."""
    with atomic_open(path, "wb", previous) as handle:
        try:
            torch.save(payload, handle)
        except RuntimeError as error:  # torch's zip writer reports a short write (full disk) this way
            raise OSError(errno.ENOSPC, f"{str(error).splitlines()[0]} (disk full?)") from None


def rng_states() -> Dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Any, rank: int = 0) -> None:
    """This rank's states: checkpoints hold a list, one per rank (older ones rank 0's alone, given to every rank,
    which made the `random` arm draw rank 0's numbers on every rank after a resume)."""
    if isinstance(states, list):
        states = states[rank]
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], epoch: int, config: Dict[str, Any],
                    history: list, world_size: int, rng: Optional[List[Dict[str, Any]]] = None) -> None:
    """`epoch` is the last finished epoch (0-based); `history` the log lines so far; `world_size` the processes
    that trained it (with the per-process batch, the global batch); `rng` every rank's random states (default:
    this process's). The checkpoint it replaces is kept as PREVIOUS_CHECKPOINT_NAME beside it."""
    save_atomic({
        "format_version": FORMAT_VERSION, "epoch": epoch, "config": config, "history": history,
        "world_size": world_size,
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng or [rng_states()],
    }, path, Path(path).with_name(PREVIOUS_CHECKPOINT_NAME))


# What a checkpoint holds besides tensors and plain data: numpy's RNG state, a uint32 array (under numpy 2's
# module names, and numpy 1's for a file written there). Nothing else is unpickled: torch.load(weights_only=False)
# runs whatever code a file names, and `--eval-only --weights` reads files from elsewhere (a collaborator's
# final.pt, a download)
_RECONSTRUCT = np.array(0).__reduce__()[0]  # numpy's array rebuilder, wherever this numpy keeps it
SAFE_GLOBALS = [(_RECONSTRUCT, f"{module}.multiarray._reconstruct") for module in ("numpy.core", "numpy._core")] + [
    np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _torch_load(path: Path, what: str) -> Any:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # a file that is no checkpoint can look like a pickle of another protocol: the error says it in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+)", str(error))  # not allowed, or its module blocked
        if unsafe:
            raise StorageError(f"{path} asks to run {unsafe.group(1)!r} as it loads; a {what} is read as "
                               "tensors and plain data only, which is all train.py writes (if you trust the file, "
                               "save its state_dict alone with torch.save)") from None
        raise _unreadable(path, what, error) from None
    # torch's restricted unpickler meets a file that is no pickle with any of these (a text file: KeyError)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as error:
        raise _unreadable(path, what, error) from None


def _unreadable(path: Path, what: str, error: Exception) -> StorageError:
    lines = [line for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError) and len(lines) > 2:  # torch's preamble, the reason, a doc link
        lines = lines[-2:]
    reason = lines[0] if lines else type(error).__name__
    if isinstance(error, (KeyError, IndexError)):  # the unpickler's own bookkeeping, e.g. KeyError 101: no pickle
        reason = "not a file torch.save wrote"
    return StorageError(f"{path} is not a readable {what} (truncated or not written by train.py: {reason})")


def load_checkpoint(path: Path) -> Dict[str, Any]:
    checkpoint = _torch_load(path, "checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != FORMAT_VERSION:
        found = checkpoint.get("format_version") if isinstance(checkpoint, dict) else None
        raise StorageError(f"{path} has checkpoint format {found}, this code reads format {FORMAT_VERSION}")
    return checkpoint


def load_latest_checkpoint(run_dir: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the newest readable checkpoint of `run_dir` or None, a warning when it is the previous one)."""
    current, previous = Path(run_dir) / CHECKPOINT_NAME, Path(run_dir) / PREVIOUS_CHECKPOINT_NAME
    if not current.is_file():
        return (load_checkpoint(previous), None) if previous.is_file() else (None, None)  # killed mid-swap
    try:
        return load_checkpoint(current), None
    except StorageError as error:
        if not previous.is_file():
            raise StorageError(f"{error}; no {PREVIOUS_CHECKPOINT_NAME} to fall back to: delete {current} to "
                               "train this run from the start (log.jsonl keeps the finished epochs)") from None
        state = load_checkpoint(previous)
        return state, f"warning: {error}; resuming from {previous} (epoch {state['epoch'] + 1}) instead"


def save_final_weights(path: Path, model: nn.Module, settings: Dict[str, Any]) -> None:
    """The trained weights as a plain state_dict that also records `settings` (MODEL_SETTING_NAMES)."""
    state = unwrap(model).state_dict()
    state._metadata.setdefault("", {})[MODEL_SETTINGS_KEY] = {name: settings[name] for name in MODEL_SETTING_NAMES}
    save_atomic(state, path)


def load_weights(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """(state_dict, the model settings it records or None) from final.pt or a checkpoint.pt."""
    payload = _torch_load(path, "weights file")
    if isinstance(payload, dict) and "format_version" in payload:
        model_config = payload["config"]
        return payload["model"], {name: model_config[f"model.{name}"] for name in MODEL_SETTING_NAMES
                                  if f"model.{name}" in model_config}
    metadata = getattr(payload, "_metadata", {}) or {}
    return payload, metadata.get("", {}).get(MODEL_SETTINGS_KEY)
