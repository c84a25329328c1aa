"""dataset_prep: bad files survived, refusals, atomic writes, the sample set, a round trip through ffcv."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from dataset_prep import image_folder
from dataset_prep.beton import WriteSettings, metadata_path, verify_beton, write_beton
from dataset_prep.image_folder import find_split, load_rgb
from dataset_prep.sample_set import build_sample_folder, photo_set_files, sample_folder_counts
from dataset_prep.write_imagenet import main
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.reader import Reader

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def photo(height=40, width=56) -> Image.Image:
    """A smooth colour image (compresses like a photo, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    return Image.fromarray(array.astype(np.uint8))


def make_bad_folder(root: Path) -> dict:
    """Every ImageNet-style oddity in class `odd`, every unreadable kind in class `broken`."""
    odd, broken = root / "odd", root / "broken"
    odd.mkdir(parents=True)
    broken.mkdir()
    photo().convert("CMYK").save(odd / "cmyk.JPEG")
    photo().convert("L").save(odd / "gray.JPEG")
    photo().save(odd / "png_inside.JPEG", format="PNG")
    photo().convert("RGBA").save(odd / "rgba.png")
    photo().convert("P").save(odd / "palette.png")
    Image.fromarray((np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)).save(odd / "deep16.png")
    photo().save(broken / "fine.JPEG")
    full = (broken / "fine.JPEG").read_bytes()
    (broken / "truncated.JPEG").write_bytes(full[: len(full) // 2])
    (broken / "empty.JPEG").write_bytes(b"")
    (broken / "notes.txt").write_text("not an image\n")
    return {"written": 7, "skipped": 3}


def write_args(data, out, *extra):
    return ["--data-dir", str(data), "--out-dir", str(out), "--workers", "2", "--max-res", "64", *extra]


@pytest.mark.parametrize("name", ["cmyk.JPEG", "gray.JPEG", "png_inside.JPEG", "rgba.png", "palette.png"])
def test_odd_files_decode_to_rgb_uint8(tmp_path, name):
    make_bad_folder(tmp_path)
    image = load_rgb(str(tmp_path / "odd" / name))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    # content survives: the gradient still rises left to right in channel 0 (grey: in every channel)
    assert image[:, -1, 0].astype(int).mean() > image[:, 0, 0].astype(int).mean() + 100 or name == "gray.JPEG"


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    make_bad_folder(tmp_path)
    image = load_rgb(str(tmp_path / "odd" / "deep16.png"))
    values = (np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16).astype(np.float64)
    assert values.max() > 60000  # really 16-bit content
    expected = np.round(values * 255 / 65535)
    np.testing.assert_array_equal(image[..., 0], expected.astype(np.uint8))


def test_bad_folder_writes_with_report(tmp_path, capsys):
    expected = make_bad_folder(tmp_path / "imagenet" / "train")
    out = tmp_path / "betons"
    assert main(write_args(tmp_path / "imagenet", out, "--split", "train", "--verify")) == 0
    printed = capsys.readouterr().out
    summary = f"train: {expected['written']} written, {expected['skipped']} skipped"
    assert f"{summary} (1 empty, 1 not an image, 1 corrupt), 10 found" in printed and "verified" in printed
    report = (out / "train_skipped.txt").read_text().splitlines()
    reasons = dict(line.split("\t") for line in report)
    assert sorted(Path(p).name for p in reasons) == ["empty.JPEG", "notes.txt", "truncated.JPEG"]
    assert reasons[str(tmp_path / "imagenet/train/broken/empty.JPEG")] == "empty: zero-byte file"
    assert "truncated" in reasons[str(tmp_path / "imagenet/train/broken/truncated.JPEG")].lower()
    metadata = json.loads(metadata_path(out / "train.beton").read_text())
    assert metadata["classes"] == ["broken", "odd"] and metadata["counts"] == [1, 6]
    assert metadata["num_samples"] + metadata["skipped"] == 10
    assert metadata["settings"]["max_res"] == 64 and metadata["versions"]["ffcv"] == "1.0.2"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: (root / "train").mkdir(parents=True), "has no class folders"),
    (lambda root: (root / "train" / "empty_class").mkdir(parents=True), "is empty"),
])
def test_refusals_are_one_line_exit_2(tmp_path, capsys, setup, message):
    root = tmp_path / "imagenet"
    setup(root)
    if not root.exists():
        root = tmp_path / "missing"
    assert main(write_args(root, tmp_path / "out", "--split", "train")) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and error.startswith("write_imagenet.py: error:")


