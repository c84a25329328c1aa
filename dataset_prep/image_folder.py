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
from PIL import Image, ImageFile, ImageOps

from dataset_prep.archive import ImageSource, open_source, source_size
from pipeline.errors import UserError
from pipeline.progress import Progress
from pipeline.worker_watch import stop_if_a_worker_dies

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode to grey


class UsageError(UserError):
    """A problem with what the user gave (paths, options): reported as one line, exit status 2."""


@dataclass(frozen=True)
class Split:
    """The classes (sorted names: WNIDs for ImageNet, as torchvision's ImageFolder and ImageNet order them) and
    every image with its label, from any layout write_imagenet.py reads (imagenet_layouts.py)."""
    root: Path
    classes: Tuple[str, ...]
    files: Tuple[Tuple[ImageSource, int], ...]  # (path or archive member, label)
    skipped: Tuple[Tuple[str, str], ...] = ()  # (path, reason): what listing could not use
    nested: int = 0  # files in subfolders of a class folder (counted, as torchvision's ImageFolder does)
    class_names: Tuple[str, ...] = ()  # human-readable, one per class, where the source has them


def printable(path: ImageSource) -> str:
    """A path (or archive member) as text that can always be written: undecodable bytes become \\xNN escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _class_files(folder: Path, seen: set) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Every non-hidden file below `folder`, sorted (as torchvision), following directory links but each real
    directory and file once; (files, skipped (path, reason)) where a link loops or a folder cannot be read."""
    files, skipped = [], []
    for directory, subfolders, names in os.walk(folder, followlinks=True,
                                                onerror=lambda error: skipped.append(
                                                    (error.filename, f"unreadable folder: {error.strerror}"))):
        identity = os.stat(directory)
        if (identity.st_dev, identity.st_ino) in seen:
            target, parent = os.path.realpath(directory), os.path.realpath(os.path.dirname(directory))
            looped = parent == target or parent.startswith(target + os.sep)
            skipped.append((directory, "symlink loop: links back to a folder above it" if looped
                            else "duplicate: a folder already listed through another link"))
            subfolders.clear()
            continue
        seen.add((identity.st_dev, identity.st_ino))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            path = os.path.join(directory, name)
            if name.startswith("."):
                continue
            if not os.path.isfile(path):
                if os.path.islink(path):
                    skipped.append((path, "unreadable: broken symbolic link"))
                continue
            real = os.stat(path)
            if (real.st_dev, real.st_ino) not in seen:
                seen.add((real.st_dev, real.st_ino))
                files.append(path)
    return files, skipped


def find_split(root: Path, subset: Optional[int] = None) -> Split:
    """List `root/<class>/**/<file>`; `subset` keeps the first N files (in sorted order) of every class."""
    if not root.is_dir():
        raise UsageError(f"split directory {root} does not exist (expected an ImageFolder: {root}/<class>/<image>)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise UsageError(f"{root} has no class folders (expected an ImageFolder: {root}/<class>/<image>)")
    files, skipped, nested, seen = [], [], 0, set()
    for label, name in enumerate(classes):
        found, problems = _class_files(root / name, seen)
        skipped += problems
        if not found:
            raise UsageError(f"class folder {printable(str(root / name))} is empty; every class needs an image")
        kept = found[:subset]
        nested += sum(1 for path in kept if os.path.dirname(path) != str(root / name))
        files.extend((path, label) for path in kept)
    return Split(root, tuple(classes), tuple(files), tuple(skipped), nested)


def _to_uint8(image: Image.Image) -> Image.Image:
    """16/32-bit integer images (e.g. 16-bit PNG) scaled to 8 bits; PIL's convert would clip them to white."""
    array = np.asarray(image)
    peak = 65535 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255
    return Image.fromarray((array.astype(np.float64) * (255 / peak)).round().clip(0, 255).astype(np.uint8))


def load_rgb(path: ImageSource, exif_transpose: bool = False) -> np.ndarray:
    """Decode any image PIL reads into an HxWx3 uint8 RGB array (CMYK, L, P, RGBA, 16-bit, PNG-in-.JPEG).

    EXIF orientation is ignored unless `exif_transpose` (torchvision's PIL loader ignores it too: a phone
    photo taken upright is stored sideways).
    """
    with Image.open(open_source(path)) as image:
        image.load()
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):
            image = _to_uint8(image)
        if image.mode == "P":
            image = image.convert("RGBA")  # palette transparency, then drop alpha like the others
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)


