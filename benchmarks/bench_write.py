"""Beton write throughput on the sample set, next to a plain PIL decode loop over the same files (same run),
and the whole write_imagenet.py train split from an ImageFolder vs from the official tar layout.

    python benchmarks/bench_write.py [--workers N]

The tar layout is built from the same photos (a tar of per-class tars, as ILSVRC2012_img_train.tar) before
timing; both sources are then read from the page cache, so the comparison is of the read paths' CPU cost
(many small files vs pread of byte ranges of one file), not of the disk.
"""
import argparse
import contextlib
import io
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from PIL import Image

from cli import at_least  # a sibling module: benchmarks run as scripts

from dataset_prep.beton import WriteSettings, write_beton
from dataset_prep.image_folder import find_split
from dataset_prep.imagenet_layouts import TRAIN_TAR
from dataset_prep.sample_set import build_sample_folder
from dataset_prep.write_imagenet import SAMPLE_MAX_RES, SAMPLE_ROOT
from dataset_prep.write_imagenet import main as write_imagenet
from pipeline.cores import usable_cores


def pil_decode_loop(files) -> float:
    """Images/s of `Image.open(path).convert('RGB')` over the files, one process."""
    started = time.perf_counter()
    for path, _ in files:
        with Image.open(path) as image:
            image.convert("RGB").load()
    return len(files) / (time.perf_counter() - started)


def build_train_tar(folder: Path, out: Path) -> None:
    """`folder/<class>/*` as ILSVRC2012_img_train.tar: one uncompressed tar per class inside one tar."""
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as outer:  # as GNU tar made ImageNet's
        for class_folder in sorted(folder.iterdir()):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as archive:
                for path in sorted(class_folder.iterdir()):
                    archive.add(path, arcname=path.name)
            info = tarfile.TarInfo(f"{class_folder.name}.tar")
            info.size = inner.tell()
            inner.seek(0)
            outer.addfile(info, inner)


def timed_write_imagenet(data_dir: Path, workers: int) -> float:
    """Images/s of `write_imagenet.py --split train` (listing, scan and write) from `data_dir`."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        status = write_imagenet(["--data-dir", str(data_dir), "--out-dir", out, "--split", "train",
                                 "--workers", str(workers), "--max-res", str(SAMPLE_MAX_RES)])
        seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"bench_write.py: write_imagenet.py failed on {data_dir}")
    return seconds


def parse_arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line, checked before anything runs (the device check's commands are tested here)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=at_least(1), default=usable_cores())
    parser.add_argument("--rounds", type=at_least(1), default=7, help="write_imagenet.py runs per source (median)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    images = SAMPLE_ROOT / "images"
    if not (images / "train").is_dir():
        build_sample_folder(images)
    files = list(find_split(images / "train").files)
    decode = pil_decode_loop(files)
    rows = {}
    for label, settings in {
        f"sample settings ({SAMPLE_MAX_RES} px, proportion 0.5)": WriteSettings(max_res=SAMPLE_MAX_RES,
                                                                               workers=args.workers),
        "ImageNet settings (500 px, proportion 0.5, q90)": WriteSettings(workers=args.workers),
    }.items():
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            write_beton(files, [str(i) for i in range(10)], Path(folder) / "t.beton", settings, "bench", 0)
            rows[label] = len(files) / (time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tars:
        build_train_tar(images / "train", Path(tars) / TRAIN_TAR)
        sources = {"ImageFolder": images, "ILSVRC2012 tars": Path(tars)}
        speeds = {name: [] for name in sources}
        for round_index in range(args.rounds):  # alternating, so warm-up and drift hit both sources alike
            for name, path in (sources.items() if round_index % 2 == 0 else reversed(sources.items())):
                speeds[name].append(len(files) / timed_write_imagenet(path, args.workers))
        whole = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"\n{len(files)} sample-set JPEGs, {args.workers} writer workers, {usable_cores()} cores")
    print(f"{'':58s} {'img/s':>8s} {'x PIL loop':>10s} {'img/s/core':>10s}")
    print(f"{'plain PIL decode loop (1 process)':58s} {decode:8.0f} {1.0:10.2f} {decode:10.0f}")
    for label, speed in rows.items():
        print(f"{'ffcv write, ' + label:58s} {speed:8.0f} {speed / decode:10.2f} {speed / args.workers:10.0f}")
    for label, speed in whole.items():
        print(f"{'write_imagenet.py train from ' + label:58s} {speed:8.0f} {speed / decode:10.2f} "
              f"{speed / args.workers:10.0f}")
    folder, tar = whole["ImageFolder"], whole["ILSVRC2012 tars"]
    print(f"tars vs ImageFolder: {tar / folder:.2f}x (medians of {args.rounds} alternating rounds; each round: "
          + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(speeds["ILSVRC2012 tars"], speeds["ImageFolder"])) + ")")
    print(json.dumps({"pil_decode_img_s": round(decode), **{f"write_img_s[{k}]": round(v) for k, v in rows.items()},
                      "write_vs_pil_decode": round(list(rows.values())[0] / decode, 3),
                      "write_imagenet_img_s": {k: [round(v) for v in values] for k, values in speeds.items()},
                      "tar_vs_folder": round(tar / folder, 3), "workers": args.workers}))


if __name__ == "__main__":
    main()
