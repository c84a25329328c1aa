"""A run's betons: checked before anything of the run is created, then read by its loaders.

The train beton is read only by training: evaluating weights (`train.py --eval-only`) checks and loads the val
beton alone, so a machine holding val.beton and final.pt can evaluate without the training set.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from dataset_prep.beton import class_difference, data_identity
from pipeline.config import ConfigError
from pipeline.data import (DataError, LoaderSettings, check_beton, loader_threads, shard_indices, train_loader,
                           val_loader)
from pipeline.distributed import World
from pipeline.run_dir import DATA_KEYS


def loader_settings(config: Dict[str, Any], workers: int, batch_size: int) -> LoaderSettings:
    return LoaderSettings(batch_size, workers, config["data.os_cache"], config["data.batches_ahead"],
                          config["training.seed"])


def build_data(config: Dict[str, Any], world: World, resolution: int, metadata: Tuple[dict, dict]):
    """Train and val loaders and the number of classes, from betons `check_data` passed (its metadata)."""
    train_meta, val_meta = metadata
    workers = loader_workers(config, world)
    train = train_loader(config["data.train_dataset"], loader_settings(config, workers, config["training.batch_size"]),
                         resolution, world.device, world.distributed)
    return train, build_val_data(config, world, val_meta, workers), len(train_meta["classes"])


def loader_workers(config: Dict[str, Any], world: World) -> int:
    workers, note = loader_threads(config["data.num_workers"], world.local_world_size)
    if note and world.is_main:
        print(note, flush=True)
    return workers


def build_val_data(config: Dict[str, Any], world: World, val_meta: dict, workers: int):
    """This rank's shard of the val beton (ranks' shards differ by at most one image)."""
    indices = shard_indices(val_meta["num_samples"], world.rank, world.world_size)
    return val_loader(config["data.val_dataset"], loader_settings(config, workers, config["validation.batch_size"]),
                      config["resolution.val_res"], world.device, indices)


def check_data(config: Dict[str, Any]) -> Tuple[dict, dict]:
    """(train, val) metadata, once both betons exist, open and agree on their classes."""
    train_meta = check_beton(config["data.train_dataset"], config["model.num_classes"] or None)
    val_meta = check_beton(config["data.val_dataset"], len(train_meta["classes"]), against=config["data.train_dataset"])
    if val_meta["classes"] != train_meta["classes"]:
        raise DataError(f"{config['data.val_dataset']} and {config['data.train_dataset']} have different classes ("
                        f"{class_difference(val_meta['classes'], train_meta['classes'])}); write both splits from "
                        "the same class folders")
    check_val_is_not_train(config, train_meta, val_meta)
    return train_meta, val_meta


def check_val_is_not_train(config: Dict[str, Any], train_meta: dict, val_meta: dict) -> None:
    """Refuse a val beton that holds the training images (validating on them measures fit, not accuracy): the
    train beton itself or a copy (the same write), or one written from the same source folder or tar."""
    if "created" in val_meta and data_identity(val_meta) == data_identity(train_meta):  # the time tells writes apart
        holds = f"it is data.train_dataset (the same {data_identity(val_meta)})"
    elif val_meta.get("source") and val_meta.get("source") == train_meta.get("source"):
        holds = f"it was written from data.train_dataset's source ({val_meta['source']})"
    else:
        return
    raise DataError(f"data.val_dataset {config['data.val_dataset']} holds the training images: {holds}; validate "
                    "on the val split's beton (write_imagenet.py writes val.beton beside train.beton)")


def check_val_data(config: Dict[str, Any], weights: Path) -> Tuple[dict, int]:
    """(val metadata, classes) for evaluating `weights`: the training set need not be on this machine, so the val
    beton is checked against the weights' classes (those they record, or model.num_classes)."""
    val_meta = check_beton(config["data.val_dataset"], None)
    num_classes = config["model.num_classes"] or len(val_meta["classes"])
    if num_classes != len(val_meta["classes"]):
        raise DataError(f"--weights {weights} hold a model of {num_classes} classes but {config['data.val_dataset']} "
                        f"has {len(val_meta['classes'])}; evaluate them on a val beton of their classes "
                        "(--data.val_dataset)")
    return val_meta, num_classes


# the resolution each beton's images are cropped to
OUTPUT_RESOLUTION = {"data.train_dataset": "resolution.max_res", "data.val_dataset": "resolution.val_res"}


def upscaling_notes(config: Dict[str, Any], metadata: Dict[str, dict]) -> List[str]:
    """For each beton ({data setting: its metadata}) whose images are stored smaller than the run crops them to
    (written with a small --max-res to save disk): a line saying so. Every crop of it is upscaled, which a run
    should say at its start rather than train or evaluate on without a word."""
    notes = []
    for key, meta in metadata.items():
        stored, wanted = meta.get("settings", {}).get("max_res"), OUTPUT_RESOLUTION[key]
        if isinstance(stored, int) and stored < config[wanted]:
            notes.append(f"{key} {config[key]} stores images of at most {stored} px (write_imagenet.py --max-res "
                         f"{stored}) and {wanted} is {config[wanted]}: every crop is upscaled; write the betons "
                         f"with --max-res {config[wanted]} or more for this recipe")
    return notes


def page_cache_note(config: Dict[str, Any], memory: Optional[int]) -> Optional[str]:
    """A line when the train beton is larger than the machine's `memory` (bytes): it cannot stay in the page
    cache, so every epoch reads it from the disk again, at random under DDP (ffcv's RANDOM order; QUASI_RANDOM,
    one process, reads it by pages): a loader far below its speed on a node of 8 GPUs, with no word of why."""
    size = Path(config["data.train_dataset"]).stat().st_size
    if memory is None or size <= memory:
        return None
    return (f"data.train_dataset {config['data.train_dataset']} is {size / 1e9:.1f} GB and this machine has "
            f"{memory / 1e9:.1f} GB of memory: the beton cannot stay in the page cache, so every epoch reads it "
            "from the disk again (the loader is then as fast as the disk's reads); betons written smaller "
            "(write_imagenet.py --max-res, --write-mode jpg: it prints their size) or a machine with more memory "
            "keep it there")


def data_identities(metadata: Tuple[dict, dict]) -> Dict[str, str]:
    """{data setting: what its beton holds}: a run directory is matched on these, not on the betons' paths."""
    return {key: data_identity(meta) for key, meta in zip(DATA_KEYS, metadata)}


def check_batch_fits(config: Dict[str, Any], train_meta: dict, world: World) -> None:
    per_process = train_meta["num_samples"] // world.world_size
    if config["training.batch_size"] > per_process:
        raise ConfigError(f"training.batch_size {config['training.batch_size']} is larger than the {per_process} "
                          f"train images per process of {config['data.train_dataset']}; lower it (batches that "
                          "are not full are dropped)")
