"""write_imagenet.py --classes: a smaller ImageNet of N classes spread over the class list, or of a listed subset."""
import json
from pathlib import Path

import pytest

from dataset_prep.beton import metadata_path, verify_beton
from dataset_prep.class_subset import choose_classes, keep_classes
from dataset_prep.image_folder import Split, UsageError
from dataset_prep.write_imagenet import main
from ffcv.reader import Reader

WNIDS = tuple(f"n{index:08d}" for index in range(1000))


def test_a_count_spreads_the_classes_over_the_sorted_list():
    """The first 100 WNIDs are all animals: every tenth spans the hierarchy."""
    kept = choose_classes(WNIDS, "100")
    assert kept == WNIDS[::10]
    assert choose_classes(WNIDS, "3") == (WNIDS[0], WNIDS[333], WNIDS[666])
    assert choose_classes(WNIDS, "1000") == WNIDS


def test_a_file_keeps_its_classes_in_the_datas_order(tmp_path):
    listed = tmp_path / "imagenet100.txt"
    listed.write_text(f"# a published subset\n{WNIDS[7]}\n\n{WNIDS[2]}  \n")
    assert choose_classes(WNIDS, str(listed)) == (WNIDS[2], WNIDS[7])


@pytest.mark.parametrize("text, message", [
    (None, "neither a number of classes nor a readable file of class names (No such file or directory)"),
    ("", "lists no class"),
    ("n00000001\nn99999999\n", "lists 1 class(es) the data does not have (first: 'n99999999'; the data's are"),
    ("n00000001\nn00000001\n", "lists 'n00000001' more than once"),
])
def test_a_class_file_that_cannot_be_used_is_one_line(tmp_path, text, message):
    listed = tmp_path / "classes.txt"
    if text is not None:
        listed.write_text(text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_classes(WNIDS, str(listed))


@pytest.mark.parametrize("count", ["0", "1001"])
def test_a_count_beyond_the_data_is_refused(count):
    with pytest.raises(UsageError, match=f"--classes {count}: the data has 1000 classes; keep 1 to 1000"):
        choose_classes(WNIDS, count)


def test_kept_images_are_relabelled_and_the_rest_left_out(tmp_path):
    root = tmp_path / "train"
    split = Split(root, ("a", "b", "c"), ((str(root / "a/1.JPEG"), 0), (str(root / "b/1.JPEG"), 1),
                                          (str(root / "c/x/1.JPEG"), 2), (str(root / "c/2.JPEG"), 2)),
                  skipped=((str(root / "b/broken.JPEG"), "unreadable"), (str(root / "c/bad.JPEG"), "unreadable")),
                  nested=1, class_names=("ant", "bee", "cat"))
    kept = keep_classes(split, ("a", "c"))
    assert kept.classes == ("a", "c") and kept.class_names == ("ant", "cat")
    assert kept.files == ((str(root / "a/1.JPEG"), 0), (str(root / "c/x/1.JPEG"), 1), (str(root / "c/2.JPEG"), 1))
    assert kept.skipped == ((str(root / "c/bad.JPEG"), "unreadable"),) and kept.nested == 1


def test_betons_written_apart_keep_the_same_classes(tiny_betons, tmp_path, capsys):
    """train and val written in two commands (as after a failed val write) choose the same classes alone."""
    out = tmp_path / "betons"
    arguments = ["--data-dir", str(tiny_betons / "images"), "--out-dir", str(out), "--workers", "1",
                 "--max-res", "32", "--classes", "3"]
    assert main([*arguments, "--split", "val"]) == 0 and main([*arguments, "--split", "train"]) == 0
    printed = capsys.readouterr().out
    every = sorted(path.name for path in (tiny_betons / "images" / "train").iterdir())
    expected = [every[0], every[3], every[6]]  # 3 of 10, spread
    assert f"--classes 3: 3 of the 10 classes kept ({', '.join(expected)}), labelled 0..2" in printed
    for split, per_class in (("train", 12), ("val", 5)):
        metadata = json.loads(metadata_path(out / f"{split}.beton").read_text())
        assert metadata["classes"] == expected and metadata["counts"] == [per_class] * 3
        labels = [label for cls in range(3) for label in [cls] * per_class]
        assert verify_beton(out / f"{split}.beton", labels, 3) == []
        assert Reader(str(out / f"{split}.beton")).num_samples == 3 * per_class
