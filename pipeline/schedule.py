"""Learning-rate schedules as functions of fractional epochs, each with a linear warmup, applied per iteration.

`triangular` is ffcv-imagenet's: linear up to the peak at `warmup_epochs`, then linear down to 0 at the end.
The lr is given per 256 images and scaled linearly by the global batch (Goyal et al., arXiv 1706.02677).
"""
import bisect
import math
from typing import Callable, Dict, Optional, Sequence

WARMUP_START = 1e-4  # the warmup starts at this fraction of the peak, as ffcv-imagenet


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    return lr_per_256 * global_batch / 256


def _warmup(position: float, warmup_epochs: float) -> float:
    return WARMUP_START + (1 - WARMUP_START) * position / warmup_epochs


def _step(position, epochs, warmup_epochs, milestones, gamma):
    return gamma ** bisect.bisect_right(sorted(milestones), position)


def _triangular(position, epochs, warmup_epochs, milestones, gamma):
    return max(0.0, (epochs - position) / (epochs - warmup_epochs)) if epochs > warmup_epochs else 1.0


def _cosine(position, epochs, warmup_epochs, milestones, gamma):
    span = max(epochs - warmup_epochs, 1e-12)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (position - warmup_epochs) / span)))


SCHEDULES: Dict[str, Callable[..., float]] = {"step": _step, "triangular": _triangular, "cosine": _cosine}


def lr_shortfall(schedule: str, epochs: int, warmup_epochs: float, milestones: Sequence[float]) -> Optional[str]:
    """A line saying what of the schedule the run ends before (a recipe shortened with --training.epochs): the end
    of its warmup, or some of the step schedule's milestones; else None. Not an error, but the lr does not follow
    the recipe."""
    if warmup_epochs > epochs:
        return (f"lr.warmup_epochs {warmup_epochs:g} is past the last epoch (training.epochs {epochs}): the lr rises "
                f"to {100 * _warmup(epochs, warmup_epochs):.0f} % of its peak (lr.lr) and the run ends")
    past = [milestone for milestone in milestones if milestone >= epochs]
    if schedule != "step" or not past:
        return None
    applied = len(milestones) - len(past)
    return (f"lr.milestones {', '.join(f'{milestone:g}' for milestone in past)} {'is' if len(past) == 1 else 'are'} "
            f"past the last epoch (training.epochs {epochs}): the lr is multiplied by lr.gamma {applied} "
            f"time{'' if applied == 1 else 's'}, not {len(milestones)}")


def lr_factor(schedule: str, position: float, epochs: int, warmup_epochs: float = 0.0,
              milestones: Sequence[float] = (), gamma: float = 0.1) -> float:
    """Multiplier of the peak lr at `position` epochs (e.g. 3.25 = a quarter into the fourth epoch)."""
    if position < warmup_epochs:
        return _warmup(position, warmup_epochs)
    return SCHEDULES[schedule](position, epochs, warmup_epochs, milestones, gamma)