def test_a_val_split_of_other_classes_is_refused_before_train_is_written(tmp_path, capsys):
    """It was refused after the train beton was written (hours, on ImageNet), saying only '(2 vs 2)'."""
    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "dot"))):
        for name in classes:
            (tmp_path / "imagenet" / split / name).mkdir(parents=True)
            photo().save(tmp_path / "imagenet" / split / name / "a.JPEG")
    assert main(write_args(tmp_path / "imagenet", tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"write_imagenet.py: error: {tmp_path}/imagenet/val and {tmp_path}/imagenet/train have different classes "
        "(2 vs 2 classes; class 1 is 'dot' vs 'dog'); both splits need the same classes\n")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.beton"))


def test_a_split_folder_given_as_data_dir_names_its_parent(tmp_path, capsys):
    """It was refused as 'holds no ImageNet layout', listing every layout but the mistake."""
    (tmp_path / "imagenet" / "train" / "cat").mkdir(parents=True)
    photo().save(tmp_path / "imagenet" / "train" / "cat" / "a.JPEG")
    assert main(write_args(tmp_path / "imagenet" / "train", tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"write_imagenet.py: error: --data-dir {tmp_path}/imagenet/train is one split of an ImageFolder; give the "
        f"folder that holds train/ and val/: {tmp_path}/imagenet\n")


def test_an_output_folder_that_cannot_be_made_and_bad_sample_sizes_are_one_line(tmp_path, capsys):
    """They were tracebacks (FileExistsError, FileNotFoundError), or a sample set of 0 photos per class."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for arguments, message in [
        (["--data-dir", str(a_file)], f"--data-dir {a_file} is a file; give the folder that holds ImageNet"),
        (["--out-dir", str(a_file)], f"{a_file} (--out-dir) is a file; give a folder for the betons"),
        (["--out-dir", "/proc/betons"], "cannot create /proc/betons (--out-dir): No such file or directory; "
                                        "choose a writable folder"),
        (["--out-dir", str(tmp_path / "s"), "--sample-train", "0"], "--sample-train 0: must be at least 1"),
        (["--out-dir", str(tmp_path / "s"), "--sample-val", "-1"], "--sample-val -1: must be at least 1"),
    ]:
        assert main(arguments) == 2
        assert capsys.readouterr().err == f"write_imagenet.py: error: {message}\n"
    assert not (tmp_path / "s").exists()


def test_a_sample_set_built_before_is_used_unless_another_size_is_asked(tmp_path, capsys):
    build_sample_folder(tmp_path / "images", train_per_class=2, val_per_class=1, workers=1)
    capsys.readouterr()
    assert main(["--out-dir", str(tmp_path), "--sample-train", "3", "--max-res", "32"]) == 2
    assert capsys.readouterr().err == (
        f"write_imagenet.py: error: {tmp_path / 'images'} holds a sample set of 2 train and 1 val photos per class, "
        f"not the size asked for (--sample-train/--sample-val); delete {tmp_path / 'images'} to build it again at "
        "that size\n")
    assert not (tmp_path / "train.beton").exists()
    assert main(["--out-dir", str(tmp_path), "--sample-val", "1", "--max-res", "32", "--workers", "1"]) == 0
    assert "the 2 train and 1 val photos per class already in" in capsys.readouterr().out
    assert json.loads(metadata_path(tmp_path / "train.beton").read_text())["num_samples"] == 20


def test_a_broken_sample_set_is_refused_by_the_writer_and_rebuilt_for_the_benchmarks(tmp_path, capsys):
    """A photo set with an emptied class folder stopped the benchmarks with find_split's traceback, and the
    writer's refusal said 'every class needs an image' of a folder it had built itself."""
    images = tmp_path / "images"
    build_sample_folder(images, train_per_class=2, val_per_class=1, workers=1)
    for path in (images / "train" / "cat").iterdir():
        path.unlink()
    capsys.readouterr()
    assert main(["--out-dir", str(tmp_path), "--max-res", "32"]) == 2
    assert capsys.readouterr().err == (
        f"write_imagenet.py: error: {images} is not a whole sample set (class folder {images}/train/cat is empty; "
        "every class needs an image); delete it to build it again\n")
    (images / "val" / "coins" / "coins_00000.JPEG").unlink()
    shutil.rmtree(images / "train" / "cat")
    with pytest.raises(image_folder.UsageError, match=r"train: 9 classes, not 10\); delete it"):
        sample_folder_counts(images)
    files = photo_set_files(images, 2, seed=0)
    assert sorted(label for _, label in files) == sorted(list(range(10)) * 2)
    assert sample_folder_counts(images) == {"train": 2, "val": 1}


def test_existing_output_needs_overwrite_and_is_kept(tmp_path, capsys):
    photo().save(tmp_path / "placeholder.JPEG")
    (tmp_path / "imagenet" / "train" / "a").mkdir(parents=True)
    photo().save(tmp_path / "imagenet" / "train" / "a" / "x.JPEG")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.beton").write_bytes(b"precious")
    assert main(write_args(tmp_path / "imagenet", out, "--split", "train")) == 2
    assert f"{out / 'train.beton'} already exists; pass --overwrite to replace it\n" in capsys.readouterr().err
    assert (out / "train.beton").read_bytes() == b"precious"
    (out / "val.beton").write_bytes(b"precious too")
    assert main(write_args(tmp_path / "imagenet", out, "--split", "both")) == 2
    assert (f"{out / 'train.beton'}, {out / 'val.beton'} already exist; pass --overwrite to replace them\n"
            in capsys.readouterr().err)
    assert main(write_args(tmp_path / "imagenet", out, "--split", "train", "--overwrite")) == 0
    assert (out / "train.beton").stat().st_size > 1000


def test_cli_exit_status_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "dataset_prep/write_imagenet.py", "--data-dir", str(tmp_path / "no")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"write_imagenet.py: error: --data-dir {tmp_path / 'no'} does not exist"


def test_failure_midway_leaves_no_valid_looking_file(tmp_path, monkeypatch):
    files = []
    for index in range(30):
        path = tmp_path / f"{index}.JPEG"
        photo().save(path)
        files.append((str(path), index % 3))
    real_load = image_folder.load_rgb

    def flaky(path, *args):  # the 20th file breaks between the scan and the write (inherited by forked workers)
        if path.endswith("/20.JPEG"):
            raise OSError("disk went away")
        return real_load(path, *args)

    monkeypatch.setattr(image_folder, "load_rgb", flaky)
    out = tmp_path / "out" / "train.beton"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="1 file\\(s\\) failed to decode during the write.*20.JPEG"):
        write_beton(files, ["a", "b", "c"], out, WriteSettings(max_res=64, workers=2, chunk_size=4), "test", 0)
    assert list(out.parent.iterdir()) == []


def test_sample_set_is_deterministic_and_val_is_not_train(tmp_path):
    """The same seed gives the same bytes, whatever the number of worker processes."""
    first = build_sample_folder(tmp_path / "a", train_per_class=3, val_per_class=2, seed=1, workers=2)
    build_sample_folder(tmp_path / "b", train_per_class=3, val_per_class=2, seed=1, workers=1)
    assert first == {"train": 30, "val": 20}
    split_a, split_b = find_split(tmp_path / "a" / "train"), find_split(tmp_path / "b" / "train")
    assert len(split_a.classes) == 10
    for (path_a, _), (path_b, _) in zip(split_a.files, split_b.files):
        assert Path(path_a).read_bytes() == Path(path_b).read_bytes()
    train_bytes = {Path(p).read_bytes() for p, _ in split_a.files}
    val = find_split(tmp_path / "a" / "val")
    assert not train_bytes & {Path(p).read_bytes() for p, _ in val.files}
    sizes = [Image.open(p).size for p, _ in split_a.files + val.files]
    assert all(300 <= max(size) <= 500 for size in sizes)


def test_the_sample_sets_betons_are_the_same_file_at_every_build(tmp_path):
    """ffcv's writer processes lay images out in the order they finish and the loader's QUASI_RANDOM order
    follows the pages, so a rebuilt sample set trained in another order: README's demo table moved (gap 93.60
    -> 91.20) with every image stored byte for byte the same. The sample set is written by one process."""
    build_sample_folder(tmp_path / "images", train_per_class=3, val_per_class=1, workers=2)
    written = []
    for attempt in range(2):
        assert main(["--out-dir", str(tmp_path), "--split", "train", "--max-res", "32", "--workers", "2",
                     "--chunk-size", "2", "--overwrite"]) == 0
        written.append((tmp_path / "train.beton").read_bytes())
        pointers = Reader(str(tmp_path / "train.beton")).metadata["f0"]["data_ptr"].tolist()
        assert pointers == sorted(pointers)  # image i stored before image i + 1: the writer's order is the index
    assert written[0] == written[1]


def test_round_trip_through_ffcv_loader(tmp_path):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    files = []
    for index in range(12):
        path = tmp_path / f"{index}.JPEG"
        Image.fromarray(np.full((48 + index, 64, 3), index * 20, np.uint8)).save(path, quality=95)
        files.append((str(path), index % 4))
    out = tmp_path / "rt.beton"
    write_beton(files, list("abcd"), out, WriteSettings(max_res=64, workers=1, write_mode="raw"), "test", 0)
    assert verify_beton(out, [label for _, label in files], 4) == []
    loader = Loader(str(out), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [CenterCropRGBImageDecoder((32, 32), ratio=1.0), ToTensor()],
                               "label": [IntDecoder(), ToTensor()]})
    images, labels = zip(*[(image, label) for image, label in loader])
    images, labels = np.concatenate(images), np.concatenate(labels).ravel()
    assert images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(labels, [i % 4 for i in range(12)])
    np.testing.assert_allclose(images.reshape(12, -1).mean(1), [i * 20 for i in range(12)], atol=1)


