"""Beton checks (missing, truncated, not ours, classes that do not fit); loader threads; what the seed fixes."""
import json
import shutil

import numba
import numpy as np
import pytest
import torch

from pipeline import cores
from pipeline.data import (DataError, DeviceAugment, LoaderSettings, check_beton, loader_threads, set_epoch,
                           train_loader, val_loader)
from pipeline.run_data import check_data, page_cache_note, upscaling_notes


def test_a_val_beton_with_other_classes_names_the_train_beton(tiny_betons):
    with pytest.raises(DataError, match=r"val.beton has 10 classes but data/x/train.beton has 3; write both splits"):
        check_beton(str(tiny_betons / "val.beton"), 3, against="data/x/train.beton")


def test_betons_of_other_classes_name_the_first_class_that_differs(tiny_betons, tmp_path):
    for name in ("train.beton", "train.meta.json", "val.beton", "val.meta.json"):
        shutil.copy(tiny_betons / name, tmp_path / name)
    metadata = json.loads((tmp_path / "val.meta.json").read_text())
    metadata["classes"][4] = "zebra"
    (tmp_path / "val.meta.json").write_text(json.dumps(metadata))
    config = {"data.train_dataset": str(tmp_path / "train.beton"), "data.val_dataset": str(tmp_path / "val.beton"),
              "model.num_classes": 0}
    with pytest.raises(DataError) as refusal:
        check_data(config)
    assert str(refusal.value) == (f"{tmp_path}/val.beton and {tmp_path}/train.beton have different classes (10 vs 10 "
                                  "classes; class 4 is 'zebra' vs 'coins'); write both splits from the same class "
                                  "folders")


def test_training_images_given_as_the_val_set_are_refused(tiny_betons, tmp_path):
    """Validating on the training images measures fit, not accuracy: the train beton given as val (a copy of it
    too), or a beton written from the same source folder, was trained and reported without a word."""
    config = {"data.train_dataset": str(tiny_betons / "train.beton"), "data.val_dataset": str(tiny_betons /
              "train.beton"), "model.num_classes": 0}
    with pytest.raises(DataError) as refusal:
        check_data(config)
    assert str(refusal.value) == (
        f"data.val_dataset {tiny_betons}/train.beton holds the training images: it is data.train_dataset (the "
        "same 120 images written " + json.loads((tiny_betons / "train.meta.json").read_text())["created"] +
        "); validate on the val split's beton (write_imagenet.py writes val.beton beside train.beton)")
    for name in ("val.beton", "val.meta.json"):
        shutil.copy(tiny_betons / name, tmp_path / name)
    metadata = json.loads((tmp_path / "val.meta.json").read_text())
    metadata["source"] = json.loads((tiny_betons / "train.meta.json").read_text())["source"]
    (tmp_path / "val.meta.json").write_text(json.dumps(metadata))
    config["data.val_dataset"] = str(tmp_path / "val.beton")
    with pytest.raises(DataError, match=r"holds the training images: it was written from "
                                        r"data.train_dataset's source \(imagefolder: .*/train\); validate on"):
        check_data(config)
    config["data.val_dataset"] = str(tiny_betons / "val.beton")
    assert [meta["num_samples"] for meta in check_data(config)] == [120, 49]
    # betons of an older writer record no time: the same count does not make two of them one write
    for name, source in (("train", "imagefolder: /data/train"), ("val", "imagefolder: /data/val")):
        shutil.copy(tiny_betons / "train.beton", tmp_path / f"{name}.beton")
        metadata = json.loads((tiny_betons / "train.meta.json").read_text())
        del metadata["created"]
        (tmp_path / f"{name}.meta.json").write_text(json.dumps(metadata | {"source": source}))
        config[f"data.{name}_dataset"] = str(tmp_path / f"{name}.beton")
    assert [meta["num_samples"] for meta in check_data(config)] == [120, 120]


def test_betons_stored_smaller_than_the_run_crops_them_to_are_noted(tiny_betons):
    metadata = dict(zip(("data.train_dataset", "data.val_dataset"), check_data(
        {"data.train_dataset": str(tiny_betons / "train.beton"), "data.val_dataset": str(tiny_betons / "val.beton"),
         "model.num_classes": 0})))  # written with --max-res 64
    config = {"data.train_dataset": "t.beton", "data.val_dataset": "v.beton", "resolution.max_res": 64,
              "resolution.val_res": 64}
    assert upscaling_notes(config, metadata) == []  # at the stored size: no upscaling
    notes = upscaling_notes(config | {"resolution.max_res": 192}, metadata)
    assert notes == ["data.train_dataset t.beton stores images of at most 64 px (write_imagenet.py --max-res 64) and "
                     "resolution.max_res is 192: every crop is upscaled; write the betons with --max-res 192 or more "
                     "for this recipe"]
    older = {key: {k: v for k, v in meta.items() if k != "settings"} for key, meta in metadata.items()}
    assert upscaling_notes(config | {"resolution.max_res": 192}, older) == []  # what it was written at: unknown


