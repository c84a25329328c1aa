"""How a run starts from what its run directory holds: resume its checkpoint, skip it finished, or refuse it.

Only rank 0 reads the folder (trainer.py hands its answers to every rank: distributed.from_main), so ranks on
nodes that do not share the folder's disk start where rank 0 does."""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from pipeline import checkpoint as ckpt
from pipeline.config import ConfigError
from pipeline.distributed import World, processes
from pipeline.errors import StorageError
from pipeline.run_dir import (CHECKPOINT_NAME, CONFIG_NAME, RunDirError, foreign_files, has_checkpoint, is_finished,
                              refuse_other_run)

OTHER_RUN_REMEDY = "choose another --logging.run_dir or delete that directory"


def finished_already(run_dir: Path, config: Dict[str, Any], resume_required: bool, data: Dict[str, str]) -> bool:
    """True when `run_dir` holds this run finished; raises where it holds another run, or no checkpoint where
    --resume insists on one."""
    foreign = foreign_files(run_dir)
    if foreign:
        raise RunDirError(f"{run_dir} holds {', '.join(foreign)}, which no run wrote (a run's {CONFIG_NAME} names "
                          "its settings); a run would overwrite them: choose a new or empty --logging.run_dir")
    if resume_required and not has_checkpoint(run_dir):
        raise ConfigError(f"--resume: {run_dir} holds no {CHECKPOINT_NAME} to resume from")
    return is_finished(run_dir, config, OTHER_RUN_REMEDY, data)


def resume_state(run_dir: Path, config: Dict[str, Any], world: World,
                 data: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume from (None: start at epoch 1), after refusing one of another run, other data
    or another number of processes."""
    state, warning = ckpt.load_latest_checkpoint(run_dir)
    if state is None:
        return None
    if warning and world.is_main:
        print(warning, flush=True)
    refuse_other_run(run_dir, state["config"], config, OTHER_RUN_REMEDY, data)
    trained_by = state.get("world_size", world.world_size)  # not recorded before this check existed
    if trained_by != world.world_size:
        batch = config["training.batch_size"]
        raise RunDirError(f"{run_dir} was trained by {processes(trained_by)} (global batch {trained_by * batch}); "
                          f"resuming it with {processes(world.world_size)} would change the global batch and the "
                          f"learning rate: resume it with {processes(trained_by)} (torchrun --nproc_per_node), or "
                          "train anew in another --logging.run_dir")
    return state


def restore(state: Dict[str, Any], model, optimizer, scaler, rank: int) -> Tuple[list, int]:
    """Load a checkpoint's states in place; returns (log so far, first epoch to run)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    ckpt.restore_rng_states(state["rng"], rank)
    return state["history"], state["epoch"] + 1


def make_run_dir(run_dir: Path, option: str = "--logging.run_dir (or --logging.runs_root)") -> None:
    """Create the folder and prove it writable now, not at the end of the first epoch; `option` is the setting
    that names it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise StorageError(f"{run_dir} is a file, not a folder; choose another {option}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise StorageError(f"cannot write in {run_dir}: {error.strerror or error}; choose a writable "
                           f"{option}") from None
