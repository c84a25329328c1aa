"""FFCV loaders for training and evaluation, with flip and normalisation done as batched torch ops on the device.

Follows ffcv-imagenet's loaders (random-resized-crop decode on the CPU, center crop 224/256 for val,
progressive resizing) with two changes: the ffcv pipeline stays at two stages (ffcv 1.0.2 hangs on three or
more, e.g. a CPU NormalizeImage after ToTorchImage), and evaluation gives each rank an exact slice of the val
set (ffcv's distributed SEQUENTIAL order pads shards with duplicates, which would bias the metrics).
"""
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numba
import numpy as np
import torch

import pipeline.ffcv_startup  # noqa: F401  (before ffcv: see its docstring)
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.reader import Reader
from ffcv.transforms import ToDevice, ToTensor, ToTorchImage

from dataset_prep.beton import metadata_path, read_metadata
from pipeline.cores import affinity_cores, quota_cores, usable_cores
from pipeline.crop_resize import CenterCropDecoder, RandomResizedCropDecoder
from pipeline.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTER_CROP_RATIO = 224 / 256
RESOLUTION_STEP = 32


class DataError(UserError, ValueError):
    """A beton that is missing or does not match the model; one line, with what to do."""


def resolution_at(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """ffcv-imagenet's progressive resizing: min_res up to start_ramp, max_res from end_ramp on, linear between
    and rounded to a multiple of 32 px there (fewer distinct sizes: fewer cudnn/compile variants)."""
    if end_ramp <= start_ramp or epoch >= end_ramp:
        return max_res
    if epoch <= start_ramp:
        return min_res
    resolution = np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res])
    return int(np.clip(np.round(resolution / RESOLUTION_STEP) * RESOLUTION_STEP, min_res, max_res))


