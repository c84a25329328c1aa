"""The run-directory contract: file names, run naming, what "finished" means, reading results, the lock.

One module so that trainer, ablation runner, report and tests agree. Torch-free: report.py reads run
directories on machines without torch.
"""
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from pipeline.errors import UserError

CONFIG_NAME, LOG_NAME, RESULT_NAME = "config.yaml", "log.jsonl", "result.json"
CHECKPOINT_NAME, FINAL_WEIGHTS_NAME, TRAIN_LOG_NAME, LOCK_NAME = "checkpoint.pt", "final.pt", "train.log", ".lock"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"  # the one before: resumed from when checkpoint.pt is unreadable
DATA_NAME = "data.json"  # what the betons held ({setting: identity}), written at every start
# what train.py writes in a run directory (train.log is ablate.py's, written before the run starts)
RUN_FILE_NAMES = (CONFIG_NAME, DATA_NAME, LOG_NAME, CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, FINAL_WEIGHTS_NAME,
                  RESULT_NAME)
# settings that change speed or output, not results: a run may resume (and count as finished) with other values
# (the val batch changes no training step, and the final top-1 only by float rounding: a run whose validation ran
# out of GPU memory resumes with a smaller one)
RESUME_FREE_KEYS = ("data.num_workers", "data.batches_ahead", "data.os_cache", "logging.", "dist.",
                    "model.se_kernel", "training.compile", "validation.batch_size", "validation.every")
# compared by what the betons hold where the run directory records it (DATA_NAME), not by where they lie: a
# copy on a node's local disk is the same data (README, "Several nodes")
DATA_KEYS = ("data.train_dataset", "data.val_dataset")


class RunDirError(UserError):
    """A run directory that holds another run, or one in use by another process."""


def run_name(arch: str, squeeze: str, recipe: str, seed: int) -> str:
    return f"{arch}-{squeeze}-{recipe}-s{seed}"


def first_difference(recorded: Dict[str, Any], requested: Dict[str, Any], free: tuple = ()) -> Optional[str]:
    """The first result-changing setting whose value differs (None when the runs are the same run)."""
    for key, value in requested.items():
        if not key.startswith(RESUME_FREE_KEYS + free) and recorded.get(key) != value:
            return key
    return None


def refuse_other_run(run_dir: Path, recorded: Dict[str, Any], requested: Dict[str, Any], remedy: str,
                     data: Optional[Dict[str, str]] = None) -> None:
    """Raise a one-line RunDirError when `run_dir` holds a run with other result-changing settings, or, given
    the identities of the betons asked for (`data`), one trained on other betons."""
    trained_on = read_json(Path(run_dir) / DATA_NAME) if data else None
    key = first_difference(recorded, requested, DATA_KEYS if trained_on else ())
    if key is not None:
        raise RunDirError(f"{run_dir} holds a run with {key}={recorded.get(key)!r}, not {requested[key]!r}; "
                          f"{remedy}")
    if not trained_on:
        return
    for key, identity in data.items():
        if trained_on.get(key) != identity:
            raise RunDirError(f"{run_dir} was trained on other data: its {key} held {trained_on.get(key)}, "
                              f"{requested[key]} holds {identity}; {remedy}")


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """The JSON object in `path`, or None when it is missing, unreadable (a run killed while writing it) or not an
    object (every file of a run is one: a list there made callers' .get raise)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_result(run_dir: Path) -> Optional[Dict[str, Any]]:
    return read_json(Path(run_dir) / RESULT_NAME)


def read_log(run_dir: Path) -> List[Dict[str, Any]]:
    """The log's epochs (none where it is missing); a ValueError naming the first line that does not parse."""
    path = Path(run_dir) / LOG_NAME
    lines = path.read_text().splitlines() if path.is_file() else []
    epochs = []
    for number, line in enumerate(lines, 1):
        try:
            epochs.append(json.loads(line))
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
    return epochs


