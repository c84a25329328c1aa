"""ImageNet as users have it: an ImageFolder, the official tars + devkit, Kaggle's layout -> identical betons.

Miniature copies in the exact official structures: a train tar of per-class tars, a flat val tar, a devkit
.tar.gz with a scipy-written meta.mat and the ground-truth file, Kaggle's tree with its CSV and mapping file.
The photos come from the sample-set generator (the session's tiny set), plus ImageNet's odd files (a CMYK
JPEG, a PNG named .JPEG) and a truncated JPEG.
"""
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tar_bytes
from dataset_prep.archive import ArchiveMember, index_tar_of_tars, read_member
from dataset_prep.beton import metadata_path
from dataset_prep.imagenet_layouts import DEVKIT, KAGGLE_IMAGES, TRAIN_TAR, VAL_TAR, detect_layout
from dataset_prep.write_imagenet import list_splits, main

# sample class -> (WNID, ILSVRC2012_ID): IDs not in WNID order, as in the real devkit
CLASSES = {"astronaut": ("n04000001", 1), "cameraman": ("n01000002", 2), "cat": ("n03000003", 3),
           "coffee": ("n02000004", 4)}
NAMES = {wnid: f"{name}, a test class" for name, (wnid, _) in CLASSES.items()}
TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 2


def photos_by_class(images: Path, split: str, per_class: int) -> dict:
    """WNID -> [(ImageNet file name, bytes)] from the sample set, plus the odd and broken files in one class."""
    chosen = {}
    for name, (wnid, _) in CLASSES.items():
        files = sorted((images / split / name).iterdir())[:per_class]
        chosen[wnid] = [(f"{wnid}_{index}.JPEG", path.read_bytes()) for index, path in enumerate(files)]
    odd = Image.open(images / split / "cat" / sorted((images / split / "cat").iterdir())[0].name).convert("RGB")
    cmyk, png = io.BytesIO(), io.BytesIO()
    odd.convert("CMYK").save(cmyk, format="JPEG")
    odd.save(png, format="PNG")
    wnid = CLASSES["cameraman"][0]
    chosen[wnid] += [(f"{wnid}_cmyk.JPEG", cmyk.getvalue()), (f"{wnid}_png.JPEG", png.getvalue()),
                     (f"{wnid}_truncated.JPEG", chosen[wnid][0][1][:300])]
    return chosen


