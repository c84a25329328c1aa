"""How many bytes a beton will take, known before it is written, and a refusal when its disk has less room.

ImageNet's train beton takes ≈ 337 GB at ffcv-imagenet's settings and hours to write; a disk without that room
ended the writer at the full disk, after those hours. The scan before the write decodes every image, so each
image's size is known: ffcv stores it shrunk to --max-res (`stored_shape`), raw or as a JPEG by the write mode
(the proportion mode's draw is seeded by the image's index, so which images are raw is known exactly), in pages
of its writer. Only a JPEG's bytes are estimated, from a sample of the images encoded as ffcv encodes them.
"""
import inspect
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import numpy as np

import pipeline.ffcv_startup  # noqa: F401  (before ffcv: see its docstring)
from ffcv.fields.rgb_image import encode_jpeg, resizer
from ffcv.writer import DatasetWriter

from dataset_prep.archive import ImageSource
from dataset_prep.beton import WriteSettings
from dataset_prep.image_folder import UsageError, load_rgb

PAGE_BYTES = inspect.signature(DatasetWriter).parameters["page_size"].default  # what write_beton's writer uses
TABLE_BYTES_PER_IMAGE = 24 + 24  # the image and label fields' metadata row and the allocation table's row
JPEG_SAMPLE = 48  # images encoded to estimate a JPEG's bytes per pixel (≈ 0.5 s)


def stored_shape(height: int, width: int, max_res: int) -> Tuple[int, int]:
    """(height, width) of an image as ffcv's RGBImageField stores it: shrunk so its longest side is max_res."""
    ratio = max_res / max(height, width)
    if ratio >= 1:
        return height, width
    return int(ratio * height), int(ratio * width)  # ffcv's (ratio * size).astype(int)


def stored_as_jpeg(index: int, raw_bytes: int, settings: WriteSettings) -> bool:
    """Whether the writer stores the image at `index` as a JPEG (beton.RGBFileDataset seeds numpy's generator by
    the index just before ffcv draws the proportion mode's choice)."""
    if settings.write_mode == "proportion":
        np.random.seed(index)
        return bool(np.random.rand() < settings.compress_prob)
    if settings.write_mode == "smart":
        return raw_bytes > settings.smart_threshold
    return settings.write_mode == "jpg"


def jpeg_bytes_per_pixel(files: Sequence[Tuple[ImageSource, int]], settings: WriteSettings) -> float:
    """A JPEG's bytes per stored pixel, over up to JPEG_SAMPLE images spread over the split, encoded as ffcv
    encodes them (shrunk to max_res, at the quality asked)."""
    picked = np.unique(np.linspace(0, len(files) - 1, min(JPEG_SAMPLE, len(files))).round().astype(int))
    encoded = pixels = 0
    for index in picked:
        image = resizer(load_rgb(files[index][0], settings.exif_transpose), settings.max_res)
        encoded += encode_jpeg(image, settings.jpeg_quality).nbytes
        pixels += image.shape[0] * image.shape[1]
    return encoded / max(pixels, 1)


@dataclass(frozen=True)
class BetonEstimate:
    total_bytes: int
    jpegs: int  # images stored as JPEGs
    images: int

    def describe(self) -> str:
        return f"≈ {self.total_bytes / 1e9:.2f} GB ({self.images:,} images, {self.jpegs:,} of them as JPEGs)"


def stored_bytes(shapes: Sequence[Tuple[int, int]], settings: WriteSettings, per_pixel: float
                 ) -> List[Tuple[int, bool]]:
    """(bytes, stored as a JPEG) of each image of a split written with `settings`, from its (height, width): a
    raw image's bytes exactly, a JPEG's at `per_pixel` (jpeg_bytes_per_pixel). numpy's global generator is left
    as it was (a generator of one's own per image costs 50 times the reseeding: minutes for ImageNet)."""
    stored, state = [], np.random.get_state()
    try:
        for index, (height, width) in enumerate(shapes):
            pixels = math.prod(stored_shape(height, width, settings.max_res))
            jpeg = stored_as_jpeg(index, 3 * pixels, settings)
            stored.append((math.ceil(per_pixel * pixels) if jpeg else 3 * pixels, jpeg))
    finally:
        np.random.set_state(state)
    return stored


def estimate_beton(shapes: Sequence[Tuple[int, int]], settings: WriteSettings, per_pixel: float) -> BetonEstimate:
    """The beton's bytes: each image's stored bytes packed into the writer's pages in order (an image that does
    not fit the rest of a page starts the next), a partial page more per writer process (each fills pages of its
    own: one page more than this packing in the sample set's val beton), the tables."""
    pages, used = 0, PAGE_BYTES  # no page open yet
    stored = stored_bytes(shapes, settings, per_pixel)
    for size, _ in stored:
        if used + size > PAGE_BYTES:
            pages, used = pages + 1, 0
        used += size
    pages += min(settings.workers, math.ceil(len(shapes) / settings.chunk_size))
    return BetonEstimate(pages * PAGE_BYTES + TABLE_BYTES_PER_IMAGE * len(shapes), sum(jpeg for _, jpeg in stored),
                         len(shapes))


@dataclass(frozen=True)
class PlannedBeton:
    out: Path
    estimate: BetonEstimate
    all_jpegs: Callable[[], BetonEstimate]  # the same images all stored as JPEGs (seconds for ImageNet's train)


def check_room(planned: Sequence[PlannedBeton]) -> None:
    """Refuse writes that their disk (one --out-dir's) has no room for, before the first starts: a val beton
    refused after the hours of the train beton's write would have been found late. The refusal says what the
    same images take as JPEGs, which is worked out only then."""
    folder = planned[0].out.parent
    free, need = shutil.disk_usage(folder).free, sum(plan.estimate.total_bytes for plan in planned)
    if need <= free:
        return
    needs = " and ".join(f"{plan.out} needs {plan.estimate.describe()}" for plan in planned)
    smallest = sum(plan.all_jpegs().total_bytes for plan in planned)
    fewer = (f", or store the images as JPEGs (--write-mode jpg: ≈ {smallest / 1e9:.2f} GB)"
             if smallest < need else "")
    replaced = [plan.out.name for plan in planned if plan.out.exists()]
    kept = (f" ({', '.join(replaced)}, which the write replaces, {'is' if len(replaced) == 1 else 'are'} deleted "
            f"only once the new {'one is' if len(replaced) == 1 else 'ones are'} whole)" if replaced else "")
    raise UsageError(f"{needs}; the disk of {folder} has {free / 1e9:.2f} GB free{kept}: free space or pass another "
                     f"--out-dir{fewer}")