def recorded_config(run_dir: Path, result: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The settings a run was started with (result.json, read here unless given, else config.yaml), flat
    {section.key: value}."""
    result = result if result is not None else read_result(run_dir)
    if result and "config" in result:
        return result["config"]
    tree = _config_tree(Path(run_dir))
    if tree is None:
        return None
    return {f"{section}.{key}": value for section, values in tree.items() for key, value in values.items()}


def _config_tree(run_dir: Path) -> Optional[Dict[str, Dict[str, Any]]]:
    """config.yaml as {section: {key: value}}, or None where it is missing or has another shape."""
    try:
        tree = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not (isinstance(tree, dict) and all(isinstance(values, dict) for values in tree.values())):
        return None
    return tree


def foreign_files(run_dir: Path) -> List[str]:
    """The files of `run_dir` named as a run's files when no run wrote them (a folder of one's own given as the
    run directory): a run would overwrite them. A run writes its config.yaml first and result.json last."""
    run_dir = Path(run_dir)
    present = [name for name in RUN_FILE_NAMES if (run_dir / name).exists()]
    if not present:
        return []
    written_by_a_run = ("squeeze" in (_config_tree(run_dir) or {}).get("model", {})
                        or isinstance((read_result(run_dir) or {}).get("config"), dict))
    return [] if written_by_a_run else present


def has_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint to resume from (the current one, or the one before it)."""
    return any((Path(run_dir) / name).is_file() for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME))


def has_trained(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything trained: a result or a checkpoint. A run that stopped before its first
    epoch ended (out of GPU memory at its first step) leaves only config.yaml: nothing to keep from other settings."""
    return (Path(run_dir) / RESULT_NAME).is_file() or has_checkpoint(run_dir)


def is_finished(run_dir: Path, config: Dict[str, Any], remedy: str, data: Optional[Dict[str, str]] = None) -> bool:
    """True when `run_dir` finished the run `config` asks for (on the betons `data` identifies); a run with
    other settings there is refused (one that trained nothing is not)."""
    if not has_trained(run_dir):
        return False
    result = read_result(run_dir)
    recorded = recorded_config(run_dir, result)
    if recorded is not None:
        refuse_other_run(run_dir, recorded, config, remedy, data)
    return bool(result) and result.get("finished_epochs") == config["training.epochs"]


# flock where the filesystem takes no locks: not implemented, not supported, no lock manager (NFS without lockd)
_NO_LOCKS = (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOLCK)


class RunLock:
    """An exclusive lock on a run directory while a process trains in it, or on a runs root while ablate.py runs
    its ablation (flock: released when it dies).

    The holder writes its PID and host into the lock file, so a second process can say who holds it; a refusal
    names `option`, the setting that chooses another folder. On a filesystem that takes no locks (Lustre mounted
    without `flock`, FUSE mounts such as a notebook's cloud drive) the folder is used unlocked, with a note: flock
    raised there, and every run ended in a traceback.
    """

    def __init__(self, run_dir: Path, option: str = "--logging.run_dir"):
        self.path = Path(run_dir) / LOCK_NAME
        self.option = option
        self._handle = None
        self._locked = False

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def __enter__(self):
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._locked = True
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                handle.close()
                if error.errno in (errno.EAGAIN, errno.EACCES):
                    raise RunDirError(f"{self.path.parent} is in use by {self.holder()}; wait for it to end or "
                                      f"choose another {self.option}") from None
                raise
            print(f"note: the filesystem of {self.path.parent} takes no file locks ({error.strerror}): another "
                  "process started in it meanwhile would not be refused", file=sys.stderr, flush=True)
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info):
        if self._locked:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        return False

    def is_held(self) -> bool:
        """Whether a live process holds the lock now (checked without taking it for long); False where the
        filesystem takes no locks (nothing says)."""
        if not self.path.exists():
            return False
        with open(self.path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                return error.errno not in _NO_LOCKS
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False