def write_devkit(path: Path, truth: list) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: meta.mat (1,000 leaf synsets there; here ours plus a non-leaf one, which
    must be ignored) and the val ground truth as ILSVRC2012_IDs."""
    from scipy.io import savemat
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    rows = [(identifier, wnid, NAMES[wnid], 0) for wnid, identifier in CLASSES.values()]
    rows.append((1001, "n00001740", "entity", 4))  # an inner node of the hierarchy
    synsets = np.array(rows, dtype=fields)
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    path.write_bytes(gzip.compress(tar_bytes([
        ("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),
        ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
         "".join(f"{label}\n" for label in truth).encode())])))


@pytest.fixture(scope="module")
def layouts(tiny_betons, tmp_path_factory) -> dict:
    """The same photos as an ImageFolder, as the official tars and as Kaggle's layout."""
    root = tmp_path_factory.mktemp("layouts")
    images = tiny_betons / "images"
    train = photos_by_class(images, "train", TRAIN_PER_CLASS)
    val_by_class = photos_by_class(images, "val", VAL_PER_CLASS)
    # val images numbered as the official set, interleaved across classes
    val, truth = [], []
    for rank in range(max(len(files) for files in val_by_class.values())):
        for name, (wnid, identifier) in CLASSES.items():
            if rank < len(val_by_class[wnid]):
                val.append((f"ILSVRC2012_val_{len(val) + 1:08d}.JPEG", val_by_class[wnid][rank][1], wnid))
                truth.append(identifier)
    folder, tars, kaggle = root / "imagefolder", root / "tars", root / "kaggle"
    for wnid, files in train.items():
        for base in (folder / "train" / wnid, kaggle / KAGGLE_IMAGES / "train" / wnid):
            base.mkdir(parents=True)
            for name, data in files:
                (base / name).write_bytes(data)
    (kaggle / KAGGLE_IMAGES / "val").mkdir(parents=True)
    for name, data, wnid in val:
        (folder / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (folder / "val" / wnid / name).write_bytes(data)
        (kaggle / KAGGLE_IMAGES / "val" / name).write_bytes(data)
    tars.mkdir()
    (tars / TRAIN_TAR).write_bytes(tar_bytes([(f"{wnid}.tar", tar_bytes(files)) for wnid, files in train.items()]))
    (tars / VAL_TAR).write_bytes(tar_bytes([(name, data) for name, data, _ in val]))
    write_devkit(tars / DEVKIT, truth)
    (kaggle / "LOC_synset_mapping.txt").write_text("".join(f"{w} {NAMES[w]}\n" for w in sorted(NAMES)))
    (kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{name[:-5]},{wnid} 10 20 30 40 {wnid} 1 2 3 4\n" for name, _, wnid in val))
    return {"imagefolder": folder, "tars": tars, "kaggle": kaggle, "val_count": len(val), "truth": truth}


def write(data: Path, out: Path, *extra) -> int:
    return main(["--data-dir", str(data), "--out-dir", str(out), "--workers", "2", "--max-res", "64",
                 "--write-mode", "raw", *extra])


def beton_content(beton: Path):
    """(labels, per sample (mode, width, height, stored bytes)) in sample order: what a loader would read,
    independent of where the writer's workers placed each sample in the file."""
    from ffcv.reader import Reader
    reader = Reader(str(beton))
    data = np.fromfile(beton, dtype=np.uint8)
    pointer = {int(entry["ptr"]): int(entry["size"]) for entry in reader.alloc_table}
    images = []
    for fields in reader.metadata["f0"]:
        start = int(fields["data_ptr"])
        images.append((int(fields["mode"]), int(fields["width"]), int(fields["height"]),
                       data[start:start + pointer[start]].tobytes()))
    return reader.metadata["f1"].copy(), images


def test_all_three_layouts_give_identical_betons(layouts, tmp_path, capsys):
    outputs = {}
    for kind in ("imagefolder", "tars", "kaggle"):
        out = tmp_path / kind
        assert write(layouts[kind], out) == 0, capsys.readouterr().err
        outputs[kind] = out
    printed = capsys.readouterr().out
    assert "found the official ILSVRC2012 tars" in printed and "found Kaggle's ImageNet layout" in printed
    assert "found an ImageFolder" in printed
    for split, count in (("train", 4 * TRAIN_PER_CLASS + 2), ("val", layouts["val_count"] - 1)):
        reference_labels, reference_images = beton_content(outputs["imagefolder"] / f"{split}.beton")
        assert len(reference_labels) == count  # the CMYK and PNG-in-.JPEG files are in, the truncated one is not
        for kind in ("tars", "kaggle"):
            labels, images = beton_content(outputs[kind] / f"{split}.beton")
            np.testing.assert_array_equal(labels, reference_labels, err_msg=f"{kind} {split}")
            assert images == reference_images, f"{kind} {split}"
        metas = {kind: json.loads(metadata_path(outputs[kind] / f"{split}.beton").read_text()) for kind in outputs}
        assert metas["tars"]["classes"] == metas["kaggle"]["classes"] == metas["imagefolder"]["classes"] \
            == sorted(NAMES)  # class index = sorted WNIDs, whatever the devkit's ID order
        assert metas["tars"]["class_names"] == metas["kaggle"]["class_names"] == [NAMES[w] for w in sorted(NAMES)]
    # the truncated JPEG is skipped and named, inside its tar
    report = (outputs["tars"] / "train_skipped.txt").read_text()
    assert f"{TRAIN_TAR}:n01000002.tar/n01000002_truncated.JPEG\tcorrupt" in report


def test_train_tar_members_are_byte_ranges_of_the_big_file(layouts):
    """The index reads headers only; each JPEG is read back with pread, exactly as stored."""
    members = index_tar_of_tars(str(layouts["tars"] / TRAIN_TAR))
    assert sorted(members) == sorted(NAMES)
    first = members["n01000002"][0]
    assert isinstance(first, ArchiveMember) and first.name == "n01000002.tar/n01000002_0.JPEG"
    folder_copy = layouts["imagefolder"] / "train" / "n01000002" / "n01000002_0.JPEG"
    assert read_member(first) == folder_copy.read_bytes()


def truncate_train_tar(root: Path, truth: list) -> None:
    path = root / TRAIN_TAR
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def drop_devkit(root: Path, truth: list) -> None:
    (root / DEVKIT).unlink()


def devkit_with_one_label_too_few(root: Path, truth: list) -> None:
    write_devkit(root / DEVKIT, truth[:-1])


def devkit_with_unknown_id(root: Path, truth: list) -> None:
    write_devkit(root / DEVKIT, truth[:3] + [999] + truth[4:])


def class_tar_that_is_not_a_tar(root: Path, truth: list) -> None:
    (root / TRAIN_TAR).write_bytes(tar_bytes([("n01000002.tar", b"this is not a tar file" * 40)]))


def csv_naming_a_missing_image(root: Path, truth: list) -> None:
    with open(root / "LOC_val_solution.csv", "a") as file:
        file.write("ILSVRC2012_val_00000099,n01000002 1 2 3 4\n")


@pytest.mark.parametrize("kind,damage,split,message", [
    ("tars", truncate_train_tar, "train", "is truncated"),
    ("tars", drop_devkit, "val", f"holds no labels; they come from {DEVKIT}"),
    ("tars", devkit_with_one_label_too_few, "val", "lists 10 val labels but"),
    ("tars", devkit_with_unknown_id, "val", "has label 999, not one of the 4 class IDs"),
    ("tars", class_tar_that_is_not_a_tar, "train", "n01000002.tar inside"),
    ("kaggle", csv_naming_a_missing_image, "val", "names 1 image(s) that are not in"),
])
def test_broken_sources_are_one_line_exit_2(layouts, tmp_path, capsys, kind, damage, split, message):
    copy = tmp_path / kind
    shutil.copytree(layouts[kind], copy)
    damage(copy, layouts["truth"])
    assert write(copy, tmp_path / "out", "--split", split) == 2
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [line for line in lines if line.startswith("write_imagenet.py: error:")]  # the rest: progress bars
    assert len(errors) == 1 and message in errors[0], lines
    assert not list((tmp_path / "out").glob("*.beton"))


@pytest.mark.parametrize("missing, message", [(VAL_TAR, f"needs {VAL_TAR}"), (DEVKIT, f"they come from {DEVKIT}")])
def test_a_missing_val_source_is_refused_before_the_train_tar_is_indexed(layouts, tmp_path, capsys, monkeypatch,
                                                                          missing, message):
    """Indexing ImageNet's 140 GB train tar reads 1.28 M headers; the missing val tar was found after it."""
    copy = tmp_path / "tars"
    shutil.copytree(layouts["tars"], copy)
    (copy / missing).unlink()
    indexed = []
    monkeypatch.setattr("dataset_prep.imagenet_layouts.index_tar_of_tars", indexed.append)
    assert write(copy, tmp_path / "out") == 2
    assert message in capsys.readouterr().err and indexed == []


def test_a_class_subset_keeps_the_same_images_and_names_in_every_layout(layouts):
    """--classes 2 of the 4 classes: each layout lists the same images of the same two, labelled 0 and 1, with
    their names where the layout has them (the devkit's meta.mat, Kaggle's mapping file)."""
    kept = [sorted(NAMES)[0], sorted(NAMES)[2]]
    listed = {kind: list_splits(detect_layout(layouts[kind]), ["train", "val"], None, "2")
              for kind in ("imagefolder", "tars", "kaggle")}
    for kind, splits in listed.items():
        for split in splits.values():
            assert list(split.classes) == kept and {label for _, label in split.files} == {0, 1}, kind
        if kind != "imagefolder":
            assert [list(split.class_names) for split in splits.values()] == [[NAMES[w] for w in kept]] * 2
    for split in ("train", "val"):
        counts = {kind: [sum(label == wanted for _, label in splits[split].files) for wanted in (0, 1)]
                  for kind, splits in listed.items()}
        assert counts["imagefolder"] == counts["tars"] == counts["kaggle"], (split, counts)


def test_subset_and_verify_on_the_tars(layouts, tmp_path, capsys):
    assert write(layouts["tars"], tmp_path, "--subset", "1", "--verify") == 0
    out = capsys.readouterr().out
    assert "train: 4 written" in out and "val: 4 written" in out and out.count("verified") == 2