def test_a_train_beton_larger_than_the_machines_memory_is_noted(tmp_path):
    """It cannot stay in the page cache: every epoch reads it from the disk again, without a word of why."""
    beton = tmp_path / "train.beton"
    beton.write_bytes(b"x" * 2_500_000)
    config = {"data.train_dataset": str(beton)}
    assert page_cache_note(config, 2_500_000) is None and page_cache_note(config, None) is None
    assert page_cache_note(config, 2_499_999) == (
        f"data.train_dataset {beton} is 0.0 GB and this machine has 0.0 GB of memory: the beton cannot stay in the "
        "page cache, so every epoch reads it from the disk again (the loader is then as fast as the disk's reads); "
        "betons written smaller (write_imagenet.py --max-res, --write-mode jpg: it prints their size) or a machine "
        "with more memory keep it there")


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
    monkeypatch.setattr(cores, "cpu_quota", lambda: None)
    assert loader_threads(0, 1) == (12, "")
    assert loader_threads(0, 4) == (3, "")  # four ranks on this node
    assert loader_threads(0, 24) == (1, "")
    assert loader_threads(32, 1) == (32, "")
    assert loader_threads(40, 1) == (32, "data.num_workers 40 is more than the 32 threads numba starts on this "
                                         "machine (NUMBA_NUM_THREADS, default: its cores); the loaders use 32")
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 6)
    assert loader_threads(0, 1) == (6, "")  # NUMBA_NUM_THREADS set lower than the cores
    monkeypatch.setattr(cores, "cpu_quota", lambda: 4.0)  # docker run --cpus=4
    assert loader_threads(0, 2) == (2, "data.num_workers 0: 2 loader thread(s) per process, since a cgroup CPU "
                                       "quota (Docker's --cpus, a Kubernetes CPU limit) allows 4 of this process's "
                                       "12 cores")
    assert loader_threads(5, 1) == (5, "")  # asked for: as asked


def train_epochs(betons, seed: int, epochs: int, first_epoch: int = 0) -> list:
    loader = train_loader(str(betons / "train.beton"), LoaderSettings(16, 2, True, 2, seed), 32,
                          torch.device("cpu"), False)
    set_epoch(loader, first_epoch)
    return [np.concatenate([images.numpy().copy() for images, _ in loader]) for _ in range(epochs)]


def test_the_seed_and_the_epoch_fix_the_training_images(tiny_betons):
    """The same order and the same crops for every run of a seed, so every arm of an ablation sees the same
    images (ffcv drew crops from numba's per-thread generators, seeded by the OS), other crops every epoch; a
    loader set to epoch 2, as a resumed run sets it, gives what a third pass gives (ffcv restarted from epoch 0's
    order). The second loader of seed 0 is both: another run, and a resumed one."""
    first = train_epochs(tiny_betons, seed=0, epochs=3)
    assert not np.array_equal(first[0], first[1])
    assert np.array_equal(train_epochs(tiny_betons, seed=0, epochs=1, first_epoch=2)[0], first[2])
    assert not np.array_equal(first[0], train_epochs(tiny_betons, seed=1, epochs=1)[0])


@pytest.mark.parametrize("os_cache", [True, False])
def test_a_loader_reads_the_beton_it_opened_after_it_is_written_again(tiny_betons, tmp_path, os_cache):
    """ffcv reads a beton by name: its index as the Loader is built, its pages as the first pass starts (os_cache)
    or at every page (the process cache). A beton written again meanwhile (write_imagenet.py --overwrite renames
    the new file into place) was decoded at the old file's offsets: a run's val top-1 fell from 97.0 to 26.4."""
    beton = shutil.copyfile(tiny_betons / "val.beton", tmp_path / "val.beton")
    settings, cpu = LoaderSettings(10, 1, os_cache, 2, 0), torch.device("cpu")
    loader = val_loader(str(beton), settings, 32, cpu, range(49))
    replacement = shutil.copyfile(tiny_betons / "train.beton", tmp_path / ".val.beton.tmp-1")
    replacement.replace(beton)  # as the writer puts a finished beton in place
    images, labels = (torch.cat(parts) for parts in zip(*loader))
    reference = val_loader(str(tiny_betons / "val.beton"), settings, 32, cpu, range(49))
    expected_images, expected_labels = (torch.cat(parts) for parts in zip(*reference))
    assert torch.equal(labels, expected_labels) and torch.equal(images, expected_images)


def test_images_come_in_the_models_memory_format():
    images = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    plain = DeviceAugment(flip=False, channels_last=False)(images)
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)
    channels_last = DeviceAugment(flip=False)(images)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, plain)
    mean, std = torch.tensor([0.485, 0.456, 0.406]) * 255, torch.tensor([0.229, 0.224, 0.225]) * 255
    expected = (images.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(plain, expected)


def test_flips_follow_their_seed_and_epoch_not_the_global_generator():
    images = torch.arange(64 * 3 * 2 * 2, dtype=torch.uint8).reshape(64, 3, 2, 2)

    def flipped(seed, epoch):
        augment = DeviceAugment(flip=True, seed=seed)
        augment.set_epoch(epoch)
        out = augment(images)
        torch.rand(1000)  # the `random` squeeze draws from the global generator between steps
        return out[:, :, :, 0] != DeviceAugment(flip=False)(images)[:, :, :, 0]

    flips = flipped(3, 0).flatten(1).any(1)
    assert 10 < int(flips.sum()) < 54  # about half of the 64 images
    assert torch.equal(flipped(3, 0).flatten(1).any(1), flips)
    assert not torch.equal(flipped(3, 1).flatten(1).any(1), flips)
    assert not torch.equal(flipped(4, 0).flatten(1).any(1), flips)
