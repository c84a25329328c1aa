"""The three shapes ImageNet arrives in, each listed as a Split with the same class order (sorted WNIDs).

1. An ImageFolder: `train/<wnid>/*`, `val/<wnid>/*`.
2. The official ILSVRC2012 files, read in place: `ILSVRC2012_img_train.tar` (a tar of per-class tars),
   `ILSVRC2012_img_val.tar` (flat) and `ILSVRC2012_devkit_t12.tar.gz` (val labels: ground truth holds
   ILSVRC2012_IDs, `meta.mat` maps them to WNIDs and names).
3. Kaggle's "ImageNet Object Localization Challenge": `ILSVRC/Data/CLS-LOC/train/<wnid>/*`, a flat
   `ILSVRC/Data/CLS-LOC/val/`, `LOC_val_solution.csv` (first token of PredictionString: the WNID) and
   `LOC_synset_mapping.txt` (WNID and names).
Class index = position in the sorted WNIDs for every layout, as torchvision's ImageFolder and ImageNet give it,
so a model trained here loads into torchvision code with the same class order. Files are ordered by class,
then name, so the same photos give the same beton from any layout.
"""
import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from dataset_prep.archive import ArchiveError, ArchiveMember, index_flat_tar, index_tar_of_tars, read_small_tar_gz
from dataset_prep.image_folder import Split, UsageError, find_split

TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_META, DEVKIT_TRUTH = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_IMAGES, KAGGLE_VAL_CSV, KAGGLE_SYNSETS = "ILSVRC/Data/CLS-LOC", "LOC_val_solution.csv", "LOC_synset_mapping.txt"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.JPEG$")


@dataclass(frozen=True)
class Layout:
    kind: str  # "imagefolder", "tars" or "kaggle"
    root: Path

    def describe(self) -> str:
        return {"imagefolder": "an ImageFolder (train/<wnid>/, val/<wnid>/)",
                "tars": "the official ILSVRC2012 tars (read in place, not extracted)",
                "kaggle": "Kaggle's ImageNet layout (ILSVRC/Data/CLS-LOC, LOC_val_solution.csv)"}[self.kind]


def detect_layout(data_dir: Path) -> Layout:
    if data_dir.is_file():
        raise UsageError(f"--data-dir {data_dir} is a file; give the folder that holds ImageNet")
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir} does not exist")
    if (data_dir / TRAIN_TAR).is_file() or (data_dir / VAL_TAR).is_file():
        return Layout("tars", data_dir)
    if (data_dir / KAGGLE_IMAGES).is_dir():
        return Layout("kaggle", data_dir)
    if (data_dir / "train").is_dir() or (data_dir / "val").is_dir():
        return Layout("imagefolder", data_dir)
    if data_dir.resolve().name in ("train", "val"):  # a split of an ImageFolder, given for the whole
        raise UsageError(f"--data-dir {data_dir} is one split of an ImageFolder; give the folder that holds train/ "
                         f"and val/: {data_dir.resolve().parent}")
    raise UsageError(f"--data-dir {data_dir} holds no ImageNet layout this writer reads: an ImageFolder "
                     f"(train/<wnid>/, val/<wnid>/), the official {TRAIN_TAR} / {VAL_TAR} / {DEVKIT}, or "
                     f"Kaggle's {KAGGLE_IMAGES}/ with {KAGGLE_VAL_CSV}")


def list_split(layout: Layout, split: str, subset: Optional[int] = None) -> Split:
    """Every image of `split` ('train' or 'val') with its label, classes and (where known) class names."""
    if layout.kind == "imagefolder":
        return find_split(layout.root / split, subset)
    if layout.kind == "kaggle":
        return _kaggle_split(layout.root, split, subset)
    return _tar_split(layout.root, split, subset)


def _by_class(members: Dict[str, List], classes: Tuple[str, ...], subset: Optional[int]) -> tuple:
    """((source, label), ...) in class order, each class's files in name order, the first `subset` of each."""
    return tuple((source, label) for label, wnid in enumerate(classes) for source in members.get(wnid, [])[:subset])


def _names(classes: Tuple[str, ...], names: Dict[str, str]) -> Tuple[str, ...]:
    return tuple(names.get(wnid, "") for wnid in classes) if names else ()


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UsageError(f"{path} not found: {what}")
    return path


# --- official tars -------------------------------------------------------------------------------------------

def read_devkit(path: Path) -> Tuple[Dict[int, str], Dict[str, str], List[int]]:
    """(ILSVRC2012_ID -> WNID of the 1,000 classes, WNID -> names, val ground truth as IDs in image order)."""
    from scipy.io import loadmat
    found = read_small_tar_gz(str(path), (DEVKIT_META, DEVKIT_TRUTH))
    missing = [name for name in (DEVKIT_META, DEVKIT_TRUTH) if name not in found]
    if missing:
        raise ArchiveError(f"{path} has no {' or '.join(missing)}; is this {DEVKIT}?")
    try:
        synsets = loadmat(io.BytesIO(found[DEVKIT_META]), squeeze_me=True)["synsets"]
        leaves = [entry for entry in synsets if int(entry["num_children"]) == 0]
        wnids = {int(entry["ILSVRC2012_ID"]): str(entry["WNID"]) for entry in leaves}
        names = {str(entry["WNID"]): str(entry["words"]) for entry in leaves}
        truth = [int(line) for line in found[DEVKIT_TRUTH].decode().split()]
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise ArchiveError(f"{path}: {DEVKIT_META} or the ground truth is not in the devkit's format "
                           f"({type(error).__name__}: {error})") from None
    return wnids, names, truth


