"""One training epoch and one exact evaluation pass; each returns what it measured."""
from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.acceleration import Precision, Stopwatch
from pipeline.distributed import all_reduce_sum
from pipeline.optim import set_lr
from pipeline.progress import Progress

NONFINITE_CHECK_EVERY = 25  # steps between host syncs that look for a non-finite loss


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(loss_sum).item():
        raise NonFiniteLossError(f"training loss became non-finite in epoch {epoch + 1} by step {step + 1}; "
                                 "the last good checkpoint is kept (lower lr.lr or use training.precision=fp32)")


def train_one_epoch(model: nn.Module, loader: Iterable, augment: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], precision: Precision, label_smoothing: float,
                    lr_at_step: Callable[[int], float], epoch: int, device: torch.device,
                    show_progress: bool) -> Dict[str, float]:
    """Mean train loss, images/s and the last lr of one epoch (this process's share)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    images_seen, step = 0, -1
    batches = Progress(loader, desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=not show_progress,
                   mininterval=1)
    watch = Stopwatch(device)
    for step, (images, labels) in enumerate(batches):
        lr = lr_at_step(step)
        set_lr(optimizer, lr)
        images, labels = augment(images), labels.view(-1)
        with precision.autocast():
            loss = F.cross_entropy(model(images), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.detach().float()
        images_seen += images.shape[0]
        if step == 0:  # includes torch.compile's compilation and cudnn autotuning on the first epoch
            first_step_seconds = watch.elapsed()
        if (step + 1) % NONFINITE_CHECK_EVERY == 0:
            _check_finite(loss_sum, epoch, step)
            if show_progress:
                batches.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}", lr=f"{lr:.3g}")
    if step < 0:
        raise RuntimeError("the train loader yielded no batch: training.batch_size is larger than the "
                           "train set's share of this process (drop_last is on)")
    _check_finite(loss_sum, epoch, step)
    seconds = watch.elapsed()
    return {"train_loss": loss_sum.item() / (step + 1), "train_images_per_s": images_seen / seconds,
            "train_seconds": seconds, "first_step_seconds": first_step_seconds, "lr": lr}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, augment: nn.Module, precision: Precision, flip_tta: bool,
             device: torch.device) -> Dict[str, float]:
    """Top-1/top-5 accuracy (%) and loss over the whole val set: each rank counts its exact shard and the
    counts are summed across ranks, so no image is counted twice."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for images, labels in loader:
        images, labels = augment(images), labels.view(-1)
        with precision.autocast():
            logits = model(images).float()
            if flip_tta:
                logits = logits + model(images.flip(3)).float()
        loss = F.cross_entropy(logits / (2 if flip_tta else 1), labels, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        totals += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), loss, torch.tensor(labels.shape[0],
                                                                                      device=device)]).double()
    all_reduce_sum(totals)
    correct1, correct5, loss_sum, count = totals.tolist()
    if count == 0:
        raise RuntimeError("the val loader yielded no image")
    return {"val_top1": 100 * correct1 / count, "val_top5": 100 * correct5 / count,
            "val_loss": loss_sum / count, "val_images": int(count)}

