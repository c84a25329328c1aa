"""Beton checks before training (missing, truncated, not ours, classes that do not fit); loader threads."""
import shutil

import numba
import pytest

from pipeline import cores
from pipeline.data import DataError, check_beton, loader_threads


def test_a_val_beton_with_other_classes_names_the_train_beton(tiny_betons):
    with pytest.raises(DataError, match=r"val.beton has 10 classes but data/x/train.beton has 3; write both splits"):
        check_beton(str(tiny_betons / "val.beton"), 3, against="data/x/train.beton")


def test_a_missing_beton_names_the_folder_a_relative_path_was_looked_for_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"dataset data/sample/train.beton does not exist in {tmp_path}; write it "
                                        r"with `python dataset_prep/write_imagenet.py`"):
        check_beton("data/sample/train.beton", None)


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


def test_loader_threads_share_the_cores_this_process_may_use_within_numbas_limit(monkeypatch):
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 32)
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(8, 20)))  # taskset -c 8-19
    assert loader_threads(0, 1) == (12, "")
    assert loader_threads(0, 4) == (3, "")  # four ranks on this node
    assert loader_threads(0, 24) == (1, "")
    assert loader_threads(32, 1) == (32, "")
    assert loader_threads(40, 1) == (32, "data.num_workers 40 is more than the 32 threads numba starts on this "
                                         "machine (NUMBA_NUM_THREADS, default: its cores); the loaders use 32")
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 6)
    assert loader_threads(0, 1) == (6, "")  # NUMBA_NUM_THREADS set lower than the cores
