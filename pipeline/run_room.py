"""Will a run's files fit on its disk? Asked before a run or an ablation starts: a full disk stopped a run at the
first checkpoint it could not write, after the epoch before it had trained (an ImageNet epoch is GPU-hours), and
an ablation then failed every run left, each after an epoch.

A checkpoint holds the weights (the state_dict, which is also final.pt) and SGD's momentum (a buffer per trained
parameter). A run keeps two checkpoints and final.pt; while the third epoch's checkpoint is written, three are on
disk at once (checkpoint.prev.pt, checkpoint.pt, and the temp file that replaces it). The sizes come from the
model built on torch's meta device (no memory, ~0.03 s), plus what torch.save adds per tensor and per file.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import torch

from pipeline.atomic import free_bytes
from pipeline.errors import StorageError
from pipeline.models import build_model
from pipeline.run_dir import CHECKPOINT_NAME, FINAL_WEIGHTS_NAME, PREVIOUS_CHECKPOINT_NAME

# torch.save's zip records (≈ 330 B a tensor measured) and a checkpoint's log, config and random states (≈ 40 KB
# measured at 1 epoch): rounded up, so the estimate is never short
BYTES_PER_TENSOR, BYTES_PER_FILE = 1024, 1 << 20
WEIGHT_FILES = (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, FINAL_WEIGHTS_NAME)


@dataclass(frozen=True)
class RunBytes:
    """The bytes of one run's checkpoint and final.pt."""
    checkpoint: int
    final: int

    def kept(self, epochs: int) -> int:
        """What the run directory holds once the run has finished."""
        return min(epochs, 2) * self.checkpoint + self.final

    def peak(self, epochs: int) -> int:
        """The most it holds at any time: a third checkpoint while one replaces another (from the third epoch),
        else final.pt's temp file beside the checkpoints."""
        return min(epochs, 2) * self.checkpoint + (self.checkpoint if epochs >= 3 else self.final)


def run_bytes(config: Dict[str, Any], num_classes: int) -> RunBytes:
    """The sizes of the files of a run of `config` on data of `num_classes` classes."""
    with torch.device("meta"):
        model = build_model(config["model.arch"], config["model.squeeze"], config["model.reduction"], num_classes,
                            config["model.zero_init_last"], config["model.blurpool"])
    state = list(model.state_dict().values())
    momentum = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if config["training.momentum"] == 0:  # SGD keeps no buffer then
        momentum = []

    def file_bytes(tensors) -> int:
        return sum(tensor.numel() * tensor.element_size() + BYTES_PER_TENSOR for tensor in tensors) + BYTES_PER_FILE
    return RunBytes(file_bytes(state + momentum), file_bytes(state))


def present_bytes(run_dir: Path) -> int:
    """The bytes of the weight files `run_dir` holds already (a resumed run replaces them)."""
    return sum((Path(run_dir) / name).stat().st_size for name in WEIGHT_FILES if (Path(run_dir) / name).is_file())


def check_room(folder: Path, need: int, what: str, remedy: str) -> None:
    """Refuse, in one line, `need` more bytes than the disk of `folder` has free (a disk that reports no size is
    not refused: writing there tells)."""
    free = free_bytes(folder)
    if free is not None and need > free:
        raise StorageError(f"{what} need ≈ {need / 1e9:.2f} GB more on the disk of {folder}, and {free / 1e9:.2f} GB "
                           f"are free there; {remedy}")


def check_run_room(config: Dict[str, Any], num_classes: int, run_dir: Path) -> None:
    """Refuse a run whose checkpoints and final.pt cannot fit beside what `run_dir` holds already."""
    sizes, epochs = run_bytes(config, num_classes), config["training.epochs"]
    check_room(run_dir, sizes.peak(epochs) - present_bytes(run_dir),
               f"the run's checkpoints and final.pt ({sizes.checkpoint / 1e9:.2f} GB a checkpoint)",
               "free space or choose another --logging.run_dir")


def check_ablation_room(runs: Sequence[Tuple[Dict[str, Any], Path]], num_classes: int, side_by_side: int,
                        root: Path) -> None:
    """Refuse an ablation whose runs left (each one's config and run directory) cannot all keep their files on the
    disk of `root`, `side_by_side` of them at their peak at once: a full disk failed every run after it."""
    if not runs:
        return
    sizes: Dict[str, RunBytes] = {}  # an arm's seeds have files of one size
    epochs = runs[0][0]["training.epochs"]  # one recipe and the same settings for every run
    need, above = 0, []
    for config, run_dir in runs:
        if config["model.squeeze"] not in sizes:
            sizes[config["model.squeeze"]] = run_bytes(config, num_classes)
        size = sizes[config["model.squeeze"]]
        need += max(size.kept(epochs) - present_bytes(run_dir), 0)
        above.append(size.peak(epochs) - size.kept(epochs))
    largest = max(size.kept(epochs) for size in sizes.values())
    check_room(root, need + sum(sorted(above, reverse=True)[:side_by_side]),
               f"the {len(runs)} runs left (each keeps its checkpoints and final.pt, up to {largest / 1e9:.2f} GB)",
               "free space, pass another --runs-root, or run fewer arms or seeds")
