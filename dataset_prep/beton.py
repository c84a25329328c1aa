"""Write one split to an FFCV .beton atomically, with a metadata file beside it, and verify it.

The beton is written under a temporary name and renamed only once complete, so an interrupted write never
leaves a file that looks valid. The metadata (classes, counts, settings, source, versions) lets training
check that it reads what it expects.
"""
import datetime
import functools
import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

import pipeline.ffcv_startup  # noqa: F401  (before ffcv: see its docstring)
from ffcv.fields import IntField, RGBImageField
from ffcv.reader import Reader
import ffcv.writer
from ffcv.writer import DatasetWriter

from dataset_prep.archive import ImageSource
from dataset_prep.image_folder import RGBFileDataset
from pipeline.atomic import free_space, temporary_path, write_text_atomic
from pipeline.cores import usable_cores
from pipeline.progress import Progress
from pipeline.worker_watch import WorkerDiedError, stop_if_a_worker_dies

METADATA_FORMAT = 1
WRITE_MODES = ("proportion", "jpg", "raw", "smart")
# `smart`: an image whose raw pixels take more bytes than this is stored as a JPEG, a smaller one raw. ffcv's own
# default (None) stores every image raw in that mode, the largest file of all, after encoding each as a JPEG
SMART_THRESHOLD = 256 * 256 * 3


@dataclass(frozen=True)
class WriteSettings:
    """How images are stored (ffcv-imagenet's defaults: 500 px, half of them JPEG at quality 90)."""
    max_res: int = 500
    jpeg_quality: int = 90
    compress_prob: float = 0.5
    write_mode: str = "proportion"
    smart_threshold: int = SMART_THRESHOLD  # bytes of raw pixels above which `smart` stores a JPEG
    chunk_size: int = 100
    workers: int = usable_cores()
    exif_transpose: bool = False  # apply EXIF orientation (torchvision's loader does not)


def metadata_path(beton: Path) -> Path:
    """`train.beton` -> `train.meta.json`."""
    return Path(beton).with_suffix(".meta.json")


def read_metadata(beton: Path) -> Dict:
    return json.loads(metadata_path(beton).read_text())


def data_identity(metadata: Dict) -> str:
    """What a run records of a beton in place of its path: a copy elsewhere (a node's local disk) is the same
    data; a beton written again is not, whatever its path."""
    return f"{metadata['num_samples']} images written {metadata.get('created', 'at an unrecorded time')}"


def class_difference(classes: Sequence[str], other: Sequence[str]) -> str:
    """Where two class lists part, for a refusal: `10 vs 10 classes; class 3 is 'dog' vs 'cat'`."""
    index = next((i for i, (mine, theirs) in enumerate(zip(classes, other)) if mine != theirs),
                 min(len(classes), len(other)))
    named = [repr(names[index]) if index < len(names) else "none" for names in (classes, other)]
    return f"{len(classes)} vs {len(other)} classes; class {index} is {named[0]} vs {named[1]}"


def _versions() -> Dict[str, str]:
    # ffcv 1.0.2's own __version__ still says 0.0.3rc1: ask the installed distributions instead
    return {**{name: importlib.metadata.version(name) for name in ("ffcv", "numpy", "pillow", "torch")},
            "python": platform.python_version()}


def _metadata(files: Sequence[Tuple[ImageSource, int]], classes: Sequence[str], settings: WriteSettings,
              source: str, skipped: int, class_names: Sequence[str]) -> Dict:
    """What `<split>.meta.json` records of a beton written now from `files`."""
    counts = np.bincount([label for _, label in files], minlength=len(classes))
    return {
        "format": METADATA_FORMAT, "num_samples": len(files), "classes": list(classes),
        **({"class_names": list(class_names)} if class_names else {}),
        "counts": counts.tolist(), "skipped": skipped, "source": source,
        "settings": {"max_res": settings.max_res, "jpeg_quality": settings.jpeg_quality,
                     "compress_prob": settings.compress_prob, "write_mode": settings.write_mode,
                     **({"smart_threshold": settings.smart_threshold} if settings.write_mode == "smart" else {}),
                     "exif_transpose": settings.exif_transpose},
        "versions": _versions(), "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def write_beton(files: Sequence[Tuple[ImageSource, int]], classes: Sequence[str], out: Path,
                settings: WriteSettings, source: str, skipped: int, class_names: Sequence[str] = ()) -> Dict:
    """Write (path or archive member, label) pairs to `out` and its metadata (with the human-readable class
    names where the source has them); returns the metadata."""
    out = Path(out)
    temporary = temporary_path(out)  # ffcv's writer needs a file name, not a handle
    failure_log = out.with_name(f".{out.name}.failures-{os.getpid()}")
    dataset = RGBFileDataset(files, failure_log, settings.exif_transpose)
    fields = {
        "image": RGBImageField(write_mode=settings.write_mode, max_resolution=settings.max_res,
                               jpeg_quality=settings.jpeg_quality, compress_probability=settings.compress_prob,
                               smart_threshold=settings.smart_threshold),
        "label": IntField(),
    }
    # ffcv's writer draws its own tqdm bar, which a log file keeps as one line of redraws (pipeline/progress.py)
    ffcv.writer.tqdm = functools.partial(Progress, desc=f"write {out.name}", unit="img")
    try:
        writer = DatasetWriter(str(temporary), fields, num_workers=settings.workers)
        try:
            with stop_if_a_worker_dies(f"writing {out.name}", terminate_others=True):
                writer.from_indexed_dataset(dataset, chunksize=settings.chunk_size)
        except BaseException as error:  # a worker died, or Ctrl-C: the workers are stopped (stop_if_a_worker_dies)
            metadata_memory = getattr(writer, "metadata_sm", None)  # ffcv unlinks it only when the write ends
            if metadata_memory is not None:
                metadata_memory.close()
                metadata_memory.unlink()
            if isinstance(error, WorkerDiedError):
                raise WorkerDiedError(f"{error} ({free_space(out.parent)}; a full disk ends a writer process: free "
                                      "space or pass another --out-dir)") from None
            raise
        failures = dataset.failures()
        if failures:
            raise RuntimeError(f"{len(failures)} file(s) failed to decode during the write (first: "
                               f"{failures[0]}); {out} was not written")
        metadata = _metadata(files, classes, settings, source, skipped, class_names)
        os.replace(temporary, out)
        write_text_atomic(metadata_path(out), json.dumps(metadata, indent=1) + "\n")
        return metadata
    finally:
        for leftover in (temporary, failure_log):
            leftover.unlink(missing_ok=True)


def verify_beton(beton: Path, expected_labels: Sequence[int], num_classes: int) -> List[str]:
    """Reopen with ffcv and compare count and label histogram with the source; returns the problems found."""
    reader = Reader(str(beton))
    labels = reader.metadata["f1"]  # fields in write order: f0 image, f1 label
    problems = []
    if reader.num_samples != len(expected_labels):
        problems.append(f"{beton}: {reader.num_samples} samples, source has {len(expected_labels)}")
    written = np.bincount(labels, minlength=num_classes)
    expected = np.bincount(np.asarray(expected_labels, dtype=np.int64), minlength=num_classes)
    if not np.array_equal(written, expected):
        differing = np.flatnonzero(written != expected)[:5].tolist()
        problems.append(f"{beton}: label histogram differs from the source at classes {differing}")
    return problems