def test_verify_reports_a_histogram_mismatch(tmp_path):
    path = tmp_path / "a.JPEG"
    photo().save(path)
    out = tmp_path / "v.beton"
    write_beton([(str(path), 0), (str(path), 1)], ["a", "b"], out, WriteSettings(max_res=64, workers=1), "t", 0)
    assert verify_beton(out, [0, 1], 2) == []
    problems = verify_beton(out, [0, 0, 1], 2)
    assert any("3" in p for p in problems) and any("histogram" in p for p in problems)


def test_every_bad_entry_is_a_skip_with_its_reason(tmp_path, capsys, monkeypatch):
    """A symlink loop, an undecodable name, a decompression-bomb-sized image, a broken link: skipped and
    counted by kind; a nested folder is included (as torchvision's ImageFolder); a directory linked twice
    is listed once; a dead writer's temp file is removed."""
    train = tmp_path / "imagenet" / "train"
    (train / "a" / "nested").mkdir(parents=True)
    (train / "b").mkdir()
    for path in (train / "a" / "x.JPEG", train / "a" / "nested" / "y.JPEG", train / "b" / "z.JPEG"):
        photo().save(path)
    photo(200, 200).save(train / "b" / "huge.png")  # over the (lowered) decompression-bomb limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    (train / "a" / "loop").symlink_to(train / "a")  # a link back up the tree
    (train / "b" / "again").symlink_to(train / "a" / "nested")  # the same real folder twice
    (train / "b" / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    undecodable = os.fsencode(str(train / "b")) + b"/caf\xe9.JPEG"  # a Latin-1 name on a UTF-8 system
    with open(undecodable, "wb") as handle:
        handle.write(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".train.beton.tmp-{dead_pid()}"
    stale.write_bytes(b"half a beton")
    assert main(write_args(tmp_path / "imagenet", out, "--split", "train")) == 0
    printed = capsys.readouterr().out
    assert "train: 3 written, 5 skipped (" in printed and "1 symlink loop" in printed and "1 too large" in printed
    assert "1 duplicate" in printed
    assert "(1 in subfolders of class folders)" in printed
    assert not stale.exists() and f"removed 1 temporary file(s) left by killed writers: {stale.name}" in printed
    report = (out / "train_skipped.txt").read_text()
    assert "caf\\xe9.JPEG\tnot an image" in report and "gone.JPEG\tunreadable: broken symbolic link" in report
    assert f"{train / 'a' / 'loop'}\tsymlink loop" in report and "huge.png\ttoo large:" in report
    assert f"{train / 'b' / 'again'}\tduplicate" in report
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    (train / "a" / "loop").unlink()
    (train / "b" / "again").unlink()
    from torchvision.datasets import ImageFolder
    assert len(find_split(train).files) == len(ImageFolder(str(train), is_valid_file=lambda p: True)) - 1  # - gone


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo(40, 56).save(tmp_path / "phone.JPEG", exif=exif.tobytes())
    assert load_rgb(str(tmp_path / "phone.JPEG")).shape[:2] == (40, 56)  # as torchvision's loader reads it
    assert load_rgb(str(tmp_path / "phone.JPEG"), exif_transpose=True).shape[:2] == (56, 40)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def children_of(pid: int) -> list:
    """PIDs whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_killed_writer_takes_its_workers_along(tmp_path):
    """kill -9 of write_imagenet.py mid-write: its workers stop (they used to keep filling the hidden temp
    beton), and the next start removes that temp file."""
    train = tmp_path / "imagenet" / "train"
    for label in range(2):
        (train / str(label)).mkdir(parents=True)
        for index in range(300):
            photo(256, 256).save(train / str(label) / f"{index}.JPEG")
    out = tmp_path / "out"
    writer = subprocess.Popen([sys.executable, "dataset_prep/write_imagenet.py",
                               *write_args(tmp_path / "imagenet", out, "--split", "train", "--max-res", "256")],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temporary = out / f".train.beton.tmp-{writer.pid}"
    try:
        deadline = time.time() + 60
        while not (temporary.exists() and children_of(writer.pid)):  # writing, with its workers
            assert time.time() < deadline and writer.poll() is None, "the write ended before it could be killed"
            time.sleep(0.02)
        workers = children_of(writer.pid)
        writer.kill()
        writer.wait()
        deadline = time.time() + 15
        while any(Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
                  for pid in workers):
            assert time.time() < deadline, "a writer worker outlived the writer"
            time.sleep(0.1)
    finally:
        writer.kill()
    assert main(write_args(tmp_path / "imagenet", out, "--split", "train", "--subset", "1")) == 0
    assert not temporary.exists()


def test_smart_mode_stores_the_images_over_its_threshold_as_jpegs(tmp_path, capsys):
    """`--write-mode smart` stored every image raw (ffcv's mode without a threshold): the largest beton, where a
    user asked for large images to be compressed."""
    train = tmp_path / "imagenet" / "train"
    for label in range(2):
        (train / str(label)).mkdir(parents=True)
        for index in range(4):
            photo(40 + 8 * index, 40).save(train / str(label) / f"{index}.JPEG")  # 40 ... 64 px tall
    threshold = 50 * 40 * 3
    assert main(write_args(tmp_path / "imagenet", tmp_path / "out", "--split", "train", "--write-mode", "smart",
                           "--smart-threshold", str(threshold))) == 0
    fields = Reader(str(tmp_path / "out" / "train.beton")).metadata["f0"]
    as_jpeg = [mode == IMAGE_MODES["jpg"] for mode in fields["mode"]]
    assert as_jpeg == [int(height) * int(width) * 3 > threshold for height, width in zip(fields["height"],
                                                                                         fields["width"])]
    assert 0 < sum(as_jpeg) < len(as_jpeg)  # 56 and 64 px tall over it, 40 and 48 under
    settings = json.loads(metadata_path(tmp_path / "out" / "train.beton").read_text())["settings"]
    assert (settings["write_mode"], settings["smart_threshold"]) == ("smart", threshold)
    capsys.readouterr()
    # the setting of another mode is refused, not ignored
    for extra, said in [(["--smart-threshold", "100"], "--smart-threshold applies to --write-mode smart, not "
                                                       "proportion; drop it or pass --write-mode smart"),
                        (["--write-mode", "jpg", "--compress-prob", "0.1"], "--compress-prob applies to --write-mode "
                         "proportion, not jpg; drop it or pass --write-mode proportion")]:
        assert main(write_args(tmp_path / "imagenet", tmp_path / "other", *extra)) == 2
        assert capsys.readouterr().err == f"write_imagenet.py: error: {said}\n"
    assert not (tmp_path / "other").exists()


def test_writing_the_same_photos_again_stores_each_image_the_same_way(tmp_path):
    """`--compress-prob` chose which images to JPEG-compress with each writer process's unseeded numpy draws, so
    every write of the same photos stored other images as JPEGs: a fresh `make demo` trained on other pixels
    than README's table."""
    train = tmp_path / "imagenet" / "train"
    for label in range(2):
        (train / str(label)).mkdir(parents=True)
        for index in range(30):
            photo(48 + index, 56).save(train / str(label) / f"{index}.JPEG")
    modes = []
    for attempt in range(2):
        out = tmp_path / f"out{attempt}"
        written = run_script(["dataset_prep/write_imagenet.py",  # a process each: numpy seeds itself at start
                              *write_args(tmp_path / "imagenet", out, "--split", "train", "--chunk-size", "4")])
        assert written.returncode == 0, written.stderr[-2000:]
        fields = Reader(str(out / "train.beton")).metadata["f0"]
        modes.append((fields["mode"].tolist(), fields["width"].tolist()))
    assert modes[0] == modes[1]
    assert 0 < sum(modes[0][0]) < 60  # some raw, some JPEG: --compress-prob 0.5 still applies