def _tar_split(root: Path, split: str, subset: Optional[int]) -> Split:
    devkit = root / DEVKIT
    if split == "train":
        archive = _require(root / TRAIN_TAR, f"the train split of the official layout needs {TRAIN_TAR}")
        members = index_tar_of_tars(str(archive))
        classes = tuple(sorted(members))
        names = read_devkit(devkit)[1] if devkit.is_file() else {}
        return Split(archive, classes, _by_class(members, classes, subset), class_names=_names(classes, names))
    archive = _require(root / VAL_TAR, f"the val split of the official layout needs {VAL_TAR}")
    _require(devkit, f"{VAL_TAR} holds no labels; they come from {DEVKIT} (image-net.org, 'Development kit "
                     "(Task 1 & 2)'): put it beside the val tar")
    wnids, names, truth = read_devkit(devkit)
    images = index_flat_tar(str(archive))
    if len(images) != len(truth):
        raise UsageError(f"{devkit} lists {len(truth)} val labels but {archive} holds {len(images)} images; "
                         "the devkit does not belong to these val images")
    members: Dict[str, List[ArchiveMember]] = {}
    for image in images:
        match = VAL_NAME.search(image.name)
        number = int(match.group(1)) if match else 0
        if not 1 <= number <= len(truth):
            raise UsageError(f"{archive} holds {image.name}, which the devkit's ground truth (val images 1 to "
                             f"{len(truth)}) has no label for")
        if truth[number - 1] not in wnids:
            raise UsageError(f"{devkit}: val image {number} has label {truth[number - 1]}, not one of the "
                             f"{len(wnids)} class IDs in its {DEVKIT_META}")
        members.setdefault(wnids[truth[number - 1]], []).append(image)
    classes = tuple(sorted(wnids.values()))
    return Split(archive, classes, _by_class(members, classes, subset), class_names=_names(classes, names))


# --- Kaggle ----------------------------------------------------------------------------------------------------

def read_synset_mapping(path: Path) -> Dict[str, str]:
    """`n01440764 tench, Tinca tinca` per line -> {WNID: names}."""
    mapping = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            wnid, _, words = line.strip().partition(" ")
            if not wnid.startswith("n"):
                raise UsageError(f"{path}:{number}: expected '<wnid> <names>', got {line[:60]!r}")
            mapping[wnid] = words
    return mapping


def read_val_solution(path: Path) -> Dict[str, str]:
    """LOC_val_solution.csv -> {ImageId: WNID} (the first token of PredictionString)."""
    labels = {}
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise UsageError(f"{path}: expected the columns ImageId,PredictionString (Kaggle's {KAGGLE_VAL_CSV})")
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise UsageError(f"{path}: image {row['ImageId']} has an empty PredictionString")
            labels[row["ImageId"]] = tokens[0]
    return labels


def _kaggle_split(root: Path, split: str, subset: Optional[int]) -> Split:
    mapping_path = root / KAGGLE_SYNSETS
    names = read_synset_mapping(mapping_path) if mapping_path.is_file() else {}
    if split == "train":
        listed = find_split(root / KAGGLE_IMAGES / "train", subset)
        return Split(listed.root, listed.classes, listed.files, listed.skipped, listed.nested,
                     _names(listed.classes, names))
    folder = root / KAGGLE_IMAGES / "val"
    if not folder.is_dir():
        raise UsageError(f"{folder} does not exist (Kaggle's layout keeps the val images there, flat)")
    _require(mapping_path, f"the val split needs the class list in {KAGGLE_SYNSETS}")
    labels = read_val_solution(_require(root / KAGGLE_VAL_CSV, f"the val labels are in {KAGGLE_VAL_CSV}"))
    present = {entry.name.rsplit(".", 1)[0]: entry.path for entry in os.scandir(folder)
               if entry.is_file() and not entry.name.startswith(".")}
    absent = sorted(set(labels) - set(present))
    if absent:
        raise UsageError(f"{KAGGLE_VAL_CSV} names {len(absent)} image(s) that are not in {folder} (first: "
                         f"{absent[0]}); the folder is incomplete or the CSV belongs to another copy")
    unknown = sorted({wnid for wnid in labels.values() if wnid not in names})
    if unknown:
        raise UsageError(f"{KAGGLE_VAL_CSV} labels images with {unknown[0]}, which {KAGGLE_SYNSETS} does not list")
    members: Dict[str, List[str]] = {}
    skipped = []
    for image_id, path in sorted(present.items(), key=lambda item: os.path.basename(item[1])):
        if image_id in labels:
            members.setdefault(labels[image_id], []).append(path)
        else:
            skipped.append((path, f"unlabelled: not in {KAGGLE_VAL_CSV}"))
    classes = tuple(sorted(names))
    return Split(folder, classes, _by_class(members, classes, subset), tuple(skipped),
                 class_names=_names(classes, names))
