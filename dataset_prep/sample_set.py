"""Build a small, learnable ImageFolder of real photos with no download: scikit-image's bundled images.

Each class is one photo; each sample is a random crop of it (scale, aspect, position), resized to 300-500 px,
maybe flipped, with colour jitter, saved as a JPEG. Deterministic for a seed (each image has its own random
stream, so the set does not depend on the number of worker processes); val crops are drawn apart from train
crops and a val image is never byte-identical to a train image.
"""
import collections
import hashlib
import io
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Callable, Dict

import numpy as np
from PIL import Image, ImageEnhance

from dataset_prep.image_folder import UsageError, find_split
from pipeline.atomic import free_space
from pipeline.cores import usable_cores
from pipeline.errors import StorageError
from pipeline.progress import Progress
from pipeline.worker_watch import stop_if_a_worker_dies

# class name -> loader of a photo bundled inside the scikit-image wheel (no network needed)
def _photos() -> Dict[str, Callable[[], np.ndarray]]:
    from skimage import data
    return {
        "astronaut": data.astronaut,
        "cat": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "hubble": data.hubble_deep_field,
        "tissue": data.immunohistochemistry,
        "retina": data.retina,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "cameraman": data.camera,
        "coins": data.coins,
    }


MIN_SIDE, MAX_SIDE = 300, 500
TRAIN_PER_CLASS, VAL_PER_CLASS = 200, 50  # the sample set's default size


def _random_view(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (15-100% of the area, aspect 3/4-4/3), resized so its long side is 300-500 px."""
    width, height = photo.size
    for _ in range(20):
        area = width * height * rng.uniform(0.15, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_w, crop_h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if crop_w <= width and crop_h <= height:
            break
    else:
        crop_w, crop_h = width, height
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    view = photo.crop((left, top, left + crop_w, top + crop_h))
    long_side = rng.integers(MIN_SIDE, MAX_SIDE + 1)
    scale = long_side / max(crop_w, crop_h)
    view = view.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.BILINEAR)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(rng.uniform(0.7, 1.3))
    return view


def photo_set_files(root: Path, per_class: int, seed: int) -> list:
    """The (path, label) train files of a photo set with `per_class` images per class under `root`, built
    (or rebuilt, at another size or broken) when needed; benchmarks use it for a set of a chosen size."""
    try:
        built = sample_folder_counts(root)["train"] if root.is_dir() else None
    except UsageError:  # a set broken since (an emptied class folder, say): the benchmarks' own, built again
        built = None
    if built != per_class:
        build_sample_folder(root, train_per_class=per_class, val_per_class=1, seed=seed)
    return list(find_split(root / "train").files)


_worker_photos: Dict[str, Image.Image] = {}


def _load_photos() -> None:
    """Pool initializer: each worker decodes the bundled photos once."""
    _worker_photos.update({name: Image.fromarray(load()).convert("RGB") for name, load in _photos().items()})


def _write_views(task) -> list:
    """Write one chunk of one (class, split); every image has its own random stream, so the set is the same
    whatever the number of workers. Returns (split, sha1) per image written."""
    out_root, name, class_index, split, stream, indices, seed, quality = task
    folder = out_root / split / name
    written = []
    for index in indices:
        rng = np.random.default_rng([seed, class_index, stream, index])
        encoded = io.BytesIO()
        _random_view(_worker_photos[name], rng).save(encoded, format="JPEG", quality=quality)
        # written by Python, which raises on a short write: PIL writing to the file left a truncated JPEG where
        # the disk filled up (or a file size limit was reached), without an error
        (folder / f"{name}_{index:05d}.JPEG").write_bytes(encoded.getvalue())
        written.append((split, hashlib.sha1(encoded.getvalue()).hexdigest()))
    return written


def _write_all_views(out_root: Path, final_root: Path, train_per_class: int, val_per_class: int, seed: int,
                     quality: int, workers: int) -> list:
    """(split, sha1) of every image, written under `out_root` (to become `final_root`) by `workers` processes
    (0: one per core)."""
    tasks, chunk = [], 64
    for class_index, name in enumerate(sorted(_photos())):
        # val views come from their own streams, drawn independently of train views
        for split, count, stream in (("train", train_per_class, 0), ("val", val_per_class, 1)):
            (out_root / split / name).mkdir(parents=True, exist_ok=True)
            tasks += [(out_root, name, class_index, split, stream, range(start, min(start + chunk, count)), seed,
                       quality) for start in range(0, count, chunk)]
    workers = min(workers or usable_cores(), len(tasks)) or 1
    written = []
    with Progress(total=len(_photos()) * (train_per_class + val_per_class), desc="sample set", unit="img",
              mininterval=1) as progress, multiprocessing.Pool(workers, initializer=_load_photos) as pool:
        # Pool.imap waits forever for the task of a worker the OOM killer took
        with stop_if_a_worker_dies(f"building the sample set in {final_root}"):
            for chunk_written in pool.imap(_write_views, tasks):  # as the writer's scan
                written += chunk_written
                progress.update(len(chunk_written))
    return written


def sample_folder_counts(root: Path) -> Dict[str, int]:
    """Photos per class in each split of a sample folder built before; a UsageError where it is not a whole set
    (a split or a class emptied or gone, classes of unequal sizes)."""
    counts = {}
    for split in ("train", "val"):
        try:
            per_class = collections.Counter(label for _, label in find_split(root / split).files)
        except UsageError as error:
            raise UsageError(f"{root} is not a whole sample set ({error}); delete it to build it again") from None
        sizes = sorted(set(per_class.values()))
        if len(per_class) != len(_photos()) or len(sizes) != 1:
            found = (f"{len(per_class)} classes, not {len(_photos())}" if len(per_class) != len(_photos()) else
                     f"classes of {sizes[0]} to {sizes[-1]} photos")
            raise UsageError(f"{root} is not a whole sample set ({split}: {found}); delete it to build it again")
        counts[split] = sizes[0]
    return counts


def build_sample_folder(out_root: Path, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS,
                        seed: int = 0, quality: int = 90, workers: int = 0) -> Dict[str, int]:
    """Write `out_root/{train,val}/<class>/*.JPEG` with `workers` processes (0: one per core); returns images
    written per split.

    Built in a temporary folder renamed at the end, so an interrupted build is never mistaken for a set.
    """
    final_root, out_root = out_root, out_root.with_name(out_root.name + ".partial")
    shutil.rmtree(out_root, ignore_errors=True)
    try:
        written = _write_all_views(out_root, final_root, train_per_class, val_per_class, seed, quality, workers)
    except BaseException as error:
        shutil.rmtree(out_root, ignore_errors=True)  # of no use, and on a full disk it keeps the disk full
        if isinstance(error, OSError):
            raise StorageError(f"the sample set in {final_root} was not built: {error.strerror or error} ("
                               f"{free_space(final_root.parent)}; free space or pass another --out-dir)") from None
        raise
    train_hashes = {digest for split, digest in written if split == "train"}
    if any(split == "val" and digest in train_hashes for split, digest in written):
        raise RuntimeError(f"a val image in {out_root} duplicates a train image; change the seed")
    counts = {split: sum(1 for done, _ in written if done == split) for split in ("train", "val")}
    shutil.rmtree(final_root, ignore_errors=True)  # a stale or differently sized set is replaced whole
    os.replace(out_root, final_root)
    return counts
