"""Beton checks before training: missing, truncated, not ours, classes that do not fit."""
import shutil

import pytest

from pipeline.data import DataError, check_beton


def test_a_val_beton_with_other_classes_names_the_train_beton(tiny_betons):
    with pytest.raises(DataError, match=r"val.beton has 10 classes but data/x/train.beton has 3; write both splits"):
        check_beton(str(tiny_betons / "val.beton"), 3, against="data/x/train.beton")


def test_a_beton_that_lost_its_metadata_or_its_tail_is_refused(tiny_betons, tmp_path):
    copy = tmp_path / "train.beton"
    shutil.copy(tiny_betons / "train.beton", copy)
    with pytest.raises(DataError, match=r"train.meta.json is missing: .* rewrite it with --overwrite"):
        check_beton(str(copy), None)
    shutil.copy(tiny_betons / "train.meta.json", tmp_path)
    assert check_beton(str(copy), 10)["num_samples"] == 120
    copy.write_bytes(copy.read_bytes()[: copy.stat().st_size // 2])
    with pytest.raises(DataError, match=r"train.beton is unreadable \(truncated or corrupt: .*\); rewrite it"):
        check_beton(str(copy), None)