# skip reasons start with one of these words; the summary counts them
SKIP_KINDS = ("empty", "not an image", "too large", "corrupt", "unreadable", "symlink loop", "duplicate",
              "unlabelled", "unexpected")


def skip_kind(reason: str) -> str:
    return next((kind for kind in SKIP_KINDS if reason.startswith(kind)), "corrupt")


def check_image(path: ImageSource, exif_transpose: bool = False) -> Tuple[Optional[str], Tuple[int, int]]:
    """(None, its (height, width)) when `path` decodes completely; else (the reason it is skipped: one line,
    starting with its kind; (0, 0)). Never raises: one bad file must not end a scan of a million."""
    try:
        if source_size(path) == 0:
            return "empty: zero-byte file", (0, 0)
        image = load_rgb(path, exif_transpose)
        if image.ndim != 3 or min(image.shape[:2]) < 1:
            return f"corrupt: unusable image shape {image.shape}", (0, 0)
        return None, image.shape[:2]
    except Image.DecompressionBombError as error:
        reason = f"too large: {str(error).splitlines()[0]}"
    except Image.UnidentifiedImageError:
        reason = "not an image PIL can identify"
    except PermissionError as error:
        reason = f"unreadable: {error.strerror}"
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises these for truncated or corrupt data
        reason = f"corrupt: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'corrupt image'}"
    except Exception as error:  # noqa: BLE001 -- see the docstring
        reason = f"unexpected: {type(error).__name__}: {error}"
    return reason, (0, 0)


def _check_entry(entry: Tuple[ImageSource, int, bool]) -> Tuple[ImageSource, int, Optional[str], Tuple[int, int]]:
    return (entry[0], entry[1], *check_image(entry[0], entry[2]))


@dataclass(frozen=True)
class Scanned:
    good: List[Tuple[ImageSource, int]]  # (path, label) of every file that decoded, in input order
    shapes: List[Tuple[int, int]]  # their (height, width): what the beton's size follows from
    skipped: List[Tuple[str, str]]  # (path, reason)


def scan(files: Sequence[Tuple[ImageSource, int]], workers: int, desc: str = "scan",
         exif_transpose: bool = False) -> Scanned:
    """Decode every file in parallel."""
    scanned = Scanned([], [], [])
    chunk = max(1, min(64, len(files) // (4 * max(workers, 1)) or 1))
    with Pool(workers) as pool, stop_if_a_worker_dies(desc, "one killed for memory: pass fewer --workers"):
        results = pool.imap(_check_entry, [(path, label, exif_transpose) for path, label in files], chunksize=chunk)
        for path, label, reason, shape in Progress(results, total=len(files), desc=desc, unit="img", mininterval=1):
            if reason is None:
                scanned.good.append((path, label))
                scanned.shapes.append(tuple(shape))
            else:
                scanned.skipped.append((path, reason))
    return scanned


class RGBFileDataset:
    """The indexed dataset ffcv's writer reads: (RGB uint8 array, label) per scanned file.

    ffcv's writer waits forever for a worker that raised, so a file that fails here (it decoded in the scan,
    then changed) is appended to `failure_log` and replaced by a 1x1 placeholder; the caller must check
    `failures()` and discard the output when there are any.

    ffcv's RGBImageField draws from numpy's global generator, right after this returns, whether to store the
    image as a JPEG (`--compress-prob`); seeding it by the image's index makes that choice the same in every
    write of the same photos, whichever writer process takes the image (each numpy seeded itself apart).
    """

    def __init__(self, files: Sequence[Tuple[ImageSource, int]], failure_log: Path, exif_transpose: bool = False):
        self.files = list(files)
        self.failure_log = Path(failure_log)
        self.exif_transpose = exif_transpose

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        np.random.seed(index)  # the writer's JPEG-or-raw draw for this image (see the class docstring)
        path, label = self.files[index]
        try:
            return load_rgb(path, self.exif_transpose), label
        except Exception as error:  # noqa: BLE001 -- see the class docstring: never raise inside ffcv's pool
            with open(self.failure_log, "a") as log:
                log.write(f"{printable(path)}\t{type(error).__name__}: {error}\n")
            return np.zeros((1, 1, 3), dtype=np.uint8), label

    def failures(self) -> List[str]:
        return self.failure_log.read_text().splitlines() if self.failure_log.exists() else []
