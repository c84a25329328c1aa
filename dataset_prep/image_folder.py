"""Read an ImageFolder split robustly: find classes and files, decode anything PIL opens to RGB, weed out bad files.

ImageNet's train set has CMYK JPEGs, grayscale JPEGs and a PNG saved as .JPEG; real dumps also hold truncated
and zero-byte files. ffcv's writer hangs when a worker raises, so every file is decoded once in a scan before
the write, and only files that decoded there are handed to the writer.
"""
import os
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm

from pipeline.errors import UserError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode to grey


class UsageError(UserError):
    """A problem with what the user gave (paths, options): reported as one line, exit status 2."""


@dataclass(frozen=True)
class ImageFolderSplit:
    """The classes (sorted folder names, as torchvision's ImageFolder) and every file with its label."""
    root: Path
    classes: Tuple[str, ...]
    files: Tuple[Tuple[str, int], ...]  # (path, label)


def find_split(root: Path, subset: Optional[int] = None) -> ImageFolderSplit:
    """List `root/<class>/<file>`; `subset` keeps the first N files (sorted by name) of every class."""
    if not root.is_dir():
        raise UsageError(f"split directory {root} does not exist (expected an ImageFolder: {root}/<class>/<image>)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise UsageError(f"{root} has no class folders (expected an ImageFolder: {root}/<class>/<image>)")
    files = []
    for label, name in enumerate(classes):
        names = sorted(entry.name for entry in os.scandir(root / name)
                       if entry.is_file() and not entry.name.startswith("."))
        if not names:
            raise UsageError(f"class folder {root / name} is empty; every class needs at least one image")
        files.extend((str(root / name / file_name), label) for file_name in names[:subset])
    return ImageFolderSplit(root, tuple(classes), tuple(files))


def _to_uint8(image: Image.Image) -> Image.Image:
    """16/32-bit integer images (e.g. 16-bit PNG) scaled to 8 bits; PIL's convert would clip them to white."""
    array = np.asarray(image)
    peak = 65535 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255
    return Image.fromarray((array.astype(np.float64) * (255 / peak)).round().clip(0, 255).astype(np.uint8))


def load_rgb(path: str) -> np.ndarray:
    """Decode any image PIL reads into an HxWx3 uint8 RGB array (CMYK, L, P, RGBA, 16-bit, PNG-in-.JPEG)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):
            image = _to_uint8(image)
        if image.mode == "P":
            image = image.convert("RGBA")  # palette transparency, then drop alpha like the others
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)


def check_image(path: str) -> Optional[str]:
    """None when `path` decodes completely; else the reason it is skipped (one line)."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        image = load_rgb(path)
        if image.ndim != 3 or min(image.shape[:2]) < 1:
            return f"unusable image shape {image.shape}"
        return None
    except Image.UnidentifiedImageError:
        return "not an image PIL can identify"
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for truncated or corrupt data
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'corrupt image'}"


def _check_entry(entry: Tuple[str, int]) -> Tuple[str, int, Optional[str]]:
    return entry[0], entry[1], check_image(entry[0])


def scan(files: Sequence[Tuple[str, int]], workers: int, desc: str = "scan"
         ) -> Tuple[List[Tuple[str, int]], List[Tuple[str, str]]]:
    """Decode every file in parallel: returns (good (path, label) in input order, skipped (path, reason))."""
    good, skipped = [], []
    chunk = max(1, min(64, len(files) // (4 * max(workers, 1)) or 1))
    with Pool(workers) as pool:
        results = pool.imap(_check_entry, files, chunksize=chunk)
        for path, label, reason in tqdm(results, total=len(files), desc=desc, unit="img", mininterval=1):
            if reason is None:
                good.append((path, label))
            else:
                skipped.append((path, reason))
    return good, skipped


class RGBFileDataset:
    """The indexed dataset ffcv's writer reads: (RGB uint8 array, label) per scanned file.

    ffcv's writer waits forever for a worker that raised, so a file that fails here (it decoded in the scan,
    then changed) is appended to `failure_log` and replaced by a 1x1 placeholder; the caller must check
    `failures()` and discard the output when there are any.
    """

    def __init__(self, files: Sequence[Tuple[str, int]], failure_log: Path):
        self.files = list(files)
        self.failure_log = Path(failure_log)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, label = self.files[index]
        try:
            return load_rgb(path), label
        except Exception as error:  # noqa: BLE001 -- see the class docstring: never raise inside ffcv's pool
            with open(self.failure_log, "a") as log:
                log.write(f"{path}\t{type(error).__name__}: {error}\n")
            return np.zeros((1, 1, 3), dtype=np.uint8), label

    def failures(self) -> List[str]:
        return self.failure_log.read_text().splitlines() if self.failure_log.exists() else []