def ramp_shortfall(epochs: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> Optional[str]:
    """A line saying that the run ends before its ramp reaches max_res (a recipe shortened with
    --training.epochs), else None: not an error, but the resolution is not what the recipe says."""
    last = resolution_at(epochs - 1, min_res, max_res, start_ramp, end_ramp)
    if last == max_res:
        return None
    return (f"resolution.end_ramp {end_ramp} is past training.epochs {epochs}: the last epoch trains at {last} px, "
            f"not resolution.max_res {max_res}")


def check_beton(path: str, num_classes: Optional[int], against: Optional[str] = None) -> dict:
    """The beton's metadata, after checking that it exists, opens, and has `num_classes` classes (the model's,
    or those of the beton `against`)."""
    beton = Path(path)
    if not beton.is_file():
        where = "" if beton.is_absolute() else f" in {Path.cwd()}"  # recipes' paths are relative to the repo
        raise DataError(f"dataset {beton} does not exist{where}; write it with `python dataset_prep/write_imagenet.py"
                        f"` (no arguments: the sample set) or `... --data-dir IMAGENET --out-dir {beton.parent}`")
    if not metadata_path(beton).is_file():
        raise DataError(f"{metadata_path(beton)} is missing: {beton} was not written by dataset_prep/"
                        "write_imagenet.py (or its write did not finish); rewrite it with --overwrite")
    metadata = read_metadata(beton)
    try:
        samples = Reader(str(beton)).num_samples
    except (ValueError, OSError, IndexError) as error:
        raise DataError(f"{beton} is unreadable (truncated or corrupt: {error}); rewrite it with "
                        "dataset_prep/write_imagenet.py --overwrite") from None
    if samples != metadata["num_samples"]:
        raise DataError(f"{beton} holds {samples} images but {metadata_path(beton)} says "
                        f"{metadata['num_samples']}; rewrite it with dataset_prep/write_imagenet.py --overwrite")
    if num_classes is not None and len(metadata["classes"]) != num_classes:
        if against is not None:
            raise DataError(f"{beton} has {len(metadata['classes'])} classes but {against} has {num_classes}; "
                            "write both splits from the same class folders")
        raise DataError(f"{beton} has {len(metadata['classes'])} classes but model.num_classes is {num_classes}; "
                        "set model.num_classes to 0 to take it from the data")
    return metadata


def _to_device(device: torch.device) -> list:
    """ToDevice for a GPU; on the CPU the tensors already are where they are used."""
    return [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []


class LabelDecoder(IntDecoder):
    """ffcv's IntDecoder, whose code (closure-free) loads from numba's disk cache (ffcv_startup) instead of being
    compiled again in every loader."""

    def generate_code(self):
        code = super().generate_code()
        code.disk_cache = True
        return code


def _label_pipeline(device: torch.device) -> list:
    """Labels come out as (B, 1); the engine flattens them (ffcv's Squeeze turns a last batch of one image
    into a 0-d tensor)."""
    return [LabelDecoder(), ToTensor()] + _to_device(device)


def _image_tail(device: torch.device) -> list:
    """The non-JIT stage after the (JIT) decoder: to tensor, to the device, to NCHW channels_last."""
    return [ToTensor()] + _to_device(device) + [ToTorchImage(channels_last=True)]


@dataclass
class LoaderSettings:
    batch_size: int
    num_workers: int
    os_cache: bool
    batches_ahead: int
    seed: int


def loader_threads(requested: int, local_processes: int) -> Tuple[int, str]:
    """Threads for a process's loaders and a line to print ('' when none): `requested`, or for 0 this
    process's share of the cores it may run on. ffcv runs them as numba threads, and numba raises at more than
    NUMBA_NUM_THREADS (default: the machine's cores), so a larger request (e.g. a recipe written for a bigger
    machine) runs with numba's limit and says so."""
    limit = numba.config.NUMBA_NUM_THREADS
    if requested == 0:
        threads = max(1, min(limit, usable_cores() // local_processes))
        allowed, cores = quota_cores(), affinity_cores()
        if allowed is None or allowed >= cores:
            return threads, ""
        return threads, (f"data.num_workers 0: {threads} loader thread(s) per process, since a cgroup CPU quota "
                         f"(Docker's --cpus, a Kubernetes CPU limit) allows {allowed} of this process's {cores} cores")
    if requested <= limit:
        return requested, ""
    return limit, (f"data.num_workers {requested} is more than the {limit} threads numba starts on this machine "
                   f"(NUMBA_NUM_THREADS, default: its cores); the loaders use {limit}")


def _loader(path: str, **settings) -> Loader:
    """ffcv's Loader over the beton at `path` as it is now, for the Loader's whole life. ffcv reads a beton by name
    at three times: its index as the Loader is built, its pages as the first pass starts (os_cache: one memory
    map) or at every page read (the process cache). A beton written again in between (write_imagenet.py
    --overwrite renames the new file into place) was decoded at the old file's offsets, without a word: a run's
    val top-1 fell from 97.0 to 26.4 when its val beton was rewritten during its first epoch. The Loader gets the
    name /proc/self/fd/N of a descriptor kept open while it lives, which reaches the file opened here however it
    is replaced; where there is no /proc (not Linux), the path, as before."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    pinned = f"/proc/self/fd/{descriptor}"
    if not os.path.exists(pinned):
        os.close(descriptor)
        return Loader(path, **settings)
    try:
        loader = Loader(pinned, **settings)
    except BaseException:
        os.close(descriptor)
        raise
    weakref.finalize(loader, os.close, descriptor)
    return loader


def train_loader(path: str, settings: LoaderSettings, resolution: int, device: torch.device,
                 distributed: bool, make_decoder=RandomResizedCropDecoder) -> Loader:
    """Random-resized-crop at `resolution`; QUASI_RANDOM for one process, RANDOM when distributed (ffcv
    refuses QUASI_RANDOM there). The order and the crops depend on the seed and the epoch only, so every arm
    trains on the same crops in the same order. `make_decoder(output_size, seed=)`: the benchmark's ffcv decoder
    draws crops of the same distribution, unseeded, and resizes them slower (crop_resize.py)."""
    decoder = make_decoder((resolution, resolution), seed=settings.seed)
    order = OrderOption.RANDOM if distributed else OrderOption.QUASI_RANDOM
    return _loader(path, batch_size=settings.batch_size, num_workers=settings.num_workers, order=order,
                   os_cache=settings.os_cache, drop_last=True, distributed=distributed, seed=settings.seed,
                   batches_ahead=settings.batches_ahead,
                   pipelines={"image": [decoder] + _image_tail(device), "label": _label_pipeline(device)})


def set_epoch(loader: Loader, epoch: int) -> None:
    """Make the loader's next pass give `epoch`'s order (and so its crops), as a run from epoch 0 would see it.
    ffcv counts passes from 0 in each Loader, so a resumed run repeated the first epochs' orders; its QUASI_RANDOM
    order also shuffles its page tables in place at every pass, so the passes before are replayed (an order only:
    ~40 ms each for ImageNet's 1.28 M images)."""
    if epoch < loader.next_epoch:
        raise ValueError(f"the loader is at epoch {loader.next_epoch}; it cannot go back to {epoch}")
    while loader.next_epoch < epoch:
        loader.next_traversal_order()
        loader.next_epoch += 1


def set_train_resolution(loader: Loader, resolution: int) -> None:
    """Progressive resizing: the decoder reads its output size at every batch (as ffcv-imagenet does)."""
    decoder = loader.pipeline_specs["image"].decoder
    decoder.output_size = (resolution, resolution)


def val_loader(path: str, settings: LoaderSettings, resolution: int, device: torch.device,
               indices: Sequence[int]) -> Loader:
    """Center crop (ratio 224/256) at `resolution`, sequential over exactly `indices` (no padding)."""
    decoder = CenterCropDecoder((resolution, resolution), ratio=CENTER_CROP_RATIO)
    return _loader(path, order=OrderOption.SEQUENTIAL, batch_size=settings.batch_size,
                   num_workers=settings.num_workers, os_cache=settings.os_cache, drop_last=False,
                   indices=list(indices), batches_ahead=settings.batches_ahead,
                   pipelines={"image": [decoder] + _image_tail(device), "label": _label_pipeline(device)})


def shard_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Contiguous, disjoint, covering slices of range(num_samples), one per rank."""
    bounds = np.linspace(0, num_samples, world_size + 1).round().astype(int)
    return np.arange(bounds[rank], bounds[rank + 1])


class DeviceAugment(torch.nn.Module):
    """Batched flip (training only) and normalisation on the images' device: uint8 NCHW -> float NCHW, in the
    model's memory format (`channels_last`, training.channels_last's value).

    Doing these in torch keeps ffcv's pipeline at two stages and costs the GPU almost nothing. The flips come
    from a generator of their own, seeded from `seed` and the epoch (`set_epoch`): the global one is also drawn
    from by the `random` squeeze, whose flips then parted from the other arms' after the first step. The format
    follows the model's: channels_last images into a contiguous model made some convolutions' weight gradients
    channels_last, which DDP met with a "grad strides do not match bucket view strides" warning and a copy each
    step.
    """

    def __init__(self, flip: bool, seed: int = 0, channels_last: bool = True):
        super().__init__()
        self.flip, self.seed, self.epoch = flip, seed, 0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._generator: Optional[torch.Generator] = None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._generator = epoch, None

    def _flip_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device).manual_seed(self.seed * 100_003 + self.epoch)
        return self._generator

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if self.flip:
            draws = torch.rand(images.shape[0], 1, 1, 1, device=images.device,
                               generator=self._flip_generator(images.device))
            flip = draws < 0.5
            images = torch.where(flip, images.flip(3), images)
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=self.memory_format)
