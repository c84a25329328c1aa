"""A beton's size before it is written: each image's stored shape, raw-or-JPEG and bytes against what ffcv's writer
wrote, and a write refused before it starts where the disk has no room for it."""
from collections import namedtuple

import numpy as np
import pytest
from PIL import Image

from dataset_prep import beton_size
from dataset_prep.beton import WriteSettings
from dataset_prep.beton_size import (BetonEstimate, PlannedBeton, check_room, estimate_beton, jpeg_bytes_per_pixel,
                                     stored_bytes)
from dataset_prep.image_folder import UsageError, find_split, scan
from dataset_prep.write_imagenet import main
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.reader import Reader


def photo_folder(root, sizes, split="train"):
    """An ImageFolder split of 2 classes of smooth photos with a little noise (JPEGs of a photo's size, not a flat
    colour's) of the (height, width) given."""
    generator = np.random.default_rng(0)
    for index, (height, width) in enumerate(sizes):
        folder = root / split / str(index % 2)
        folder.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
        noisy = np.clip(smooth + generator.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{index}.JPEG", quality=95)


SIZES = [(40 + 7 * (index % 9), 90 - 5 * (index % 7)) for index in range(40)]  # some over --max-res 64


def test_the_estimate_knows_each_images_stored_shape_and_mode_and_its_bytes(tmp_path, capsys):
    photo_folder(tmp_path / "imagenet", SIZES)
    out = tmp_path / "out"
    assert main(["--data-dir", str(tmp_path / "imagenet"), "--out-dir", str(out), "--split", "train",
                 "--max-res", "64", "--workers", "2"]) == 0
    reader = Reader(str(out / "train.beton"))
    fields = reader.metadata["f0"]
    scanned = scan(find_split(tmp_path / "imagenet" / "train").files, 1)
    settings = WriteSettings(max_res=64, workers=2)
    per_pixel = jpeg_bytes_per_pixel(scanned.good, settings)
    np.random.seed(7)
    predicted = stored_bytes(scanned.shapes, settings, per_pixel)
    assert np.random.rand() == np.random.RandomState(7).rand()  # numpy's global generator as it was
    # shapes and raw-or-JPEG exactly: ffcv's shrink, and the proportion mode's draw seeded by the image's index
    assert [jpeg for _, jpeg in predicted] == [mode == IMAGE_MODES["jpg"] for mode in fields["mode"]]
    assert 0 < sum(jpeg for _, jpeg in predicted) < len(SIZES)
    assert [3 * int(h) * int(w) for h, w in zip(fields["height"], fields["width"])] == [
        size if not jpeg else 3 * int(h) * int(w) for (size, jpeg), h, w in zip(predicted, fields["height"],
                                                                               fields["width"])]
    # bytes: the raw images' exactly, the JPEGs' from the sample's bytes per pixel (here every image is sampled)
    written = dict(zip(reader.alloc_table["sample_id"].tolist(), reader.alloc_table["size"].tolist()))
    for sample, (size, jpeg) in enumerate(predicted):
        assert size == written[sample] if not jpeg else abs(size - written[sample]) < 0.5 * written[sample]
    jpegs = [sample for sample, (_, jpeg) in enumerate(predicted) if jpeg]
    assert abs(sum(predicted[s][0] for s in jpegs) - sum(written[s] for s in jpegs)) < 0.1 * sum(
        written[s] for s in jpegs)
    estimate = estimate_beton(scanned.shapes, settings, per_pixel)
    assert (out / "train.beton").stat().st_size <= estimate.total_bytes  # a page more per writer: never short
    assert f"train: writing {out / 'train.beton'}, {estimate.describe()}" in capsys.readouterr().out


def test_writes_the_disk_has_no_room_for_are_refused_before_the_first_starts(tmp_path, capsys, monkeypatch):
    """A disk without room for a beton ended the writer at the full disk, after the hours of an ImageNet write; with
    room for the train beton alone, val's was refused (or filled the disk) after the train beton's hours."""
    photo_folder(tmp_path / "imagenet", SIZES)
    photo_folder(tmp_path / "imagenet", SIZES[:10], "val")
    room = {"free": 20 * 10**6}  # for one beton of two 8 MiB pages, not for two
    monkeypatch.setattr(beton_size.shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(
        10**9, 10**9 - room["free"], room["free"]))
    out = tmp_path / "out"
    write = ["--data-dir", str(tmp_path / "imagenet"), "--out-dir", str(out), "--max-res", "64", "--workers", "2",
             "--write-mode", "raw"]
    assert main(write) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"write_imagenet.py: error: {out / 'train.beton'} needs ≈ 0.02 GB (40 images, 0 of them as JPEGs) and "
        f"{out / 'val.beton'} needs ≈ 0.02 GB (10 images, 0 of them as JPEGs); the disk of {out} has 0.02 GB free: "
        "free space or pass another --out-dir")  # as JPEGs: the same pages
    assert list(out.iterdir()) == []  # nothing written, no temporary file left
    assert main(write + ["--split", "train"]) == 0  # one of them fits
    room["free"] = 10**6  # the new train.beton is written beside the old one, which stays until it is whole
    assert main(write + ["--split", "train", "--overwrite"]) == 2
    assert "has 0.00 GB free (train.beton, which the write replaces, is deleted only once the new one is whole): " \
           "free space" in capsys.readouterr().err
    # where JPEGs take fewer pages, the refusal says how many
    raw, jpeg = BetonEstimate(337 * 10**9, 0, 1_281_167), BetonEstimate(80 * 10**9, 1_281_167, 1_281_167)
    with pytest.raises(UsageError, match=r"needs ≈ 337.00 GB \(1,281,167 images, 0 of them as JPEGs\); the disk of "
                                         r".* has 0.00 GB free: free space or pass another --out-dir, or store the "
                                         r"images as JPEGs \(--write-mode jpg: ≈ 80.00 GB\)$"):
        check_room([PlannedBeton(out / "other.beton", raw, lambda: jpeg)])
